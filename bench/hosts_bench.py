"""`supabase-manager list --json` across two hosts beside the same on one host (issue 15).

Two data roots, measured in the same run, fresh processes interleaved run by run (median):
- one host: 10 instances on the local engine;
- two hosts: 5 instances on the local engine and 5 on a second engine behind sshd (the test
  world's worker, tests/world/worker.py, added with `host add`).
Each instance is a record in state.json with INSTANCE_CONTAINERS running stand-in containers
labelled as its own (what `list` reads: the labels, not how they were made; a real `create
--host` would only make the bench slower to set up). Figures, each beside the one-host baseline:
1. `list --json --no-stats`: the status listing only. Target: within 1.5x (hosts asked side by
   side, not one after the other).
2. `list --json`: with CPU and memory (cgroup files here; there the worker's cgroup files, read
   by one script in one ssh session).
The ssh master of the worker (ControlPersist) is warm after the first run, as for a user who
runs commands in a row, and so is the forward of the worker's Docker socket through it
(controller/ssh.py ``Forward``); the first run's time, which opens both, is printed too.

Needs the provisioned test world (Docker, the stand-in images, openssh-server); takes the test
world's Docker lock; everything it makes is removed.

    .venv/bin/python bench/hosts_bench.py [--runs 11]
"""

from __future__ import annotations

import argparse
import subprocess
import tempfile
from pathlib import Path

from cliroot import BenchRoot, load_line, side_by_side, timed_run

from controller.labels import INSTANCE_LABEL, ROOT_LABEL
from controller.ownership import root_id
from controller.state import READY, InstanceRecord, StateStore
from tests.world.dockerworld import LOCK_FILE, DockerSandbox, _exclusive, connect
from tests.world.worker import running_worker

INSTANCES = 10
INSTANCE_CONTAINERS = 3
IMAGE = "sbm-standin/busybox:1"


def make_root(root: Path, hosts: dict[str, str], clients: dict) -> None:
    """Records of ``hosts`` (instance -> host) in state, their containers on each host's engine."""
    store = StateStore(root / "state.json", root / ".state.lock")
    with store.transaction() as state:
        for name, host in hosts.items():
            state.instances[name] = InstanceRecord(name, "v0.8.2", phase=READY, host=host)
    ident = root_id(root)
    for name, host in hosts.items():
        (root / "instances" / name).mkdir(parents=True, exist_ok=True)
        (root / "instances" / name / ".env").write_text("POSTGRES_PASSWORD=x\n")
        for service in ("db", "rest", "auth")[:INSTANCE_CONTAINERS]:
            clients[host].containers.run(
                IMAGE,
                ["sleep", "3600"],
                name=f"hb-{root.name}-{name}-{service}",
                labels={
                    INSTANCE_LABEL: name,
                    ROOT_LABEL: ident,
                    "com.docker.compose.service": service,
                },
                detach=True,
            )


def answered(done: subprocess.CompletedProcess[str]) -> bool:
    """Every host answered (an unreachable one would make the figure meaningless)."""
    return '"unreachable"' not in done.stdout


def line(label: str, seconds: float, note: str = "") -> None:
    print(f"  {label:<44} {seconds * 1000:8.0f} ms  {note}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=11)
    args = parser.parse_args()
    print(load_line())
    with tempfile.TemporaryDirectory(prefix="sbm-hosts-bench-") as tmp_name:
        tmp = Path(tmp_name)
        print("   starting the worker (a second engine behind sshd) ...", flush=True)
        with running_worker(tmp / "worker-data", name="w2") as worker:
            print("   (waiting for the test world's Docker lock ...)", flush=True)
            with _exclusive(LOCK_FILE):
                local = connect()
                remote = worker.client()
                sandboxes = [DockerSandbox(local), DockerSandbox(remote)]
                for sandbox in sandboxes:
                    sandbox.snapshot()
                try:
                    run(tmp, worker, {"local": local, "w2": remote}, args.runs)
                finally:
                    for sandbox in sandboxes:
                        sandbox.cleanup()
                    remote.close()
                    local.close()


def run(tmp: Path, worker, clients: dict, runs: int) -> None:
    # No Caddy: `list` does not ask it.
    one = BenchRoot(tmp / "one")
    two = BenchRoot(tmp / "two", SUPABASE_MANAGER_SSH_IDENTITY_FILE=str(worker.identity_file))
    names = [f"i{n:02d}" for n in range(INSTANCES)]
    make_root(one.root, dict.fromkeys(names, "local"), clients)
    two.cli("host", "add", "w2", worker.ssh_url, "--accept-new-key")
    half = INSTANCES // 2
    make_root(two.root, {n: ("local" if i < half else "w2") for i, n in enumerate(names)}, clients)
    status_only = ("list", "--json", "--no-stats")
    try:
        first = timed_run(*two.command(*status_only), answered)  # opens the ssh master
        timed_run(*one.command(*status_only), answered)
        status = side_by_side(
            {"one": one.command(*status_only), "two": two.command(*status_only)}, runs, answered
        )
        stats = side_by_side(
            {"one": one.command("list", "--json"), "two": two.command("list", "--json")},
            max(5, runs // 2),
            answered,
        )
    finally:
        for config in (two.root / "ssh").glob("config*"):  # the master, and its forward
            subprocess.run(["ssh", "-F", str(config), "-O", "exit", "sbm-w2"], capture_output=True)
    containers = INSTANCES * INSTANCE_CONTAINERS
    print(f"\n{INSTANCES} instances, {containers} running containers, {runs} runs each")
    print("1. list --json --no-stats (status)")
    line(f"one host ({INSTANCES} local)", status["one"])
    line(f"two hosts ({half} local + {INSTANCES - half} over ssh)", status["two"])
    line("two hosts, first run (ssh master opened)", first)
    ratio = status["two"] / status["one"]
    verdict = "target met" if ratio <= 1.5 else "target NOT met"
    print(f"  {'ratio two hosts / one host':<44} {ratio:8.2f} x   (<= 1.5 x: {verdict})")
    print("2. list --json (status, CPU, memory)")
    line(f"one host ({INSTANCES} local)", stats["one"])
    line(f"two hosts ({half} local + {INSTANCES - half} over ssh)", stats["two"])
    print(f"  {'ratio two hosts / one host':<44} {stats['two'] / stats['one']:8.2f} x")


if __name__ == "__main__":
    main()
