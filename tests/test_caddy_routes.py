"""Route JSON and change planning, without Caddy: each instance change is one small request."""

from pathlib import Path

import pytest

from controller.caddy.routes import (
    SiteSpec,
    is_catch_all,
    listen_ports,
    plan,
    public_server,
    render_route,
)
from controller.config import Settings
from controller.errors import OperationError

HASH = "$2b$04$" + "a" * 53
SETTINGS = Settings(
    root=Path("/nonexistent"),
    domain="d.test",
    scheme="http",
    public_port=8080,
    caddy_admin="http://127.0.0.1:1",
)


def spec(name: str, port: int = 30000, mail: bool = True) -> SiteSpec:
    hosts = SETTINGS.hosts(name)
    return SiteSpec(
        name=name,
        hosts=hosts,
        api_upstream=f"127.0.0.1:{port}",
        studio_upstream=f"127.0.0.1:{port + 1}",
        studio_user="supabase",
        studio_password_hash=HASH,
        mail_upstream=f"127.0.0.1:{port + 2}" if mail else None,
    )


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


def copy_of(name: str) -> dict:
    """What a Caddyfile reload brings back for an instance: the same hosts, no @id."""
    route = render_route(spec(name))
    del route["@id"]
    return route


def test_route_shape():
    route = render_route(spec("a"))
    assert route["@id"] == "sbm-a"
    assert route["match"] == [{"host": ["a.d.test", "a-studio.d.test", "a-mail.d.test"]}]
    (sub,) = route["handle"]
    children = sub["routes"]
    assert [c["match"][0]["host"] for c in children] == [
        ["a.d.test"],
        ["a-studio.d.test"],
        ["a-mail.d.test"],
    ]
    studio = children[1]["handle"]
    assert studio[0]["handler"] == "authentication"
    basic = studio[0]["providers"]["http_basic"]
    assert basic["hash"] == {"algorithm": "bcrypt"} and basic["hash_cache"] == {}
    assert all(c["handle"][-1]["stream_close_delay"] == "10m" for c in children)
    # No mail upstream: no mail host either.
    assert render_route(spec("b", mail=False))["match"] == [
        {"host": ["b.d.test", "b-studio.d.test"]}
    ]


def test_new_instance_is_one_put_before_the_catch_all():
    catch_all = {"handle": [{"handler": "static_response"}]}
    apps = apps_with(render_route(spec("x")), catch_all)
    req = plan(apps, SETTINGS, apply=[spec("a")]).request
    assert (req.method, req.path) == ("PUT", "/config/apps/http/servers/supabase/routes/1")
    assert req.body["@id"] == "sbm-a"


def test_unchanged_instance_needs_no_request():
    apps = apps_with(render_route(spec("a")))
    assert plan(apps, SETTINGS, apply=[spec("a")]).request is None


def test_changed_instance_is_replaced_in_place():
    apps = apps_with(render_route(spec("z")), render_route(spec("a")), render_route(spec("b")))
    req = plan(apps, SETTINGS, apply=[spec("a", port=31000)]).request
    assert (req.method, req.path) == ("PATCH", "/config/apps/http/servers/supabase/routes/1")


def test_id_less_copy_is_replaced_in_the_same_change():
    apps = apps_with(copy_of("b"), copy_of("a"), copy_of("c"))
    req = plan(apps, SETTINGS, apply=[spec("a")]).request
    # The copy at index 1 becomes the route with the id: a single PATCH of that element.
    assert (req.method, req.path) == ("PATCH", "/config/apps/http/servers/supabase/routes/1")
    assert req.body["@id"] == "sbm-a"


def test_live_route_and_a_copy_are_both_handled_in_one_request():
    apps = apps_with(render_route(spec("a")), copy_of("b"), copy_of("a"))
    result = plan(apps, SETTINGS, apply=[spec("a", port=31000)])
    req = result.request
    assert (req.method, req.path) == ("PATCH", "/config/apps/http/servers/supabase/routes")
    assert [r.get("@id") for r in req.body] == ["sbm-a", None]
    assert req.body[1]["match"][0]["host"][0] == "b.d.test"


def test_partial_overlap_only_loses_our_hosts():
    shared = {"match": [{"host": ["a.d.test", "other.d.test"]}], "handle": []}
    apps = apps_with(shared)
    req = plan(apps, SETTINGS, apply=[spec("a")]).request
    assert req.body == [
        render_route(spec("a")),
        {"match": [{"host": ["other.d.test"]}], "handle": []},
    ]


def test_remove_deletes_one_route_by_index():
    apps = apps_with(render_route(spec("a")), render_route(spec("b")))
    req = plan(apps, SETTINGS, remove=["b"]).request
    assert (req.method, req.path) == ("DELETE", "/config/apps/http/servers/supabase/routes/1")
    assert plan(apps, SETTINGS, remove=["nope"]).request is None


def test_copies_in_another_server_change_the_servers_in_one_request():
    apps = apps_with(render_route(spec("a")))
    apps["http"]["servers"]["srv0"]["routes"] = [copy_of("a")]
    req = plan(apps, SETTINGS, remove=["a"]).request
    assert (req.method, req.path) == ("PATCH", "/config/apps/http/servers")
    assert req.body["srv0"]["routes"] == [] and req.body["supabase"]["routes"] == []


def test_no_server_on_the_port_creates_one():
    req = plan({}, SETTINGS, apply=[spec("a")]).request
    assert (req.method, req.path) == ("PUT", "/config/apps")
    server = req.body["http"]["servers"]["supabase"]
    assert server["listen"][0].endswith(":8080")
    assert server["automatic_https"] == {"disable": True}
    assert req.body["http"]["metrics"] == {"per_host": True}

    apps = {"http": {"servers": {"srv0": {"listen": [":443"], "routes": []}}}}
    req = plan(apps, SETTINGS, apply=[spec("a")]).request
    assert (req.method, req.path) == ("PUT", "/config/apps/http/servers/supabase")


def test_plain_http_on_an_odd_port_is_skipped_from_automatic_https():
    apps = apps_with(automatic_https={"skip": ["old.d.test"]})
    req = plan(apps, SETTINGS, apply=[spec("a", mail=False)]).request
    assert (req.method, req.path) == ("PATCH", "/config/apps/http/servers/supabase")
    assert req.body["automatic_https"]["skip"] == ["old.d.test", "a-studio.d.test", "a.d.test"]


def test_a_host_served_by_someone_elses_route_is_a_conflict():
    theirs = {"@id": "manual", "match": [{"host": ["a.d.test"]}], "handle": []}
    with pytest.raises(OperationError, match="already serves"):
        plan(apps_with(theirs), SETTINGS, apply=[spec("a")])
    # "a" and "a-studio" would share a-studio.d.test
    with pytest.raises(OperationError, match="wanted by both"):
        plan({}, SETTINGS, apply=[spec("a"), spec("a-studio")])


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
