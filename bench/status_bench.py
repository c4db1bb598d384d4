"""Figures of `supabase-manager list --json` beside their baselines, measured in the same run.

Every figure is the median of fresh processes (bytecode caching on, as for an installed package),
the command and its baseline interleaved run by run so that load from other processes hits both
alike:

1. fresh `list --json` of a few instances, Docker queried, beside `docker compose ls` (which asks
   the same engine the same question for compose projects) and `python -c pass`.
   Target: within 1.5x `docker compose ls`.
2. `list --json` of 500 instances (one real `create --no-start`, its record and folder cloned
   499 times; Docker queried, disk figures from the cache). Target: within 0.5 s.
3. `list --json` with CPU and memory of 5 running instances (stand-in images, see
   tests/world/standin.py) beside `docker stats --no-stream` for the same containers.
   Target: at least 5x faster.

Sections 1-2 need Docker only; 3 starts containers and therefore waits for the test world's
Docker lock (tests/world/dockerworld.py) so that it never runs beside a sandboxed test.

    .venv/bin/python bench/status_bench.py [--runs 15] [--only 1,2,3]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import attrs
from cliroot import CLI, BenchRoot, load_line, side_by_side

from controller.state import StateStore
from tests.world.dockerworld import LOCK_FILE, _exclusive
from tests.world.standin import write_standin_overlay
from tests.world.templates import fixtures_dir

TEMPLATE = "v0.8.2"
PASS = [sys.executable, "-c", "pass"]


def medians(bench: BenchRoot, commands: dict[str, list[str]], runs: int) -> dict[str, float]:
    """Median wall time per command, all with the bench root's environment, interleaved."""
    return side_by_side({label: (cmd, bench.env) for label, cmd in commands.items()}, runs)


def line(label: str, seconds: float, note: str = "") -> None:
    print(f"  {label:<38} {seconds * 1000:8.0f} ms  {note}")


def verdict(ok: bool) -> str:
    return "target met" if ok else "target NOT met"


def fresh_list(bench: BenchRoot, runs: int) -> None:
    for i in range(5):
        bench.cli("create", f"fresh{i}", "--no-start")
    bench.cli("list", "--json")  # the disk cache and .pyc files, as after any first run
    med = medians(
        bench,
        {
            "pass": PASS,
            "compose": ["docker", "compose", "ls"],
            "list": [*CLI, "list", "--json"],
        },
        runs,
    )
    ratio = med["list"] / med["compose"]
    print(f"\n1. fresh `list --json` of 5 instances, Docker queried ({runs} runs each)")
    line("python -c pass", med["pass"])
    line("docker compose ls", med["compose"])
    line("supabase-manager list --json", med["list"])
    print(f"  {'ratio list / compose ls':<38} {ratio:8.2f} x   (<= 1.5 x: {verdict(ratio <= 1.5)})")


def many_instances(bench: BenchRoot, count: int, runs: int) -> None:
    bench.cli("create", "many000", "--no-start")
    source = bench.root / "instances" / "many000"
    names = [f"many{i:03d}" for i in range(1, count)]
    for name in names:
        shutil.copytree(source, bench.root / "instances" / name, symlinks=True)
    store = StateStore(bench.root / "state.json", bench.root / ".state.lock")
    with store.transaction() as state:
        model = state.instances["many000"]
        for name in names:
            state.instances[name] = attrs.evolve(model, name=name)
    first = bench.timed("list", "--json")  # measures every new folder once
    listed = len(json.loads(bench.cli("list", "--json")))
    med = medians(bench, {"pass": PASS, "list": [*CLI, "list", "--json"]}, runs)
    print(f"\n2. `list --json` of {listed} instances, Docker queried ({runs} runs)")
    line("python -c pass", med["pass"])
    line("first list (every folder measured once)", first)
    line("supabase-manager list --json", med["list"], f"(<= 500 ms: {verdict(med['list'] <= 0.5)})")


@contextlib.contextmanager
def docker_turn() -> Iterator[None]:
    print("\n   (waiting for the test world's Docker lock ...)", flush=True)
    with _exclusive(LOCK_FILE):
        yield


def running_instances(bench: BenchRoot, tmp: Path, runs: int) -> None:
    overlay = write_standin_overlay(
        [bench.root / "templates" / TEMPLATE / "docker-compose.yml"], tmp / "standin.yml"
    )
    names = [f"run{i}" for i in range(5)]
    with docker_turn():
        try:
            for name in names:
                print(f"   starting {name} ...", flush=True)
                bench.cli("create", name, "--extra-compose", str(overlay))
            ids = []
            for name in names:
                ids += subprocess.run(
                    [
                        "docker",
                        "ps",
                        "-q",
                        "--filter",
                        f"label=io.supabase-manager.instance={name}",
                    ],
                    check=True,
                    capture_output=True,
                    text=True,
                ).stdout.split()
            bench.cli("list", "--json")  # the disk cache, as after any first run
            med = medians(
                bench,
                {
                    "list": [*CLI, "list", "--json"],
                    "stats": ["docker", "stats", "--no-stream", *ids],
                },
                runs,
            )
        finally:
            for name in names:
                subprocess.run(
                    [*CLI, "delete", name, "--purge", "--yes"], env=bench.env, capture_output=True
                )
    ratio = med["stats"] / med["list"]
    print(f"\n3. CPU and memory of {len(names)} running instances ({len(ids)} containers)")
    line("docker stats --no-stream (same ids)", med["stats"])
    line("supabase-manager list --json", med["list"])
    print(f"  {'ratio docker stats / list':<38} {ratio:8.2f} x   (>= 5 x: {verdict(ratio >= 5)})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=15)
    parser.add_argument("--only", default="1,2,3", help="sections to run, e.g. 1,2")
    parser.add_argument("--many", type=int, default=500, help="instances in section 2")
    args = parser.parse_args()
    sections = set(args.only.split(","))
    print(load_line())
    with tempfile.TemporaryDirectory(prefix="sbm-status-bench-") as tmp_name:
        tmp = Path(tmp_name)
        if "1" in sections:
            bench = BenchRoot(tmp / "root1")
            bench.cli("template", "import", str(fixtures_dir() / TEMPLATE), "--name", TEMPLATE)
            fresh_list(bench, args.runs)
        if "2" in sections:
            bench = BenchRoot(tmp / "root2")
            bench.cli("template", "import", str(fixtures_dir() / TEMPLATE), "--name", TEMPLATE)
            many_instances(bench, args.many, max(5, args.runs // 3))
        if "3" in sections:
            bench = BenchRoot(tmp / "root3")
            bench.cli("template", "import", str(fixtures_dir() / TEMPLATE), "--name", TEMPLATE)
            running_instances(bench, tmp, max(5, args.runs // 3))


if __name__ == "__main__":
    main()
