"""The Caddy adapter against a real Caddy on loopback: routing, basic auth, snippets surviving
restart and reload, Caddy down, concurrent writers, WebSockets across changes, metrics."""

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import bcrypt
import httpx
import pytest

from controller.caddy import (
    SiteSpec,
    apply_instance,
    remove_instance,
    remove_snippet,
    requests_per_host,
    site_addresses,
    status,
    studio_password_hash,
    sync,
    write_snippet,
)
from controller.caddy import snippets as snippets_module
from controller.caddy.routes import BIND_ENV
from controller.config import Settings
from controller.errors import CaddyUnavailable, OperationError
from tests.caddyworld import Backend, EchoWebSocket
from tests.world.caddy import CaddyProcess

pytestmark = pytest.mark.caddy

DOMAIN = "sbm.test"
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _loopback_only(monkeypatch):
    # A server the adapter has to create (empty Caddy) binds loopback only in tests.
    monkeypatch.setenv(BIND_ENV, "127.0.0.1")


@pytest.fixture
def cw(caddy: CaddyProcess) -> CaddyProcess:
    """conftest's shared ``caddy`` fixture (tests.world.caddy.CaddyProcess)."""
    return caddy


@pytest.fixture
def settings(cw):
    return settings_for(cw)


def settings_for(world) -> Settings:
    return Settings(
        root=Path(world.snippet_dir).parent,
        domain=DOMAIN,
        scheme="http",
        public_port=world.http_port,
        caddy_admin=world.admin_url,
    )


_HASHES: dict[str, str] = {}


def quick_hash(password: str) -> str:
    if password not in _HASHES:
        _HASHES[password] = bcrypt.hashpw(password.encode(), bcrypt.gensalt(4)).decode()
    return _HASHES[password]


class Instance:
    def __init__(self, settings: Settings, name: str, mail: bool = True, api=None) -> None:
        self.name = name
        self.api = api or Backend(name, "api")
        self.studio = Backend(name, "studio")
        self.mail = Backend(name, "mail") if mail else None
        hosts = settings.hosts(name)
        if not mail:
            del hosts["mail"]
        self.hosts = hosts
        self.password = f"pw-{name}"
        self.spec = SiteSpec(
            name=name,
            hosts=hosts,
            api_upstream=self.api.upstream,
            studio_upstream=self.studio.upstream,
            studio_user="supabase",
            studio_password_hash=quick_hash(self.password),
            mail_upstream=self.mail.upstream if self.mail else None,
        )

    def close(self) -> None:
        for backend in (self.api, self.studio, self.mail):
            if backend is not None:
                backend.close()


@pytest.fixture
def make(settings):
    made: list[Instance] = []

    def factory(name: str, **kwargs) -> Instance:
        inst = Instance(settings, name, **kwargs)
        made.append(inst)
        return inst

    yield factory
    for inst in made:
        inst.close()


def get(world: CaddyProcess, host: str, auth=None, path: str = "/") -> httpx.Response:
    return world.get(host, path, auth=auth)


def served_by(world, host: str, auth=None) -> tuple[str, str] | None:
    response = get(world, host, auth)
    if response.status_code != 200 or not response.content:
        return None
    body = response.json()
    return body["instance"], body["role"]


def publish(settings, inst: Instance) -> None:
    apply_instance(settings, inst.spec)
    write_snippet(settings, inst.spec)


def live_routes(world: CaddyProcess) -> list[dict]:
    """The routes of every server (CaddyProcess.routes() reads only the "supabase" one)."""
    config = world.admin("GET", "/config/").json() or {}
    servers = config.get("apps", {}).get("http", {}).get("servers", {})
    return [r for s in servers.values() for r in s.get("routes", [])]


def hosts_routed(world) -> list[str]:
    """Every host named by a top-level route (a host routed twice shows up twice)."""
    return [h for r in live_routes(world) for m in r.get("match", []) for h in m.get("host", [])]


def live_ids(world) -> list[str]:
    return sorted(r["@id"] for r in live_routes(world) if "@id" in r)


# --- through the listener ------------------------------------------------------------------------
def test_hosts_reach_their_own_instance_and_studio_needs_basic_auth(cw, settings, make):
    a, b = make("alpha"), make("beta", mail=False)
    publish(settings, a)
    publish(settings, b)

    assert served_by(cw, f"alpha.{DOMAIN}") == ("alpha", "api")
    assert served_by(cw, f"beta.{DOMAIN}") == ("beta", "api")
    assert served_by(cw, f"alpha-mail.{DOMAIN}") == ("alpha", "mail")
    assert served_by(cw, f"beta-mail.{DOMAIN}") is None  # beta has no mail catcher

    studio = f"alpha-studio.{DOMAIN}"
    assert get(cw, studio).status_code == 401
    assert get(cw, studio, auth=("supabase", "wrong")).status_code == 401
    assert get(cw, studio, auth=("supabase", b.password)).status_code == 401
    assert served_by(cw, studio, auth=("supabase", a.password)) == ("alpha", "studio")
    assert served_by(cw, f"beta-studio.{DOMAIN}", auth=("supabase", b.password)) == (
        "beta",
        "studio",
    )

    # Each backend saw only its own instance's host.
    assert set(a.api.seen) == {f"alpha.{DOMAIN}"} and set(b.api.seen) == {f"beta.{DOMAIN}"}
    assert set(a.studio.seen) == {studio}
    assert set(b.studio.seen) == {f"beta-studio.{DOMAIN}"}
    # One route per instance, with its id.
    assert live_ids(cw) == ["sbm-alpha", "sbm-beta"]
    assert len(live_routes(cw)) == 2

    snippet = settings.snippet_path("alpha")
    assert snippet.stat().st_mode & 0o777 == 0o640
    assert snippet.parent.stat().st_mode & 0o777 == 0o750
    text = snippet.read_text()
    assert f"http://alpha.{DOMAIN}:{cw.http_port}" in text
    assert "basic_auth" in text and "stream_close_delay 10m" in text

    st = status(settings, {"alpha": a.spec, "beta": b.spec})
    assert st["reachable"] and st["metrics_per_host"]
    assert st["instances"] == {"alpha": "ok", "beta": "ok"} and st["extra"] == []
    assert st["snippets"] == {"alpha": "ok", "beta": "ok"}


def test_apply_is_idempotent_and_updates_in_place(cw, settings, make):
    a, b = make("one"), make("two")
    publish(settings, a)
    publish(settings, b)
    before = cw.admin("GET", "/config/").headers["Etag"]
    apply_instance(settings, a.spec)  # nothing changed: no request at all
    assert cw.admin("GET", "/config/").headers["Etag"] == before

    other = Backend("one", "api-v2")
    try:
        apply_instance(settings, SiteSpec(**{**_fields(a.spec), "api_upstream": other.upstream}))
        assert served_by(cw, f"one.{DOMAIN}") == ("one", "api-v2")
        assert live_ids(cw) == ["sbm-one", "sbm-two"]
        assert [r["@id"] for r in live_routes(cw)] == ["sbm-one", "sbm-two"]  # kept its place
        assert status(settings, {"one": a.spec, "two": b.spec})["instances"]["one"] == "stale"
    finally:
        other.close()


def _fields(spec: SiteSpec) -> dict:
    return {
        "name": spec.name,
        "hosts": dict(spec.hosts),
        "api_upstream": spec.api_upstream,
        "studio_upstream": spec.studio_upstream,
        "studio_user": spec.studio_user,
        "studio_password_hash": spec.studio_password_hash,
        "mail_upstream": spec.mail_upstream,
    }


def test_routes_go_before_a_catch_all(cw, settings, make):
    a = make("first")
    apply_instance(settings, a.spec)
    server = status(settings, {})["server"]
    response = cw.admin(
        "POST",
        f"/config/apps/http/servers/{server}/routes",
        json={"handle": [{"handler": "static_response", "body": "catch-all"}]},
    )
    assert response.status_code == 200, response.text
    b = make("second")
    apply_instance(settings, b.spec)
    assert served_by(cw, f"second.{DOMAIN}") == ("second", "api")
    assert get(cw, f"nobody.{DOMAIN}").text == "catch-all"
    assert [r.get("@id") for r in live_routes(cw)] == ["sbm-first", "sbm-second", None]


# --- remove --------------------------------------------------------------------------------------
def test_remove_withdraws_the_hosts_and_the_snippet(cw, settings, make):
    a, b = make("gone"), make("stays")
    publish(settings, a)
    publish(settings, b)
    remove_instance(settings, "gone")
    remove_snippet(settings, "gone")

    seen = len(a.api.seen)
    assert served_by(cw, f"gone.{DOMAIN}") is None
    assert served_by(cw, f"gone-studio.{DOMAIN}", auth=("supabase", a.password)) is None
    assert len(a.api.seen) == seen
    assert served_by(cw, f"stays.{DOMAIN}") == ("stays", "api")
    assert not settings.snippet_path("gone").exists()
    assert live_ids(cw) == ["sbm-stays"]
    remove_instance(settings, "gone")  # again: nothing to do, no error
    remove_snippet(settings, "gone")
    # After a reload nothing of it comes back either.
    cw.reload()
    assert served_by(cw, f"gone.{DOMAIN}") is None
    assert served_by(cw, f"stays.{DOMAIN}") == ("stays", "api")


def test_remove_also_strips_id_less_copies(cw, settings, make):
    a, b = make("copy"), make("other")
    publish(settings, a)
    publish(settings, b)
    cw.reload()  # routes come back from the snippets without ids
    assert live_ids(cw) == []
    remove_instance(settings, "copy")
    assert served_by(cw, f"copy.{DOMAIN}") is None
    assert served_by(cw, f"other.{DOMAIN}") == ("other", "api")
    assert f"copy.{DOMAIN}" not in hosts_routed(cw)


# --- restart, reload, sync -----------------------------------------------------------------------
def _check_all_served(cw, instances) -> None:
    for inst in instances:
        assert served_by(cw, inst.hosts["api"]) == (inst.name, "api")
        assert get(cw, inst.hosts["studio"]).status_code == 401
        assert served_by(cw, inst.hosts["studio"], auth=("supabase", inst.password)) == (
            inst.name,
            "studio",
        )
        if inst.mail:
            assert served_by(cw, inst.hosts["mail"]) == (inst.name, "mail")


def test_restart_and_reload_serve_from_snippets_and_sync_restores_ids(cw, settings, make):
    instances = [make("red"), make("green", mail=False), make("blue")]
    for inst in instances:
        publish(settings, inst)
    specs = {i.name: i.spec for i in instances}

    for bounce in (cw.restart, cw.reload):
        bounce()
        _check_all_served(cw, instances)
        assert live_ids(cw) == []  # Caddyfile routes carry no ids
        assert set(status(settings, specs)["instances"].values()) == {"missing"}

        lines = sync(settings, specs)
        assert any("routed" in line for line in lines)
        assert live_ids(cw) == ["sbm-blue", "sbm-green", "sbm-red"]
        hosts = hosts_routed(cw)
        assert len(hosts) == len(set(hosts)) == 8  # no host routed twice
        _check_all_served(cw, instances)
        assert set(status(settings, specs)["instances"].values()) == {"ok"}
        assert sync(settings, specs) == ["nothing to do: Caddy and the snippets match"]


def test_sync_removes_extra_instances_and_writes_missing_snippets(cw, settings, make):
    a, b = make("keep"), make("drop")
    publish(settings, a)
    publish(settings, b)
    settings.snippet_path("keep").unlink()

    st = status(settings, {"keep": a.spec})
    assert st["extra"] == ["drop"] and st["extra_snippets"] == ["drop"]
    assert st["snippets"] == {"keep": "missing"}

    lines = sync(settings, {"keep": a.spec})
    assert any("removed route sbm-drop" in line for line in lines)
    assert settings.snippet_path("keep").exists()
    assert not settings.snippet_path("drop").exists()
    assert live_ids(cw) == ["sbm-keep"]
    assert served_by(cw, f"drop.{DOMAIN}") is None

    # ``only`` limits the work to one instance.
    c = make("third")
    apply_instance(settings, c.spec)
    assert sync(settings, {"keep": a.spec}, only="keep") == [
        "nothing to do: Caddy and the snippets match"
    ]
    assert live_ids(cw) == ["sbm-keep", "sbm-third"]


# --- Caddy down ----------------------------------------------------------------------------------
def test_caddy_down_then_drift_is_reported_and_synced(cw, settings, make):
    a, b = make("early"), make("late")
    publish(settings, a)
    cw.stop()
    try:
        with pytest.raises(CaddyUnavailable):
            apply_instance(settings, b.spec)
        with pytest.raises(CaddyUnavailable):
            remove_instance(settings, "early")
        notes: list[str] = []
        path = write_snippet(settings, b.spec, notes)
        assert path.exists() and notes and "without validation" in notes[0]
        st = status(settings, {"early": a.spec, "late": b.spec})
        assert st["reachable"] is False
        assert st["instances"] == {"early": "unknown", "late": "unknown"}
        with pytest.raises(CaddyUnavailable):
            requests_per_host(settings)
    finally:
        cw.start()

    specs = {"early": a.spec, "late": b.spec}
    _check_all_served(cw, [a, b])  # from the snippets
    assert status(settings, specs)["instances"] == {"early": "missing", "late": "missing"}
    sync(settings, specs)
    assert status(settings, specs)["instances"] == {"early": "ok", "late": "ok"}
    assert live_ids(cw) == ["sbm-early", "sbm-late"]
    _check_all_served(cw, [a, b])


# --- concurrency ---------------------------------------------------------------------------------
_WORKER = """
import json, sys, time
from pathlib import Path
from controller.caddy import SiteSpec, apply_instance
from controller.config import Settings
args = json.loads(sys.argv[1])
settings = Settings(root=Path(args["root"]), domain=args["domain"], scheme="http",
                    public_port=args["port"], caddy_admin=args["admin"])
spec = SiteSpec(**args["spec"])
while time.time() < args["at"]:
    time.sleep(0.001)
apply_instance(settings, spec)
"""


def test_eight_processes_apply_at_once_and_nothing_is_lost(cw, settings, make):
    shared = make("shared")
    apply_instance(settings, shared.spec)
    instances = [make(f"p{i}", mail=False) for i in range(8)]
    start_at = time.time() + 1.5
    procs = []
    for inst in instances:
        args = {
            "root": str(settings.root),
            "domain": DOMAIN,
            "port": settings.public_port,
            "admin": settings.caddy_admin,
            "spec": _fields(inst.spec),
            "at": start_at,
        }
        procs.append(
            subprocess.Popen(
                [sys.executable, "-c", _WORKER, json.dumps(args)],
                cwd=REPO,
                stderr=subprocess.PIPE,
                text=True,
            )
        )
    for proc in procs:
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err
    assert live_ids(cw) == sorted(["sbm-shared"] + [f"sbm-{i.name}" for i in instances])
    for inst in instances:
        assert served_by(cw, inst.hosts["api"]) == (inst.name, "api")
    hosts = hosts_routed(cw)
    assert len(hosts) == len(set(hosts))


# --- WebSockets ----------------------------------------------------------------------------------
def test_websocket_stays_open_while_other_instances_change(cw, settings, make):
    from websockets.sync.client import connect

    echo = EchoWebSocket()
    try:
        ws_inst = make("live", api=echo)
        apply_instance(settings, ws_inst.spec)
        sock = socket.create_connection(("127.0.0.1", cw.http_port), timeout=10)
        with connect(f"ws://live.{DOMAIN}:{cw.http_port}/realtime", sock=sock) as ws:
            ws.send("hello")
            assert ws.recv(timeout=5) == "hello"
            other = make("churn")
            apply_instance(settings, other.spec)
            assert served_by(cw, f"churn.{DOMAIN}") == ("churn", "api")
            ws.send("after apply")
            assert ws.recv(timeout=5) == "after apply"
            remove_instance(settings, "churn")
            ws.send("after remove")
            assert ws.recv(timeout=5) == "after remove"
    finally:
        echo.close()


# --- snippets ------------------------------------------------------------------------------------
def test_a_snippet_caddy_rejects_never_replaces_a_good_one(cw, settings, make, monkeypatch):
    a = make("safe")
    path = write_snippet(settings, a.spec)
    good = path.read_text()

    def broken(settings, spec):
        return good.replace("stream_close_delay", "stream_close_delay_typo")

    monkeypatch.setattr(snippets_module, "render_snippet", broken)
    changed = Instance(settings, "safe")
    try:
        with pytest.raises(OperationError, match="rejects"):
            write_snippet(settings, changed.spec)
    finally:
        changed.close()
    assert path.read_text() == good
    assert [p.name for p in path.parent.iterdir()] == ["safe.conf"]  # no temp file left
    monkeypatch.undo()
    monkeypatch.setenv(BIND_ENV, "127.0.0.1")
    cw.reload()
    assert served_by(cw, f"safe.{DOMAIN}") == ("safe", "api")


def test_snippet_adapts_to_the_same_route_shape(cw, settings, make):
    a = make("shape")
    text = snippets_module.render_snippet(settings, a.spec)
    adapted = cw.admin(
        "POST", "/adapt", content=text, headers={"Content-Type": "text/caddyfile"}
    ).json()["result"]
    (server,) = adapted["apps"]["http"]["servers"].values()
    (route,) = server["routes"]
    assert set(route["match"][0]["host"]) == set(a.hosts.values())
    dumped = json.dumps(route)
    assert '"hash_cache": {}' in dumped and '"stream_close_delay": 600000000000' in dumped


def test_snippet_claiming_another_instances_address_is_refused(settings, make):
    a = make("dup")
    write_snippet(settings, a.spec)
    clash = SiteSpec(**{**_fields(a.spec), "name": "dup2"})
    with pytest.raises(OperationError, match="already defines"):
        write_snippet(settings, clash)
    assert not settings.snippet_path("dup2").exists()


# --- unix socket admin ---------------------------------------------------------------------------
def test_admin_over_a_unix_socket(tmp_path, monkeypatch):
    root = tmp_path / "uroot"
    root.mkdir()
    # No server in the Caddyfile: the adapter creates it, over the socket.
    world = CaddyProcess(root, tmp_path / "caddy-run", unix_socket=True, with_server=False)
    world.start()
    inst = None
    try:
        settings = settings_for(world)
        assert settings.caddy_admin.startswith("unix//")
        inst = Instance(settings, "sock")
        publish(settings, inst)
        assert served_by(world, f"sock.{DOMAIN}") == ("sock", "api")
        assert status(settings, {"sock": inst.spec})["instances"] == {"sock": "ok"}
        world.reload()
        assert served_by(world, f"sock.{DOMAIN}") == ("sock", "api")
        assert status(settings, {"sock": inst.spec})["instances"] == {"sock": "missing"}
        sync(settings, {"sock": inst.spec})
        assert status(settings, {"sock": inst.spec})["instances"] == {"sock": "ok"}
        assert served_by(world, f"sock.{DOMAIN}") == ("sock", "api")
        counts = requests_per_host(settings)
        assert counts is not None and counts.get(f"sock.{DOMAIN}", 0) >= 1
        remove_instance(settings, "sock")
        assert served_by(world, f"sock.{DOMAIN}") is None
    finally:
        world.stop()
        if inst:
            inst.close()


# --- metrics -------------------------------------------------------------------------------------
def test_requests_per_host(cw, settings, make):
    a, b = make("busy"), make("idle")
    publish(settings, a)
    publish(settings, b)
    cw.reload()  # the Caddyfile's global options (metrics per_host) are in force
    for _ in range(5):
        get(cw, f"busy.{DOMAIN}")
    get(cw, f"busy-studio.{DOMAIN}")
    counts = requests_per_host(settings)
    assert counts is not None
    assert counts[f"busy.{DOMAIN}"] == 5
    assert counts[f"busy-studio.{DOMAIN}"] == 1
    assert counts.get(f"idle.{DOMAIN}", 0) == 0
    assert cw.admin("DELETE", "/config/apps/http/metrics").status_code == 200
    assert requests_per_host(settings) is None
    assert status(settings, {})["metrics_per_host"] is False


# --- the Studio password hash --------------------------------------------------------------------
def test_studio_password_hash_is_cached_and_follows_the_password(tmp_path):
    cache = tmp_path / "inst" / "studio.bcrypt"
    first = studio_password_hash(cache, "s3cret")
    assert bcrypt.checkpw(b"s3cret", first.encode())
    assert cache.stat().st_mode & 0o777 == 0o600
    assert studio_password_hash(cache, "s3cret") == first
    second = studio_password_hash(cache, "other")
    assert second != first and bcrypt.checkpw(b"other", second.encode())
    # A cache holding only the hash (no fingerprint) is checked with bcrypt and kept.
    cache.write_text(second + "\n")
    assert studio_password_hash(cache, "other") == second
    assert "s3cret" not in cache.read_text() and "other" not in cache.read_text()


def test_site_addresses_leave_out_the_default_port(make):
    spec = make("addr").spec
    https = Settings(domain=DOMAIN, scheme="https", public_port=443)
    assert site_addresses(https, spec)[0] == f"https://addr.{DOMAIN}"
    http80 = Settings(domain=DOMAIN, scheme="http", public_port=80)
    assert site_addresses(http80, spec)[1] == f"http://addr-studio.{DOMAIN}"
    odd = Settings(domain=DOMAIN, scheme="https", public_port=8443)
    assert site_addresses(odd, spec) == [
        f"https://addr.{DOMAIN}:8443",
        f"https://addr-studio.{DOMAIN}:8443",
        f"https://addr-mail.{DOMAIN}:8443",
    ]


def test_bad_spec_is_refused_before_caddy_is_asked(settings, make):
    spec = make("bad").spec
    evil = SiteSpec(**{**_fields(spec), "studio_user": 'x" {'})
    with pytest.raises(OperationError):
        apply_instance(settings, evil)
    with pytest.raises(OperationError):
        write_snippet(settings, evil)
    assert not settings.snippet_path("bad").exists()
    assert not os.path.exists(settings.caddy_dir / "bad.conf")


def test_rates_survive_a_counter_reset():
    from controller.caddy.metrics import parse_requests, rates

    text = (
        "# TYPE caddy_http_requests_total counter\n"
        'caddy_http_requests_total{handler="subroute",host="a.x",server="supabase"} 7\n'
        'caddy_http_requests_total{handler="subroute",host="b.x",server="other"} 2\n'
        'caddy_http_requests_total{handler="subroute",host="b.x",server="supabase"} 3\n'
        'caddy_admin_http_requests_total{handler="admin",path="/config/"} 9\n'
    )
    assert parse_requests(text) == {"a.x": 7.0, "b.x": 5.0}
    assert rates({"a.x": 5.0, "b.x": 9.0}, {"a.x": 7.0, "b.x": 4.0}, 2.0) == {
        "a.x": 1.0,
        "b.x": 2.0,
    }


def test_sync_does_what_it_can_and_then_reports_a_foreign_route(cw, settings, make):
    mine, other = make("mine"), make("other")
    apply_instance(settings, mine.spec)  # the server's route list exists from here on
    server = status(settings, {})["server"]
    route = {
        "@id": "manual",
        "match": [{"host": [f"other.{DOMAIN}"]}],
        "handle": [{"handler": "static_response", "body": "manual"}],
    }
    response = cw.admin("POST", f"/config/apps/http/servers/{server}/routes", json=route)
    assert response.status_code == 200, response.text
    with pytest.raises(OperationError, match=r"not routed.*manual"):
        sync(settings, {"mine": mine.spec, "other": other.spec})
    assert served_by(cw, f"mine.{DOMAIN}") == ("mine", "api")
    assert get(cw, f"other.{DOMAIN}").text == "manual"
    assert settings.snippet_path("other").exists()
    assert status(settings, {"other": other.spec})["instances"] == {"other": "missing"}


def test_sync_with_caddy_down_still_writes_the_snippets(cw, settings, make):
    a = make("offline")
    cw.stop()
    try:
        with pytest.raises(CaddyUnavailable, match="snippets are up to date"):
            sync(settings, {"offline": a.spec})
        assert settings.snippet_path("offline").exists()
    finally:
        cw.start()
    assert served_by(cw, f"offline.{DOMAIN}") == ("offline", "api")


def test_sync_drops_the_live_copy_of_a_deleted_instances_snippet(cw, settings, make):
    a, b = make("alive"), make("deleted")
    publish(settings, a)
    publish(settings, b)
    cw.reload()  # both come back without ids
    lines = sync(settings, {"alive": a.spec})
    assert "removed snippet deleted.conf (no such instance)" in lines
    assert served_by(cw, f"deleted.{DOMAIN}") is None
    assert f"deleted.{DOMAIN}" not in hosts_routed(cw)
    assert live_ids(cw) == ["sbm-alive"]


def test_a_cost_12_hash_from_the_cache_works_in_caddy(cw, settings, make):
    a = make("real")
    hashed = studio_password_hash(settings.root / "instances" / "real" / ".studio-hash", "Real-Pw")
    spec = SiteSpec(**{**_fields(a.spec), "studio_password_hash": hashed})
    apply_instance(settings, spec)
    write_snippet(settings, spec)
    host = f"real-studio.{DOMAIN}"
    assert get(cw, host, auth=("supabase", "real-pw")).status_code == 401
    assert served_by(cw, host, auth=("supabase", "Real-Pw")) == ("real", "studio")
    # Same password, same hash: nothing to change after a reload + sync but the ids.
    again = studio_password_hash(settings.root / "instances" / "real" / ".studio-hash", "Real-Pw")
    assert again == hashed
    cw.reload()
    assert served_by(cw, host, auth=("supabase", "Real-Pw")) == ("real", "studio")
    assert sync(settings, {"real": spec}) == [
        f"routed real.{DOMAIN}, {host}, real-mail.{DOMAIN} (sbm-real)"
    ]
