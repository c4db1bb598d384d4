"""The Caddy adapter against a real Caddy on loopback: routing, basic auth, snippets surviving
restart and reload, Caddy down, concurrent writers, WebSockets across changes, metrics."""

import json
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import attrs
import bcrypt
import httpx
import pytest

from controller.caddy import (
    Desired,
    SiteSpec,
    apply_instance,
    check_hosts,
    publish,
    remove_instance,
    request_rates,
    site_addresses,
    status,
    studio_password_hash,
    unpublish,
    write_snippet,
)
from controller.caddy import snippets as snippets_module
from controller.caddy.admin import AdminClient
from controller.caddy.config import CaddyConfig
from controller.caddy.routes import HostTaken
from controller.caddy.sync import sync as sync_all
from controller.config import Settings
from controller.errors import CaddyUnavailable, OperationError
from tests.caddyworld import Backend, EchoWebSocket
from tests.world.caddy import CaddyProcess

pytestmark = pytest.mark.caddy

DOMAIN = "sbm.test"
REPO = Path(__file__).resolve().parents[1]
OWNER = "feed0001"


@pytest.fixture
def cw(caddy: CaddyProcess) -> CaddyProcess:
    """conftest's shared ``caddy`` fixture (tests.world.caddy.CaddyProcess)."""
    return caddy


@pytest.fixture
def settings(cw):
    return cfg_for(cw)


def cfg_for(world, owner: str = OWNER, root: Path | None = None) -> CaddyConfig:
    root = root or Path(world.snippet_dir).parent
    return CaddyConfig(
        admin=world.admin_url,
        lock_path=root / ".caddy.lock",
        snippet_dir=root / "caddy",
        scheme="http",
        public_port=world.http_port,
        owner=owner,
        bind="127.0.0.1",  # a server the adapter has to create (empty Caddy) binds loopback
    )


def hosts_of(name: str, domain: str = DOMAIN) -> dict[str, str]:
    return Settings(domain=domain).hosts(name)


def sync(cfg: CaddyConfig, specs: dict, only=None, keep=(), busy=lambda n: False) -> list[str]:
    return sync_all(cfg, lambda: Desired(specs, dict.fromkeys(keep, "kept")), only=only, busy=busy)


_HASHES: dict[str, str] = {}


def quick_hash(password: str) -> str:
    if password not in _HASHES:
        _HASHES[password] = bcrypt.hashpw(password.encode(), bcrypt.gensalt(4)).decode()
    return _HASHES[password]


class Instance:
    def __init__(self, name: str, mail: bool = True, api=None, domain: str = DOMAIN) -> None:
        self.name = name
        self.api = api or Backend(name, "api")
        self.studio = Backend(name, "studio")
        self.mail = Backend(name, "mail") if mail else None
        hosts = hosts_of(name, domain)
        if not mail:
            del hosts["mail"]
        self.hosts = hosts
        self.password = f"pw-{name}"
        self.spec = SiteSpec(
            name=name,
            hosts=hosts,
            api_upstream=self.api.upstream,
            studio_upstream=self.studio.upstream,
            user="supabase",
            password_hash=quick_hash(self.password),
            mail_upstream=self.mail.upstream if self.mail else None,
        )

    def auth(self) -> tuple[str, str]:
        return ("supabase", self.password)

    def backends(self) -> list:
        return [b for b in (self.api, self.studio, self.mail) if b is not None]

    def close(self) -> None:
        close_all(self.backends())


def close_all(backends) -> None:
    for backend in backends:
        backend.close()


@pytest.fixture
def make():
    made: list[Instance] = []

    def factory(name: str, **kwargs) -> Instance:
        inst = Instance(name, **kwargs)
        made.append(inst)
        return inst

    yield factory
    close_all([backend for inst in made for backend in inst.backends()])


def get(world: CaddyProcess, host: str, auth=None, path: str = "/") -> httpx.Response:
    return world.get(host, path, auth=auth)


def served_by(world, host: str, auth=None) -> tuple[str, str] | None:
    response = get(world, host, auth)
    if response.status_code != 200 or not response.content:
        return None
    body = response.json()
    return body["instance"], body["role"]


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


def ids(*names: str, owner: str = OWNER) -> list[str]:
    return sorted(f"sbm-{owner}-{n}" for n in names)


# --- through the listener ------------------------------------------------------------------------
def test_hosts_reach_their_own_instance_and_studio_and_mail_need_basic_auth(cw, settings, make):
    a, b = make("alpha"), make("beta", mail=False)
    assert publish(settings, a.spec) == [] and publish(settings, b.spec) == []

    assert served_by(cw, f"alpha.{DOMAIN}") == ("alpha", "api")
    assert served_by(cw, f"beta.{DOMAIN}") == ("beta", "api")
    assert served_by(cw, f"beta-mail.{DOMAIN}", auth=b.auth()) is None  # no mail catcher

    for role in ("studio", "mail"):
        host = f"alpha-{role}.{DOMAIN}"
        assert get(cw, host).status_code == 401
        assert get(cw, host, auth=("supabase", "wrong")).status_code == 401
        assert get(cw, host, auth=b.auth()).status_code == 401  # another instance's password
        assert served_by(cw, host, auth=a.auth()) == ("alpha", role)
    assert served_by(cw, f"beta-studio.{DOMAIN}", auth=b.auth()) == ("beta", "studio")
    assert a.mail.seen == [f"alpha-mail.{DOMAIN}"]  # only the authenticated request got through

    # Each backend saw only its own instance's host.
    assert set(a.api.seen) == {f"alpha.{DOMAIN}"} and set(b.api.seen) == {f"beta.{DOMAIN}"}
    assert set(a.studio.seen) == {f"alpha-studio.{DOMAIN}"}
    assert set(b.studio.seen) == {f"beta-studio.{DOMAIN}"}
    # One route per instance, with this root's id.
    assert live_ids(cw) == ids("alpha", "beta")
    assert len(live_routes(cw)) == 2

    snippet = settings.snippet_path("alpha")
    assert snippet.stat().st_mode & 0o777 == 0o640
    assert snippet.parent.stat().st_mode & 0o777 == 0o750

    st = status(settings, {"alpha": a.spec, "beta": b.spec})
    assert st["reachable"] and st["metrics_per_host"]
    assert st["instances"] == {"alpha": "ok", "beta": "ok"} and st["extra"] == []
    assert st["snippets"] == {"alpha": "ok", "beta": "ok"}


def test_apply_is_idempotent_and_updates_in_place(cw, settings, make):
    a, b = make("one"), make("two")
    publish(settings, a.spec)
    publish(settings, b.spec)
    before = cw.admin("GET", "/config/").headers["Etag"]
    apply_instance(settings, a.spec)  # nothing changed: no request at all
    assert cw.admin("GET", "/config/").headers["Etag"] == before

    other = Backend("one", "api-v2")
    try:
        apply_instance(settings, attrs.evolve(a.spec, api_upstream=other.upstream))
        assert served_by(cw, f"one.{DOMAIN}") == ("one", "api-v2")
        assert [r["@id"] for r in live_routes(cw)] == ids("one", "two")  # kept its place
        assert status(settings, {"one": a.spec, "two": b.spec})["instances"]["one"] == "stale"
    finally:
        close_all([other])


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
    assert [r.get("@id") for r in live_routes(cw)] == [*ids("first", "second"), None]


# --- remove --------------------------------------------------------------------------------------
def test_unpublish_withdraws_the_hosts_and_the_snippet_also_after_a_reload(cw, settings, make):
    a, b = make("gone"), make("stays")
    publish(settings, a.spec)
    publish(settings, b.spec)
    cw.reload()  # routes come back from the snippets without ids, with our marker
    assert live_ids(cw) == []
    assert unpublish(settings, "gone") == []

    seen = len(a.api.seen)
    assert served_by(cw, f"gone.{DOMAIN}") is None
    assert served_by(cw, f"gone-studio.{DOMAIN}", auth=a.auth()) is None
    assert len(a.api.seen) == seen
    assert served_by(cw, f"stays.{DOMAIN}") == ("stays", "api")
    assert not settings.snippet_path("gone").exists()
    assert sorted(hosts_routed(cw)) == sorted(b.hosts.values())
    assert unpublish(settings, "gone") == []  # again: nothing to do, no error
    cw.reload()
    assert served_by(cw, f"gone.{DOMAIN}") is None
    assert served_by(cw, f"stays.{DOMAIN}") == ("stays", "api")


# --- restart, reload, sync -----------------------------------------------------------------------
def _check_all_served(cw, instances) -> None:
    for inst in instances:
        assert served_by(cw, inst.hosts["api"]) == (inst.name, "api")
        assert get(cw, inst.hosts["studio"]).status_code == 401
        assert served_by(cw, inst.hosts["studio"], auth=inst.auth()) == (inst.name, "studio")
        if inst.mail:
            assert get(cw, inst.hosts["mail"]).status_code == 401
            assert served_by(cw, inst.hosts["mail"], auth=inst.auth()) == (inst.name, "mail")


def test_restart_and_reload_serve_from_snippets_and_sync_restores_ids(cw, settings, make):
    instances = [make("red"), make("green", mail=False), make("blue")]
    for inst in instances:
        publish(settings, inst.spec)
    specs = {i.name: i.spec for i in instances}

    for bounce in (cw.restart, cw.reload):
        bounce()
        _check_all_served(cw, instances)
        assert live_ids(cw) == []  # Caddyfile routes carry no ids
        assert status(settings, specs)["instances"] == dict.fromkeys(specs, "stale")

        lines = sync(settings, specs)
        assert sorted(lines) == sorted(
            f"routed {', '.join(i.hosts.values())} (sbm-{OWNER}-{i.name})" for i in instances
        )
        assert live_ids(cw) == ids("blue", "green", "red")
        hosts = hosts_routed(cw)
        assert len(hosts) == len(set(hosts)) == 8  # no host routed twice
        _check_all_served(cw, instances)
        assert status(settings, specs)["instances"] == dict.fromkeys(specs, "ok")
        assert sync(settings, specs) == ["nothing to do: Caddy and the snippets match"]


def test_sync_removes_extra_instances_and_writes_missing_snippets(cw, settings, make):
    a, b = make("keep"), make("drop")
    publish(settings, a.spec)
    publish(settings, b.spec)
    settings.snippet_path("keep").unlink()

    st = status(settings, {"keep": a.spec})
    assert st["extra"] == ["drop"] and st["extra_snippets"] == ["drop"]
    assert st["snippets"] == {"keep": "missing"}

    lines = sync(settings, {"keep": a.spec})
    assert lines == [
        "removed snippet drop.conf (no such instance)",
        "wrote snippet keep.conf (missing before)",
        f"removed route sbm-{OWNER}-drop",
    ]
    assert settings.snippet_path("keep").exists()
    assert not settings.snippet_path("drop").exists()
    assert live_ids(cw) == ids("keep")
    assert served_by(cw, f"drop.{DOMAIN}") is None

    # ``only`` limits the work to one instance.
    c = make("third")
    apply_instance(settings, c.spec)
    assert sync(settings, {"keep": a.spec}, only="keep") == [
        "nothing to do: Caddy and the snippets match"
    ]
    assert live_ids(cw) == ids("keep", "third")


def test_sync_drops_the_live_copy_of_a_deleted_instances_snippet(cw, settings, make):
    a, b = make("alive"), make("deleted")
    publish(settings, a.spec)
    publish(settings, b.spec)
    cw.reload()  # both come back without ids
    lines = sync(settings, {"alive": a.spec})
    assert lines == [
        "removed snippet deleted.conf (no such instance)",
        f"removed route sbm-{OWNER}-deleted",
        f"routed {', '.join(a.hosts.values())} (sbm-{OWNER}-alive)",
    ]
    assert served_by(cw, f"deleted.{DOMAIN}") is None
    assert f"deleted.{DOMAIN}" not in hosts_routed(cw)
    assert live_ids(cw) == ids("alive")


# --- Caddy down ----------------------------------------------------------------------------------
def test_caddy_down_then_drift_is_reported_and_synced(cw, settings, make):
    a, b = make("early"), make("late")
    publish(settings, a.spec)
    cw.stop()
    try:
        with pytest.raises(CaddyUnavailable):
            apply_instance(settings, b.spec)
        with pytest.raises(CaddyUnavailable):
            remove_instance(settings, "early")
        (note,) = publish(settings, b.spec)
        assert note.startswith("Caddy's live route for late is pending")
        assert settings.snippet_path("late").is_file()
        st = status(settings, {"early": a.spec, "late": b.spec})
        assert st["reachable"] is False
        assert st["instances"] == {"early": "unknown", "late": "unknown"}
        with pytest.raises(CaddyUnavailable):
            request_rates(settings, window=0.01)
        with pytest.raises(CaddyUnavailable, match="snippets are up to date"):
            sync(settings, {"early": a.spec, "late": b.spec})
    finally:
        cw.start()

    specs = {"early": a.spec, "late": b.spec}
    _check_all_served(cw, [a, b])  # from the snippets
    assert status(settings, specs)["instances"] == {"early": "stale", "late": "stale"}
    sync(settings, specs)
    assert status(settings, specs)["instances"] == {"early": "ok", "late": "ok"}
    assert live_ids(cw) == ids("early", "late")
    _check_all_served(cw, [a, b])


# --- concurrency ---------------------------------------------------------------------------------
_WORKER = """
import json, sys, time
from pathlib import Path
from controller.caddy import CaddyConfig, SiteSpec, publish
args = json.loads(sys.argv[1])
cfg = CaddyConfig(**{**args["cfg"], "lock_path": Path(args["cfg"]["lock_path"]),
                     "snippet_dir": Path(args["cfg"]["snippet_dir"])})
spec = SiteSpec(**args["spec"])
while time.time() < args["at"]:
    time.sleep(0.001)
assert publish(cfg, spec) == []
"""


def test_eight_processes_publish_at_once_and_nothing_is_lost(cw, settings, make):
    shared = make("shared")
    apply_instance(settings, shared.spec)
    instances = [make(f"p{i}", mail=False) for i in range(8)]
    start_at = time.time() + 1.5
    procs = []
    plain = {k: str(v) if isinstance(v, Path) else v for k, v in attrs.asdict(settings).items()}
    for inst in instances:
        args = {"cfg": plain, "spec": attrs.asdict(inst.spec), "at": start_at}
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
    assert live_ids(cw) == ids("shared", *[i.name for i in instances])
    for inst in instances:
        assert served_by(cw, inst.hosts["api"]) == (inst.name, "api")
        assert settings.snippet_path(inst.name).is_file()
    hosts = hosts_routed(cw)
    assert len(hosts) == len(set(hosts))


def test_a_publish_during_sync_is_not_lost(cw, settings, make):
    """`caddy sync` decides what is a leftover from the desired state; a create that commits
    and publishes meanwhile must keep its snippet and route (issue 10, item 12)."""
    old, new = make("old"), make("new")
    publish(settings, old.spec)
    done = threading.Event()
    errors: list[BaseException] = []

    def create_new() -> None:
        try:
            publish(settings, new.spec)
        except BaseException as exc:  # reported below
            errors.append(exc)
        done.set()

    def desired() -> Desired:
        # The state as read now: without "new". Its create commits and publishes meanwhile.
        snapshot = Desired({"old": old.spec})
        threading.Thread(target=create_new).start()
        done.wait(1.0)  # the publish waits for the lock while this sync holds it
        return snapshot

    sync_all(settings, desired)
    assert done.wait(10) and errors == []
    assert live_ids(cw) == ids("new", "old")
    assert settings.snippet_path("new").is_file()
    assert served_by(cw, f"new.{DOMAIN}") == ("new", "api")


def test_an_instance_another_command_works_on_is_left_alone(cw, settings, make):
    """A delete in progress (its lock held) has removed the route but not yet the record: sync
    must not bring the route back; a create in progress must not lose its route (item 12)."""
    deleting, creating = make("deleting"), make("creating")
    publish(settings, deleting.spec)
    unpublish(settings, "deleting")  # the delete's first step; its record is still there
    publish(settings, creating.spec)  # the create published; its record is not committed yet
    lines = sync(
        settings, {"deleting": deleting.spec}, busy=lambda n: n in ("deleting", "creating")
    )
    assert lines == [
        "left as they were (another command is working on them): ['creating', 'deleting']"
    ]
    assert live_ids(cw) == ids("creating")
    assert not settings.snippet_path("deleting").exists()
    assert settings.snippet_path("creating").is_file()
    # Once the commands are done, sync converges.
    sync(settings, {"creating": creating.spec})
    assert live_ids(cw) == ids("creating")


# --- isolation: a bad site, another data root, the operator's own sites --------------------------
def test_one_bad_site_does_not_stop_sync_or_status_for_the_others(cw, settings, make):
    good, bad = make("good"), make("bad")
    broken = attrs.evolve(bad.spec, user="ad min")
    with pytest.raises(OperationError, match=r"^bad: .*DASHBOARD_USERNAME") as info:
        sync(settings, {"good": good.spec, "bad": broken})
    assert f"routed {', '.join(good.hosts.values())}" in str(info.value)
    assert live_ids(cw) == ids("good")
    assert served_by(cw, f"good.{DOMAIN}") == ("good", "api")
    assert not settings.snippet_path("bad").exists()

    st = status(settings, {"good": good.spec, "bad": broken})
    assert st["instances"] == {"bad": "invalid", "good": "ok"}
    assert st["snippets"] == {"bad": "invalid", "good": "ok"}
    assert "DASHBOARD_USERNAME" in st["problems"]["bad"] and list(st["problems"]) == ["bad"]


def test_two_data_roots_on_one_caddy_never_touch_each_others_routes(cw, settings, make, tmp_path):
    other_root = tmp_path / "root-b"
    other = cfg_for(cw, owner="beef0002", root=other_root)
    mine, theirs = make("app"), make("app", domain="b.test")
    publish(settings, mine.spec)
    publish(other, theirs.spec)
    assert live_ids(cw) == sorted(ids("app") + ids("app", owner="beef0002"))

    # Root B knows no instance "app" of root A: its sync and status leave A's route alone.
    assert sync(other, {}) == [
        "removed snippet app.conf (no such instance)",
        "removed route sbm-beef0002-app",
    ]
    assert status(other, {})["extra"] == []
    assert live_ids(cw) == ids("app")
    assert served_by(cw, f"app.{DOMAIN}") == ("app", "api")
    assert unpublish(other, "app") == []
    assert live_ids(cw) == ids("app")
    # Root B's instance wanting a host root A serves is refused, naming the host.
    clash = make("app")
    with pytest.raises(
        HostTaken,
        match=rf"^app-mail\.{DOMAIN}, app-studio\.{DOMAIN}, app\.{DOMAIN} are already served "
        rf"in Caddy by route sbm-{OWNER}-app,",
    ):
        publish(other, clash.spec)
    assert not other.snippet_path("app").exists()


def test_a_site_the_operator_serves_is_refused_not_taken_over(cw, settings, make):
    """Item 3: the operator's own Caddyfile site for a host an instance would take."""
    cw.caddyfile.write_text(
        cw.caddyfile_text()
        + f'\nhttp://shop-mail.{DOMAIN}:{cw.http_port} {{\n\trespond "shop"\n}}\n'
    )
    cw.reload()
    with pytest.raises(HostTaken, match=rf"^shop-mail\.{DOMAIN} is already served .*Caddyfile"):
        check_hosts(settings, "shop", hosts_of("shop").values())
    shop = make("shop")
    with pytest.raises(HostTaken):
        publish(settings, shop.spec)
    assert not settings.snippet_path("shop").exists()
    assert get(cw, f"shop-mail.{DOMAIN}").text == "shop"
    # Without the mail host there is no clash; our own routes never count as one.
    no_mail = make("shop", mail=False)
    assert check_hosts(settings, "shop", no_mail.hosts.values()) == []
    publish(settings, no_mail.spec)
    assert check_hosts(settings, "shop", no_mail.hosts.values()) == []
    assert served_by(cw, f"shop.{DOMAIN}") == ("shop", "api")
    assert get(cw, f"shop-mail.{DOMAIN}").text == "shop"


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
    with pytest.raises(OperationError, match=r"^other: not routed: .*route manual"):
        sync(settings, {"mine": mine.spec, "other": other.spec})
    assert served_by(cw, f"mine.{DOMAIN}") == ("mine", "api")
    assert get(cw, f"other.{DOMAIN}").text == "manual"
    assert status(settings, {"other": other.spec})["instances"] == {"other": "missing"}


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
        close_all([echo])


# --- snippets ------------------------------------------------------------------------------------
def test_a_snippet_caddy_rejects_never_replaces_a_good_one(cw, settings, make, monkeypatch):
    a = make("safe")
    publish(settings, a.spec)
    path = settings.snippet_path("safe")
    good = path.read_text()

    def broken(cfg, spec):
        return good.replace("stream_close_delay", "stream_close_delay_typo")

    monkeypatch.setattr(snippets_module, "render_snippet", broken)
    with AdminClient(settings.admin) as client, pytest.raises(OperationError, match="rejects"):
        write_snippet(settings, attrs.evolve(a.spec, api_upstream="127.0.0.1:9"), client=client)
    assert path.read_text() == good
    assert [p.name for p in path.parent.iterdir()] == ["safe.conf"]  # no temp file left
    monkeypatch.undo()
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
    from controller.caddy.routes import route_instance

    assert route_instance(route, settings) == "shape"  # the marker survives the Caddyfile
    (sub,) = route["handle"]
    handlers = [h for child in sub["routes"] for inner in child["handle"] for h in _leaves(inner)]
    auth = [h for h in handlers if h["handler"] == "authentication"]
    assert len(auth) == 2  # Studio and mail
    assert all(h["providers"]["http_basic"]["hash_cache"] == {} for h in auth)
    proxies = [h for h in handlers if h["handler"] == "reverse_proxy"]
    assert [p["stream_close_delay"] for p in proxies] == [600000000000] * 3


def _leaves(handler: dict) -> list[dict]:
    if handler.get("handler") == "subroute":
        return [h for r in handler["routes"] for inner in r["handle"] for h in _leaves(inner)]
    return [handler]


def test_snippet_claiming_another_instances_address_is_refused(settings, make):
    a = make("dup")
    write_snippet(settings, a.spec)
    clash = attrs.evolve(a.spec, name="dup2")
    with pytest.raises(OperationError) as info:
        write_snippet(settings, clash)
    port = settings.public_port
    assert str(info.value) == (
        f"instance dup2: dup.conf already defines http://dup-mail.{DOMAIN}:{port}, "
        f"http://dup-studio.{DOMAIN}:{port}, http://dup.{DOMAIN}:{port}"
    )
    assert not settings.snippet_path("dup2").exists()


def test_bad_spec_is_refused_before_caddy_is_asked(settings, make):
    evil = attrs.evolve(make("bad").spec, user='x" {')
    with pytest.raises(OperationError, match="DASHBOARD_USERNAME"):
        apply_instance(settings, evil)
    with pytest.raises(OperationError, match="DASHBOARD_USERNAME"):
        publish(settings, evil)
    assert not settings.snippet_path("bad").exists()


# --- unix socket admin ---------------------------------------------------------------------------
def test_admin_over_a_unix_socket(tmp_path):
    root = tmp_path / "uroot"
    root.mkdir()
    # No server in the Caddyfile: the adapter creates it, over the socket.
    world = CaddyProcess(root, tmp_path / "caddy-run", unix_socket=True, with_server=False)
    world.start()
    inst = None
    try:
        assert world.admin_socket.stat().st_mode & 0o777 == 0o600
        settings = cfg_for(world)
        assert settings.admin.startswith("unix/")
        inst = Instance("sock")
        publish(settings, inst.spec)
        assert served_by(world, f"sock.{DOMAIN}") == ("sock", "api")
        assert status(settings, {"sock": inst.spec})["instances"] == {"sock": "ok"}
        world.reload()
        assert served_by(world, f"sock.{DOMAIN}") == ("sock", "api")
        assert status(settings, {"sock": inst.spec})["instances"] == {"sock": "stale"}
        sync(settings, {"sock": inst.spec})
        assert status(settings, {"sock": inst.spec})["instances"] == {"sock": "ok"}
        unpublish(settings, "sock")
        assert served_by(world, f"sock.{DOMAIN}") is None
    finally:
        world.stop()
        if inst:
            inst.close()


# --- metrics -------------------------------------------------------------------------------------
def test_request_rates_come_from_two_samples(cw, settings, make):
    """Item 15: requests made before the window (counted since the last config load) are no
    rate; only those between the two samples are, over the time between them."""
    a, b = make("busy"), make("idle")
    publish(settings, a.spec)
    publish(settings, b.spec)
    cw.reload()  # the Caddyfile's global options (metrics per_host) are in force
    for _ in range(7):
        get(cw, f"busy.{DOMAIN}")
    time.sleep(0.2)  # Caddy counts a request once it has finished with it
    ticks = iter([100.0, 102.0])

    def during_window(_: float) -> None:
        for _ in range(4):
            get(cw, f"busy.{DOMAIN}")
        get(cw, f"busy-studio.{DOMAIN}", auth=a.auth())
        time.sleep(0.2)

    rates = request_rates(settings, window=2.0, clock=lambda: next(ticks), sleep=during_window)
    assert rates[f"busy.{DOMAIN}"] == 2.0
    assert rates[f"busy-studio.{DOMAIN}"] == 0.5
    assert rates.get(f"idle.{DOMAIN}", 0.0) == 0.0
    assert cw.admin("DELETE", "/config/apps/http/metrics").status_code == 200
    assert request_rates(settings, window=0.01) is None
    assert status(settings, {})["metrics_per_host"] is False


def test_rates_survive_a_counter_reset():
    from controller.caddy.metrics import RateMeter, parse_requests, rates

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
    meter = RateMeter()
    assert meter.sample({"a.x": 100.0}, now=10.0) is None  # one sample is no rate
    assert meter.sample({"a.x": 130.0}, now=13.0) == {"a.x": 10.0}
    assert meter.sample({"a.x": 6.0}, now=15.0) == {"a.x": 3.0}  # Caddy reloaded in between


# --- the dashboard password ----------------------------------------------------------------------
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
    # A read writes nothing: a known hash that matches is used, else one only in memory.
    cache.unlink()
    assert studio_password_hash(cache, "other", write=False, known=[first, second]) == second
    fresh = studio_password_hash(cache, "new", write=False, known=[second])
    assert bcrypt.checkpw(b"new", fresh.encode()) and not cache.exists()


def test_site_addresses_leave_out_the_default_port(settings, make):
    spec = make("addr").spec
    https = attrs.evolve(settings, scheme="https", public_port=443)
    assert site_addresses(https, spec)[0] == f"https://addr.{DOMAIN}"
    http80 = attrs.evolve(settings, scheme="http", public_port=80)
    assert site_addresses(http80, spec)[1] == f"http://addr-studio.{DOMAIN}"
    odd = attrs.evolve(settings, scheme="https", public_port=8443)
    assert site_addresses(odd, spec) == [
        f"https://addr.{DOMAIN}:8443",
        f"https://addr-studio.{DOMAIN}:8443",
        f"https://addr-mail.{DOMAIN}:8443",
    ]


def test_a_cost_12_hash_from_the_cache_works_in_caddy(cw, settings, make):
    a = make("real")
    cache = settings.snippet_dir.parent / "instances" / "real" / ".studio-auth"
    hashed = studio_password_hash(cache, "Real-Pw")
    spec = attrs.evolve(a.spec, password_hash=hashed)
    publish(settings, spec)
    host = f"real-studio.{DOMAIN}"
    assert get(cw, host, auth=("supabase", "real-pw")).status_code == 401
    assert served_by(cw, host, auth=("supabase", "Real-Pw")) == ("real", "studio")
    # Same password, same hash: nothing to change after a reload + sync but the id.
    assert studio_password_hash(cache, "Real-Pw") == hashed
    cw.reload()
    assert served_by(cw, host, auth=("supabase", "Real-Pw")) == ("real", "studio")
    assert sync(settings, {"real": spec}) == [
        f"routed real.{DOMAIN}, {host}, real-mail.{DOMAIN} (sbm-{OWNER}-real)"
    ]
