"""Two data roots on one Docker engine and one Caddy: neither sees, changes or deletes the other's
objects, and they never hand out the same host ports.

Supabase's images cannot be pulled here: the instance runs the stand-in overlay
(tests/world/standin.py) through --extra-compose. Both ROOTs push their routes into one Caddy
(their hosts differ).
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from controller.labels import PORTS_LABEL, ROOT_LABEL
from controller.ownership import CLAIM_LABEL
from tests.world.standin import write_standin_overlay
from tests.world.templates import fixtures_dir

FIXTURE = fixtures_dir() / "v0.8.2"
CLI = [sys.executable, "-m", "shell"]
PORT_RANGE = "26100-26399"

pytestmark = pytest.mark.docker


class Root:
    def __init__(self, root: Path, domain: str, caddy_admin: str, public_port: int) -> None:
        self.root = root
        self.env = {
            **os.environ,
            "SUPABASE_MANAGER_ROOT": str(root),
            "SUPABASE_MANAGER_DOMAIN": domain,
            "SUPABASE_MANAGER_SCHEME": "http",
            "SUPABASE_MANAGER_PUBLIC_PORT": str(public_port),
            "SUPABASE_MANAGER_CADDY_ADMIN": caddy_admin,
            "SUPABASE_MANAGER_PORT_RANGE": PORT_RANGE,
            "SUPABASE_MANAGER_WAIT_TIMEOUT": "120",
            "NO_COLOR": "1",
        }

    def run(self, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [*CLI, *args], env=self.env, capture_output=True, text=True, timeout=300
        )

    def ok(self, *args: str) -> subprocess.CompletedProcess:
        proc = self.run(*args)
        assert proc.returncode == 0, (args, proc.stderr)
        return proc

    def ports(self, name: str) -> set[int]:
        state = json.loads((self.root / "state.json").read_text())
        return set(state["instances"][name]["ports"].values())

    def listed(self) -> dict[str, dict]:
        return {row["name"]: row for row in json.loads(self.ok("--json", "list").stdout)}

    @property
    def id(self) -> str:
        return (self.root / "root-id").read_text().strip()


def _objects(client, project: str) -> dict[str, dict[str, str]]:
    """Containers (name -> id and state), volumes and networks of compose project ``project``."""
    label = {"label": f"com.docker.compose.project={project}"}
    containers = client.containers.list(all=True, filters=label, ignore_removed=True)
    return {
        "containers": {c.name: f"{c.id} {c.status}" for c in containers},
        "volumes": {
            v.name: (v.attrs.get("Labels") or {}).get(ROOT_LABEL, "")
            for v in client.volumes.list(filters=label)
        },
        "networks": {
            n.name: (n.attrs.get("Labels") or {}).get(ROOT_LABEL, "")
            for n in client.networks.list(filters=label)
        },
    }


def _claims(client, project: str) -> dict[str, tuple[str, set[int]]]:
    """Claim volumes of instance ``project`` (name -> owning ROOT id and host ports)."""
    found = client.volumes.list(filters={"label": f"{CLAIM_LABEL}={project}"})
    out = {}
    for volume in found:
        labels = volume.attrs.get("Labels") or {}
        ports = {int(p) for p in labels.get(PORTS_LABEL, "").split(",") if p}
        out[volume.name] = (labels.get(ROOT_LABEL, ""), ports)
    return out


def _refused(proc: subprocess.CompletedProcess) -> str:
    lines = [line for line in proc.stderr.splitlines() if not line.startswith("… ")]
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr
    return lines[0]


def _routed(caddy, host: str) -> str:
    """What Caddy's listener answers for ``host`` ("" when no route has it)."""
    return caddy.get(host).text.strip()


def test_two_roots_on_one_engine_and_one_caddy(
    data_root, tmp_path, caddy, docker_client, docker_sandbox
):
    """Two ROOTs on the same engine, their instances behind the same Caddy, whose Caddyfile
    imports both snippet folders. Neither sees, changes or deletes the other's objects, an
    instance of the same name included (the claim on the engine refuses it); they never hand
    out the same host port; `list`, `caddy status`, `caddy sync` (also after a Caddy restart,
    when every route is an id-less copy from a snippet) and `delete --purge` each see and touch
    only their own ROOT's. One running instance per ROOT serves every step."""
    a = Root(data_root, "a.test", caddy.admin_url, caddy.http_port)
    b = Root(tmp_path / "b", "b.test", caddy.admin_url, caddy.http_port)
    mine = f"import {caddy.snippet_dir}/*.conf\n"
    caddy.caddyfile.write_text(
        caddy.caddyfile_text().replace(mine, f"{mine}import {b.root}/caddy/*.conf\n")
    )
    caddy.restart()
    for each in (a, b):
        each.ok("template", "import", str(FIXTURE), "--name", "t")
    standin = write_standin_overlay(
        [a.root / "templates" / "t" / "docker-compose.yml"], tmp_path / "standin.yml"
    )
    extra = ["--template", "t", "--extra-compose", str(standin)]

    # A creates c1 without starting it: no container, but its claim holds the name and ports.
    a.ok("create", "c1", "--no-start", *extra)
    for args in (["create", "c1", "--no-start", *extra], ["create", "c1", *extra]):
        line = _refused(b.run(*args))
        assert "compose project c1" in line and "claimed by the ROOT at " in line, line
        assert f"{a.root}" in line and "not this ROOT's" in line, line
        assert "c1" not in json.loads((b.root / "state.json").read_text())["instances"]
        assert not (b.root / "instances" / "c1").exists()
    # The same port range, and A's ports bound by nothing yet: B still does not get them.
    b.ok("create", "c2", "--no-start", *extra)
    assert a.ports("c1") and b.ports("c2") and not a.ports("c1") & b.ports("c2")
    assert _claims(docker_client, "c1") == {"c1_sbm-claim": (a.id, a.ports("c1"))}

    # A's own claim never stands in its way.
    a.ok("start", "c1")
    ours = _objects(docker_client, "c1")
    assert ours["containers"] and all("running" in s for s in ours["containers"].values())
    assert set(ours["volumes"].values()) == {a.id} and set(ours["networks"].values()) == {a.id}
    project = {"label": "com.docker.compose.project=c1"}
    for container in docker_client.containers.list(all=True, filters=project):
        assert container.labels[ROOT_LABEL] == a.id

    # B runs web beside it: no port handed out twice, each lists and routes its own.
    b.ok("create", "web", *extra)
    assert b.ports("web") and not a.ports("c1") & b.ports("web")
    assert list(a.listed()) == ["c1"] and sorted(b.listed()) == ["c2", "web"]
    assert _routed(caddy, "c1.a.test") == "standin api-gw of c1"
    assert _routed(caddy, "web.b.test") == "standin api-gw of web"

    def status(root: Root) -> dict:
        st = json.loads(root.ok("--json", "caddy", "status").stdout)
        assert st["extra"] == [] and st["extra_snippets"] == [], st
        return st["instances"]

    assert status(a) == {"c1": "ok"} and status(b) == {"c2": "ok", "web": "ok"}
    routes = caddy.routes()
    a.ok("caddy", "sync")
    b.ok("caddy", "sync")
    assert caddy.routes() == routes

    # Restarted, Caddy serves both from the snippets, without ids: each sync gives back its own
    # ids and leaves the other's copy in place.
    caddy.restart()
    assert status(a) == {"c1": "stale"} and status(b) == {"c2": "stale", "web": "stale"}
    a.ok("caddy", "sync")
    assert status(a) == {"c1": "ok"} and status(b) == {"c2": "stale", "web": "stale"}
    assert _routed(caddy, "web.b.test") == "standin api-gw of web"
    b.ok("caddy", "sync")
    assert status(a) == {"c1": "ok"} and status(b) == {"c2": "ok", "web": "ok"}
    assert _routed(caddy, "c1.a.test") == "standin api-gw of c1"

    # B's delete --purge removes its own instance only; it has no c1 to delete.
    snippet = (a.root / "caddy" / "c1.conf").read_text()
    b.ok("delete", "web", "--purge", "--yes")
    assert _objects(docker_client, "web") == {"containers": {}, "volumes": {}, "networks": {}}
    assert _objects(docker_client, "c1") == ours
    assert (a.root / "caddy" / "c1.conf").read_text() == snippet
    assert _routed(caddy, "web.b.test") == ""
    assert _routed(caddy, "c1.a.test") == "standin api-gw of c1"
    assert status(a) == {"c1": "ok"} and status(b) == {"c2": "ok"}
    gone = b.run("delete", "c1", "--purge", "--yes")
    assert gone.returncode == 1 and "no instance named 'c1'" in gone.stderr
    assert _objects(docker_client, "c1") == ours

    # B names an instance c1 while Docker is down: nothing can be checked, it is created as
    # before (no claim: it has none to make).
    down = {**b.env, "DOCKER_HOST": f"unix://{tmp_path}/no-docker.sock"}
    created = subprocess.run(
        [*CLI, "create", "c1", "--no-start", *extra], env=down, capture_output=True, text=True
    )
    assert created.returncode == 0, created.stderr
    # B does not see A's containers as its own c1...
    assert b.listed()["c1"]["status"] != "running"
    assert a.listed()["c1"]["status"] == "running"
    # ...cannot start over them, and its delete --purge leaves them and A's claim alone.
    started = b.run("start", "c1")
    assert started.returncode == 2, started.stderr
    assert "not this ROOT's" in started.stderr and len(started.stderr.strip().splitlines()) == 1
    assert _objects(docker_client, "c1") == ours
    b.ok("delete", "c1", "--purge", "--yes")
    assert _objects(docker_client, "c1") == ours
    assert _claims(docker_client, "c1") == {"c1_sbm-claim": (a.id, a.ports("c1"))}
    assert "c1" not in b.listed()
    assert _routed(caddy, "c1.a.test") == "standin api-gw of c1"

    # With A's c1 stopped (its ports no longer bound), B may neither take the name again nor
    # hand out A's ports.
    a.ok("stop", "c1")
    refused = b.run("create", "c1", "--no-start", *extra)
    assert "c1" in _refused(refused) and "not this ROOT's" in refused.stderr
    assert "c1" not in json.loads((b.root / "state.json").read_text())["instances"]
    assert not (b.root / "instances" / "c1").exists()
    b.ok("create", "c3", "--no-start", *extra)
    assert not a.ports("c1") & b.ports("c3")
    assert "c2" not in a.listed() and "c3" not in a.listed()

    # Deleted, A's c1 leaves nothing on the engine or in Caddy, its claim included: B may now
    # take the name.
    a.ok("delete", "c1", "--purge", "--yes")
    assert _objects(docker_client, "c1") == {"containers": {}, "volumes": {}, "networks": {}}
    assert _claims(docker_client, "c1") == {}
    assert _routed(caddy, "c1.a.test") == ""
    assert not [r for r in caddy.routes() if "a.test" in json.dumps(r)], caddy.routes()
    assert status(b) == {"c2": "ok", "c3": "ok"}
    b.ok("create", "c1", "--no-start", *extra)
    assert _claims(docker_client, "c1") == {"c1_sbm-claim": (b.id, b.ports("c1"))}


def test_a_claim_is_stale_only_for_a_root_gone_from_this_very_machine(tmp_path):
    """Two controllers may share a host name (NixOS's default one) and a worker's engine: a
    claim made on another machine is never taken for a ROOT of ours that is gone."""
    from controller.ownership import Claim, root_id, where

    root = tmp_path / "root"
    root.mkdir()
    mine = root_id(root)
    here = where(root)
    gone = Claim("x_sbm-claim", "x", "another-id", here, frozenset())
    assert gone.stale()  # this machine, this path, another id: that ROOT is gone
    assert not Claim("x_sbm-claim", "x", mine, here, frozenset()).stale()
    host, _, path = here.partition(":")
    twin = f"{host.split('/')[0]}/0123456789abcdef:{path}"  # same host name, other machine
    if twin.split(":")[0] != host:
        assert not Claim("x_sbm-claim", "x", "another-id", twin, frozenset()).stale()
