"""Route JSON and change planning, without Caddy: each instance change is one small request, and
only routes of this data root's instances are ever changed."""

from pathlib import Path

import attrs
import pytest

from controller.caddy.config import CaddyConfig
from controller.caddy.routes import (
    HostTaken,
    SiteSpec,
    instance_names,
    is_catch_all,
    listen_ports,
    plan,
    public_server,
    render_route,
    route_instance,
)
from controller.config import Settings
from controller.errors import OperationError

HASH = "$2b$04$" + "a" * 53
SETTINGS = Settings(root=Path("/nonexistent"), domain="d.test", scheme="http", public_port=8080)
CFG = CaddyConfig(
    admin="http://127.0.0.1:1",
    lock_path=Path("/nonexistent/.caddy.lock"),
    snippet_dir=Path("/nonexistent/caddy"),
    scheme="http",
    public_port=8080,
    owner="aaaa1111",
)
OTHER_ROOT = attrs.evolve(CFG, owner="bbbb2222")


def spec(name: str, port: int = 30000, mail: bool = True) -> SiteSpec:
    hosts = SETTINGS.hosts(name)
    if not mail:
        del hosts["mail"]
    return SiteSpec(
        name=name,
        hosts=hosts,
        api_upstream=f"127.0.0.1:{port}",
        studio_upstream=f"127.0.0.1:{port}",
        user="supabase",
        password_hash=HASH,
        mail_upstream=f"127.0.0.1:{port + 2}" if mail else None,
    )


def route(name: str, cfg: CaddyConfig = CFG, **kw) -> dict:
    return render_route(spec(name, **kw), cfg)


def apps_with(*routes: dict, listen: str = "127.0.0.1:8080", **server) -> dict:
    server.setdefault("automatic_https", {"disable": True})  # as with `auto_https off`
    return {
        "http": {
            "servers": {
                "srv0": {"listen": [":9999"], "routes": []},
                "supabase": {"listen": [listen], "routes": list(routes), **server},
            }
        }
    }


def copy_of(name: str, cfg: CaddyConfig = CFG) -> dict:
    """What a Caddyfile reload brings back for an instance: the same hosts and marker, no @id."""
    out = render_route(spec(name), cfg)
    del out["@id"]
    return out


def test_route_shape():
    r = route("a")
    assert r["@id"] == "sbm-aaaa1111-a"
    assert r["match"] == [{"host": ["a.d.test", "a-studio.d.test", "a-mail.d.test"]}]
    marker, sub = r["handle"]
    assert marker == {"handler": "vars", "supabase_manager": "aaaa1111/a"}
    children = sub["routes"]
    assert [c["match"][0]["host"] for c in children] == [
        ["a.d.test"],
        ["a-studio.d.test"],
        ["a-mail.d.test"],
    ]
    # Studio and mail both ask for the dashboard credentials; the API does not.
    assert [c["handle"][0]["handler"] for c in children] == [
        "reverse_proxy",
        "authentication",
        "authentication",
    ]
    for child in children[1:]:
        basic = child["handle"][0]["providers"]["http_basic"]
        assert basic["accounts"] == [{"username": "supabase", "password": HASH}]
        assert basic["hash"] == {"algorithm": "bcrypt"} and basic["hash_cache"] == {}
    assert all(c["handle"][-1]["stream_close_delay"] == "10m" for c in children)
    # No mail upstream: no mail host either.
    assert route("b", mail=False)["match"] == [{"host": ["b.d.test", "b-studio.d.test"]}]


def test_routes_are_known_by_id_or_by_marker_and_only_for_this_root():
    assert route_instance(route("a"), CFG) == "a"
    assert route_instance(copy_of("a"), CFG) == "a"
    assert route_instance(route("a", OTHER_ROOT), CFG) is None
    assert route_instance(copy_of("a", OTHER_ROOT), CFG) is None
    assert route_instance({"@id": "sbm-a", "handle": []}, CFG) is None  # not this root's id
    apps = apps_with(route("a"), copy_of("b"), route("c", OTHER_ROOT))
    assert instance_names(apps, CFG) == {"a": [("supabase", 0)], "b": [("supabase", 1)]}


def test_new_instance_is_one_put_before_the_catch_all():
    catch_all = {"handle": [{"handler": "static_response"}]}
    apps = apps_with(route("x"), catch_all)
    req = plan(apps, CFG, apply=[spec("a")]).request
    assert (req.method, req.path) == ("PUT", "/config/apps/http/servers/supabase/routes/1")
    assert req.body == route("a")


def test_unchanged_instance_needs_no_request():
    assert plan(apps_with(route("a")), CFG, apply=[spec("a")]).request is None


def test_changed_instance_is_replaced_in_place():
    apps = apps_with(route("z"), route("a"), route("b"))
    req = plan(apps, CFG, apply=[spec("a", port=31000)]).request
    assert (req.method, req.path) == ("PATCH", "/config/apps/http/servers/supabase/routes/1")
    assert req.body == route("a", port=31000)


def test_id_less_copy_is_replaced_in_the_same_change():
    apps = apps_with(copy_of("b"), copy_of("a"), copy_of("c"))
    req = plan(apps, CFG, apply=[spec("a")]).request
    # The copy at index 1 becomes the route with the id: a single PATCH of that element.
    assert (req.method, req.path) == ("PATCH", "/config/apps/http/servers/supabase/routes/1")
    assert req.body == route("a")


def test_live_route_and_a_copy_are_both_handled_in_one_request():
    apps = apps_with(route("a"), copy_of("b"), copy_of("a"))
    req = plan(apps, CFG, apply=[spec("a", port=31000)]).request
    assert (req.method, req.path) == ("PATCH", "/config/apps/http/servers/supabase/routes")
    assert req.body == [route("a", port=31000), copy_of("b")]


def test_a_site_of_the_operator_on_our_host_is_refused_not_taken_over():
    theirs = {"match": [{"host": ["a.d.test", "other.d.test"]}], "handle": []}
    with pytest.raises(HostTaken, match=r"a\.d\.test is already served .* Caddyfile"):
        plan(apps_with(theirs), CFG, apply=[spec("a")])
    manual = {"@id": "manual", "match": [{"host": ["a-mail.d.test"]}], "handle": []}
    with pytest.raises(HostTaken, match=r"a-mail\.d\.test .* route manual"):
        plan(apps_with(manual), CFG, apply=[spec("a")])
    # Without the mail overlay the instance does not want that host: no clash.
    assert plan(apps_with(manual), CFG, apply=[spec("a", mail=False)]).request is not None
    # "a" and "a-studio" would share a-studio.d.test
    with pytest.raises(OperationError, match="wanted by both"):
        plan({}, CFG, apply=[spec("a"), spec("a-studio")])


def test_another_roots_route_is_never_changed_nor_removed():
    theirs = route("a", OTHER_ROOT)
    with pytest.raises(HostTaken, match=r"by route sbm-bbbb2222-a, not by instance a$"):
        plan(apps_with(theirs), CFG, apply=[spec("a")])
    assert plan(apps_with(theirs, copy_of("a", OTHER_ROOT)), CFG, remove=["a"]).request is None


def test_remove_deletes_one_route_by_index():
    apps = apps_with(route("a"), route("b"))
    req = plan(apps, CFG, remove=["b"]).request
    assert (req.method, req.path) == ("DELETE", "/config/apps/http/servers/supabase/routes/1")
    assert plan(apps, CFG, remove=["nope"]).request is None


def test_copies_in_another_server_change_the_servers_in_one_request():
    apps = apps_with(route("a"))
    apps["http"]["servers"]["srv0"]["routes"] = [copy_of("a")]
    req = plan(apps, CFG, remove=["a"]).request
    assert (req.method, req.path) == ("PATCH", "/config/apps/http/servers")
    assert req.body["srv0"]["routes"] == [] and req.body["supabase"]["routes"] == []


def test_no_server_on_the_port_creates_one():
    bound = attrs.evolve(CFG, bind="127.0.0.1")
    req = plan({}, bound, apply=[spec("a")]).request
    assert (req.method, req.path) == ("PUT", "/config/apps")
    server = req.body["http"]["servers"]["supabase"]
    assert server["listen"] == ["127.0.0.1:8080"]
    assert server["automatic_https"] == {"disable": True}
    assert req.body["http"]["metrics"] == {"per_host": True}

    apps = {"http": {"servers": {"srv0": {"listen": [":443"], "routes": []}}}}
    req = plan(apps, CFG, apply=[spec("a")]).request
    assert (req.method, req.path) == ("PUT", "/config/apps/http/servers/supabase")
    assert req.body["listen"] == [":8080"]


def test_plain_http_on_an_odd_port_is_skipped_from_automatic_https():
    apps = apps_with(automatic_https={"skip": ["old.d.test"]})
    req = plan(apps, CFG, apply=[spec("a", mail=False)]).request
    assert (req.method, req.path) == ("PATCH", "/config/apps/http/servers/supabase")
    assert req.body["automatic_https"]["skip"] == ["old.d.test", "a-studio.d.test", "a.d.test"]


def test_listen_addresses_and_catch_alls():
    assert listen_ports(":443") == range(443, 444)
    assert 8081 in listen_ports("tcp/127.0.0.1:8080-8082")
    assert listen_ports("unix//run/x.sock") is None
    assert public_server({"s": {"listen": ["[::1]:8080"]}}, 8080) == "s"
    assert public_server({"s": {"listen": ["udp/:8080"]}}, 8080) is None
    assert is_catch_all({"handle": []})
    assert is_catch_all({"match": [{"host": ["*.d.test"]}]})
    assert is_catch_all({"match": [{"path": ["/x"]}]})
    assert not is_catch_all({"match": [{"host": ["a.d.test"]}]})
