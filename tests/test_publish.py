"""Instances published through the real Caddy: create, delete, Caddy down, concurrent creates.

The instances run the stand-in images (tests/world/standin.py) because Supabase's own images cannot
be pulled here; Caddy, Docker and compose are the real programs.
"""

import json

import httpx
import pytest

from tests.test_lifecycle import World

pytestmark = pytest.mark.docker


@pytest.fixture
def world(data_root, caddy, docker_sandbox):
    w = World(data_root, caddy)
    w.import_template("v0.8.2")
    return w


def _get(world, host: str, **kwargs) -> httpx.Response:
    return httpx.get(
        f"http://127.0.0.1:{world.caddy.http_port}/",
        headers={"Host": host},
        timeout=10,
        **kwargs,
    )


def _env(world, name: str, key: str) -> str:
    return world.run("env", name, "get", key).stdout.strip()


def _live_ids(world) -> list[str]:
    config = httpx.get(f"{world.caddy.admin_url}/config/", timeout=5).json() or {}
    servers = config.get("apps", {}).get("http", {}).get("servers", {})
    return [r["@id"] for s in servers.values() for r in s.get("routes", []) if "@id" in r]


def test_instances_are_served_on_their_own_hosts(world):
    world.create("red", "v0.8.2", overlays=("mail",))
    world.create("blue", "v0.8.2")

    assert "of red" in _get(world, "red.sbm.test").text
    assert "of blue" in _get(world, "blue.sbm.test").text
    assert "of red" in _get(world, "red-mail.sbm.test").text
    assert "standin" not in _get(world, "blue-mail.sbm.test").text  # no mail overlay, no mail host

    user = _env(world, "red", "DASHBOARD_USERNAME")
    password = _env(world, "red", "DASHBOARD_PASSWORD")
    assert _get(world, "red-studio.sbm.test").status_code == 401
    assert _get(world, "red-studio.sbm.test", auth=(user, "wrong")).status_code == 401
    blue_password = _env(world, "blue", "DASHBOARD_PASSWORD")
    assert _get(world, "red-studio.sbm.test", auth=(user, blue_password)).status_code == 401
    studio = _get(world, "red-studio.sbm.test", auth=(user, password))
    assert studio.status_code == 200 and "studio of red" in studio.text

    # Caddy's per-host metrics count what just went through (the counters restart on each load).
    requests = world.json("show", "red")["requests"]
    assert requests.get("red.sbm.test", 0) >= 1 and requests.get("red-studio.sbm.test", 0) >= 4

    snippet = world.root / "caddy" / "red.conf"
    assert snippet.is_file() and oct(snippet.stat().st_mode & 0o777) == "0o640"
    assert password not in snippet.read_text()

    world.run("delete", "red", "--purge", "--yes")
    assert not snippet.exists()
    assert "of red" not in _get(world, "red.sbm.test").text
    assert "of blue" in _get(world, "blue.sbm.test").text


def test_caddy_down_during_create_then_sync(world):
    world.caddy.stop()
    proc = world.create("late", "v0.8.2", "--no-start")
    assert "pending" in proc.stderr
    assert (world.root / "caddy" / "late.conf").is_file()
    world.caddy.start()
    # Caddy started from its Caddyfile serves the snippet, but without the live id.
    status = world.json("caddy", "status")
    assert status["reachable"] is True
    assert status["instances"]["late"] != "ok"
    world.run("caddy", "sync")
    status = world.json("caddy", "status")
    assert status["instances"]["late"] == "ok"
    assert _live_ids(world).count("sbm-late") == 1


def test_eight_concurrent_creates_lose_no_route(world):
    for status, err in world.create_at_once([f"par{i}" for i in range(8)], "v0.8.2", "--no-start"):
        assert status == 0, err
        assert "pending" not in err
    ids = _live_ids(world)
    assert sorted(i for i in ids if i.startswith("sbm-par")) == [f"sbm-par{i}" for i in range(8)]
    assert sorted(p.name for p in (world.root / "caddy").glob("par*.conf")) == [
        f"par{i}.conf" for i in range(8)
    ]
    assert json.loads(world.run("--json", "caddy", "status").stdout)["extra"] == []


def test_sync_leaves_an_instance_it_cannot_work_out_alone(world):
    world.create("kept", "v0.8.2", "--no-start")
    snippet = world.root / "caddy" / "kept.conf"
    text = snippet.read_text()
    template = world.root / "templates" / "v0.8.2"
    template.rename(template.with_name("moved-away"))
    try:
        proc = world.run("caddy", "sync", check=False)
        assert proc.returncode == 1 and "kept" in proc.stderr
        assert snippet.read_text() == text
        assert "sbm-kept" in _live_ids(world)
    finally:
        template.with_name("moved-away").rename(template)
    world.run("caddy", "sync")
