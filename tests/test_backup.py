"""Backups and restores of a whole instance, on the real Docker engine, real restic, a real
PostgreSQL 15 (the stand-in image) and a real S3 endpoint (moto_server), through the real CLI.

Supabase's own images cannot be pulled here: the instance layers the stand-in overlay (see
tests/world/standin.py); its db service is a real PostgreSQL holding real rows. One instance is
started for the whole module and taken through backup, delete --purge, restore, --dry-run,
rollback and kill cases in order, then backed up to S3 and cloned from there; each test also
passes on its own.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from controller.envpolicy import is_secret
from tests.world.caddy import CaddyProcess
from tests.world.cli import CLI, CliRoot
from tests.world.dockerworld import DockerSandbox
from tests.world.net import free_port, wait_until
from tests.world.standin import write_standin_overlay
from tests.world.templates import fixtures_dir

pytestmark = pytest.mark.docker

NAME = "bk"
TEMPLATE = "v0.8.2"
ROLE_PASSWORD = "r0le-Pa55-word"
BIG_ROWS = 200_000


class World(CliRoot):
    def __init__(self, root: Path, caddy: CaddyProcess) -> None:
        # SUPABASE_MANAGER_DEBUG: a traceback with any internal error
        super().__init__(root, caddy, SUPABASE_MANAGER_DEBUG="1")

    @property
    def folder(self) -> Path:
        return self.root / "instances" / NAME

    def state(self) -> dict:
        return json.loads((self.root / "state.json").read_text())


def container(name: str = NAME) -> str:
    return f"{name}-db"


SUPERUSER = {"name": "postgres"}


def find_superuser() -> None:
    """supabase_admin where the stand-in models Supabase's roles (as the real image), else
    postgres."""
    probe = subprocess.run(
        [
            "docker",
            "exec",
            container(),
            "psql",
            "-X",
            "-U",
            "supabase_admin",
            "-d",
            "postgres",
            "-tAc",
            "select rolsuper from pg_roles where rolname = current_user",
        ],
        capture_output=True,
        text=True,
    )
    if probe.returncode == 0 and probe.stdout.strip() == "t":
        SUPERUSER["name"] = "supabase_admin"


def psql(sql: str, name: str = NAME, user: str | None = None) -> str:
    user = user or SUPERUSER["name"]
    proc = subprocess.run(
        [
            "docker",
            "exec",
            container(name),
            "psql",
            "-X",
            "-U",
            user,
            "-d",
            "postgres",
            "-v",
            "ON_ERROR_STOP=1",
            "-tA",
            "-c",
            sql,
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip()


def role_login_works(name: str = NAME) -> bool:
    """The app role logs in over TCP with its password (scram): its secret came back."""
    proc = subprocess.run(
        [
            "docker",
            "exec",
            "-e",
            "PGPASSWORD",
            container(name),
            "psql",
            "-X",
            "-h",
            "127.0.0.1",
            "-U",
            "app_user",
            "-d",
            "postgres",
            "-tAc",
            "select count(*) from shop.orders",
        ],
        capture_output=True,
        text=True,
        env={**os.environ, "PGPASSWORD": ROLE_PASSWORD},
    )
    return proc.returncode == 0


def write_rows(name: str = NAME) -> None:
    psql(
        f"""
        create schema shop;
        create table shop.customers (id serial primary key, email text not null);
        create table shop.orders (id bigserial primary key, customer int references
            shop.customers, total numeric(10, 2), note text);
        create table public.events (id bigserial primary key, payload text);
        insert into shop.customers (email) select 'c' || g || '@example.com'
            from generate_series(1, 500) g;
        insert into shop.orders (customer, total, note) select 1 + g % 500, g / 100.0,
            md5(g::text) from generate_series(1, 4000) g;
        insert into public.events (payload) select repeat(md5(g::text), 3)
            from generate_series(1, {BIG_ROWS}) g;
        create role app_user login password '{ROLE_PASSWORD}';
        grant usage on schema shop to app_user;
        grant select on all tables in schema shop to app_user;
        """,
        name,
    )
    # Settle the new pages (hint bits, visibility map) as a live database does by itself: a
    # later read must not rewrite every page of the fresh big table between two backups.
    psql("vacuum (freeze, analyze)", name)
    psql("checkpoint", name)


def fingerprint(name: str = NAME) -> dict:
    """What a user would compare: counts and checksums of every table, the role, its grant."""
    out = {}
    for table in ("shop.customers", "shop.orders", "public.events"):
        out[table] = psql(
            f"select count(*) || ':' || md5(coalesce(string_agg(t::text, ',' order by id), '')) "
            f"from {table} t",
            name,
        )
    out["role"] = psql("select rolpassword from pg_authid where rolname = 'app_user'", name)
    out["grant"] = psql("select has_table_privilege('app_user', 'shop.orders', 'select')", name)
    return out


def files_digest(folder: Path) -> dict[str, str]:
    storage = folder / "volumes" / "storage"
    return {
        str(p.relative_to(storage)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(storage.rglob("*"))
        if p.is_file()
    }


def write_files(folder: Path) -> None:
    storage = folder / "volumes" / "storage"
    (storage / "stub" / "bucket").mkdir(parents=True, exist_ok=True)
    (storage / "stub" / "bucket" / "photo.bin").write_bytes(os.urandom(3 * 1024 * 1024))
    (storage / "stub" / "bucket" / "note.txt").write_text("hello from storage\n")


VAULT_KEY = "/etc/postgresql-custom/pgsodium_root.key"


def write_vault_key() -> str:
    """The db-config volume holds the pgsodium/Vault root key in Supabase's image."""
    key = hashlib.sha256(os.urandom(16)).hexdigest()
    subprocess.run(
        ["docker", "exec", container(), "sh", "-c", f"echo {key} > {VAULT_KEY}"], check=True
    )
    return key


def read_vault_key(name: str = NAME) -> str:
    return subprocess.run(
        ["docker", "exec", container(name), "cat", VAULT_KEY], capture_output=True, text=True
    ).stdout.strip()


@pytest.fixture(scope="module")
def world(tmp_path_factory, docker_client):
    base = tmp_path_factory.mktemp("backup")
    root = base / "root"
    root.mkdir()
    with DockerSandbox(docker_client).session():
        caddy = CaddyProcess(root, base / "caddy-run")
        caddy.start()
        try:
            w = World(root, caddy)
            w.run("template", "import", str(fixtures_dir() / TEMPLATE), "--name", TEMPLATE)
            template = root / "templates" / TEMPLATE
            overlay = write_standin_overlay([template / "docker-compose.yml"], base / "standin.yml")
            w.run("create", NAME, "--template", TEMPLATE, "--extra-compose", str(overlay))
            find_superuser()
            write_rows()
            write_files(w.folder)
            w.vault_key = write_vault_key()
            yield w
        finally:
            caddy.stop()


@pytest.fixture(scope="module")
def first_backup(world):
    result = world.run("--json", "backup", NAME, "--tag", "first")
    data = json.loads(result.stdout)
    world.expected = fingerprint()
    world.expected_files = files_digest(world.folder)
    return data, result.stderr


def test_backup_makes_a_listed_snapshot_and_says_where_the_password_is(world, first_backup):
    data, stderr = first_backup
    key = world.root / "keys" / "backup.key"
    assert str(key) in stderr and "losing it loses every backup" in stderr
    assert oct(key.stat().st_mode & 0o777) == "0o600"
    assert oct(key.parent.stat().st_mode & 0o777) == "0o700"
    assert key.read_text().strip() not in stderr
    listing = world.json("backup", "list", NAME)
    assert [b["backup"] for b in listing] == [data["backup"]]
    row = listing[0]
    assert row["template"] == TEMPLATE and row["postgres"] == "15" and row["tags"] == ["first"]
    assert row["images"]["db"] == "sbm-standin/postgres:15"
    assert row["size"] > BIG_ROWS * 96  # the events table alone is that big
    # Plain restic, by hand, with the password file: a user never needs us to get data back.
    proc = subprocess.run(
        [
            "restic",
            "-r",
            str(world.root / "backups"),
            "--password-file",
            str(key),
            "snapshots",
            "--json",
        ],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr
    parts = {t for s in json.loads(proc.stdout) for t in s["tags"] if t.startswith("part=")}
    assert {"part=db", "part=files", "part=manifest", "part=volumes"} <= parts
    # The database went in as a physical base backup stream, never as a file on disk.
    assert not any(p.name.endswith(".tar") for p in world.root.rglob("*.tar"))


def test_second_backup_of_unchanged_instance_adds_little(world, first_backup):
    data, _ = first_backup
    proc = world.run("--json", "backup", NAME)
    second = json.loads(proc.stdout)
    assert second["added"] < data["added"] / 100, (second, data)
    # Not one WAL record since the first: its base backup is reused, not streamed again.
    assert "has not changed since its last backup" in proc.stderr
    # Nor was the folder or a volume read again: the second backup is its manifest alone,
    # naming the first one's parts (restic by hand shows it).
    assert _parts_by_backup(world)[second["backup"]] == {"manifest"}
    # A file rewritten with the same size, a new Vault key in the db-config volume and a row:
    # each part is read again, and the restores below bring back these new contents.
    note = world.folder / "volumes" / "storage" / "stub" / "bucket" / "note.txt"
    note.write_text(note.read_text().upper())
    world.vault_key = write_vault_key()
    psql("insert into shop.customers (email) values ('changed@example.com')")
    third = world.run("--json", "backup", NAME)
    assert "has not changed" not in third.stderr
    assert _parts_by_backup(world)[json.loads(third.stdout)["backup"]] >= {
        "db",
        "files",
        "volumes",
        "manifest",
    }
    world.expected = fingerprint()  # what the latest backup holds
    world.expected_files = files_digest(world.folder)


def _backup_slots() -> str:
    return psql("select count(*) from pg_replication_slots where slot_name like 'sbm_backup_%'")


def test_base_backup_keeps_its_wal_in_a_temporary_slot(world, first_backup):
    """pg_basebackup writing a tar to stdout fetches its WAL at the end, with no slot of its
    own: a temporary physical slot held for the backup keeps that WAL from being recycled."""
    psql("insert into public.events (payload) values ('slot')")
    proc = subprocess.Popen(
        [*CLI, "backup", NAME],
        env=world.env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
    )
    seen = []
    while proc.poll() is None and not seen:
        seen = [
            line
            for line in psql(
                "select slot_name, temporary, active, restart_lsn is not null "
                "from pg_replication_slots"
            ).splitlines()
            if line.startswith("sbm_backup_")
        ]
    assert proc.wait(120) == 0, proc.stderr.read()
    assert seen and seen[0].endswith("|t|t|t"), seen  # temporary, in use, holding WAL
    assert _backup_slots() == "0"  # gone with the backup
    world.expected = fingerprint()


def test_delete_purge_then_restore_brings_everything_back(world, first_backup):
    world.run("delete", NAME, "--purge", "--yes")
    assert not world.folder.exists()
    result = world.json("restore", NAME)
    assert result["created"] is True
    assert fingerprint() == world.expected
    assert files_digest(world.folder) == world.expected_files
    assert read_vault_key() == world.vault_key
    assert role_login_works()
    assert world.state()["instances"][NAME]["phase"] == "ready"
    assert not (world.root / "restore" / f"{NAME}.json").exists()


def test_restore_in_place_needs_yes_then_puts_data_back(world, first_backup):
    psql("insert into shop.customers (email) values ('late@example.com')")
    (world.folder / "volumes" / "storage" / "stub" / "bucket" / "note.txt").unlink()
    late = psql("select count(*) from shop.customers")
    refused = world.run("restore", NAME, check=False)
    assert refused.returncode == 2 and "--yes" in refused.stderr
    assert psql("select count(*) from shop.customers") == late  # nothing changed
    world.run("restore", NAME, "--yes")
    assert fingerprint() == world.expected
    assert files_digest(world.folder) == world.expected_files
    assert not (world.root / "restore" / f"{NAME}.aside").exists()


def test_dry_run_verifies_in_a_throwaway_project_and_leaves_nothing(
    world, first_backup, docker_client
):
    before = {c.name for c in docker_client.containers.list(all=True)}
    volumes = {v.name for v in docker_client.volumes.list()}
    networks = {n.name for n in docker_client.networks.list()}
    ports = set(world.state()["instances"][NAME]["ports"].values())
    proc = world.run("restore", NAME, "--dry-run")
    # supabase_admin where the stand-in models Supabase's roles, else postgres.
    assert re.search(r"ok   Postgres accepts connections as the superuser: \w+", proc.stdout)
    assert "every table reads back" in proc.stdout and "restorable" in proc.stdout
    assert "ok   the throwaway project publishes no port" in proc.stdout
    assert "ok   restored files match the snapshot's sizes" in proc.stdout
    assert {c.name for c in docker_client.containers.list(all=True)} == before
    assert {v.name for v in docker_client.volumes.list()} == volumes
    assert {n.name for n in docker_client.networks.list()} == networks
    assert set(world.state()["instances"][NAME]["ports"].values()) == ports
    assert not list((world.root / "restore").glob("dryrun-*"))
    assert fingerprint() == world.expected


def test_unhealthy_restore_rolls_back(world, first_backup):
    psql("insert into shop.customers (email) values ('kept@example.com')")
    kept = psql("select count(*) from shop.customers")
    proc = world.run(
        "restore", NAME, "--yes", check=False, env={"SUPABASE_MANAGER_WAIT_TIMEOUT": "0"}
    )
    assert proc.returncode == 1
    assert "did not become healthy" in proc.stderr and "put back what was there" in proc.stderr
    world.run("start", NAME)
    assert psql("select count(*) from shop.customers") == kept  # the data before the restore
    assert not (world.root / "restore" / f"{NAME}.aside").exists()


def test_killed_restore_is_rolled_back_by_start(world, first_backup):
    before = fingerprint()
    proc = subprocess.Popen(
        [*CLI, "restore", NAME, "--yes"],
        env=world.env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
    )
    marker = world.root / "restore" / f"{NAME}.json"
    wait_until(
        lambda: marker.is_file() and json.loads(marker.read_text())["phase"] == "restoring",
        timeout=60,
        what="the restore to start restoring",
    )
    os.killpg(proc.pid, signal.SIGKILL)  # the whole command, as systemd or Ctrl-C would
    proc.wait(10)
    world.run("start", NAME)
    assert not marker.exists()
    assert fingerprint() == before


def _parts_by_backup(world) -> dict[str, set[str]]:
    """Restic by hand: the parts each backup id has in the repository."""
    key = world.root / "keys" / "backup.key"
    proc = subprocess.run(
        [
            "restic",
            "-r",
            str(world.root / "backups"),
            "--password-file",
            str(key),
            "--no-lock",
            "snapshots",
            "--json",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    by_backup: dict[str, set[str]] = {}
    for snap in json.loads(proc.stdout):
        tags = dict(t.split("=", 1) for t in snap["tags"] if "=" in t)
        by_backup.setdefault(tags["backup"], set()).add(tags["part"])
    return by_backup


def test_killed_backup_leaves_no_half_snapshot(world, first_backup):
    listed = {b["backup"] for b in world.json("backup", "list")}
    # A change, so that the backup has a part to store before its manifest (an unchanged
    # instance's backup is its manifest alone).
    psql("insert into public.events (payload) values ('killed')")
    proc = subprocess.Popen(
        [*CLI, "backup", NAME],
        env=world.env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
    )
    # Kill it the moment its first part is stored, before its manifest.
    snapshots = world.root / "backups" / "snapshots"

    def stored() -> int:  # restic writes NAME-tmp-XXX, syncs it, then renames it to NAME
        return sum("-tmp-" not in p.name for p in snapshots.iterdir())

    count = stored()
    deadline = time.monotonic() + 120
    while stored() == count and time.monotonic() < deadline:
        time.sleep(0.01)
    os.killpg(proc.pid, signal.SIGKILL)  # the whole command, as systemd or Ctrl-C would
    proc.wait(10)
    # The slot of its base backup goes with the killed command's session.
    wait_until(lambda: _backup_slots() == "0", timeout=30, what="the backup slot to go")
    half = [b for b in _parts_by_backup(world) if b not in listed]
    assert len(half) == 1, (_parts_by_backup(world), listed, proc.stderr.read())
    assert "manifest" not in _parts_by_backup(world)[half[0]]
    assert {b["backup"] for b in world.json("backup", "list")} == listed
    assert psql("select 1") == "1"  # the instance still runs
    # The next backup works; prune forgets the killed one's parts.
    world.run("backup", NAME)
    assert len({b["backup"] for b in world.json("backup", "list")}) == len(listed) + 1
    world.run("backup", "prune", "--keep-last", "100")
    assert len({b["backup"] for b in world.json("backup", "list")}) == len(listed) + 1
    parts = _parts_by_backup(world)
    assert half[0] not in parts
    assert all("manifest" in each for each in parts.values()), parts
    world.run("backup", "check")


def _repo_copy(world, tmp_path) -> Path:
    copy = tmp_path / "repo-copy"
    subprocess.run(["cp", "-a", str(world.root / "backups"), str(copy)], check=True)
    return copy


def test_wrong_password_missing_repo_and_corrupt_pack_fail_cleanly(world, first_backup, tmp_path):
    before = fingerprint()
    wrong = tmp_path / "wrong.key"
    wrong.write_text("not-the-password\n")
    proc = world.run(
        "restore",
        NAME,
        "--yes",
        check=False,
        env={"SUPABASE_MANAGER_BACKUP_PASSWORD_FILE": str(wrong)},
    )
    assert proc.returncode == 1
    assert len(proc.stderr.strip().splitlines()) == 1
    assert "wrong password for the backup repository" in proc.stderr
    assert "not-the-password" not in proc.stderr
    missing = world.run(
        "backup",
        "list",
        check=False,
        env={"SUPABASE_MANAGER_BACKUP_REPOSITORY": str(tmp_path / "nowhere")},
    )
    assert missing.returncode == 1 and "no backup repository at" in missing.stderr
    assert len(missing.stderr.strip().splitlines()) == 1

    copy = _repo_copy(world, tmp_path)
    packs = sorted((copy / "data").rglob("*"), key=lambda p: p.stat().st_size if p.is_file() else 0)
    biggest = packs[-1]
    data = bytearray(biggest.read_bytes())
    for offset in range(1000, len(data) - 1000, 4096):
        data[offset] ^= 0xFF
    biggest.write_bytes(bytes(data))
    env = {"SUPABASE_MANAGER_BACKUP_REPOSITORY": str(copy)}
    check = world.run("backup", "check", "--read-data", check=False, env=env)
    assert check.returncode == 1 and "damaged" in check.stderr
    dry = world.run("restore", NAME, "--dry-run", check=False, env=env)
    assert dry.returncode == 1 and "NOT restorable" in dry.stdout
    proc = world.run("restore", NAME, "--yes", check=False, env=env)
    assert proc.returncode == 1 and "put back what was there" in proc.stderr
    assert fingerprint() == before
    assert not (world.root / "restore" / f"{NAME}.aside").exists()


def env_values(world, name: str) -> dict[str, str]:
    out = {}
    for line in (world.root / "instances" / name / ".env").read_text().splitlines():
        if "=" in line and not line.startswith("#"):
            key, _, value = line.partition("=")
            out[key] = value
    return out


def logs_in(name: str, role: str, password: str) -> bool:
    proc = subprocess.run(
        [
            *("docker", "exec", "-e", "PGPASSWORD", container(name), "psql", "-X"),
            *("-h", "127.0.0.1", "-U", role, "-d", "postgres", "-tAc", "select 1"),
        ],
        capture_output=True,
        text=True,
        env={**os.environ, "PGPASSWORD": password},
    )
    return proc.returncode == 0


def engine_objects(docker_client, project: str) -> dict[str, set[str]]:
    """The engine's containers, networks and volumes of compose project ``project``, and the
    volumes its containers mount."""
    label = {"label": f"com.docker.compose.project={project}"}
    found = docker_client.containers.list(all=True, filters=label)
    return {
        "containers": {c.name for c in found},
        "networks": {n.name for n in docker_client.networks.list(filters=label)},
        "volumes": {v.name for v in docker_client.volumes.list(filters=label)},
        "mounted": {
            m["Name"] for c in found for m in c.attrs.get("Mounts", []) if m.get("Type") == "volume"
        },
    }


@pytest.fixture
def s3(tmp_path):
    """moto_server on a free loopback port with a bucket; the credentials in an env file."""
    import boto3

    port = free_port()
    server = subprocess.Popen(
        [str(Path(sys.executable).parent / "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        endpoint = f"http://127.0.0.1:{port}"
        keys = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing-secret"}
        client = boto3.client(
            "s3",
            endpoint_url=endpoint,
            region_name="us-east-1",
            aws_access_key_id="testing",
            aws_secret_access_key="x",
        )
        wait_until(lambda: _bucket(client), timeout=30, what="moto_server")
        env_file = tmp_path / "s3.env"
        env_file.write_text("".join(f"{k}={v}\n" for k, v in keys.items()))
        yield f"s3:{endpoint}/sbm-backups/instances", env_file
    finally:
        server.terminate()
        server.wait(10)


def _bucket(client) -> bool:
    try:
        client.create_bucket(Bucket="sbm-backups")
        return True
    except Exception:
        return False


def test_backup_to_s3_then_clone_from_it_shares_rows_but_no_secret(
    world, first_backup, s3, tmp_path, docker_client
):
    """The NixOS timer's command lines against an S3 store; then `clone SRC NEW` through that
    store (a fresh backup of SRC restored as NEW, every secret of NEW rotated): NEW runs beside
    SRC with SRC's rows, files and Vault key, and shares no secret, port, container, volume or
    route with it. (`restore --as` is the clone's restore: its own checks are folded in here.)"""
    repository, env_file = s3
    config = tmp_path / "config.toml"
    config.write_text(
        f'[backup]\nrepository = "{repository}"\nenvironment_file = "{env_file}"\n'
        "keep = { last = 1 }\n"
    )
    env = {"SUPABASE_MANAGER_CONFIG": str(config)}
    expected, files, key = fingerprint(), files_digest(world.folder), read_vault_key()
    world.run("backup", "--all", env=env)  # the NixOS timer's command line
    world.run("backup", "--all", env=env)
    assert len(world.json("backup", "list", env=env)) == 2
    world.run("backup", "prune", env=env)  # its other command line: keep = { last = 1 }
    assert len(world.json("backup", "list", env=env)) == 1

    new_name = "twin"
    proc = world.run("--json", "clone", NAME, new_name, env=env)
    try:
        result = json.loads(proc.stdout)
        assert result["instance"] == new_name and "POSTGRES_PASSWORD" in result["rotated"]
        assert len(world.json("backup", "list", env=env)) == 2  # the clone's backup went to S3
        # Back from S3: the rows, the files and the Vault key of the db-config volume.
        assert fingerprint(new_name) == expected
        assert files_digest(world.root / "instances" / new_name) == files
        assert read_vault_key(new_name) == key
        src, new = env_values(world, NAME), env_values(world, new_name)
        shared = [k for k, v in src.items() if v and is_secret(k) and new.get(k) == v]
        assert shared == []
        for text in (proc.stdout, proc.stderr):
            assert src["POSTGRES_PASSWORD"] not in text and new["POSTGRES_PASSWORD"] not in text
        # The database roles follow: each instance takes only its own password.
        assert logs_in(new_name, "authenticator", new["POSTGRES_PASSWORD"])
        assert not logs_in(new_name, "authenticator", src["POSTGRES_PASSWORD"])
        assert logs_in(NAME, "authenticator", src["POSTGRES_PASSWORD"])
        state = world.state()["instances"]
        assert set(state[new_name]["ports"].values()).isdisjoint(state[NAME]["ports"].values())
        assert new["COMPOSE_PROJECT_NAME"] == new_name
        # No container, network or volume in common, and NEW mounts none of SRC's volumes.
        mine, theirs = engine_objects(docker_client, new_name), engine_objects(docker_client, NAME)
        assert container(new_name) in mine["containers"] and mine["networks"] and mine["volumes"]
        for kind in ("containers", "networks", "volumes"):
            assert mine[kind].isdisjoint(theirs[kind]), kind
        assert mine["mounted"] <= mine["volumes"]
        assert mine["mounted"].isdisjoint(theirs["volumes"])
        # Its own routes: the new API host answers through Caddy with the new one's gateway.
        api = world.caddy.get(f"{new_name}.sbm.test", "/rest/v1/")
        assert api.status_code == 200 and f"of {new_name}" in api.text
        user = new["DASHBOARD_USERNAME"]
        studio = f"{new_name}-studio.sbm.test"
        assert world.caddy.get(studio, auth=(user, new["DASHBOARD_PASSWORD"])).status_code == 200
        assert world.caddy.get(studio, auth=(user, src["DASHBOARD_PASSWORD"])).status_code == 401
        assert fingerprint() == expected  # the original is untouched
    finally:
        if new_name in world.state()["instances"]:
            world.run("delete", new_name, "--purge", "--yes")
