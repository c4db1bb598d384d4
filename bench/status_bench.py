"""Status and resource figures of `supabase-manager list --json` against compose and docker stats.

Prints, in one run:
- 50 instances created with --no-start: wall time of `list --json` beside one
  `docker compose -p NAME ps` per instance (the baseline), and their ratio;
- 5 running instances (stand-in images, see tests/world/standin.py): `list --json` with CPU and
  memory beside `docker stats --no-stream` for the same containers.
Targets: status of 50 within 0.3 s and >= 10x faster than the loop; resources faster than
docker stats. Needs the provisioned test world (scripts/provision).
"""

import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.world.standin import write_standin_overlay  # noqa: E402
from tests.world.templates import fixtures_dir  # noqa: E402

FIXTURE = fixtures_dir() / "v0.8.2"
CLI = [sys.executable, "-m", "shell"]


def timed(cmd: list[str], env: dict, repeat: int = 5) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        subprocess.run(cmd, env=env, check=True, capture_output=True)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="sbm-bench-") as tmp:
        root = Path(tmp) / "root"
        env = dict(os.environ)
        # Bytecode caching on, as for any installed package (this machine's shells turn it off,
        # which would add the compilation of every module to each run of the CLI).
        env.pop("PYTHONDONTWRITEBYTECODE", None)
        env.update(
            SUPABASE_MANAGER_ROOT=str(root),
            SUPABASE_MANAGER_CADDY_ADMIN="http://127.0.0.1:9",  # no Caddy: routes stay pending
            SUPABASE_MANAGER_PORT_RANGE="40000-49999",
        )

        def cli(*args: str) -> None:
            subprocess.run([*CLI, *args], env=env, check=True, capture_output=True)

        cli("template", "import", str(FIXTURE), "--name", "v0.8.2")
        overlay = write_standin_overlay(
            [root / "templates" / "v0.8.2" / "docker-compose.yml"], Path(tmp) / "standin.yml"
        )
        names = [f"bench{i:02d}" for i in range(50)]
        print(f"creating {len(names)} instances with --no-start ...", flush=True)
        for name in names:
            cli("create", name, "--no-start", "--extra-compose", str(overlay))

        ours = timed([*CLI, "list", "--json"], env)
        start = time.perf_counter()
        for name in names:
            subprocess.run(
                ["docker", "compose", "-p", name, "ps", "--all", "--format", "json"],
                check=True,
                capture_output=True,
            )
        loop = time.perf_counter() - start
        print(f"\nstatus of {len(names)} instances")
        print(f"  supabase-manager list --json     {ours * 1000:8.0f} ms   (target <= 300 ms)")
        print(f"  docker compose -p NAME ps (loop) {loop * 1000:8.0f} ms")
        print(f"  ratio loop / list                {loop / ours:8.1f} x  (target >= 10 x)")

        for name in names:
            cli("delete", name, "--purge", "--yes")
        running = [f"run{i}" for i in range(5)]
        print(f"\nstarting {len(running)} instances ...", flush=True)
        try:
            for name in running:
                cli("create", name, "--extra-compose", str(overlay))
            ids = subprocess.run(
                ["docker", "ps", "-q", "--filter", "label=io.supabase-manager.instance"],
                check=True,
                capture_output=True,
                text=True,
            ).stdout.split()
            ours = timed([*CLI, "list", "--json"], env, repeat=3)
            stats = timed(["docker", "stats", "--no-stream", *ids], env, repeat=3)
            print(f"\nCPU and memory of {len(running)} running instances ({len(ids)} containers)")
            print(f"  supabase-manager list --json     {ours * 1000:8.0f} ms")
            print(f"  docker stats --no-stream         {stats * 1000:8.0f} ms")
            print(f"  ratio docker stats / list        {stats / ours:8.2f} x  (target > 1 x)")
        finally:
            for name in running:
                subprocess.run(
                    [*CLI, "delete", name, "--purge", "--yes"], env=env, capture_output=True
                )


if __name__ == "__main__":
    main()
