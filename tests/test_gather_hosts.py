"""Gathering from every host side by side (issue 15): `list`, `top`, `metrics`, `check` and
`host list` ask each host's engine in a thread of its own with its own timeout; a host that does
not answer marks only its instances `unreachable`, never blocks the others nor fails the command.

The first tests drive controller/status.py's gathering with Engine clients over addresses that
play the hosts: httpx.MockTransport for an engine that answers (or answers slowly: a hung host),
a unix socket path with nothing listening for a host that is down. The CLI tests run the real
commands against the real local engine (a labelled stand-in container plays a running instance)
beside hosts reached over the real ssh client: one whose port refuses, one whose port accepts and
never says a word (ssh hangs in its handshake). The last tests run against a real second engine
behind sshd (the `worker` fixture, tests/world/worker.py): its link taken down; its engine reached
through the socket forwarded by the ssh master, then through dial-stdio once its sshd refuses
streamlocal forwarding.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from controller.dockerapi import DockerAPI
from controller.engine import Engine, EngineAddress
from controller.labels import INSTANCE_LABEL, ROOT_LABEL
from controller.state import CREATING, READY, HostRecord, InstanceRecord, StateStore
from controller.status import HOST_TIMEOUT, UNREACHABLE, each_host, gather_hosts
from controller.views import RUNNING, STOPPED

REPO = Path(__file__).resolve().parents[1]
CLI = [sys.executable, "-m", "shell"]
LOCAL = EngineAddress.parse("unix:///var/run/docker.sock")
REMOTE = EngineAddress.parse("tcp://10.99.0.5:2375")  # never dialled: a transport answers


def _row(cid: str, instance: str, service: str, state: str, status: str) -> dict:
    return {
        "Id": cid,
        "Names": [f"/{instance}-{service}"],
        "State": state,
        "Status": status,
        "Labels": {INSTANCE_LABEL: instance, "com.docker.compose.service": service},
    }


class Host:
    """An engine that answers from canned rows (after ``delay`` seconds), /info, and stats."""

    def __init__(
        self, rows=(), delay: float = 0.0, cpus: int = 4, stats=None, stats_delay: float = 0.0
    ) -> None:
        self.rows = list(rows)
        self.delay = delay
        self.stats_delay = stats_delay
        self.cpus = cpus
        self.stats = stats or {}
        self.released = threading.Event()  # ends a hung host's wait at teardown

    def handler(self, request: httpx.Request) -> httpx.Response:
        if self.delay:
            self.released.wait(self.delay)
        path = request.url.path
        if path == "/containers/json":
            return httpx.Response(200, json=self.rows)
        if path == "/info":
            return httpx.Response(
                200, json={"ServerVersion": "27.1.0", "NCPU": self.cpus, "MemTotal": 8 << 30}
            )
        if path.endswith("/stats") and self.stats_delay:
            self.released.wait(self.stats_delay)
        if path.endswith("/stats") and path.split("/")[2] in self.stats:
            return httpx.Response(200, json=self.stats[path.split("/")[2]])
        if path == "/_ping":
            return httpx.Response(200, text="OK")
        return httpx.Response(404, json={"message": "page not found"})

    def api(self, address: EngineAddress = LOCAL) -> DockerAPI:
        return DockerAPI(engine=Engine(address, transport=httpx.MockTransport(self.handler)))


def _down(tmp_path: Path) -> DockerAPI:
    """A host whose engine is not there: a socket path nothing listens on."""
    return DockerAPI(engine=Engine(EngineAddress.parse(f"unix://{tmp_path}/nothing.sock")))


def _records(**hosts: str) -> dict[str, InstanceRecord]:
    return {
        name: InstanceRecord(name, "v0.8.2", phase=READY, host=host) for name, host in hosts.items()
    }


def _no_jobs(_record: InstanceRecord) -> set[str]:
    return set()


# --- the gathering ------------------------------------------------------------------------------


def test_a_host_that_is_down_marks_only_its_own_instances(tmp_path):
    here = Host(
        [
            _row("c1", "a", "db", "running", "Up 1 minute"),
            _row("c2", "b", "db", "exited", "Exited (1) 2 s ago"),
        ]
    )
    records = _records(a="local", b="local", c="far", d="far")
    records["e"] = InstanceRecord("e", "v0.8.2", phase=CREATING, host="far")
    apis = {"local": here.api(), "far": _down(tmp_path)}
    found, errors = gather_hosts(records, apis.__getitem__, _no_jobs)
    assert {n: s.status for n, s in found.items()} == {
        "a": RUNNING,
        "b": STOPPED,
        "c": UNREACHABLE,
        "d": UNREACHABLE,
        "e": "incomplete",  # state says its create did not finish, whatever the host
    }
    assert (found["a"].running, found["a"].total) == (1, 1)
    assert (found["c"].running, found["c"].total, found["c"].cpu_percent) == (0, 0, None)
    assert list(errors) == ["far"]
    assert "nothing.sock" in errors["far"] and "\n" not in errors["far"]


def test_a_hung_host_is_left_behind_at_its_timeout_and_the_others_answer():
    here = Host([_row("c1", "a", "db", "running", "Up 1 minute")])
    hung = Host([_row("c9", "z", "db", "running", "Up 1 minute")], delay=30)
    apis = {"local": here.api(), "hung": hung.api(REMOTE)}
    started = time.monotonic()
    try:
        found, errors = gather_hosts(
            _records(a="local", z="hung"), apis.__getitem__, _no_jobs, timeout=0.5
        )
    finally:
        hung.released.set()
    assert time.monotonic() - started < 2
    assert found["a"].status == RUNNING and found["z"].status == UNREACHABLE
    assert errors == {"hung": "no answer within 0.5 s"}


def test_a_host_slow_only_with_its_figures_keeps_its_statuses():
    """Many containers over ssh make stats slow: the listing came in time, so the instances
    keep their status (no figures) and the host is not reported as down."""
    slow = Host([_row("r1", "z", "db", "running", "Up")], stats_delay=30)
    here = Host([_row("c1", "a", "db", "running", "Up")])
    apis = {"local": here.api(), "far": slow.api(REMOTE)}
    try:
        found, errors = gather_hosts(
            _records(a="local", z="far"), apis.__getitem__, _no_jobs, resources=True, timeout=1
        )
    finally:
        slow.released.set()
    assert errors == {}
    assert (found["z"].status, found["z"].running, found["z"].memory_bytes) == (RUNNING, 1, None)
    assert found["a"].status == RUNNING


def test_hosts_are_asked_side_by_side():
    slow = {
        name: Host([_row(f"c-{name}", name, "db", "running", "Up")], delay=0.6) for name in "xyz"
    }
    apis = {
        host: slow[name].api(REMOTE) for host, name in zip(("w1", "w2", "w3"), "xyz", strict=True)
    }
    started = time.monotonic()
    found, errors = gather_hosts(_records(x="w1", y="w2", z="w3"), apis.__getitem__, _no_jobs)
    took = time.monotonic() - started
    assert errors == {} and {s.status for s in found.values()} == {RUNNING}
    assert took < 1.2, f"three hosts of 0.6 s each took {took:.2f} s: asked one after another?"


def test_the_local_host_alone_is_asked_without_a_thread():
    seen = []

    def work(host: str) -> str:
        seen.append(threading.current_thread())
        return host

    assert each_host(["local"], work) == ({"local": "local"}, {})
    assert seen == [threading.main_thread()]
    seen.clear()
    assert each_host(["local", "w"], work)[0] == {"local": "local", "w": "w"}
    assert threading.main_thread() not in seen and len(seen) == 2


def test_a_host_failing_to_connect_is_reported_not_raised():
    def connect(host: str) -> DockerAPI:
        raise RuntimeError(f"no host named {host!r}\nsecond line")

    found, errors = gather_hosts(_records(a="ghost"), connect, _no_jobs)
    assert found["a"].status == UNREACHABLE
    assert errors == {"ghost": "no host named 'ghost'"}


def test_a_remote_hosts_figures_come_from_its_engine_stats():
    """No cgroup files for another machine's containers: CPU and memory from stats calls."""

    def sample(cpu_ns: int, system_ns: int) -> dict:
        return {
            "cpu_stats": {
                "cpu_usage": {"total_usage": cpu_ns},
                "system_cpu_usage": system_ns,
                "online_cpus": 2,
            },
            "memory_stats": {"usage": 5000, "stats": {"inactive_file": 1000}},
        }

    far = Host(
        [_row("r1", "a", "db", "running", "Up 1 minute")], stats={"r1": sample(7 * 10**9, 10**12)}
    )
    found, errors = gather_hosts(
        _records(a="far"), {"far": far.api(REMOTE)}.__getitem__, _no_jobs, resources=True
    )
    assert errors == {} and found["a"].memory_bytes == 4000

    from controller.metrics.probes import _resources

    assert _resources(far.api(REMOTE), ["r1"]) == {"r1": (7.0, 4000)}


def test_host_figures_for_host_list(tmp_path):
    from controller.config import load_settings
    from controller.hostsview import host_figures
    from controller.state import State

    here = Host(
        [
            _row("c1", "a", "db", "running", "Up"),
            _row("c2", "b", "db", "exited", "Exited (1) 1 s ago"),
        ],
        cpus=2,
    )
    state = State(instances=_records(a="local", b="local", c="far"))
    apis = {"local": here.api(), "far": _down(tmp_path)}
    settings = load_settings(root=tmp_path)
    figures, errors = host_figures(settings, state, ["local", "far"], _no_jobs, apis.__getitem__)
    assert list(figures) == ["local"] and "nothing.sock" in errors["far"]
    local = figures["local"]
    assert (local.info.version, local.info.cpus, local.info.memory_bytes) == ("27.1.0", 2, 8 << 30)
    assert local.running == 1


def test_top_shows_the_host_that_does_not_answer_and_its_instances():
    from controller.views import InstanceSummary
    from shell.top import Monitor

    class Manager:
        def list(self, resources=True, problems=None):
            problems.append("host w: no answer within 6 s")
            return [
                InstanceSummary("near", RUNNING, "v0.8.2", "https://near.x", "t", 3, 3, 5.0, 2**20),
                InstanceSummary("far", UNREACHABLE, "v0.8.2", "https://far.x", "t", host="w"),
            ]

        def request_counts(self):
            return None

        def logs(self, *args, **kwargs):
            return iter(())

    monitor = Monitor(Manager())
    monitor.sample()
    text = "".join(fragment for _, fragment in monitor.render(120))
    assert "host w: no answer within 6 s" in text
    (far,) = [line for line in text.splitlines() if "far@w" in line]
    assert "unreachable" in far
    assert any("near " in line and "running" in line for line in text.splitlines())


# --- the commands, on the real local engine beside hosts over ssh ---------------------------------


@contextlib.contextmanager
def silent_port() -> Iterator[int]:
    """A TCP port that accepts connections and never says a word (a hung machine's sshd)."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        listener.settimeout(0.2)
        while not stop.is_set():
            with contextlib.suppress(OSError):
                held.append(listener.accept()[0])

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield listener.getsockname()[1]
    finally:
        stop.set()
        thread.join(5)
        for conn in held:
            conn.close()
        listener.close()


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]  # nothing listens once it is closed


def _parse(text: str) -> dict[str, dict[tuple, float]]:
    from prometheus_client.parser import text_string_to_metric_families

    out: dict[str, dict[tuple, float]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out.setdefault(sample.name, {})[tuple(sorted(sample.labels.items()))] = sample.value
    return out


def _value(metrics: dict, name: str, **labels: str) -> float | None:
    return metrics.get("supabase_manager_" + name, {}).get(tuple(sorted(labels.items())))


@pytest.fixture
def two_hosts_down(tmp_path, docker_client, docker_sandbox) -> Iterator[tuple[Path, dict]]:
    """A ROOT with `here` (local, one running stand-in container of this ROOT), `gone1`/`gone2`
    on host `gone` (its ssh port refuses) and `mute1` on host `mute` (its ssh port never answers).
    """
    root = tmp_path / "root"
    store = StateStore(root / "state.json", root / ".state.lock")
    with store.transaction() as state:
        state.hosts["gone"] = HostRecord("gone", "sbm", "127.0.0.1", port=_closed_port())
        hosts = {"here": "local", "gone1": "gone", "gone2": "gone"}
        for name, host in hosts.items():
            state.instances[name] = InstanceRecord(
                name, "v0.8.2", phase=READY, host=host, autostart=host == "local"
            )
    for name in hosts:
        (root / "instances" / name).mkdir(parents=True)
        (root / "instances" / name / ".env").write_text("POSTGRES_PASSWORD=x\n")
    _labelled(docker_client, root, "here")
    env = dict(os.environ)
    env.update(
        SUPABASE_MANAGER_ROOT=str(root),
        SUPABASE_MANAGER_CADDY_ADMIN="http://127.0.0.1:9",  # no Caddy: its own lines in check
        NO_COLOR="1",
    )
    with silent_port() as port:
        with store.transaction() as state:
            state.hosts["mute"] = HostRecord("mute", "sbm", "127.0.0.1", port=port)
            state.instances["mute1"] = InstanceRecord("mute1", "v0.8.2", phase=READY, host="mute")
        (root / "instances" / "mute1").mkdir(parents=True)
        (root / "instances" / "mute1" / ".env").write_text("POSTGRES_PASSWORD=x\n")
        yield root, env


def _run_all(
    env: dict, *commands: tuple[str, ...]
) -> list[tuple[subprocess.CompletedProcess, float]]:
    """The commands side by side (each waits out the mute host once): (result, seconds) each."""
    started = time.monotonic()
    procs = [
        subprocess.Popen(
            [*CLI, *args], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        for args in commands
    ]
    out = []
    for proc, args in zip(procs, commands, strict=True):
        stdout, stderr = proc.communicate(timeout=60)
        done = subprocess.CompletedProcess([*CLI, *args], proc.returncode, stdout, stderr)
        out.append((done, time.monotonic() - started))
    return out


@pytest.mark.docker
def test_list_check_and_metrics_with_hosts_down(two_hosts_down):
    _root, env = two_hosts_down
    (proc, took), (text, _), (check, check_took), (metrics_run, metrics_took) = _run_all(
        env, ("list", "--json"), ("list",), ("check",), ("metrics",)
    )
    assert proc.returncode == 0, proc.stderr
    assert took < HOST_TIMEOUT + 4, f"list took {took:.1f} s: held up by the mute host"
    rows = {row["name"]: row for row in json.loads(proc.stdout)}
    assert {n: r["status"] for n, r in rows.items()} == {
        "here": "running",
        "gone1": UNREACHABLE,
        "gone2": UNREACHABLE,
        "mute1": UNREACHABLE,
    }
    assert rows["here"]["running"] == 1 and rows["here"]["memory_bytes"] > 0
    warnings = proc.stderr.strip().splitlines()
    assert len(warnings) == 2, warnings
    assert warnings[0].startswith("host gone") and "refused" in warnings[0]
    assert warnings[1].startswith("host mute") and f"{HOST_TIMEOUT:g} s" in warnings[1]

    assert text.returncode == 0
    lines = {line.split()[1]: line for line in text.stdout.splitlines()[1:]}
    assert "unreachable" in lines["gone1"] and "running" in lines["here"]

    assert check.returncode == 1
    assert check_took < 12, f"check took {check_took:.1f} s"
    problems = check.stdout.splitlines()
    assert len([p for p in problems if p.startswith("host gone")]) == 1, problems
    assert len([p for p in problems if p.startswith("host mute")]) == 1, problems
    assert not any(p.startswith(("here:", "gone1:", "mute1:")) and "service" in p for p in problems)

    assert metrics_run.returncode == 0 and metrics_took < 12
    metrics = _parse(metrics_run.stdout)
    assert _value(metrics, "host_up", host="local") == 1
    assert _value(metrics, "host_up", host="gone") == 0
    assert _value(metrics, "host_up", host="mute") == 0
    assert _value(metrics, "docker_up") == 1
    assert _value(metrics, "instance_up", instance="here") == 1
    assert _value(metrics, "instance_status", instance="gone1", status="unknown") == 1
    assert _value(metrics, "container_healthy", instance="here", service="db") == 1
    assert not any(
        dict(k)["instance"] != "here" for k in metrics.get("supabase_manager_container_healthy", {})
    )


# --- a real second engine behind sshd (tests/world/worker.py), taken off the network ------------


def _labelled(client, root: Path, instance: str) -> None:
    """A running stand-in container that plays instance ``instance`` of ROOT ``root``."""
    from controller.ownership import root_id

    client.containers.run(
        "sbm-standin/busybox:1",
        ["sleep", "600"],
        name=f"gather-{os.getpid()}-{instance}",
        labels={
            INSTANCE_LABEL: instance,
            ROOT_LABEL: root_id(root),
            "com.docker.compose.service": "db",
        },
        detach=True,
    )


@pytest.fixture
def local_and_worker(data_root, caddy, docker_client, docker_sandbox, worker, worker_sandbox):
    """A ROOT with host `w2` (the worker, added with `host add`), `near` running here and `far`
    running there. `create --host` was not finished when this was written: the instances are
    records in state.json, and their containers are started on each engine directly (what the
    gathering reads is the same: containers labelled with the instance and this ROOT). The ssh
    master is ended and the worker's link brought back afterwards."""
    from tests.world.cli import CliRoot
    from tests.world.remote import close_masters

    cli = CliRoot(data_root, caddy, SUPABASE_MANAGER_SSH_IDENTITY_FILE=str(worker.identity_file))
    cli.run("host", "add", "w2", worker.ssh_url, "--accept-new-key")
    store = StateStore(data_root / "state.json", data_root / ".state.lock")
    with store.transaction() as state:
        for name, host in (("near", "local"), ("far", "w2")):
            state.instances[name] = InstanceRecord(name, "v0.8.2", phase=READY, host=host)
    for name in ("near", "far"):
        (data_root / "instances" / name).mkdir(parents=True)
        (data_root / "instances" / name / ".env").write_text("POSTGRES_PASSWORD=x\n")
    _labelled(docker_client, data_root, "near")
    far = worker.client()
    try:
        _labelled(far, data_root, "far")
    finally:
        far.close()
    try:
        yield cli
    finally:
        worker.reconnect()
        close_masters(data_root)


def _end_master(root: Path) -> None:
    """End the ssh master to the worker (and with it the forward of its engine's socket)."""
    for config in (root / "ssh").glob("config*"):
        subprocess.run(
            ["ssh", "-F", str(config), "-O", "exit", "sbm-w2"], capture_output=True, timeout=10
        )


@pytest.mark.docker
def test_a_worker_gone_from_the_network_leaves_only_its_instances_unreachable(
    local_and_worker, worker
):
    cli = local_and_worker
    rows = {row["name"]: row for row in cli.json("list")}
    assert {n: (r["host"], r["status"]) for n, r in rows.items()} == {
        "near": ("local", "running"),
        "far": ("w2", "running"),
    }
    assert rows["far"]["memory_bytes"] > 0 and rows["far"]["cpu_percent"] is not None
    hosts = {row["name"]: row for row in cli.json("host", "list")}
    assert hosts["w2"]["reachable"] and hosts["w2"]["docker_version"]
    assert (hosts["w2"]["instances"], hosts["w2"]["running"]) == (1, 1)
    assert hosts["w2"]["cpus"] > 0 and hosts["w2"]["memory_bytes"] > 0
    assert hosts["w2"]["memory_used_bytes"] > 0
    assert (hosts["local"]["instances"], hosts["local"]["running"]) == (1, 1)

    worker.disconnect()  # its link goes down: open ssh sessions hang, new ones get no route
    (listed, took), (check, check_took), (metrics_run, _), (host_list, _) = _run_all(
        cli.env, ("list", "--json"), ("check",), ("metrics",), ("host", "list", "--json")
    )
    assert listed.returncode == 0, listed.stderr
    assert took < HOST_TIMEOUT + 4, f"list took {took:.1f} s with the worker gone"
    rows = {row["name"]: row for row in json.loads(listed.stdout)}
    assert rows["far"]["status"] == UNREACHABLE and rows["near"]["status"] == "running"
    assert rows["near"]["memory_bytes"] > 0
    assert [line for line in listed.stderr.splitlines() if line.startswith("host w2")]

    assert check.returncode == 1 and check_took < 12
    assert len([p for p in check.stdout.splitlines() if p.startswith("host w2")]) == 1

    metrics = _parse(metrics_run.stdout)
    assert _value(metrics, "host_up", host="w2") == 0
    assert _value(metrics, "host_up", host="local") == 1
    assert _value(metrics, "instance_status", instance="far", status="unknown") == 1
    assert _value(metrics, "instance_up", instance="near") == 1

    assert host_list.returncode == 0, host_list.stderr
    hosts = {row["name"]: row for row in json.loads(host_list.stdout)}
    assert hosts["local"]["reachable"] and not hosts["w2"]["reachable"]
    assert hosts["w2"]["error"] and "\n" not in hosts["w2"]["error"]

    worker.reconnect()
    rows = {row["name"]: row for row in cli.json("list")}
    assert rows["far"]["status"] == "running"


@pytest.mark.docker
def test_a_workers_engine_through_its_forwarded_socket_or_dial_stdio_when_sshd_refuses(
    local_and_worker, worker
):
    """Each Engine connection to the worker is a channel of the ssh master on the engine's
    socket forwarded here (private), not a dial-stdio process; CPU and memory come from the
    worker's cgroup files, read there in one ssh session. With streamlocal forwarding refused
    by the worker's sshd, the same commands work through dial-stdio."""
    from controller import cgroups, ssh
    from controller.labels import INSTANCE_LABEL

    cli = local_and_worker
    (config,) = (cli.root / "ssh").glob("config*")
    address = EngineAddress("ssh", host="sbm-w2", ssh_config=str(config))
    forward = ssh.Forward.of(config, "sbm-w2")
    assert forward is not None

    rows = {row["name"]: row for row in cli.json("list")}
    assert rows["far"]["status"] == "running" and rows["far"]["memory_bytes"] > 0
    mode = forward.local.stat().st_mode
    assert stat.S_ISSOCK(mode) and stat.S_IMODE(mode) == 0o600
    assert stat.S_IMODE(forward.local.parent.stat().st_mode) == 0o700
    with Engine(address, timeout=10) as engine:
        (far,) = engine.containers([f"{INSTANCE_LABEL}=far"])
        assert not engine.sessions_limited  # connections are channels of the master
    reading = cgroups.sample_remote(address, [far.id])[far.id]
    assert reading.memory_bytes > 0 and reading.cpu_percent >= 0
    assert cgroups.counters_remote(address, [far.id])[far.id][0] > 0  # CPU seconds so far

    worker.configure_ssh("AllowStreamLocalForwarding no")
    try:
        _end_master(cli.root)  # the master's connection kept the old settings
        rows = {row["name"]: row for row in cli.json("list")}
        assert rows["far"]["status"] == "running" and rows["far"]["memory_bytes"] > 0
        assert "dial-stdio does" in forward.refused() and not forward.local.exists()
        with Engine(address, timeout=10) as engine:
            engine.ping()
            assert engine.sessions_limited  # dial-stdio: ssh sessions, capped per master
    finally:
        worker.configure_ssh()
        _end_master(cli.root)
