"""The program run as a user runs it, for the bench scripts (tests/world/cli.py's twin).

A ``BenchRoot`` is one data root and the environment every command of a bench gets: the ROOT,
the domain and a real Caddy in front (or none: routes then stay pending), a port range of its
own, a long health wait, bytecode caching on (as for an installed package) and no colour.
``side_by_side`` times fresh processes, interleaved run by run, so that load from other
processes hits a figure and its baseline alike.

    from cliroot import BenchRoot, caddy_for
    with caddy_for(root, tmp / "caddy-run") as caddy:
        bench = BenchRoot(root, caddy)
        bench.cli("template", "import", ...)
"""

from __future__ import annotations

import contextlib
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from tests.world.caddy import CaddyProcess  # noqa: E402

CLI = [sys.executable, "-m", "shell"]
DOMAIN = "sbm.test"
PORT_RANGE = "40000-49999"
NO_CADDY = "http://127.0.0.1:9"  # nothing listens: create says its routes are pending


def environment(root: Path, caddy: CaddyProcess | None = None, **extra: str) -> dict[str, str]:
    """The environment of a CLI process on ``root``, with ``extra`` settings on top."""
    env = dict(os.environ)
    env.pop("PYTHONDONTWRITEBYTECODE", None)  # bytecode caching, as an installed package runs
    env.update(
        SUPABASE_MANAGER_ROOT=str(root),
        SUPABASE_MANAGER_PORT_RANGE=PORT_RANGE,
        SUPABASE_MANAGER_WAIT_TIMEOUT="300",
        NO_COLOR="1",
    )
    if caddy is None:
        env["SUPABASE_MANAGER_CADDY_ADMIN"] = NO_CADDY
    else:
        env.update(
            SUPABASE_MANAGER_DOMAIN=DOMAIN,
            SUPABASE_MANAGER_SCHEME="http",
            SUPABASE_MANAGER_PUBLIC_PORT=str(caddy.http_port),
            SUPABASE_MANAGER_CADDY_ADMIN=caddy.admin_url,
        )
    env.update(extra)
    return env


@contextlib.contextmanager
def caddy_for(root: Path, run_dir: Path) -> Iterator[CaddyProcess]:
    """A real Caddy serving ``root`` (started here, stopped on exit)."""
    caddy = CaddyProcess(root, run_dir)
    caddy.start()
    try:
        yield caddy
    finally:
        caddy.stop()


class BenchRoot:
    """One data root and its CLI environment; ``cli`` runs a command and stops the bench with
    the command's error when it fails."""

    def __init__(self, root: Path, caddy: CaddyProcess | None = None, **extra: str) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.env = environment(self.root, caddy, **extra)
        self.caddy = caddy

    def cli(self, *words: str) -> str:
        """The command's stdout. Without Caddy, a create that made its instance but could not
        push its routes (exit 1, routes pending) counts as done."""
        done = subprocess.run([*CLI, *words], env=self.env, capture_output=True, text=True)
        pending = (
            self.caddy is None
            and words[:1] == ("create",)
            and "was created" in done.stderr
            and "but Caddy" in done.stderr
        )
        if done.returncode != 0 and not pending:
            sys.exit(f"supabase-manager {' '.join(words)} failed: {done.stderr.strip()}")
        return done.stdout

    def timed(self, *words: str) -> float:
        """Seconds one CLI command takes (stopping the bench if it fails)."""
        start = time.perf_counter()
        self.cli(*words)
        return time.perf_counter() - start

    def command(self, *words: str) -> tuple[list[str], dict[str, str]]:
        """A CLI command with this root's environment, for ``side_by_side``."""
        return [*CLI, *words], self.env


def timed_run(
    cmd: Sequence[str],
    env: Mapping[str, str],
    accept: Callable[[subprocess.CompletedProcess[str]], bool] | None = None,
) -> float:
    """Seconds ``cmd`` takes; the bench stops when it fails (or ``accept`` refuses its result)."""
    start = time.perf_counter()
    done = subprocess.run(list(cmd), env=dict(env), capture_output=True, text=True)
    took = time.perf_counter() - start
    if done.returncode != 0 or (accept is not None and not accept(done)):
        sys.exit(f"{' '.join(cmd)} failed: {done.stderr.strip() or done.stdout[-300:]}")
    return took


def side_by_side(
    commands: Mapping[str, tuple[Sequence[str], Mapping[str, str]]],
    runs: int,
    accept: Callable[[subprocess.CompletedProcess[str]], bool] | None = None,
) -> dict[str, float]:
    """Median wall time per labelled (command, environment), the commands interleaved run by
    run."""
    times: dict[str, list[float]] = {label: [] for label in commands}
    for _ in range(runs):
        for label, (cmd, env) in commands.items():
            times[label].append(timed_run(cmd, env, accept))
    return {label: statistics.median(values) for label, values in times.items()}


def load_line() -> str:
    """The CPUs and load average, printed first by every bench."""
    load = os.getloadavg()
    return f"{os.cpu_count()} CPUs, load average {load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f}"
