"""Instances published through the real Caddy: create, delete, Caddy down, concurrent creates,
who can reach Studio and mail, a site the operator already serves, `caddy sync` racing other
commands, and `caddy status` as a read.

The instances run the stand-in images (tests/world/standin.py) because Supabase's own images cannot
be pulled here; Caddy, Docker and compose are the real programs. The stand-in gateway answers every
path itself: the real one (Kong, Envoy) serves Studio at `/` behind basic auth with the dashboard
credentials, which these tests cannot exercise.
"""

import json

import httpx
import pytest

from controller.fsutil import file_lock
from tests.test_lifecycle import World
from tests.world.caddy import route_id

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
    return sorted(r["@id"] for s in servers.values() for r in s.get("routes", []) if "@id" in r)


def test_instances_are_served_on_their_own_hosts(world, docker_client):
    made = world.create_at_once(["red", "blue"], "v0.8.2", overlays={"red": ("mail",)})
    assert [status for status, _ in made] == [0, 0], made

    assert _get(world, "red.sbm.test").text.strip() == "standin api-gw of red"
    assert _get(world, "blue.sbm.test").text.strip() == "standin api-gw of blue"
    assert _get(world, "blue-mail.sbm.test").text == ""  # no mail overlay, no mail host

    user = _env(world, "red", "DASHBOARD_USERNAME")
    password = _env(world, "red", "DASHBOARD_PASSWORD")
    blue_password = _env(world, "blue", "DASHBOARD_PASSWORD")
    for host in ("red-studio.sbm.test", "red-mail.sbm.test"):
        assert _get(world, host).status_code == 401
        assert _get(world, host, auth=(user, "wrong")).status_code == 401
        assert _get(world, host, auth=(user, blue_password)).status_code == 401
    # Studio is reached through the gateway (which asks for the same credentials).
    studio = _get(world, "red-studio.sbm.test", auth=(user, password))
    assert studio.status_code == 200 and studio.text.strip() == "standin api-gw of red"
    mail = _get(world, "red-mail.sbm.test", auth=(user, password))
    assert mail.status_code == 200 and mail.text.strip() == "standin mail of red"

    # No host port leads to Studio; Mailpit's own UI asks for the dashboard credentials.
    assert not [k for k in world.state()["instances"]["red"]["ports"] if k.startswith("studio:")]
    detail = world.json("show", "red")
    names = {c["service"]: c["name"] for c in detail["containers"]}
    studio_ports = docker_client.containers.get(names["studio"]).attrs["HostConfig"]["PortBindings"]
    assert not studio_ports
    mail_env = docker_client.containers.get(names["mail"]).attrs["Config"]["Env"]
    assert f"MP_UI_AUTH={user}:{password}" in mail_env
    shown = world.run("show", "red").stdout
    assert "studio and mail ask for DASHBOARD_USERNAME / DASHBOARD_PASSWORD" in shown

    # Rates come from two samples: the requests above, made before, are no rate.
    assert detail["requests"] and set(detail["requests"].values()) == {0.0}

    snippet = world.root / "caddy" / "red.conf"
    assert snippet.is_file() and oct(snippet.stat().st_mode & 0o777) == "0o640"
    assert password not in snippet.read_text()

    world.run("delete", "red", "--purge", "--yes")
    assert not snippet.exists()
    assert _get(world, "red.sbm.test").text == ""
    assert _get(world, "blue.sbm.test").text.strip() == "standin api-gw of blue"
    assert _live_ids(world) == [route_id(world.root, "blue")]


def test_caddy_down_during_create_then_sync_and_status_exits_1(world):
    world.caddy.stop()
    with pytest.raises(AssertionError, match="late was created, but Caddy's admin API"):
        world.create("late", "v0.8.2", "--no-start")  # exit 1: its routes are pending
    assert (world.root / "caddy" / "late.conf").is_file()
    status = world.run("--json", "caddy", "status", check=False)
    assert status.returncode == 1
    assert json.loads(status.stdout)["reachable"] is False
    assert status.stderr.startswith("supabase-manager: Caddy admin API at ")
    world.caddy.start()
    # Caddy started from its Caddyfile serves the snippet, but without the live id.
    status = world.json("caddy", "status")
    assert status["reachable"] is True
    assert status["instances"]["late"] == "stale"
    world.run("caddy", "sync")
    status = world.json("caddy", "status")
    assert status["instances"]["late"] == "ok"
    assert _live_ids(world) == [route_id(world.root, "late")]


def test_caddy_status_is_a_read_and_writes_nothing(world):
    world.create("quiet", "v0.8.2", "--no-start")
    cache = world.root / "instances" / "quiet" / ".studio-auth"
    cache.unlink()
    before = sorted(p.relative_to(world.root) for p in world.root.rglob("*"))
    status = world.json("caddy", "status")
    assert status["instances"] == {"quiet": "ok"}  # the hash in the snippet still matches
    assert not cache.exists()
    assert sorted(p.relative_to(world.root) for p in world.root.rglob("*")) == before


def test_eight_concurrent_creates_lose_no_route(world):
    for status, err in world.create_at_once([f"par{i}" for i in range(8)], "v0.8.2", "--no-start"):
        assert status == 0, err
        assert "pending" not in err
    assert _live_ids(world) == sorted(route_id(world.root, f"par{i}") for i in range(8))
    assert sorted(p.name for p in (world.root / "caddy").glob("par*.conf")) == [
        f"par{i}.conf" for i in range(8)
    ]
    assert json.loads(world.run("--json", "caddy", "status").stdout)["extra"] == []


def test_create_refuses_a_host_the_operator_already_serves(world):
    """Issue 10 item 3: exit 2 naming the host, nothing written; our own routes never clash."""
    caddy = world.caddy
    caddy.caddyfile.write_text(
        caddy.caddyfile_text()
        + f'\nhttp://shop.sbm.test:{caddy.http_port} {{\n\trespond "the shop"\n}}\n'
    )
    caddy.reload()
    proc = world.run(
        "create", "shop", "--template", "v0.8.2", "--no-start", "--extra-compose",
        str(world.standin("v0.8.2")), check=False,
    )  # fmt: skip
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip() == (
        "supabase-manager: shop.sbm.test is already served in Caddy by a site of the "
        "Caddyfile, not by instance shop"
    )
    assert "shop" not in world.state()["instances"]
    for path in ("instances/shop", "caddy/shop.conf", "locks/shop.lock"):
        assert not (world.root / path).exists(), path
    assert _get(world, "shop.sbm.test").text == "the shop"


def test_sync_leaves_an_instance_another_command_works_on_alone(world):
    """Item 12: a delete holding the instance's lock has removed its route but not its record
    yet: `caddy sync` must not bring the route back; once the lock is free it converges."""
    world.create("held", "v0.8.2", "--no-start")
    world.caddy.admin("DELETE", f"/id/{route_id(world.root, 'held')}").raise_for_status()
    with file_lock(world.root / "locks" / "held.lock"):
        proc = world.run("caddy", "sync")
        assert "another command is working on them): ['held']" in proc.stdout
        assert _live_ids(world) == []
    world.run("caddy", "sync")
    assert _live_ids(world) == [route_id(world.root, "held")]


def test_a_bad_dashboard_user_is_refused_and_sync_isolates_a_broken_instance(world):
    """Item 14: refused before .env is written (exit 2); a site broken by hand does not make
    `caddy sync` / `caddy status` fail for the others."""
    world.create("fine", "v0.8.2", "--no-start")
    world.create("odd", "v0.8.2", "--no-start")
    env_file = world.root / "instances" / "odd" / ".env"
    before = env_file.read_text()
    proc = world.run("env", "odd", "set", "DASHBOARD_USERNAME=ad min", check=False)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.startswith("supabase-manager: invalid value for DASHBOARD_USERNAME")
    assert env_file.read_text() == before

    lines = [
        'DASHBOARD_USERNAME="ad min"' if line.startswith("DASHBOARD_USERNAME=") else line
        for line in before.splitlines()
    ]
    env_file.write_text("\n".join(lines) + "\n")
    world.caddy.admin("DELETE", f"/id/{route_id(world.root, 'fine')}").raise_for_status()
    proc = world.run("caddy", "sync", check=False)
    assert proc.returncode == 1
    assert proc.stderr.startswith("supabase-manager: left 1 instance(s) as they were, e.g. odd:")
    assert route_id(world.root, "fine") in _live_ids(world)  # the others were synced
    status = world.json("caddy", "status")
    assert status["instances"]["fine"] == "ok"
    assert "odd" in status["skipped"] and "odd" not in status["instances"]
