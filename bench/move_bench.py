"""`move` of an instance to another host against the backup plus restore it is made of, in one run.

One instance (stand-in images, see tests/world/standin.py; its db is a real PostgreSQL 15) on this
machine is filled with DB_MB of table rows and FILES_MB of storage files (random bytes); a second
Docker host is started behind a real sshd in a network namespace (tests/world/worker.py) and
added with `host add`. Then, each timed:

- `backup NAME` and `restore NAME --yes` (in place, on this machine): the two steps a move is
  made of, run by hand;
- `move NAME --to w2` (stop, backup, restore on the worker over SSH, start, switch the route,
  remove the copy here), and `move NAME --to local` back.

It prints each time and the ratio of a move to backup + restore. Defaults are small (200 MB of
database, 50 MB of files) so the bench runs in minutes on a 2-core machine; `--full` uses the
issue's size (1 GB of data). Needs the provisioned test world (scripts/provision): Docker, Caddy,
restic, openssh-server.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import tempfile
from pathlib import Path

from cliroot import BenchRoot, caddy_for, load_line

from tests.world.dockerworld import DockerSandbox, connect
from tests.world.standin import write_standin_overlay
from tests.world.templates import fixtures_dir
from tests.world.worker import running_worker

NAME = "mvbench"
TEMPLATE = "v0.8.2"
HOST = "w2"
ROW_BYTES = 960  # repeat(md5(...), 30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--db-mb", type=int, default=200)
    parser.add_argument("--files-mb", type=int, default=50)
    parser.add_argument("--full", action="store_true", help="1 GB: 900 MB of rows, 124 MB files")
    args = parser.parse_args()
    db_mb, files_mb = (900, 124) if args.full else (args.db_mb, args.files_mb)

    print(load_line())
    # The worker's data folder must lie on the same path on both sides: a fresh temp folder.
    with tempfile.TemporaryDirectory(prefix="sbm-move-bench-", dir="/var/tmp") as tmp:
        base = Path(tmp)
        root = base / "root"
        root.mkdir()
        print("starting the second host (engine, sshd, images) ...", flush=True)
        # The machine-wide lock of the test world: a test session starting meanwhile would
        # otherwise remove this bench's containers as its own leftovers.
        with (
            running_worker(base, name=HOST) as worker,
            DockerSandbox(connect()).session(),
            caddy_for(root, base / "caddy-run") as caddy,
        ):
            identity = str(worker.identity_file)
            bench = BenchRoot(root, caddy, SUPABASE_MANAGER_SSH_IDENTITY_FILE=identity)
            run_bench(base, worker, bench, db_mb, files_mb)


def run_bench(base: Path, worker, bench: BenchRoot, db_mb: int, files_mb: int) -> None:
    root, cli, timed = bench.root, bench.cli, bench.timed
    cli("template", "import", str(fixtures_dir() / TEMPLATE), "--name", TEMPLATE)
    overlay = write_standin_overlay(
        [root / "templates" / TEMPLATE / "docker-compose.yml"], base / "standin.yml"
    )
    cli("host", "add", HOST, worker.ssh_url, "--bind", worker.bind_address, "--accept-new-key")
    print(f"creating {NAME} and writing {db_mb} MB of rows, {files_mb} MB of files ...", flush=True)
    cli("create", NAME, "--template", TEMPLATE, "--extra-compose", str(overlay), "--host", "local")
    rows = db_mb * 1024 * 1024 // ROW_BYTES
    psql = ["docker", "exec", f"{NAME}-db", "psql", "-X", "-q", "-U", "postgres"]
    for statement in (
        "create table big (id bigint primary key, body text)",
        f"insert into big select g, repeat(md5(g::text || random()::text), 30) "
        f"from generate_series(1, {rows}) g",
        "vacuum (freeze, analyze)",
        "checkpoint",
    ):
        subprocess.run([*psql, "-v", "ON_ERROR_STOP=1", "-c", statement], check=True)
    storage = root / "instances" / NAME / "volumes" / "storage" / "bench"
    storage.mkdir(parents=True)
    for i in range(files_mb):
        (storage / f"file-{i:04d}.bin").write_bytes(os.urandom(1024 * 1024))

    backup = timed("backup", NAME)
    size = json.loads(cli("--json", "backup", "list", NAME))[-1]["size"]
    restore = timed("restore", NAME, "--yes")
    there = timed("move", NAME, "--to", HOST)
    back = timed("move", NAME, "--to", "local")
    cli("delete", NAME, "--purge", "--yes")

    made_of = backup + restore
    print()
    print(
        f"instance: {db_mb} MB of rows, {files_mb} MB of files; a backup reads {size / 1e6:.0f} MB"
    )
    print(f"{'backup NAME':36}{backup:>9.2f}s")
    print(f"{'restore NAME --yes (in place)':36}{restore:>9.2f}s")
    print(f"{'backup + restore':36}{made_of:>9.2f}s{'1.00':>8}")
    print(f"{'move NAME --to ' + HOST:36}{there:>9.2f}s{there / made_of:>8.2f}")
    print(f"{'move NAME --to local':36}{back:>9.2f}s{back / made_of:>8.2f}")


if __name__ == "__main__":
    main()
