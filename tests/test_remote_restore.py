"""`restore` and `clone` of an instance on another host (issue 15), through the real CLI, real
restic, the real second engine behind sshd (tests/world/worker.py) and a real Caddy.

One instance runs on the worker for the whole module (the session's ``shared_world``, see
tests/world/remote.py; each test leaves it as it found it), with real rows (the db service is a
real PostgreSQL) and real storage files in its bind-mounted folder, which live on the worker only
(its own mount namespace). Its rows are read through the worker's engine, its files with
``worker.run``; the local engine is watched (its event stream) to hold nothing of the restores.
Supabase's other service images are stand-ins (tests/world/standin.py). A restore over the
volumes a `move` made is in tests/test_move.py, which moves one.

Where a new instance goes without --host is made certain by the worker reporting far more or
far less free memory than this machine (``worker.fake_meminfo``), so that each case shows the
rule it follows and not the other one.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from controller import backupplan as bp
from controller.config import Settings
from controller.containerio import HELPER_LABEL
from controller.ops import restore as restore_op
from controller.ops.base import Context
from controller.state import HostRecord
from tests.world.remote import HOST, SHARED, STORAGE, psql, rows, worker_files

NAME = SHARED
TEMPLATE = "v0.8.2"
GIB_KIB = 1024 * 1024
MUCH_LESS = 64 * 1024  # KiB the worker reports when it has far less free memory than here


def much_more() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) + 64 * GIB_KIB
    raise AssertionError("no MemAvailable here")


# --- where a new instance goes (no Docker: the state and a manifest) ----------------------------
def _manifest(record: dict) -> bp.Manifest:
    return bp.Manifest(
        id="b1",
        instance=NAME,
        created="",
        template=TEMPLATE,
        template_hash="",
        record=record,
        postgres_major="15",
        superuser="postgres",
        db_service="db",
        pgdata=None,
        pgdata_target=bp.DEFAULT_PGDATA,
        images={},
        schemas=[],
        tables=[],
        parts={},
        volumes={},
    )


@pytest.fixture
def two_hosts(tmp_path, monkeypatch):
    """A ROOT that knows host w2; create's rule (``placement``) answers "w2" and counts its
    calls."""
    from controller.ops import hosts

    ctx = Context.of(Settings(root=tmp_path))
    with ctx.store.transaction() as state:
        state.hosts[HOST] = HostRecord(HOST, "root", "10.0.0.2")
    asked = []

    def placement(ctx, state):
        asked.append(1)
        return hosts.Placement(HOST, {"local": 1, HOST: 2}, {})

    monkeypatch.setattr(hosts, "placement", placement)
    return ctx, asked


def test_a_deleted_instance_goes_back_to_the_host_of_its_backup(two_hosts):
    ctx, asked = two_hosts
    assert restore_op.destination(ctx, _manifest({"host": "local"}), None) == "local"
    assert restore_op.destination(ctx, _manifest({"host": HOST}), None) == HOST
    assert restore_op.destination(ctx, _manifest({"host": HOST}), "local") == "local"
    assert asked == []


def test_a_manifest_without_a_host_is_this_machine_and_a_gone_host_means_create_s_rule(
    two_hosts,
):
    ctx, asked = two_hosts
    older = _manifest({"name": NAME, "template": TEMPLATE})  # written before hosts existed
    assert older.host() == "local"
    assert restore_op.destination(ctx, older, None) == "local"
    gone = _manifest({"host": "w9"})  # a host removed since the backup
    assert restore_op.destination(ctx, gone, None) == HOST and asked == [1]
    assert restore_op.destination(ctx, gone, "local") == "local"
    assert restore_op.destination(ctx, None, None) == HOST  # --as and clone: create's rule


def test_an_unknown_host_is_a_usage_error(two_hosts):
    from controller.errors import UsageError

    ctx, _ = two_hosts
    with pytest.raises(UsageError, match="no host named 'nowhere'"):
        restore_op.destination(ctx, None, "nowhere")
    with pytest.raises(UsageError, match="no host named 'nowhere'"):
        restore_op.dry_host(ctx, NAME, _manifest({"host": HOST}), "nowhere")
    assert restore_op.dry_host(ctx, NAME, _manifest({"host": HOST}), None) == HOST
    assert restore_op.dry_host(ctx, NAME, _manifest({"host": "w9"}), None) == "local"


def test_host_names_complete_for_host_as_for_create(two_hosts):
    from controller.completion_data import build_snapshot
    from shell.completion import Completer

    ctx, _ = two_hosts
    completer = Completer(build_snapshot(ctx.settings))

    def complete(text: str) -> list[str]:
        return [c.text for c in completer.complete(text)]

    assert complete("create x --host ") == ["local", HOST]
    for line in ("restore rr --host ", "restore rr --as x --host ", "clone rr x --host "):
        assert complete(line) == ["local", HOST], line
    assert "--host" in complete("clone rr x --")


# --- the real thing: an instance on the worker ---------------------------------------------------
def local_files(folder: Path) -> list[str]:
    storage = folder / STORAGE
    return sorted(str(p.relative_to(storage)) for p in storage.rglob("*") if p.is_file())


def engine_objects(client) -> set[str]:
    return (
        {f"container {c.name}" for c in client.containers.list(all=True)}
        | {f"volume {v.name}" for v in client.volumes.list()}
        | {f"network {n.name}" for n in client.networks.list()}
    )


def ours(event: dict, names: tuple[str, ...]) -> bool:
    """An engine event about a restore's work: a helper container, or a container or volume
    of one of ``names`` or of a throwaway (dry-run) project."""
    attrs = event.get("Actor", {}).get("Attributes", {}) or {}
    prefixes = (*names, "sbm_dryrun_")
    if event.get("Type") == "container":
        project = attrs.get("com.docker.compose.project", "")
        return (
            HELPER_LABEL in attrs
            or project.startswith(prefixes)
            or attrs.get("name", "").startswith(prefixes)
        )
    if event.get("Type") == "volume":
        return event.get("Actor", {}).get("ID", "").startswith(prefixes)
    return False


def events_during(client, since: float, names: tuple[str, ...] = (NAME,)) -> list[str]:
    """The events of ours ``client``'s engine saw since ``since`` (until now)."""
    got = client.events(
        since=int(since),
        until=int(time.time()) + 1,
        decode=True,
        filters={"type": ["container", "volume"]},
    )
    out = []
    for event in got:
        if event.get("timeNano", 0) >= since * 1e9 and ours(event, names):
            actor = event.get("Actor", {})
            what = (actor.get("Attributes") or {}).get("name") or actor.get("ID")
            out.append(f"{event.get('Type')} {event.get('Action')} {what}")
    return out


def claim_of(client, name: str) -> dict | None:
    found = client.volumes.list(filters={"name": f"{name}_sbm-claim"})
    return found[0].attrs["Labels"] if found else None


@pytest.fixture(scope="module")
def world(shared_world):
    return shared_world.converge()


@pytest.mark.docker
def test_an_unknown_or_other_host_is_refused_and_changes_nothing(world):
    state = (world.root / "state.json").read_text()
    backups = world.json("backup", "list", NAME)
    for args in (
        ("restore", NAME, "--as", "rr9", "--host", "nowhere"),
        ("restore", NAME, "--dry-run", "--host", "nowhere"),
        ("clone", NAME, "rr9", "--host", "nowhere"),
    ):
        proc = world.run(*args, check=False)
        assert proc.returncode == 2, (args, proc.stderr)
        assert proc.stderr.strip() == (
            "supabase-manager: no host named 'nowhere' (see `host list`)"
        ), args
    # In place means on its own host: another one is what `move` is for.
    proc = world.run("restore", NAME, "--yes", "--host", "local", check=False)
    assert proc.returncode == 2 and f"move {NAME} --to local" in proc.stderr
    assert (world.root / "state.json").read_text() == state
    assert world.json("backup", "list", NAME) == backups  # clone took no backup either


@pytest.mark.docker
def test_restore_in_place_puts_rows_and_files_back_on_the_worker(
    world, docker_client, docker_sandbox
):
    engine = world.worker.engine_url
    psql(NAME, "insert into shop.customers (email) values ('late@example.com')", engine)
    bucket = world.folder() / STORAGE / "stub" / "bucket"
    world.worker.run(f"echo late > {bucket}/late.txt && rm {bucket}/note.txt")
    assert rows(NAME, engine) != world.expected
    since = time.time()
    result = world.json("restore", NAME, "--yes")
    assert result["host"] == HOST and result["created"] is False
    assert rows(NAME, engine) == world.expected
    assert worker_files(world.worker, world.folder()) == world.expected_files
    assert world.state()["instances"][NAME]["host"] == HOST
    # Nothing of it ran here: no helper, container or volume on the local engine, no data in
    # the folder here, no marker or aside copy left.
    assert events_during(docker_client, since) == []
    assert local_files(world.folder()) == []
    assert not list((world.root / "restore").iterdir())
    aside = world.worker.run(f"ls -a {world.folder().parent}").stdout.split()
    assert aside.count(NAME) == 1 and not [n for n in aside if "aside" in n]


@pytest.mark.docker
def test_dry_run_proves_the_backup_on_the_worker_and_leaves_nothing(
    world, docker_client, docker_sandbox
):
    before = engine_objects(world.client)
    since = time.time()
    proc = world.run("restore", NAME, "--dry-run")
    assert "FAIL" not in proc.stdout, proc.stdout
    assert f"restorable (proved on host {HOST})" in proc.stdout
    assert "ok   every table reads back" in proc.stdout
    # Its database ran on the worker's engine, and nothing did here.
    there = events_during(world.client, since)
    assert any(e.startswith("container start sbm_dryrun_") for e in there), there
    assert events_during(docker_client, since) == []
    assert engine_objects(world.client) == before
    listing = world.worker.run(f"ls -a {world.folder().parent}").stdout.split()
    assert not [n for n in listing if "dryrun" in n], listing
    assert not list((world.root / "restore").glob("dryrun-*"))
    assert rows(NAME, world.worker.engine_url) == world.expected


@pytest.mark.docker
def test_restore_as_goes_to_the_host_asked_for_and_claims_it(world, docker_client, docker_sandbox):
    # The worker has far more free memory: without --host it would go there.
    with world.worker.fake_meminfo(much_more()):
        result = world.json("restore", NAME, "--as", "rr2", "--host", "local")
    assert result["host"] == "local"
    assert world.state()["instances"]["rr2"]["host"] == "local"
    assert rows("rr2") == world.expected  # the remote backup's rows, on this engine
    assert sorted(world.expected_files) == local_files(world.folder("rr2"))
    claim = claim_of(docker_client, "rr2")
    assert claim and claim["io.supabase-manager.root"] == world.root_id()
    assert claim_of(world.client, "rr2") is None
    world.run("delete", "rr2", "--purge", "--yes")
    assert claim_of(docker_client, "rr2") is None


@pytest.mark.docker
def test_clone_without_host_goes_where_create_would_and_claims_it_there(
    world, docker_client, docker_sandbox
):
    since = time.time()
    with world.worker.fake_meminfo(much_more()):
        result = world.json("clone", NAME, "rr3")
    assert result["host"] == HOST and "POSTGRES_PASSWORD" in result["rotated"]
    assert world.state()["instances"]["rr3"]["host"] == HOST
    assert rows("rr3", world.worker.engine_url) == world.expected
    assert worker_files(world.worker, world.folder("rr3")) == world.expected_files
    claim = claim_of(world.client, "rr3")
    assert claim and claim["io.supabase-manager.root"] == world.root_id()
    assert events_during(docker_client, since, ("rr3",)) == []
    world.run("delete", "rr3", "--purge", "--yes")
    assert claim_of(world.client, "rr3") is None


@pytest.mark.docker
def test_a_deleted_instance_comes_back_on_the_host_of_its_backup(
    world, docker_client, docker_sandbox
):
    world.run("delete", NAME, "--purge", "--yes")
    assert worker_files(world.worker, world.folder()) == {}
    since = time.time()
    # The worker has far less free memory: create's rule would put it here.
    with world.worker.fake_meminfo(MUCH_LESS):
        result = world.json("restore", NAME, "--snapshot", world.backup)
    assert result["created"] is True and result["host"] == HOST
    assert world.state()["instances"][NAME]["host"] == HOST
    assert rows(NAME, world.worker.engine_url) == world.expected
    assert worker_files(world.worker, world.folder()) == world.expected_files
    assert claim_of(world.client, NAME)["io.supabase-manager.root"] == world.root_id()
    assert events_during(docker_client, since) == []
    api = world.caddy.get(f"{NAME}.sbm.test", "/rest/v1/")
    assert api.status_code == 200 and f"of {NAME}" in api.text
