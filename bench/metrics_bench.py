"""What a Prometheus scrape of supabase-manager costs, beside `list --json` (the baseline).

Prints, in one run, for 50 instances (5 of them running on the stand-in images, the others
created with --no-start) published through a real Caddy:
- `supabase-manager list --json` (status, CPU, memory, disk), median of 5 runs;
- `supabase-manager metrics` (one gathering, printed once: a fresh process each time), median of 5;
- a scrape of `metrics serve`: the first one, and warm ones (median of 10);
and the ratios to `list --json`. Target: a warm scrape within the cost of `list --json`.
Needs the provisioned test world (scripts/provision); everything it creates is removed.
"""

import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.test_lifecycle import CLI, World  # noqa: E402
from tests.world import CaddyProcess, DockerSandbox, free_port, wait_for_port  # noqa: E402
from tests.world.dockerworld import connect  # noqa: E402

INSTANCES = 50
RUNNING = 5


def timed(cmd: list[str], env: dict, repeat: int = 5) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        subprocess.run(cmd, env=env, check=True, capture_output=True)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def scrape(url: str) -> float:
    start = time.perf_counter()
    response = httpx.get(url, timeout=30)
    response.raise_for_status()
    return time.perf_counter() - start


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="sbm-bench-") as tmp:
        root = Path(tmp) / "root"
        root.mkdir()
        caddy = CaddyProcess(root, Path(tmp) / "caddy")
        caddy.start()
        try:
            with DockerSandbox(connect()).session():
                run(World(root, caddy))
        finally:
            caddy.stop()


def run(world: World) -> None:
    world.env.pop("PYTHONDONTWRITEBYTECODE", None)  # bytecode caching, as an installed package
    world.env["SUPABASE_MANAGER_PORT_RANGE"] = "61000-64999"  # above the ephemeral ports
    world.import_template("v0.8.2")
    names = [f"bench{i:02d}" for i in range(INSTANCES)]
    print(f"creating {INSTANCES} instances, {RUNNING} of them running ...", flush=True)
    for i, name in enumerate(names):
        world.create(name, "v0.8.2", *(() if i < RUNNING else ("--no-start",)))

    listing = timed([*CLI, "list", "--json"], world.env)
    once = timed([*CLI, "metrics"], world.env)

    port = free_port()
    proc = subprocess.Popen(
        [*CLI, "metrics", "serve", "--listen", f"127.0.0.1:{port}"],
        env=world.env,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for_port(port)
        url = f"http://127.0.0.1:{port}/metrics"
        first = scrape(url)
        warm = statistics.median(scrape(url) for _ in range(10))
        size = len(httpx.get(url, timeout=30).content)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(20)

    print(f"\n{INSTANCES} instances ({RUNNING} running), published through Caddy")
    print(f"  supabase-manager list --json      {listing * 1000:8.0f} ms   (baseline)")
    print(f"  supabase-manager metrics (once)   {once * 1000:8.0f} ms   {once / listing:5.2f} x")
    print(f"  metrics serve, first scrape       {first * 1000:8.0f} ms   {first / listing:5.2f} x")
    print(
        f"  metrics serve, warm scrape        {warm * 1000:8.0f} ms   {warm / listing:5.2f} x"
        "   (target <= 1 x)"
    )
    print(f"  exposition size                   {size / 1024:8.1f} KiB")


if __name__ == "__main__":
    os.environ.setdefault("NO_COLOR", "1")
    main()
