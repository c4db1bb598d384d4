"""Backup and restore figures of `supabase-manager` against restic driven by hand, in one run.

One instance (stand-in images, see tests/world/standin.py; its db is a real PostgreSQL 15) is
filled with DB_MB of table rows and FILES_MB of storage files (random bytes), then:

- `backup NAME` beside the same work by hand into a fresh repository of its own:
  `docker exec DB pg_basebackup -D - -Ft -X fetch | restic backup --stdin` plus `restic backup`
  of the instance folder (target: within 1.2x);
- a second `backup` with nothing changed: time and bytes added against the first (targets: under
  10% of the first's time, under 1% of its added bytes), beside the by-hand second run;
- after `delete --purge`: `restore NAME` against a restore by hand (restic restore of the folder,
  restic dump of the base backup and volumes into place, `docker compose up --wait`) (target:
  within 1.3x);
- `restore NAME --dry-run`.

Defaults are small (200 MB of database, 50 MB of files) so the bench runs in minutes on a
2-core machine; `--full` uses the issue's size (1 GB and 200 MB). Needs the provisioned test
world (scripts/provision) and restic.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from cliroot import BenchRoot, caddy_for, load_line

from tests.world.dockerworld import DockerSandbox, connect
from tests.world.standin import write_standin_overlay
from tests.world.templates import fixtures_dir

NAME = "bench"
TEMPLATE = "v0.8.2"
ROW_BYTES = 960  # repeat(md5(...), 30)


def sh(cmd: str, env: dict | None = None) -> None:
    subprocess.run(["bash", "-o", "pipefail", "-c", cmd], check=True, env=env)


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--db-mb", type=int, default=200)
    parser.add_argument("--files-mb", type=int, default=50)
    parser.add_argument("--full", action="store_true", help="1 GB of database, 200 MB of files")
    args = parser.parse_args()
    db_mb, files_mb = (1024, 200) if args.full else (args.db_mb, args.files_mb)

    print(load_line())
    with tempfile.TemporaryDirectory(prefix="sbm-backup-bench-") as tmp:
        base = Path(tmp)
        root = base / "root"
        root.mkdir()
        # The machine-wide lock of the test world: a test session starting meanwhile would
        # otherwise remove this bench's containers as its own leftovers. Routes are pushed to
        # a real Caddy.
        with DockerSandbox(connect()).session(), caddy_for(root, base / "caddy-run") as caddy:
            run_bench(base, BenchRoot(root, caddy), db_mb, files_mb)


def run_bench(base: Path, bench: BenchRoot, db_mb: int, files_mb: int) -> None:
    root, cli = bench.root, bench.cli
    cli("template", "import", str(fixtures_dir() / TEMPLATE), "--name", TEMPLATE)
    overlay = write_standin_overlay(
        [root / "templates" / TEMPLATE / "docker-compose.yml"], base / "standin.yml"
    )
    print(f"creating {NAME} and writing {db_mb} MB of rows, {files_mb} MB of files ...", flush=True)
    cli("create", NAME, "--template", TEMPLATE, "--extra-compose", str(overlay))
    folder = root / "instances" / NAME
    db = f"{NAME}-db"
    rows = db_mb * 1024 * 1024 // ROW_BYTES
    statements = [
        "create table big (id bigint primary key, body text)",
        f"insert into big select g, repeat(md5(g::text || random()::text), 30) "
        f"from generate_series(1, {rows}) g",
        "vacuum (freeze, analyze)",
        "checkpoint",
    ]
    psql = ["docker", "exec", db, "psql", "-X", "-q", "-U", "postgres", "-v", "ON_ERROR_STOP=1"]
    for statement in statements:
        subprocess.run([*psql, "-c", statement], check=True)
    storage = folder / "volumes" / "storage" / "bench"
    storage.mkdir(parents=True)
    for i in range(files_mb):
        (storage / f"file-{i:04d}.bin").write_bytes(os.urandom(1024 * 1024))

    # --- backup ------------------------------------------------------------------------------
    loads = [os.getloadavg()[0]]
    ours = timed(lambda: cli("backup", NAME))
    first = json.loads(cli("--json", "backup", "list", NAME))[-1]
    ours2_start = time.perf_counter()
    second_out = json.loads(cli("--json", "backup", NAME))
    ours2 = time.perf_counter() - ours2_start

    hand_repo = base / "hand-repo"
    hand_pw = base / "hand.key"
    hand_pw.write_text("bench-password\n")
    renv = dict(os.environ, RESTIC_REPOSITORY=str(hand_repo), RESTIC_PASSWORD_FILE=str(hand_pw))
    pgdata = folder / "volumes" / "db" / "data"

    def by_hand() -> None:
        sh(
            f"docker exec {db} pg_basebackup -U postgres -D - -Ft -X fetch -c fast | "
            "restic backup -q --stdin --stdin-filename base.tar",
            renv,
        )
        sh(f"cd {folder} && restic backup -q --exclude {pgdata} .", renv)

    hand = timed(lambda: (sh("restic init -q", renv), by_hand()))
    hand2 = timed(by_hand)

    # --- restore -----------------------------------------------------------------------------
    cli("delete", NAME, "--purge", "--yes")
    restored = timed(lambda: cli("restore", NAME))
    cli("delete", NAME, "--purge", "--yes")
    hand_restore = timed(lambda: restore_by_hand(folder, renv))
    subprocess.run(["docker", "compose", "-p", NAME, "down", "-v"], capture_output=True)
    shutil.rmtree(folder, ignore_errors=True)
    cli("restore", NAME)
    dry = timed(lambda: cli("restore", NAME, "--dry-run"))
    loads.append(os.getloadavg()[0])

    size = first["size"]
    print()
    print(
        f"instance: {db_mb} MB of database rows, {files_mb} MB of files; "
        f"backup reads {size / 1e6:.0f} MB"
    )
    print(f"{'':34}{'supabase-manager':>18}{'by hand':>12}{'ratio':>8}")
    print(f"{'backup (first)':34}{ours:>17.2f}s{hand:>11.2f}s{ours / hand:>8.2f}  target <= 1.2")
    print(
        f"{'backup (second, nothing changed)':34}{ours2:>17.2f}s{hand2:>11.2f}s"
        f"{ours2 / hand2:>8.2f}"
    )
    print(
        f"{'restore (after delete --purge)':34}{restored:>17.2f}s{hand_restore:>11.2f}s"
        f"{restored / hand_restore:>8.2f}  target <= 1.3"
    )
    print(f"{'restore --dry-run':34}{dry:>17.2f}s")
    print(
        f"second backup: {ours2 / ours * 100:.1f}% of the first's time (target < 10%), "
        f"{second_out['added'] / 1e6:.1f} MB added = "
        f"{second_out['added'] / max(first['added'], 1) * 100:.2f}% of the first's "
        f"{first['added'] / 1e6:.0f} MB (target < 1%)"
    )
    print(
        f"machine load (1-minute average, {os.cpu_count()} cores): {loads[0]:.1f} before the "
        f"backups, {loads[1]:.1f} after the dry run"
    )


def restore_by_hand(folder: Path, renv: dict) -> None:
    """restic restore of the folder, the base backup into PGDATA, compose up --wait."""
    snaps = json.loads(
        subprocess.run(
            ["restic", "snapshots", "--json", "--latest", "1"],
            env=renv,
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    )
    files = next(s for s in snaps if s["paths"] != ["/base.tar"])
    dbsnap = next(s for s in snaps if s["paths"] == ["/base.tar"])
    sh(f"restic restore -q {files['id']} --target {folder}", renv)
    pgdata = folder / "volumes" / "db" / "data"
    pgdata.mkdir(parents=True, exist_ok=True)
    sh(
        f"restic dump {dbsnap['id']} /base.tar | docker run --rm -i --network none "
        f"-v {pgdata}:/d --entrypoint tar sbm-standin/postgres:15 -xpf - -C /d",
        renv,
    )
    sh(f"cd {folder} && docker compose up -d --wait --quiet-pull >/dev/null 2>&1")


if __name__ == "__main__":
    main()
