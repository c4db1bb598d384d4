"""`move NAME --to HOST`: an instance taken to another Docker engine and back with its rows and
files, through the real CLI, real restic, the real second engine behind sshd
(tests/world/worker.py) and a real Caddy; a move killed half-way converges on the next command.

Supabase's service images are stand-ins (tests/world/standin.py); the db service is a real
PostgreSQL holding real rows, the storage files are real files in the bind-mounted folder.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
from pathlib import Path

import pytest

from tests.world import remote
from tests.world.cli import CLI, CliRoot
from tests.world.net import wait_until
from tests.world.remote import HOST, STORAGE, psql, worker_files
from tests.world.templates import fixtures_dir

NAME = "mv"
TEMPLATE = "v0.8.2"


# --- refusals (no container: nothing is changed) -------------------------------------------------
@pytest.fixture(scope="module")
def quiet_root(tmp_path_factory, docker_client):
    """A ROOT with one never-started instance; Caddy points at a closed port. Its create claims
    the name on the local engine (controller/ownership.py): made under the machine-wide lock and
    removed with it, so that another run's instance of this name neither refuses it nor is
    refused."""
    from tests.world.dockerworld import DockerSandbox

    root = tmp_path_factory.mktemp("move-refusals") / "root"

    class Closed:
        http_port = 9
        admin_url = "http://127.0.0.1:9"

    world = CliRoot(root, Closed())
    world.run("template", "import", str(fixtures_dir() / TEMPLATE), "--name", TEMPLATE)
    with DockerSandbox(docker_client).session():
        # Caddy down: the instance is made, its routes wait (exit 1 says so).
        proc = world.run("create", NAME, "--template", TEMPLATE, "--no-start", check=False)
    assert NAME in json.loads(_state(root))["instances"], proc.stderr
    return world


def _state(root: Path) -> str:
    return (root / "state.json").read_text()


def test_move_to_an_unknown_host_is_refused_and_changes_nothing(quiet_root):
    before = _state(quiet_root.root)
    proc = quiet_root.run("move", NAME, "--to", "nowhere", check=False)
    assert proc.returncode == 2, proc.stderr
    assert "no host named 'nowhere'" in proc.stderr and len(proc.stderr.splitlines()) == 1
    assert _state(quiet_root.root) == before


def test_move_to_where_it_runs_is_refused(quiet_root):
    proc = quiet_root.run("move", NAME, "--to", "local", check=False)
    assert proc.returncode == 2 and "already runs on local" in proc.stderr


def test_move_of_an_unknown_instance_fails_in_one_line(quiet_root):
    proc = quiet_root.run("move", "ghost", "--to", "local", check=False)
    assert proc.returncode == 1 and proc.stderr.strip() == (
        "supabase-manager: no instance named 'ghost'"
    )


def test_an_older_state_file_reads_with_no_move_under_way(quiet_root):
    data = json.loads(_state(quiet_root.root))
    assert data["instances"][NAME]["move"] is None
    del data["instances"][NAME]["move"]  # as a program before `move` wrote it
    (quiet_root.root / "state.json").write_text(json.dumps(data))
    shown = quiet_root.json("show", NAME)
    assert shown["name"] == NAME


# --- the real move: this machine <-> a worker over SSH -------------------------------------------
BIG_ROWS = 50_000


class World(remote.RemoteRoot):
    @property
    def folder(self) -> Path:
        return self.root / "instances" / NAME

    def record(self) -> dict:
        return json.loads(_state(self.root))["instances"][NAME]


def fingerprint(engine: str | None = None) -> dict:
    """Row counts and checksums of every table written, and the role."""
    role = psql(NAME, "select rolpassword from pg_authid where rolname = 'app_user'", engine)
    return {**remote.checksums(NAME, engine), "role": role}


def local_files(folder: Path) -> dict[str, str]:
    storage = folder / STORAGE
    return {
        str(p.relative_to(storage)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(storage.rglob("*"))
        if p.is_file()
    }


def project_objects(client) -> list[str]:
    """The instance's containers and volumes on an engine (the docker SDK client's)."""
    label = {"label": f"com.docker.compose.project={NAME}"}
    found = [f"container {c.name}" for c in client.containers.list(all=True, filters=label)]
    return found + [f"volume {v.name}" for v in client.volumes.list(filters=label)]


def answers_through_caddy(world) -> bool:
    api = world.caddy.get(f"{NAME}.sbm.test", "/rest/v1/")
    return api.status_code == 200 and f"of {NAME}" in api.text


@pytest.fixture(scope="module")
def world(tmp_path_factory, docker_client, worker):
    base = tmp_path_factory.mktemp("move")
    with remote.remote_world(
        base, docker_client, worker, world=World, env=remote.DEBUG, instance=NAME, on="local"
    ) as w:
        remote.write_rows(NAME, BIG_ROWS)
        bucket = w.folder / STORAGE / "stub" / "bucket"
        bucket.mkdir(parents=True, exist_ok=True)
        (bucket / "photo.bin").write_bytes(os.urandom(2 * 1024 * 1024))
        (bucket / "note.txt").write_text("hello from storage\n")
        w.expected = fingerprint()
        w.expected_files = local_files(w.folder)
        w.engine = worker.engine_url
        w.moved_here = False  # the volumes here were made by a move (not by compose)
        yield w


@pytest.mark.docker
def test_move_to_a_worker_takes_rows_files_and_route_along(world, docker_client):
    before = world.record()
    result = world.json("move", NAME, "--to", HOST)
    assert result["source"] == "local" and result["target"] == HOST
    record = world.record()
    assert record["host"] == HOST and record["move"] is None and record["phase"] == "ready"
    assert set(record["ports"].values()).isdisjoint(before["ports"].values())
    # The data is on the worker, read through its engine and in its own file system.
    assert fingerprint(world.engine) == world.expected
    assert worker_files(world.worker, world.folder) == world.expected_files
    assert answers_through_caddy(world)
    # Nothing is left here: no container, no volume, no data in the folder (only its config).
    assert project_objects(docker_client) == []
    assert local_files(world.folder) == {}
    assert not any((world.folder / "volumes" / "db" / "data").glob("*"))
    assert not (world.root / "move" / f"{NAME}.aside").exists()


@pytest.mark.docker
def test_backup_of_the_remote_instance_reads_its_data_there(world):
    data = world.json("backup", NAME)
    key = world.root / "keys" / "backup.key"
    repo = ["restic", "-r", str(world.root / "backups"), "--password-file", str(key)]
    snaps = json.loads(
        subprocess.run([*repo, "snapshots", "--json"], capture_output=True, text=True).stdout
    )
    binds = [
        s for s in snaps if f"backup={data['backup']}" in s["tags"] and "part=binds" in s["tags"]
    ]
    assert binds, "the bind mounts were not read on the worker"
    dump = subprocess.run(
        [*repo, "dump", binds[0]["id"], f"/{NAME}/binds.tar"], capture_output=True
    )
    names = subprocess.run(["tar", "-tf", "-"], input=dump.stdout, capture_output=True)
    assert "volumes/storage/stub/bucket/photo.bin" in names.stdout.decode()
    # That such a backup restores (and `restore --dry-run` proves it there) is
    # tests/test_remote_restore.py's.


@pytest.mark.docker
def test_a_move_killed_before_the_switch_is_undone_by_start(world, docker_client):
    killed = world.run(
        "move", NAME, "--to", "local", check=False, env={"SUPABASE_MANAGER_FAULT": "move.started"}
    )
    assert killed.returncode == -9
    assert world.record()["move"]["target"] == "local" and world.record()["host"] == HOST
    # Until it is settled, commands that would act on one copy or strand the other refuse.
    for args in (["restart", NAME], ["delete", NAME, "--purge", "--yes"]):
        refused = world.run(*args, check=False)
        assert refused.returncode == 1, refused.stderr
        assert f"move of {NAME} to local" in refused.stderr and "start" in refused.stderr
    world.run("start", NAME)
    record = world.record()
    assert record["host"] == HOST and record["move"] is None
    assert project_objects(docker_client) == []  # the draft copy here is gone
    assert fingerprint(world.engine) == world.expected
    assert answers_through_caddy(world)


@pytest.mark.docker
def test_move_back_here_keeps_rows_and_files_and_leaves_nothing_there(world):
    world.run("move", NAME, "--to", "local")
    assert world.record()["host"] == "local"
    assert fingerprint() == world.expected
    assert local_files(world.folder) == world.expected_files
    assert answers_through_caddy(world)
    client = world.worker.client()
    try:
        assert project_objects(client) == []
    finally:
        client.close()
    assert world.worker.run(["test", "-e", str(world.folder)], check=False).returncode == 1
    world.moved_here = True


@pytest.mark.docker
def test_a_moved_instance_deleted_without_purge_is_restored_over_its_kept_volumes(
    world, docker_client
):
    """The volumes `move` makes on the new host (from its backup, not by compose) carry this
    ROOT's label as compose's do: after `delete` without --purge keeps them, `restore` there
    takes them for this ROOT's own and sets them aside, instead of refusing them."""
    if not world.moved_here:  # run alone: the instance here was made by `create`
        world.run("move", NAME, "--to", HOST)
        world.run("move", NAME, "--to", "local")
        world.moved_here = True
    project = {"label": f"com.docker.compose.project={NAME}"}
    kept = docker_client.volumes.list(filters=project)
    assert kept
    root_id = (world.root / "root-id").read_text().strip()
    for volume in kept:
        assert volume.attrs["Labels"].get("io.supabase-manager.root") == root_id
    world.run("delete", NAME, "--yes")
    assert {v.name for v in docker_client.volumes.list(filters=project)} == {v.name for v in kept}
    proc = world.run("--json", "restore", NAME, "--host", "local", check=False)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result["created"] is True and result["host"] == "local"
    assert fingerprint() == world.expected
    assert local_files(world.folder) == world.expected_files
    assert not list((world.root / "restore").iterdir())  # no marker, no aside copy
    assert answers_through_caddy(world)
    world.moved_here = False  # restored: the next cases start from a running instance here


@pytest.mark.docker
def test_a_failed_move_leaves_it_running_where_it_was(world):
    proc = subprocess.Popen(
        [*CLI, "move", NAME, "--to", HOST],
        env={**world.env, "SUPABASE_MANAGER_FAULT": "move.backed-up:pause"},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_until(lambda: _stopped(proc.pid), 180, "the move to pause after its backup")
        world.worker.stop_engine()  # the new host's engine goes away mid-move
        os.kill(proc.pid, signal.SIGCONT)
        _, stderr = proc.communicate(timeout=300)
    finally:
        world.worker.start_engine()
    assert proc.returncode == 1
    assert "it runs on local as before" in stderr and len(stderr.strip().splitlines()) >= 1
    # The draft on the new host (its claim) could not be removed while its engine was away:
    # remembered, never forgotten, while the instance runs here.
    assert "could not be removed yet" in stderr
    record = world.record()
    assert record["host"] == "local" and record["move"]["phase"] == "leftover"
    assert fingerprint() == world.expected
    assert local_files(world.folder) == world.expected_files
    assert answers_through_caddy(world)
    world.run("start", NAME)  # the engine is back: the draft there goes
    assert world.record()["move"] is None
    client = world.worker.client()
    try:
        assert project_objects(client) == []
        assert not client.volumes.list(filters={"name": f"{NAME}_sbm-claim"})
    finally:
        client.close()


@pytest.mark.docker
def test_a_move_killed_after_the_switch_is_finished_by_the_next_move(world, docker_client):
    killed = world.run(
        "move", NAME, "--to", HOST, check=False, env={"SUPABASE_MANAGER_FAULT": "move.switched"}
    )
    assert killed.returncode == -9
    assert world.record()["host"] == HOST and world.record()["move"]["phase"] == "switched"
    result = world.json("move", NAME, "--to", HOST)
    assert result["recovered"] == "finished"
    assert world.record()["move"] is None
    assert project_objects(docker_client) == []
    assert fingerprint(world.engine) == world.expected
    assert answers_through_caddy(world)


def _stopped(pid: int) -> bool:
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "T"
