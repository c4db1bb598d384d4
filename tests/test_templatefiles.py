"""Reading upstream template folders: overlays, services, ports, roles, derived from the files."""

import pytest

from controller.errors import UsageError
from controller.templatefiles import (
    MAIL_UI_PORT,
    Override,
    PublishedPort,
    Reset,
    TemplateFiles,
    dump_yaml,
    interpolate,
    load_yaml,
    merge_services,
    parse_port,
)
from tests.world.templates import fixtures_dir

FIXTURES = fixtures_dir()


@pytest.fixture
def new():
    return TemplateFiles(FIXTURES / "v0.8.2")


@pytest.fixture
def old():
    return TemplateFiles(FIXTURES / "2025-07-15")


def test_overlays_and_paths(new, old):
    assert new.overlays() == ["kong", "logs", "mail", "pg15", "pg17", "s3"]  # not dev/
    assert old.overlays() == ["mail"]
    assert new.compose_paths(["logs", "kong"]) == [
        new.path / "docker-compose.yml",
        new.path / "docker-compose.logs.yml",
        new.path / "docker-compose.kong.yml",
    ]
    with pytest.raises(UsageError, match=r"unknown overlay 'nope'.*kong, logs, mail"):
        new.compose_paths(["nope"])
    with pytest.raises(UsageError, match="unknown overlay 'logs'"):
        old.compose_paths(["logs"])


def test_services_of_the_new_template(new):
    services = new.services()
    assert list(services) == [
        "studio",
        "api-gw",
        "auth",
        "rest",
        "realtime",
        "storage",
        "imgproxy",
        "meta",
        "functions",
        "db",
        "supavisor",
    ]
    assert services["api-gw"].container_name == "supabase-envoy"
    assert services["realtime"].container_name == "realtime-dev.supabase-realtime"
    assert services["api-gw"].published == (PublishedPort("api-gw", 8000),)
    assert services["api-gw"].published[0].key == "api-gw:8000"
    assert [p.key for p in services["supavisor"].published] == ["supavisor:5432", "supavisor:6543"]
    assert services["studio"].published == ()
    assert services["studio"].http_port == 3000  # from its healthcheck URL
    assert services["auth"].http_port == 9999
    assert services["supavisor"].http_port == 4000
    assert services["db"].image == "supabase/postgres:17.6.1.136"


def test_overlays_merge_with_override_and_new_services(new):
    kong = new.services(["kong"])
    assert kong["api-gw"].container_name == "supabase-kong"
    assert kong["api-gw"].image.startswith("kong/kong:")
    # `ports: !override` replaces, so 8000 appears once, plus Kong's 8443.
    assert [p.key for p in kong["api-gw"].published] == ["api-gw:8000", "api-gw:8443"]
    logs = new.services(["logs"])
    assert {"analytics", "vector"} <= set(logs)
    assert logs["vector"].container_name == "supabase-vector"
    assert new.services(["pg15"])["db"].image == "supabase/postgres:15.8.1.085"
    s3 = new.services(["s3"])
    assert {"minio", "minio-createbucket"} <= set(s3)
    assert s3["minio"].container_name is None
    mail = new.services(["mail"])
    assert mail["mail"].http_port == MAIL_UI_PORT


def test_old_template(old):
    services = old.services()
    assert services["kong"].container_name == "supabase-kong"
    assert [p.key for p in services["kong"].published] == ["kong:8000", "kong:8443"]
    assert [p.key for p in services["analytics"].published] == ["analytics:4000"]
    assert services["studio"].http_port == 3000


@pytest.mark.parametrize(
    ("version", "overlays", "expected"),
    [
        (
            "v0.8.2",
            [],
            {
                "gateway": "api-gw",
                "studio": "studio",
                "db": "db",
                "pooler": "supavisor",
                "mail": None,
            },
        ),
        ("v0.8.2", ["kong", "mail"], {"gateway": "api-gw", "mail": "mail"}),
        (
            "2025-07-15",
            [],
            {"gateway": "kong", "studio": "studio", "db": "db", "pooler": "supavisor"},
        ),
    ],
)
def test_roles(version, overlays, expected):
    template = TemplateFiles(FIXTURES / version)
    for role, service in expected.items():
        assert template.role(role, overlays) == service, role


def test_images_and_env_example(new):
    images = new.images()
    assert images["studio"].startswith("supabase/studio:")
    assert images["db"] == "supabase/postgres:17.6.1.136"
    assert "POSTGRES_PASSWORD=" in new.env_example()


def test_yaml_tags_and_merge_rules():
    base = load_yaml(
        "services:\n  a:\n    image: x\n    ports: ['1:1']\n    environment: [A=1, B=2]\n"
        "    networks: [default]\n  b:\n    image: y\n"
    )
    over = load_yaml(
        "services:\n  a:\n    ports: !override ['2:2']\n    environment: {B: '3'}\n"
        "    healthcheck: !reset null\n  b: !reset {}\n"
    )
    assert isinstance(over["services"]["a"]["ports"], Override)
    assert isinstance(over["services"]["b"], Reset)
    merged = merge_services([base, over])
    assert merged == {
        "a": {
            "image": "x",
            "ports": ["2:2"],
            "environment": {"A": "1", "B": "3"},
            "networks": {"default": None},
        }
    }
    text = dump_yaml({"ports": Override(["127.0.0.1:1:2/tcp"]), "s": "multi\nline"})
    assert "ports: !override" in text
    assert load_yaml(text)["ports"] == Override(["127.0.0.1:1:2/tcp"])


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("${A}", "1"),
        ("${MISSING:-d}", "d"),
        ("${EMPTY:-d}", "d"),
        ("${EMPTY-d}", ""),
        ("${MISSING:-${A:-x}}", "1"),
        ("${API_GW_HTTP_PORT:-${KONG_HTTP_PORT:-8000}}", "8000"),
        ("$$A and $A", "$A and 1"),
        ("${A:+alt}", "alt"),
    ],
)
def test_interpolate(text, expected):
    assert interpolate(text, {"A": "1", "EMPTY": ""}) == expected


@pytest.mark.parametrize(
    ("entry", "expected"),
    [
        (
            "${API_GW_HTTP_PORT:-${KONG_HTTP_PORT:-8000}}:8000/tcp",
            [(8000, "tcp", "${API_GW_HTTP_PORT:-${KONG_HTTP_PORT:-8000}}")],
        ),
        ("127.0.0.1:5000:5432", [(5432, "tcp", "5000")]),
        ("9000", [(9000, "tcp", "")]),
        ("53:53/udp", [(53, "udp", "53")]),
        ("7000-7001:7000-7001", [(7000, "tcp", "7000-7001"), (7001, "tcp", "7000-7001")]),
        ({"target": 80, "published": "8080", "protocol": "tcp"}, [(80, "tcp", "8080")]),
    ],
)
def test_parse_port(entry, expected):
    assert parse_port(entry, {}) == expected


def test_unknown_version_is_read_from_its_files(tmp_path):
    """A made-up future layout: other names, no container_name, long port syntax."""
    (tmp_path / "docker-compose.yml").write_text(
        "name: supabase\nservices:\n"
        "  gateway:\n    image: envoyproxy/envoy:v2\n    container_name: supabase-gw\n"
        "    ports:\n      - target: 8080\n        published: ${GW_PORT:-80}\n"
        "  dashboard:\n    image: supabase/studio:2030\n    expose: ['4321']\n"
        "  database:\n    image: supabase/postgres:19\n"
        "  pool:\n    image: supabase/supavisor:9\n    ports: ['${P}:6543']\n"
    )
    (tmp_path / ".env.example").write_text("GW_PORT=80\nP=6543\n")
    (tmp_path / "docker-compose.extra.yaml").write_text("services: {}\n")
    template = TemplateFiles(tmp_path)
    assert template.overlays() == ["extra", "mail"]
    assert template.role("gateway") == "gateway"
    assert template.role("studio") == "dashboard"
    assert template.role("db") == "database"
    assert template.role("pooler") == "pool"
    assert template.services()["dashboard"].http_port == 4321
    assert template.services()["gateway"].published[0].key == "gateway:8080"
