"""The fault campaign (issue 10): commands killed at every step, and Docker or Caddy going away in
the middle of a command; afterwards one plain command converges and `list`, `caddy status`, the
engine and the snippets agree.

The real CLI runs as a subprocess. controller/faults.py is the hook: with SUPABASE_MANAGER_FAULT
set to a point's name the process SIGKILLs itself there; with NAME:pause it SIGSTOPs itself, the
test takes Docker or Caddy away and sends SIGCONT. Docker "stops" for the command through a unix
socket proxy in front of the real engine (DockerProxy): closing it is what a stopped dockerd
looks like to the client, without stopping the engine the other tests use.

Supabase's images cannot be pulled here: instances run the stand-in overlay
(tests/world/standin.py) through --extra-compose; Caddy, Docker and compose are the real programs.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable
from itertools import cycle
from pathlib import Path

import pytest

from controller.faults import ENV as FAULT_ENV
from controller.labels import INSTANCE_LABEL, PORTS_LABEL, ROOT_LABEL
from controller.ownership import CLAIM_LABEL, PROJECT_LABEL
from tests.test_lifecycle import CLI, World
from tests.world.caddy import route_id

pytestmark = pytest.mark.docker

TEMPLATE = "v0.8.2"
PASSWORD = "fault-campaign-password-1"

# Every step boundary of create, delete, env set and caddy sync (controller.faults.point calls).
CREATE_POINTS = [
    "create.recorded",
    "create.rendered",
    "caddy.snippet-written",
    "create.published",
    "create.started",
    "create.healthy",
]
DELETE_POINTS = [
    "delete.down",
    "delete.leftovers",
    "caddy.snippet-removed",
    "delete.unpublished",
    "delete.purged",
]
ENV_POINTS = ["env.written", "caddy.snippet-written", "env.published"]
SYNC_POINTS = ["sync.snippets-removed", "sync.snippets-written", "sync.routed"]


def test_the_campaign_covers_every_fault_point():
    """A point added to the code without a test, or a test here naming a point that is gone.
    Points of create, delete, env set and caddy sync are this campaign's; another command's
    (e.g. move.*) must be named in the tests of that command."""
    tests = Path(__file__).resolve().parent
    source = tests.parent / "controller"
    found = {
        match
        for path in source.rglob("*.py")
        for match in re.findall(r'faults\.point\("([^"]+)"\)', path.read_text())
    }
    campaign = {*CREATE_POINTS, *DELETE_POINTS, *ENV_POINTS, *SYNC_POINTS}
    assert campaign <= found, campaign - found
    elsewhere = "\n".join(
        path.read_text() for path in tests.glob("test_*.py") if path.name != Path(__file__).name
    )
    untested = {point for point in found - campaign if f'"{point}' not in elsewhere}
    assert not untested, f"fault points no test runs into: {sorted(untested)}"


@pytest.fixture
def world(data_root, caddy, docker_client):
    """A data root with the template imported. Every create puts a claim volume on the engine,
    so tests that check the engine (assert_agree) also ask for docker_sandbox: the machine-wide
    Docker lock keeps another run's sandbox from removing this test's claims, and the clean-up."""
    w = World(data_root, caddy)
    # Ports of its own: an instance never started holds none on the engine, and another
    # ROOT's test could then bind one, answering where this test expects nothing.
    w.env["SUPABASE_MANAGER_PORT_RANGE"] = "28400-28999"
    w.import_template(TEMPLATE)
    return w


# --- running a command into a fault -------------------------------------------------------------


def killed_at(world: World, point: str, *args: str) -> None:
    """Run the CLI with the fault point set; it must die there by SIGKILL."""
    proc = subprocess.run(
        [*CLI, *args],
        env={**world.env, FAULT_ENV: point},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == -signal.SIGKILL, (
        f"{args} never reached {point}: exit {proc.returncode}: {proc.stderr}"
    )


def _stopped(pid: int) -> bool:
    stat = Path(f"/proc/{pid}/stat").read_text()
    return stat.rsplit(")", 1)[1].split()[0] == "T"


def paused_at(
    world: World, point: str, outage: Callable[[], None], *args: str
) -> subprocess.CompletedProcess:
    """Run the CLI until it stops itself at ``point``, call ``outage``, let it go on; its result."""
    proc = subprocess.Popen(
        [*CLI, *args],
        env={**world.env, FAULT_ENV: f"{point}:pause"},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 120
        while not _stopped(proc.pid):
            assert proc.poll() is None, f"{args} never reached {point}: {proc.communicate()}"
            assert time.monotonic() < deadline, f"{args} did not reach {point} in time"
            time.sleep(0.05)
        outage()
    finally:
        os.kill(proc.pid, signal.SIGCONT)
    out, err = proc.communicate(timeout=300)
    return subprocess.CompletedProcess(args, proc.returncode, out, err)


def error_line(proc: subprocess.CompletedProcess) -> str:
    """The one error line on stderr (besides "… doing X" progress lines), without traceback."""
    lines = [line for line in proc.stderr.splitlines() if not line.startswith("… ")]
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert lines[0].startswith("supabase-manager: ") and "internal error" not in lines[0], lines
    return lines[0]


class DockerProxy:
    """A unix socket that forwards to the real engine's; ``down()`` closes it and every
    connection through it (a stopped dockerd, as clients see it), ``up()`` opens it again."""

    def __init__(self, path: Path) -> None:
        self.path = path
        host = os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock")
        assert host.startswith("unix://"), host
        self.target = host.removeprefix("unix://")
        self._listener: socket.socket | None = None
        self._open: list[socket.socket] = []
        self._lock = threading.Lock()

    @property
    def url(self) -> str:
        return f"unix://{self.path}"

    def up(self) -> None:
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(str(self.path))
        listener.listen(64)
        listener.settimeout(0.1)
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def down(self) -> None:
        listener, self._listener = self._listener, None
        if listener is not None:
            listener.close()
        self.path.unlink(missing_ok=True)
        with self._lock:
            sockets, self._open = self._open, []
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()

    def _accept(self, listener: socket.socket) -> None:
        while self._listener is listener:
            try:
                client, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            client.settimeout(None)
            upstream = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            upstream.connect(self.target)
            with self._lock:
                self._open += [client, upstream]
            for src, dst in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(src, dst), daemon=True).start()

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
            dst.shutdown(socket.SHUT_WR)
        except OSError:
            pass


@pytest.fixture
def docker_proxy(tmp_path):
    proxy = DockerProxy(tmp_path / "docker-proxy.sock")
    proxy.up()
    yield proxy
    proxy.down()


# --- what a user checks afterwards --------------------------------------------------------------


def _engine(client, root: Path) -> dict[str, dict[str, list[str]]]:
    """This ROOT's containers (name state), networks and volumes on the engine, by instance."""
    owner = (root / "root-id").read_text().strip()
    mine = {"label": f"{ROOT_LABEL}={owner}"}
    out: dict[str, dict[str, list[str]]] = {}

    def add(instance: str, kind: str, what: str) -> None:
        out.setdefault(instance, {}).setdefault(kind, []).append(what)

    for c in client.containers.list(all=True, filters=mine, ignore_removed=True):
        add(c.labels.get(INSTANCE_LABEL, "?"), "containers", f"{c.name} {c.status}")
    for n in client.networks.list(filters=mine):
        add((n.attrs.get("Labels") or {}).get(PROJECT_LABEL, "?"), "networks", n.name)
    for v in client.volumes.list(filters=mine):
        if CLAIM_LABEL not in (v.attrs.get("Labels") or {}):  # claims: see _claims
            add((v.attrs.get("Labels") or {}).get(PROJECT_LABEL, "?"), "volumes", v.name)
    return out


def _claims(client, root: Path) -> dict[str, set[int]]:
    """This ROOT's claims on the engine: instance -> the host ports it holds."""
    owner = (root / "root-id").read_text().strip()
    out = {}
    for v in client.volumes.list(filters={"label": [CLAIM_LABEL, f"{ROOT_LABEL}={owner}"]}):
        labels = v.attrs.get("Labels") or {}
        out[labels[CLAIM_LABEL]] = {int(p) for p in labels[PORTS_LABEL].split(",") if p}
    return out


def _project_objects(client, name: str) -> list[str]:
    """Every container, network and volume of compose project ``name``, whoever made it."""
    label = {"label": f"{PROJECT_LABEL}={name}"}
    return (
        [c.name for c in client.containers.list(all=True, filters=label, ignore_removed=True)]
        + [n.name for n in client.networks.list(filters=label)]
        + [v.name for v in client.volumes.list(filters=label)]
    )


def _routed(world: World, host: str) -> bool:
    """Whether Caddy's listener has a route for ``host`` (unrouted: Caddy's empty 200)."""
    response = world.caddy.get(host)
    return not (response.status_code == 200 and response.text == "")


def assert_agree(world: World, client, running: dict[str, bool]) -> None:
    """`list`, `caddy status`, the engine, the snippets and Caddy's listener all say that
    exactly the instances of ``running`` exist, each running (True) or never started (False)."""
    listed = {row["name"]: row for row in world.json("list")}
    assert sorted(listed) == sorted(running), listed
    status = world.json("caddy", "status")
    assert status["reachable"] is True
    assert status["instances"] == dict.fromkeys(running, "ok"), status
    assert status["snippets"] == dict.fromkeys(running, "ok"), status
    assert status["extra"] == [] and status["extra_snippets"] == [], status
    snippets = sorted(p.name for p in (world.root / "caddy").glob("*.conf"))
    assert snippets == sorted(f"{name}.conf" for name in running)
    engine = _engine(client, world.root)
    assert sorted(engine) == sorted(name for name, up in running.items() if up), engine
    # Every instance, started or not, holds its name and ports on the engine.
    held = json.loads((world.root / "state.json").read_text())["instances"]
    assert _claims(client, world.root) == {n: set(held[n]["ports"].values()) for n in running}
    for name, up in running.items():
        row = listed[name]
        gateway = world.caddy.get(f"{name}.sbm.test")
        if up:
            containers = engine[name]["containers"]
            assert row["status"] == "running" and row["running"] == row["total"] == len(
                containers
            ), (row, containers)
            assert all(" running" in c for c in containers), containers
            assert gateway.text.strip() == f"standin api-gw of {name}"
        else:
            assert row["status"] == "stopped", row
            assert _project_objects(client, name) == []
            assert gateway.status_code == 502  # routed, nothing behind it yet
        assert (world.root / "instances" / name / ".env").is_file()


def assert_gone(world: World, client, name: str) -> None:
    assert _project_objects(client, name) == []
    assert name not in _claims(client, world.root)
    assert not (world.root / "instances" / name).exists()
    assert not _routed(world, f"{name}.sbm.test")
    assert route_id(world.root, name) not in json.dumps(world.caddy.config())


# --- SIGKILL at every step ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("create_point", "delete_point"),
    list(zip(CREATE_POINTS, cycle(DELETE_POINTS), strict=False)),
    ids=lambda point: point,
)
def test_killed_create_and_delete_converge(
    world, docker_client, docker_sandbox, create_point, delete_point
):
    """create killed at a step, `create NAME` finishes it; delete killed at a step, `delete NAME`
    finishes it. Real containers: what is left half-way is real too."""
    world.create("keep", TEMPLATE, "--no-start")  # a neighbour nothing may touch
    standin = str(world.standin(TEMPLATE))
    killed_at(
        world, create_point, "create", "fk", "--template", TEMPLATE, "--extra-compose", standin
    )
    assert {r["name"]: r["status"] for r in world.json("list")}["fk"] == "incomplete"

    world.run("create", "fk")
    assert_agree(world, docker_client, {"fk": True, "keep": False})

    killed_at(world, delete_point, "delete", "fk", "--purge", "--yes")
    assert "fk" in {r["name"] for r in world.json("list")}  # the record goes last

    world.run("delete", "fk", "--purge", "--yes")
    assert_gone(world, docker_client, "fk")
    assert_agree(world, docker_client, {"keep": False})


@pytest.mark.parametrize("point", ENV_POINTS)
def test_killed_env_set_converges_with_caddy_sync(world, docker_client, docker_sandbox, point):
    """Studio's credentials changed by `env set`, killed at a step: .env holds the old or the new
    value, never a mix; `caddy sync` makes Caddy ask for whatever .env holds."""
    world.create("ek", TEMPLATE, "--no-start")
    user = world.run("env", "ek", "get", "DASHBOARD_USERNAME").stdout.strip()
    old = world.run("env", "ek", "get", "DASHBOARD_PASSWORD").stdout.strip()
    killed_at(world, point, "env", "ek", "set", f"DASHBOARD_PASSWORD={PASSWORD}")

    now = world.run("env", "ek", "get", "DASHBOARD_PASSWORD").stdout.strip()
    assert now == PASSWORD  # every point is after the atomic write
    assert sorted(p.name for p in (world.root / "instances" / "ek").glob(".env*")) == [".env"]
    before = world.json("caddy", "status")["instances"]["ek"]
    assert before == ("ok" if point == "env.published" else "stale")

    world.run("caddy", "sync")
    assert_agree(world, docker_client, {"ek": False})
    studio = "ek-studio.sbm.test"
    assert world.caddy.get(studio, auth=(user, old)).status_code == 401
    assert world.caddy.get(studio, auth=(user, PASSWORD)).status_code == 502


def _drift(world: World) -> None:
    """Instances a (its live route lost), b (its snippet lost) and a leftover `ghost` (snippet and
    route of an instance the state no longer has; made with Docker down, so that it left no
    claim on the engine, only Caddy's leftovers)."""
    for name in ("a", "b", "ghost"):
        if name == "ghost":
            world.env["DOCKER_HOST"] = f"unix://{world.root}/no-docker.sock"
        world.create(name, TEMPLATE, "--no-start")
    world.env.pop("DOCKER_HOST")
    if "DOCKER_HOST" in os.environ:
        world.env["DOCKER_HOST"] = os.environ["DOCKER_HOST"]
    state_path = world.root / "state.json"
    state = json.loads(state_path.read_text())
    del state["instances"]["ghost"]
    state_path.write_text(json.dumps(state))
    world.caddy.admin("DELETE", f"/id/{route_id(world.root, 'a')}").raise_for_status()
    (world.root / "caddy" / "b.conf").unlink()
    status = world.json("caddy", "status")
    assert status["instances"] == {"a": "missing", "b": "ok"}
    assert status["snippets"] == {"a": "ok", "b": "missing"}
    assert status["extra"] == ["ghost"] and status["extra_snippets"] == ["ghost"]


@pytest.mark.parametrize("point", SYNC_POINTS)
def test_killed_caddy_sync_converges(world, docker_client, docker_sandbox, point):
    _drift(world)
    killed_at(world, point, "caddy", "sync")
    world.run("caddy", "sync")
    assert_agree(world, docker_client, {"a": False, "b": False})
    assert not _routed(world, "ghost.sbm.test")
    # The snippets alone give a restarted Caddy the same hosts (id-less until the next sync).
    world.caddy.restart()
    assert _routed(world, "a.sbm.test") and _routed(world, "b-studio.sbm.test")
    assert not _routed(world, "ghost.sbm.test")
    world.run("caddy", "sync")
    assert_agree(world, docker_client, {"a": False, "b": False})


# --- Docker or Caddy gone in the middle of a command --------------------------------------------


@pytest.mark.parametrize("point", ["create.published", "create.started"])
def test_docker_gone_during_create(world, docker_client, docker_sandbox, docker_proxy, point):
    world.env["DOCKER_HOST"] = docker_proxy.url
    standin = str(world.standin(TEMPLATE))
    args = ["create", "dk", "--template", TEMPLATE, "--extra-compose", standin]
    proc = paused_at(world, point, docker_proxy.down, *args)
    assert proc.returncode == 1, proc.stderr
    line = error_line(proc)
    assert "Docker" in line and str(docker_proxy.path) in line, line
    docker_proxy.up()
    assert {r["name"]: r["status"] for r in world.json("list")}["dk"] == "incomplete"
    world.run("create", "dk")
    assert_agree(world, docker_client, {"dk": True})


def test_docker_gone_during_delete(world, docker_client, docker_sandbox, docker_proxy):
    world.env["DOCKER_HOST"] = docker_proxy.url
    world.create("dd", TEMPLATE)
    proc = paused_at(world, "delete.down", docker_proxy.down, "delete", "dd", "--purge", "--yes")
    assert proc.returncode == 1, proc.stderr
    line = error_line(proc)
    assert "Docker" in line and str(docker_proxy.path) in line, line
    docker_proxy.up()
    assert "dd" in {r["name"] for r in world.json("list")}
    world.run("delete", "dd", "--purge", "--yes")
    assert_gone(world, docker_client, "dd")
    assert_agree(world, docker_client, {})


def test_caddy_gone_during_create_delete_and_env_set(world, docker_client, docker_sandbox):
    """Caddy stopped in the middle of create, delete and env set: each still does all the rest
    (record, files, snippets), then fails with one line saying what was done and that the routes
    wait for `caddy sync` (exit 1, audited as failed with that line); a `caddy sync` once Caddy
    is back converges."""
    for name in ("cg", "old"):
        world.create(name, TEMPLATE, "--no-start")
    standin = str(world.standin(TEMPLATE))
    create = ["create", "cn", "--template", TEMPLATE, "--extra-compose", standin, "--no-start"]
    steps = [
        ("create.rendered", create, "cn was created", ["cg", "cn", "old"]),
        (
            "delete.leftovers",
            ["delete", "old", "--purge", "--yes"],
            "old was deleted",
            ["cg", "cn"],
        ),
        (
            "env.written",
            ["env", "cg", "set", f"DASHBOARD_PASSWORD={PASSWORD}"],
            "cg's DASHBOARD_PASSWORD was changed",
            ["cg", "cn"],
        ),
    ]
    for point, args, done, left in steps:
        proc = paused_at(world, point, world.caddy.stop, *args)
        assert proc.returncode == 1, proc.stderr
        line = error_line(proc)
        assert line.startswith(f"supabase-manager: {done}"), line
        assert f"Caddy's admin API at {world.caddy.admin_url} cannot be reached" in line, line
        assert "routes are pending; run `caddy sync` once Caddy is back" in line, line
        assert PASSWORD not in proc.stderr + proc.stdout
        audit = json.loads((world.root / "audit.log").read_text().splitlines()[-1])
        assert audit["outcome"] == "failed" and audit["detail"] == line.split(": ", 1)[1], audit
        # Everything but Caddy's live routes is done already.
        assert sorted(r["name"] for r in world.json("list")) == left
        snippets = sorted(p.stem for p in (world.root / "caddy").glob("*.conf"))
        assert snippets == left
        world.caddy.start()
        world.run("caddy", "sync")
        assert_agree(world, docker_client, dict.fromkeys(left, False))
    user = world.run("env", "cg", "get", "DASHBOARD_USERNAME").stdout.strip()
    assert world.caddy.get("cg-studio.sbm.test", auth=(user, PASSWORD)).status_code == 502


def test_caddy_gone_renders_as_an_error_in_a_batch_script(world):
    """The shell's batch mode reports it as any failed operation (the REPL runs lines through the
    same shell.run.execute): the error line with its line number, and the script stops there
    with exit 1."""
    world.caddy.stop()
    proc = subprocess.run(
        CLI,
        input="create bc --no-start\nenv bc set JWT_EXPIRY=120\n",
        env=world.env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 1, proc.stderr
    line = error_line(proc)
    assert line.startswith("supabase-manager: line 1: bc was created, but Caddy's admin API"), line
    assert "routes are pending" in line, line
    assert world.json("list")[0]["name"] == "bc"  # created all the same
    assert "JWT_EXPIRY=3600" in (world.root / "instances" / "bc" / ".env").read_text()


def test_caddy_gone_during_caddy_sync(world, docker_client, docker_sandbox):
    _drift(world)
    proc = paused_at(world, "sync.snippets-written", world.caddy.stop, "caddy", "sync")
    assert proc.returncode == 1
    line = error_line(proc)
    assert "Caddy admin API" in line and "snippets are up to date" in line, line
    world.caddy.start()
    world.run("caddy", "sync")
    assert_agree(world, docker_client, {"a": False, "b": False})
