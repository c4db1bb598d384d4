"""The admin client's read-modify-write and retry logic against ``httpx.MockTransport``.

``FakeAdmin`` keeps a JSON config and answers the few admin API calls the adapter makes the way
Caddy 2.11 does (/shared/notes/caddy.md): every GET carries an ETag, a write with a stale
If-Match gets 412, writes address config paths (PUT into a list inserts, PATCH replaces, DELETE
removes). It can make another writer change the config just before our write, or drop the
connection after a write was applied (Caddy restarts its admin server on each load). The same
functions run against a real Caddy in tests/test_caddy.py.
"""

import copy
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from controller.caddy import SiteSpec, apply_instance, remove_instance, status
from controller.caddy.admin import AdminClient, AdminError
from controller.caddy.config import CaddyConfig
from controller.caddy.routes import render_route
from controller.caddy.sync import ATTEMPTS, READ_TRIES
from controller.errors import CaddyUnavailable, OperationError
from tests.world.net import free_port

HASH = "$2b$04$" + "a" * 53


class FakeAdmin:
    def __init__(self, config: dict) -> None:
        self.config = config
        self.writes: list[tuple[str, str, str | None]] = []  # method, path, If-Match
        self.before_write = None  # callable run once before the next write is applied
        self.drop_after_write = 0  # answer this many applied writes with a dropped connection
        self.stale_forever = False
        self.down = False

    def etag(self) -> str:
        blob = json.dumps(self.config, sort_keys=True).encode()
        return '"' + hashlib.sha256(blob).hexdigest()[:16] + '"'

    def transport(self) -> httpx.MockTransport:
        return httpx.MockTransport(self.handle)

    def handle(self, request: httpx.Request) -> httpx.Response:
        if self.down:
            raise httpx.ConnectError("connection refused", request=request)
        path = request.url.path
        if request.method == "GET":
            value = self._walk(path)
            return httpx.Response(200, json=value, headers={"Etag": self.etag()})
        self.writes.append((request.method, path, request.headers.get("If-Match")))
        if self.before_write is not None:
            hook, self.before_write = self.before_write, None
            hook(self)
        if self.stale_forever or request.headers.get("If-Match") != self.etag():
            return httpx.Response(412, json={"error": "If-Match header did not match"})
        body = json.loads(request.content) if request.content else None
        self._apply(request.method, path, body)
        if self.drop_after_write:
            self.drop_after_write -= 1
            raise httpx.RemoteProtocolError("server disconnected", request=request)
        return httpx.Response(200)

    @staticmethod
    def _parts(path: str) -> list[str]:
        assert path.startswith("/config/")
        return [p for p in path[len("/config/") :].split("/") if p]

    def _walk(self, path: str):
        node = self.config
        for part in self._parts(path):
            if isinstance(node, list):
                node = node[int(part)]
            elif isinstance(node, dict) and part in node:
                node = node[part]
            else:
                return None
        return node

    def _apply(self, method: str, path: str, body) -> None:
        *parents, last = self._parts(path)
        node = self.config
        for part in parents:
            node = node[int(part)] if isinstance(node, list) else node.setdefault(part, {})
        if isinstance(node, list):
            index = int(last)
            if method == "PUT":
                node.insert(index, body)
            elif method == "PATCH":
                node[index] = body
            elif method == "DELETE":
                del node[index]
        elif method == "DELETE":
            del node[last]
        else:
            node[last] = body


@pytest.fixture
def cfg(tmp_path: Path) -> CaddyConfig:
    return CaddyConfig(
        admin="http://127.0.0.1:2019",
        lock_path=tmp_path / ".caddy.lock",
        snippet_dir=tmp_path / "caddy",
        scheme="http",
        public_port=8080,
        owner="cafe0001",
    )


def spec(name: str, port: int = 30000) -> SiteSpec:
    return SiteSpec(
        name=name,
        hosts={"api": f"{name}.d.test", "studio": f"{name}-studio.d.test"},
        api_upstream=f"127.0.0.1:{port}",
        studio_upstream=f"127.0.0.1:{port}",
        user="supabase",
        password_hash=HASH,
    )


def config_with(*routes: dict) -> dict:
    server = {"listen": [":8080"], "routes": list(routes), "automatic_https": {"disable": True}}
    return {"apps": {"http": {"servers": {"supabase": server}}}}


def routes(fake: FakeAdmin) -> list[dict]:
    return fake.config["apps"]["http"]["servers"]["supabase"]["routes"]


def test_a_write_carries_the_etag_it_read(cfg):
    fake = FakeAdmin(config_with())
    etag = fake.etag()
    apply_instance(cfg, spec("a"), transport=fake.transport())
    assert fake.writes == [("PUT", "/config/apps/http/servers/supabase/routes/0", etag)]
    assert routes(fake) == [render_route(spec("a"), cfg)]


def test_a_412_is_read_again_and_keeps_the_other_writers_change(cfg):
    fake = FakeAdmin(config_with(render_route(spec("x"), cfg)))

    def other_writer(admin: FakeAdmin) -> None:
        routes(admin).append({"@id": "theirs", "match": [{"host": ["t.d.test"]}], "handle": []})

    fake.before_write = other_writer
    apply_instance(cfg, spec("a"), transport=fake.transport())
    assert [w[0] for w in fake.writes] == ["PUT", "PUT"]  # refused once (412), then redone
    assert fake.writes[0][2] != fake.writes[1][2]
    assert [r.get("@id") for r in routes(fake)] == ["sbm-cafe0001-x", "theirs", "sbm-cafe0001-a"]


def test_a_write_applied_before_the_connection_dropped_is_not_sent_twice(cfg):
    fake = FakeAdmin(config_with())
    fake.drop_after_write = 1
    apply_instance(cfg, spec("a"), transport=fake.transport())
    assert len(fake.writes) == 1  # the re-read showed it in place
    assert routes(fake) == [render_route(spec("a"), cfg)]


def test_an_id_less_copy_from_a_reload_is_replaced_by_the_route_in_one_patch(cfg):
    copy_a = copy.deepcopy(render_route(spec("a"), cfg))
    del copy_a["@id"]
    fake = FakeAdmin(config_with(render_route(spec("b"), cfg), copy_a))
    apply_instance(cfg, spec("a"), transport=fake.transport())
    assert [w[:2] for w in fake.writes] == [
        ("PATCH", "/config/apps/http/servers/supabase/routes/1")
    ]
    assert routes(fake) == [render_route(spec("b"), cfg), render_route(spec("a"), cfg)]
    remove_instance(cfg, "a", transport=fake.transport())
    assert routes(fake) == [render_route(spec("b"), cfg)]


def test_config_that_keeps_changing_gives_up_with_one_line(cfg):
    fake = FakeAdmin(config_with())
    fake.stale_forever = True
    with pytest.raises(OperationError, match="kept changing"):
        apply_instance(cfg, spec("a"), transport=fake.transport())
    assert len(fake.writes) == ATTEMPTS


def test_caddy_down_is_caddy_unavailable_and_nothing_is_written(cfg):
    fake = FakeAdmin(config_with())
    fake.down = True
    calls = []
    transport = httpx.MockTransport(lambda r: calls.append(r) or fake.handle(r))
    with pytest.raises(CaddyUnavailable, match="cannot be reached"):
        apply_instance(cfg, spec("a"), transport=transport)
    assert len(calls) == READ_TRIES and fake.writes == []
    st = status(cfg, {"a": spec("a")}, transport=fake.transport())
    assert st["reachable"] is False and st["instances"] == {"a": "unknown"}


def test_refusals_are_admin_errors_with_caddys_message():
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(400, json={"error": "duplicate ID 'x' found"})

    transport = httpx.MockTransport(handler)
    with (
        AdminClient("localhost:2019", transport=transport) as client,
        pytest.raises(AdminError, match="duplicate ID") as info,
    ):
        client.request("POST", "/config/apps/http/servers/s/routes", body={})
    assert info.value.status == 400


def test_caddy_status_exits_1_when_caddy_cannot_be_reached_and_writes_nothing(tmp_path):
    """Issue 10 item 18, through the command line (no Caddy listens on the admin address)."""
    root = tmp_path / "root"
    root.mkdir()
    env = {
        **os.environ,
        "SUPABASE_MANAGER_ROOT": str(root),
        "SUPABASE_MANAGER_CADDY_ADMIN": f"http://127.0.0.1:{free_port()}",
    }
    proc = subprocess.run(
        [sys.executable, "-m", "shell", "--json", "caddy", "status"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        cwd=Path(__file__).resolve().parents[1],
    )
    assert proc.returncode == 1, proc.stderr
    assert json.loads(proc.stdout)["reachable"] is False
    assert proc.stderr.startswith("supabase-manager: Caddy admin API at http://127.0.0.1:")
    assert list(root.iterdir()) == []
