"""Instance folders: two instances of every template and overlay combination side by side.

`docker compose config` (the compose CLI only, no daemon) is run in each instance folder with no
flags, so the .env's COMPOSE_PROJECT_NAME and COMPOSE_FILE are what select the instance.
"""

import itertools
import json
import os
import re
import socket
import stat
import subprocess
from pathlib import Path

import pytest

from controller import ports as port_alloc
from controller.composeyaml import load_yaml
from controller.config import Settings
from controller.envfile import EnvFile
from controller.envpolicy import check_text
from controller.errors import OperationError, UsageError
from controller.ownership import root_id
from controller.render import (
    INSTANCE_LABEL,
    ROOT_LABEL,
    compose_files,
    demo_values,
    render_instance,
)
from controller.state import InstanceRecord
from controller.templatefiles import (
    TemplateFiles,
    host_port_variables,
    needed_ports,
    role_port_key,
)
from tests.world.templates import fixtures_dir

FIXTURES = fixtures_dir()


def _combos():
    extras = ["logs", "kong", "s3", "mail"]
    out = []
    for size in range(len(extras) + 1):
        out += [list(c) for c in itertools.combinations(extras, size)]
    # pg15 / pg17 are alternatives, each with a few others.
    out += [["pg15"], ["pg17"], ["pg15", "logs", "mail"], ["logs", "kong", "s3", "mail", "pg17"]]
    return [("v0.8.2", combo) for combo in out] + [("2025-07-15", []), ("2025-07-15", ["mail"])]


def _settings(root: Path) -> Settings:
    return Settings(root=root, domain="example.dev", port_range=(23000, 23999))


def _create(settings, template, name, overlays, used, **kwargs):
    needed = needed_ports(template, overlays)
    allocated = port_alloc.allocate(needed, {}, used, settings.port_range)
    record = InstanceRecord(
        name=name, template=template.path.name, overlays=list(overlays), ports=allocated, **kwargs
    )
    folder = render_instance(settings, record, template)
    used |= set(allocated.values())
    return record, folder


def _config(folder: Path) -> dict:
    result = subprocess.run(
        ["docker", "compose", "config", "--format", "json"],
        cwd=folder,
        capture_output=True,
        text=True,
        env={**os.environ, "PWD": str(folder)},
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def _resources(config: dict) -> dict[str, set]:
    services = config["services"].values()
    return {
        "containers": {s["container_name"] for s in services},
        "host_ports": {p["published"] for s in services for p in s.get("ports", [])},
        "project": {config["name"]},
        "networks": {n["name"] for n in config.get("networks", {}).values()},
        "volumes": {v["name"] for v in config.get("volumes", {}).values()},
    }


@pytest.mark.parametrize(
    ("version", "overlays"),
    _combos(),
    ids=lambda v: v if isinstance(v, str) else "+".join(v) or "base",
)
def test_two_instances_side_by_side(tmp_path, version, overlays):
    template = TemplateFiles(FIXTURES / version)
    settings = _settings(tmp_path)
    used: set[int] = set()
    records, configs = {}, {}
    for name in ("alpha", "beta"):
        record, folder = _create(settings, template, name, overlays, used)
        records[name] = record
        configs[name] = _config(folder)
        _check_instance(settings, template, record, folder, configs[name])
    first, second = (_resources(configs[n]) for n in ("alpha", "beta"))
    for kind in first:
        assert first[kind], kind
        assert not first[kind] & second[kind], kind


def _check_instance(settings, template, record, folder, config):
    name = record.name
    overlays = record.overlays
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    assert stat.S_IMODE((folder / ".env").stat().st_mode) == 0o600
    assert config["name"] == name

    # .env: every .env.example key, in order, values checked; nothing demo.
    example = EnvFile.parse(template.env_example())
    env = EnvFile.parse((folder / ".env").read_text())
    ours = [key for key in env if key in example]
    assert ours == example.keys()
    assert check_text((folder / ".env").read_text()) == []
    assert env.get("COMPOSE_PROJECT_NAME") == name
    files = env.get("COMPOSE_FILE").split(":")
    assert files[0] == "docker-compose.yml" and files[-1] == "docker-compose.override.yml"
    assert files[1:-1] == [f"docker-compose.{o}.yml" for o in overlays]
    assert compose_files(folder) == [folder / f for f in files]
    assert env.get("POSTGRES_PORT") == "5432"
    assert env.get("POOLER_TENANT_ID") == name
    assert env.get("STUDIO_DEFAULT_PROJECT") == name
    origin = f"https://{name}.example.dev"
    assert env.get("SUPABASE_PUBLIC_URL") == origin
    expected_api = origin + ("/auth/v1" if "/auth/v1" in example.get("API_EXTERNAL_URL") else "")
    assert env.get("API_EXTERNAL_URL") == expected_api
    assert env.get("SITE_URL") == origin
    if "mail" in overlays:
        assert (env.get("SMTP_HOST"), env.get("SMTP_PORT")) == ("mail", "1025")
    demos = demo_values(template)
    assert "POSTGRES_PASSWORD" in demos and "JWT_SECRET" in demos
    resolved = json.dumps(config)
    for key, demo in demos.items():
        assert demo not in resolved, key
    for path in folder.rglob("*"):
        if not path.is_file():
            continue
        data = path.read_text(errors="replace")
        relative = path.relative_to(folder)
        upstream = template.path / relative
        for key, demo in demos.items():
            if demo in data:
                # Only an unchanged upstream file may hold it, as an interpolation default
                # (e.g. ${REALTIME_DB_ENC_KEY:-supabaserealtime}) that the .env overrides.
                assert upstream.is_file() and upstream.read_text() == data, (relative, key)
                assert f":-{demo}}}" in data, (relative, key)
    assert not (folder / ".env.example").exists()

    # Services: own container names, upstream name as alias, label, loopback ports.
    services = template.services(overlays)
    owner = {INSTANCE_LABEL: name, ROOT_LABEL: root_id(settings.root)}
    for section in ("networks", "volumes"):
        for key, body in config.get(section, {}).items():
            assert body["labels"] == owner, (section, key)
    for service, body in config["services"].items():
        assert {k: body["labels"][k] for k in owner} == owner, service
        assert body["container_name"].startswith(name + "-")
        upstream = services[service].container_name if service in services else None
        if upstream:
            suffix = upstream.split("supabase-", 1)[-1]
            assert body["container_name"] == f"{name}-{suffix}"
            for network in body.get("networks", {"default": None}):
                aliases = (body["networks"][network] or {}).get("aliases", [])
                assert upstream in aliases, (service, network)
        for port in body.get("ports", []):
            assert port["host_ip"] == "127.0.0.1", service
            key = f"{service}:{port['target']}"
            assert int(port["published"]) == record.ports[key]
    if "api-gw" in config["services"]:
        aliases = config["services"]["api-gw"]["networks"]["default"]["aliases"]
        assert {"kong", "envoy"} <= set(aliases)  # upstream's own aliases kept
    studio = template.role("studio", overlays)
    assert not config["services"][studio].get("ports")  # only through the gateway's auth
    if "mail" in overlays:
        assert config["services"]["mail"]["ports"][0]["target"] == 8025

    # vector.yml names this instance's containers and reads only them.
    vector = folder / "volumes/logs/vector.yml"
    text = vector.read_text()
    assert not re.search(r"(?<![\w.-])[\w.-]*supabase-[a-z]", text)
    data = load_yaml(text)
    source = data["sources"]["docker_host"]
    assert source["include_labels"] == [f"com.docker.compose.project={name}"]
    assert source["exclude_containers"] == [f"{name}-vector"]
    container_names = {b["container_name"] for b in config["services"].values()}
    for condition in data["transforms"]["router"]["route"].values():
        for appname in re.findall(r'"([^"]+)"', condition):
            assert appname.startswith(name + "-")
    if "logs" in overlays or "vector" in config["services"]:
        assert f"{name}-vector" in container_names
    assert "# Ignores non nginx errors" in text  # the rest of the file as upstream wrote it

    # Everything else is an unchanged copy.
    for path in template.path.rglob("*"):
        relative = path.relative_to(template.path)
        if (
            path.is_file()
            and path.name != ".env.example"
            and relative != vector.relative_to(folder)
        ):
            assert (folder / relative).read_bytes() == path.read_bytes(), relative


def test_rerender_keeps_secrets_and_converges(tmp_path):
    template = TemplateFiles(FIXTURES / "v0.8.2")
    settings = _settings(tmp_path)
    record, folder = _create(settings, template, "keep", ["logs"], set(), cpus=1.5, memory="1g")
    env_path = folder / ".env"
    before = env_path.read_text()
    render_instance(settings, record, template)
    assert env_path.read_text() == before

    # A user's change and added key stay; a lost key comes back; a demo value is replaced.
    env = EnvFile.parse(before)
    secret = env.get("JWT_SECRET")
    env.set("SITE_URL", "https://app.shop.dev")
    env.set("MY_OWN", "x")
    env.unset("VAULT_ENC_KEY")
    env.set("DASHBOARD_PASSWORD", "this_password_is_insecure_and_should_be_updated")
    env_path.write_text(env.render())
    render_instance(settings, record, template)
    after = EnvFile.parse(env_path.read_text())
    assert after.get("JWT_SECRET") == secret
    assert after.get("ANON_KEY") == env.get("ANON_KEY")
    assert after.get("SITE_URL") == "https://app.shop.dev"
    assert after.get("MY_OWN") == "x"
    assert len(after.get("VAULT_ENC_KEY")) == 32
    keys = after.keys()
    assert keys.index("VAULT_ENC_KEY") == keys.index("REALTIME_DB_ENC_KEY") + 1  # in its place
    assert after.get("DASHBOARD_PASSWORD") != env.get("DASHBOARD_PASSWORD")
    assert check_text(env_path.read_text()) == []

    config = _config(folder)
    assert config["services"]["db"]["cpus"] == 1.5
    assert config["services"]["db"]["mem_limit"] == str(1024**3)


def test_extra_compose_files_are_copied_and_kept(tmp_path):
    template = TemplateFiles(FIXTURES / "v0.8.2")
    settings = _settings(tmp_path)
    extra = tmp_path / "standin.yml"
    extra.write_text(
        "services:\n  db:\n    image: local/postgres:15\n    ports: ['5433:5432']\n"
        "  sidecar:\n    image: busybox\n    ports: ['0.0.0.0:8080:80', '9090:90/udp', '91']\n"
    )
    needed = needed_ports(template, [])
    record = InstanceRecord(
        name="ex",
        template="v0.8.2",
        ports=port_alloc.allocate(needed, {}, set(), settings.port_range),
    )
    folder = render_instance(settings, record, template, [extra])
    copy = folder / "extra-1.yml"
    assert copy.read_text() == extra.read_text()
    assert stat.S_IMODE(copy.stat().st_mode) == 0o600
    # The override comes last, so an extra file cannot undo what it sets.
    assert (
        EnvFile.parse((folder / ".env").read_text())
        .get("COMPOSE_FILE")
        .endswith("extra-1.yml:docker-compose.override.yml")
    )
    render_instance(settings, record, template)  # no sources: the copy stays
    config = _config(folder)
    assert config["services"]["db"]["image"] == "local/postgres:15"
    assert config["services"]["sidecar"]["container_name"] == "ex-sidecar"
    assert config["services"]["sidecar"]["labels"][INSTANCE_LABEL] == "ex"
    published = {
        (name, p["target"]): (p.get("host_ip"), p.get("published"), p["protocol"])
        for name, body in config["services"].items()
        for p in body.get("ports", [])
    }
    assert all(host_ip == "127.0.0.1" for host_ip, _, _ in published.values()), published
    assert published[("sidecar", 80)] == ("127.0.0.1", "8080", "tcp")
    assert published[("sidecar", 90)] == ("127.0.0.1", "9090", "udp")
    assert published[("sidecar", 91)][0] == "127.0.0.1"
    assert published[("db", 5432)] == ("127.0.0.1", "5433", "tcp")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("- just a list\n", "not a compose file"),
        ("root: x\nbin: y\n", "not a compose file"),  # a mapping, but no compose document
        ("services: [a, b]\n", "not a compose file"),
        ("services:\n  db:\n    image: [\n", "not valid YAML"),
        ("services:\n  db:\n    ports: ['not a port']\n", "refused by compose"),
        ("services:\n  spy:\n    image: busybox\n    network_mode: host\n", "host network"),
    ],
)
def test_bad_extra_compose_files_are_refused_before_writing(tmp_path, text, message):
    template = TemplateFiles(FIXTURES / "v0.8.2")
    settings = _settings(tmp_path)
    bad = tmp_path / "bad.yml"
    bad.write_text(text)
    record = InstanceRecord(
        name="ex",
        template="v0.8.2",
        ports=port_alloc.allocate(needed_ports(template, []), {}, set(), settings.port_range),
    )
    with pytest.raises(UsageError, match=message):
        render_instance(settings, record, template, [bad])
    assert not settings.instance_dir("ex").exists()


def test_needed_ports_and_port_variables():
    new = TemplateFiles(FIXTURES / "v0.8.2")
    assert needed_ports(new, []) == [
        "api-gw:8000",
        "supavisor:5432",
        "supavisor:6543",
    ]
    assert needed_ports(new, ["kong", "mail"]) == [
        "api-gw:8000",
        "api-gw:8443",
        "supavisor:5432",
        "supavisor:6543",
        "mail:8025",
    ]
    variables = host_port_variables(new, ["kong"])
    # KONG_HTTP_PORT is only the fallback of API_GW_HTTP_PORT: compose-go never reads it here.
    assert variables == {
        "API_GW_HTTP_PORT": "api-gw:8000",
        "KONG_HTTPS_PORT": "api-gw:8443",
        "POOLER_PROXY_PORT_TRANSACTION": "supavisor:6543",
    }
    assert "POSTGRES_PORT" not in variables  # also Postgres's port inside the network
    assert role_port_key(new, ["mail"], "gateway") == "api-gw:8000"
    assert role_port_key(new, ["mail"], "studio") is None  # Studio: through the gateway
    assert role_port_key(new, ["mail"], "mail") == "mail:8025"
    assert role_port_key(new, [], "pooler") == "supavisor:5432"
    assert role_port_key(new, [], "mail") is None
    assert role_port_key(new, [], "db") is None  # Postgres itself publishes nothing
    old = TemplateFiles(FIXTURES / "2025-07-15")
    assert role_port_key(old, [], "gateway") == "kong:8000"
    assert needed_ports(old, []) == [
        "analytics:4000",
        "kong:8000",
        "kong:8443",
        "supavisor:5432",
        "supavisor:6543",
    ]


def test_port_variable_also_used_inside_is_left_alone(tmp_path):
    (tmp_path / "docker-compose.yml").write_text(
        "services:\n  web:\n    image: busybox\n    ports:\n"
        "      - ${WEB_PORT:-3000}:${WEB_PORT:-3000}\n      - ${ADMIN_PORT}:9000\n"
    )
    (tmp_path / ".env.example").write_text("WEB_PORT=3000\nADMIN_PORT=9000\n")
    assert host_port_variables(TemplateFiles(tmp_path), []) == {"ADMIN_PORT": "web:9000"}


def test_port_variables_reflect_host_ports(tmp_path):
    template = TemplateFiles(FIXTURES / "v0.8.2")
    settings = _settings(tmp_path)
    record, folder = _create(settings, template, "pv", ["kong"], set())
    env = EnvFile.parse((folder / ".env").read_text())
    assert env.get("API_GW_HTTP_PORT") == str(record.ports["api-gw:8000"])
    assert env.get("KONG_HTTPS_PORT") == str(record.ports["api-gw:8443"])
    assert env.get("POSTGRES_PORT") == "5432"


@pytest.mark.parametrize("memory", ["lots", "0m", "12x", "-1g", "1k"])
def test_bad_memory_is_refused(tmp_path, memory):
    template = TemplateFiles(FIXTURES / "v0.8.2")
    record = InstanceRecord(name="m", template="v0.8.2", memory=memory)
    with pytest.raises(UsageError, match="memory"):
        render_instance(_settings(tmp_path), record, template)
    assert not (tmp_path / "instances" / "m").exists()


def test_missing_port_allocation_and_bad_overlay(tmp_path):
    template = TemplateFiles(FIXTURES / "v0.8.2")
    with pytest.raises(OperationError, match="no host port allocated"):
        render_instance(_settings(tmp_path), InstanceRecord(name="p", template="v0.8.2"), template)
    with pytest.raises(UsageError, match="unknown overlay"):
        render_instance(
            _settings(tmp_path),
            InstanceRecord(name="p", template="v0.8.2", overlays=["nope"]),
            template,
        )


# --- ports --------------------------------------------------------------------------------------


def _free_range(size: int) -> tuple[int, int]:
    for low in range(24000, 29000, 50):
        if all(port_alloc.host_port_free(p) for p in range(low, low + size)):
            return low, low + size - 1
    pytest.skip("no free port block")


def test_allocate_lowest_free_skipping_used_and_bound():
    low, high = _free_range(10)
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", low + 1))
        busy.listen()
        got = port_alloc.allocate(["a:1", "b:2", "c:3"], {}, {low}, (low, high))
    assert got == {"a:1": low + 2, "b:2": low + 3, "c:3": low + 4}


def test_allocate_requested_ports():
    low, high = _free_range(10)
    got = port_alloc.allocate(
        ["api-gw:8000", "api-gw:8443", "db:5432"],
        {"api-gw": high, "db:5432": high - 1},
        set(),
        (low, high),
    )
    assert got == {"api-gw:8000": high, "api-gw:8443": low, "db:5432": high - 1}
    with pytest.raises(UsageError, match=f"port {low} .*another instance"):
        port_alloc.allocate(["a:1"], {"a": low}, {low}, (low, high))
    with socket.socket() as busy:
        busy.bind(("0.0.0.0", low + 5))
        busy.listen()
        with pytest.raises(UsageError, match=f"port {low + 5} .*in use on this host"):
            port_alloc.allocate(["a:1"], {"a:1": low + 5}, set(), (low, high))
    with pytest.raises(UsageError, match="no such port"):
        port_alloc.allocate(["a:1"], {"a:2": low}, set(), (low, high))
    with pytest.raises(UsageError, match="no service 'zz'"):
        port_alloc.allocate(["a:1"], {"zz": low}, set(), (low, high))


def test_allocate_exhausted_range():
    low, high = _free_range(3)
    with pytest.raises(UsageError, match=f"no free host port left in the range {low}-{high}"):
        port_alloc.allocate(["a:1", "b:1", "c:1"], {}, {low}, (low, high))


def test_requested_from_options():
    assert port_alloc.requested_from_options(["api-gw=20000", "supavisor:6543=20001"]) == {
        "api-gw": 20000,
        "supavisor:6543": 20001,
    }
    for bad in ["api-gw", "=1", "api-gw=port", "api-gw:x=1", "a=70000", "a b=1"]:
        with pytest.raises(UsageError):
            port_alloc.requested_from_options([bad])
    with pytest.raises(UsageError, match="twice"):
        port_alloc.requested_from_options(["a=1", "a=2"])


def test_rewrite_vector_merges_existing_label_filters():
    from controller.render import rewrite_vector

    text = (
        "sources:\n  logs:\n    type: docker_logs  # all containers\n"
        "    include_labels: ['team=x']\n    exclude_containers: [supabase-vector]\n"
        "transforms:\n  r:\n    route:\n      a: '.appname == \"supabase-auth\"'\n"
        "      rt: '.appname == \"realtime-dev.supabase-realtime\"'\n"
    )
    out = load_yaml(rewrite_vector(text, "shop", {"supabase-auth": "shop-auth"}))
    assert out["sources"]["logs"]["include_labels"] == ["team=x", "com.docker.compose.project=shop"]
    assert out["sources"]["logs"]["exclude_containers"] == ["shop-vector"]
    assert out["transforms"]["r"]["route"] == {
        "a": '.appname == "shop-auth"',
        "rt": '.appname == "shop-realtime"',
    }
