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
import shutil
import signal
import socket
import subprocess
import tempfile
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
from tests.world import CaddyProcess, DockerSandbox
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


@pytest.fixture(scope="module")
def engine_lock(docker_client):
    """The machine-wide Docker lock, held for the whole module: the shared `campaign` world
    keeps objects on the engine from test to test, which another run's sandbox must not take."""
    with DockerSandbox(docker_client).session() as sandbox:
        yield sandbox


KEEP = "keep"  # the campaign's neighbour, created --no-start: it holds only its claim volume


@pytest.fixture
def docker_sandbox(engine_lock, docker_client):
    """As conftest's, under the module's lock: what the test made is force-removed after it."""
    sandbox = DockerSandbox(docker_client)
    sandbox.snapshot()
    try:
        yield sandbox
    finally:
        sandbox.cleanup()


def _world(root: Path, caddy) -> World:
    w = World(root, caddy)
    # Ports of its own: an instance never started holds none on the engine, and another
    # ROOT's test could then bind one, answering where this test expects nothing.
    w.env["SUPABASE_MANAGER_PORT_RANGE"] = "28400-28999"
    w.import_template(TEMPLATE)
    return w


@pytest.fixture
def world(data_root, caddy, docker_client):
    """A data root with the template imported. Every create puts a claim volume on the engine,
    so tests that check the engine (assert_agree) also ask for docker_sandbox: the machine-wide
    Docker lock keeps another run's sandbox from removing this test's claims, and the clean-up."""
    return _world(data_root, caddy)


@pytest.fixture(scope="module")
def campaign(engine_lock):
    """One data root and Caddy for the create/delete cases, in turn: each leaves it as it found
    it, holding only `keep` (created --no-start), the neighbour nothing may touch.

    Its folder is not under pytest's basetemp: conftest's _no_claims_left removes the claims of
    ROOTs there after every test, and `keep` must hold its claim from case to case. The claim
    goes with the module's engine_lock sandbox at the end."""
    base = Path(tempfile.mkdtemp(prefix="sbm-faults-"))
    root = base / "root"
    root.mkdir()
    caddy = CaddyProcess(root, base / "caddy-run")
    caddy.start()
    try:
        w = _world(root, caddy)
        w.create(KEEP, TEMPLATE, "--no-start")
        yield w
    finally:
        caddy.stop()
        shutil.rmtree(base, ignore_errors=True)


def _fresh(world: World, client) -> World:
    """The campaign world as every case finds it (an earlier case that failed half-way can
    leave more: that case's failure is the one to read)."""
    assert [row["name"] for row in world.json("list")] == [KEEP], "left by an earlier case"
    assert list(_claims(client, world.root)) == [KEEP], "left by an earlier case"
    return world


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


def side_by_side(
    world: World, runs: list[tuple[str | None, list[str]]], envs: list[dict[str, str]] | None = None
) -> None:
    """Run the CLI commands at the same moment (with ``envs``, each with its own additions to the
    environment), each into its fault point (where it must die by SIGKILL) or, with None, to
    success. Separate instances: nothing but waiting on the engine and the healthchecks is
    shared, and the waits overlap."""
    envs = envs or [{}] * len(runs)
    procs = [
        (
            point,
            args,
            subprocess.Popen(
                [*CLI, *args],
                env={**world.env, **env, **({FAULT_ENV: point} if point else {})},
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            ),
        )
        for (point, args), env in zip(runs, envs, strict=True)
    ]
    failed = []
    for point, args, proc in procs:
        _, err = proc.communicate(timeout=300)
        if point is not None and proc.returncode != -signal.SIGKILL:
            failed.append(f"{args} never reached {point}: exit {proc.returncode}: {err}")
        elif point is None and proc.returncode != 0:
            failed.append(f"{args} exited {proc.returncode}: {err}")
    assert not failed, "\n".join(failed)


def _stopped(pid: int) -> bool:
    stat = Path(f"/proc/{pid}/stat").read_text()
    return stat.rsplit(")", 1)[1].split()[0] == "T"


def paused_side_by_side(
    world: World,
    runs: list[tuple[str, list[str], dict[str, str]]],
    outage: Callable[[], None],
) -> list[subprocess.CompletedProcess]:
    """Run the CLI commands (point, args, additions to the environment) until each stops itself
    at its point, call ``outage`` once, let them all go on; their results."""
    procs = [
        subprocess.Popen(
            [*CLI, *args],
            env={**world.env, **env, FAULT_ENV: f"{point}:pause"},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for point, args, env in runs
    ]
    try:
        deadline = time.monotonic() + 120
        for (point, args, _), proc in zip(runs, procs, strict=True):
            while not _stopped(proc.pid):
                assert proc.poll() is None, f"{args} never reached {point}: {proc.communicate()}"
                assert time.monotonic() < deadline, f"{args} did not reach {point} in time"
                time.sleep(0.05)
        outage()
    finally:
        for proc in procs:
            if proc.returncode is None:  # not reaped: its pid is still its own
                os.kill(proc.pid, signal.SIGCONT)
    results = []
    for (_, args, _), proc in zip(runs, procs, strict=True):
        out, err = proc.communicate(timeout=300)
        results.append(subprocess.CompletedProcess(args, proc.returncode, out, err))
    return results


def paused_at(
    world: World, point: str, outage: Callable[[], None], *args: str
) -> subprocess.CompletedProcess:
    """Run the CLI until it stops itself at ``point``, call ``outage``, let it go on; its result."""
    return paused_side_by_side(world, [(point, list(args), {})], outage)[0]


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


# Every create point, each paired with a delete point; two pairs per case, run side by side.
PAIRS = list(zip(CREATE_POINTS, cycle(DELETE_POINTS), strict=False))


@pytest.mark.parametrize(
    "pairs",
    [PAIRS[i : i + 2] for i in range(0, len(PAIRS), 2)],
    ids=lambda pairs: "+".join(f"{c}-{d}" for c, d in pairs),
)
def test_killed_create_and_delete_converge(campaign, docker_client, docker_sandbox, pairs):
    """create killed at a step, `create NAME` finishes it; delete killed at a step, `delete NAME`
    finishes it. Real containers: what is left half-way is real too. One instance per pair of
    points (fa, fb), their commands at the same moment."""
    world = _fresh(campaign, docker_client)
    cases = dict(zip(["fa", "fb"], pairs, strict=False))  # instance: (create, delete point)
    names = list(cases)
    standin = str(world.standin(TEMPLATE))
    create = ["--template", TEMPLATE, "--extra-compose", standin]
    side_by_side(world, [(c, ["create", n, *create]) for n, (c, _) in cases.items()])
    statuses = {r["name"]: r["status"] for r in world.json("list")}
    assert all(statuses[n] == "incomplete" for n in names), statuses

    side_by_side(world, [(None, ["create", n]) for n in names])
    assert_agree(world, docker_client, {**dict.fromkeys(names, True), "keep": False})

    delete = ["--purge", "--yes"]
    side_by_side(world, [(d, ["delete", n, *delete]) for n, (_, d) in cases.items()])
    listed = {r["name"] for r in world.json("list")}
    assert set(names) <= listed, listed  # the record goes last

    side_by_side(world, [(None, ["delete", n, *delete]) for n in names])
    for name in names:
        assert_gone(world, docker_client, name)
    assert_agree(world, docker_client, {"keep": False})


def test_killed_env_set_converges_with_caddy_sync(world, docker_client, docker_sandbox):
    """Studio's credentials changed by `env set`, killed at a step (one instance per step, side by
    side): .env holds the old or the new value, never a mix; `caddy sync` makes Caddy ask for
    whatever .env holds."""
    points = {f"e{i}": point for i, point in enumerate(ENV_POINTS, 1)}  # instance: its point
    standin = str(world.standin(TEMPLATE))
    create = ["--template", TEMPLATE, "--extra-compose", standin, "--no-start"]
    side_by_side(world, [(None, ["create", name, *create]) for name in points])
    user = {n: world.run("env", n, "get", "DASHBOARD_USERNAME").stdout.strip() for n in points}
    old = {n: world.run("env", n, "get", "DASHBOARD_PASSWORD").stdout.strip() for n in points}
    side_by_side(
        world,
        [(p, ["env", n, "set", f"DASHBOARD_PASSWORD={PASSWORD}"]) for n, p in points.items()],
    )

    status = world.json("caddy", "status")["instances"]
    for name, point in points.items():
        now = world.run("env", name, "get", "DASHBOARD_PASSWORD").stdout.strip()
        assert now == PASSWORD, point  # every point is after the atomic write
        files = sorted(p.name for p in (world.root / "instances" / name).glob(".env*"))
        assert files == [".env"], (point, files)
        assert status[name] == ("ok" if point == "env.published" else "stale"), (point, status)

    world.run("caddy", "sync")
    assert_agree(world, docker_client, dict.fromkeys(points, False))
    for name, point in points.items():
        studio = f"{name}-studio.sbm.test"
        assert world.caddy.get(studio, auth=(user[name], old[name])).status_code == 401, point
        assert world.caddy.get(studio, auth=(user[name], PASSWORD)).status_code == 502, point


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


def test_docker_gone_during_create_and_delete(campaign, docker_client, docker_sandbox, tmp_path):
    """Docker gone while create is at a step (dk1: create.published, nothing started yet; dk2:
    create.started, its containers up but not yet healthy), each instance's commands through a
    socket proxy of its own, side by side: one error line naming that socket, the instance left
    incomplete, and `create NAME` once Docker is back finishes it. Then Docker gone while delete
    is at delete.down: the same, and `delete NAME` finishes it."""
    world = _fresh(campaign, docker_client)
    points = {"dk1": "create.published", "dk2": "create.started"}
    proxies = {name: DockerProxy(tmp_path / f"{name}.sock") for name in points}
    envs = [{"DOCKER_HOST": proxies[name].url} for name in points]

    def docker_down() -> None:
        for proxy in proxies.values():
            proxy.down()

    def docker_up() -> None:
        for proxy in proxies.values():
            proxy.up()

    def failed_on_docker(procs: list[subprocess.CompletedProcess]) -> None:
        for name, proc in zip(points, procs, strict=True):
            assert proc.returncode == 1, (name, proc.stderr)
            line = error_line(proc)
            assert "Docker" in line and str(proxies[name].path) in line, line

    docker_up()
    try:
        standin = str(world.standin(TEMPLATE))
        create = ["--template", TEMPLATE, "--extra-compose", standin]
        runs = [
            (point, ["create", name, *create], env)
            for (name, point), env in zip(points.items(), envs, strict=True)
        ]
        failed_on_docker(paused_side_by_side(world, runs, docker_down))
        docker_up()
        statuses = {r["name"]: r["status"] for r in world.json("list")}
        assert [statuses[name] for name in points] == ["incomplete"] * 2, statuses
        side_by_side(world, [(None, ["create", name]) for name in points], envs)
        assert_agree(world, docker_client, {"dk1": True, "dk2": True, "keep": False})

        delete = ["--purge", "--yes"]
        runs = [
            ("delete.down", ["delete", name, *delete], env)
            for name, env in zip(points, envs, strict=True)
        ]
        failed_on_docker(paused_side_by_side(world, runs, docker_down))
        docker_up()
        assert set(points) <= {r["name"] for r in world.json("list")}
        side_by_side(world, [(None, ["delete", name, *delete]) for name in points], envs)
    finally:
        docker_down()
    for name in points:
        assert_gone(world, docker_client, name)
    assert_agree(world, docker_client, {"keep": False})


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
