"""A restore that makes a new instance (`restore --as`, `clone`, a deleted instance put back)
holds its name and ports from the start, as `create` does, and undoes all of it when it fails
(controller/ops/restore.py, controller/ownership.py). No Docker: the engine is an in-memory
stand-in that keeps volumes and their labels (the claim is a volume), the backup a manifest;
what is real is the state file, the marker, the folders, ownership's claim and sweep rules and
the CLI's refusals.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from types import SimpleNamespace

import pytest

from controller import backupplan as bp
from controller import ownership
from controller.config import Settings
from controller.engine import Volume
from controller.errors import OperationError, UsageError
from controller.ops import restore as restore_op
from controller.ops.base import Context
from controller.state import CREATING, READY, HostRecord, InstanceRecord
from tests.world.templates import fixtures_dir

CLI = [sys.executable, "-m", "shell"]
TEMPLATE = "v0.8.2"
NEW = "fresh"
PORTS = {"api-gw:8000": 21000, "supavisor:5432": 21001, "supavisor:6543": 21002}


class Engine:
    """The engine calls ownership and the refusals make: volumes with labels, nothing else."""

    def __init__(self) -> None:
        self.vols: dict[str, dict[str, str]] = {}

    def containers(self, labels=(), all=True):
        return []

    def networks(self, labels=()):
        return []

    def volumes(self, labels=()):
        return [Volume(n, lb) for n, lb in self.vols.items() if all(k in lb for k in labels)]

    def remove_volume(self, name: str) -> bool:
        return self.vols.pop(name, None) is not None

    def published_ports(self) -> set[int]:
        return set()

    def ping(self) -> None:
        pass


def cli(root, *args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, SUPABASE_MANAGER_ROOT=str(root))
    return subprocess.run(
        [*CLI, *args], env=env, capture_output=True, text=True, stdin=subprocess.DEVNULL
    )


def manifest() -> bp.Manifest:
    record = {"name": "src", "template": TEMPLATE, "ports": PORTS, "host": "local"}
    return bp.Manifest(
        id="b1",
        instance="src",
        created="",
        template=TEMPLATE,
        template_hash="",
        record=record,
        postgres_major="15",
        superuser="postgres",
        db_service="db",
        pgdata=None,
        pgdata_target=bp.DEFAULT_PGDATA,
        images={"db": "postgres:15"},
        schemas=[],
        tables=[],
        parts={},
        volumes={},
    )


@pytest.fixture
def world(tmp_path, monkeypatch):
    """A ROOT with the template, an engine stand-in that docker() hands out and whose claim
    volumes ownership creates, and no project volume to set aside."""
    from controller.manager import Manager
    from controller.ops import base

    settings = Settings(root=tmp_path / "root")
    Manager(settings).template_import(fixtures_dir() / TEMPLATE, name=TEMPLATE)
    ctx = Context.of(settings)
    engine = Engine()
    root = ownership.root_id(settings.root)
    # docker() of any host hands out this engine (patched where docker() looks it up: modules
    # that imported docker() itself keep the real one).
    monkeypatch.setattr(base, "_engine", lambda ctx, host: engine)
    monkeypatch.setattr(
        ownership, "_create_volume", lambda _e, name, labels: engine.vols.setdefault(name, labels)
    )
    monkeypatch.setattr(restore_op, "_project_volumes", lambda project: [])
    hooks = restore_op.Hooks(
        wait_healthy=lambda name, progress: None,
        publish=lambda name, record: [],
        unpublish=lambda name: [],
    )
    return SimpleNamespace(settings=settings, ctx=ctx, engine=engine, root=root, hooks=hooks)


def restore_new(world) -> restore_op.RestoreResult:
    """`restore src --as fresh --host local`, from the point where the backup was found."""
    s = world.settings
    return restore_op._restore_locked(
        s, world.ctx.store, None, None, manifest(), NEW, world.hooks, print, "local", True
    )


def claimed(world) -> bool:
    return ownership.claim_volume(NEW) in world.engine.vols


def marker(world):
    return world.settings.root / "restore" / f"{NEW}.json"


def test_the_new_record_is_committed_before_the_claim_and_removed_by_the_rollback(
    world, monkeypatch
):
    from controller.status import INCOMPLETE, instance_status

    seen = {}

    def meanwhile(*args, **kwargs):
        # What another command sees while the backup's data is put in place: a create's sweep
        # of this ROOT's claims, the ports a create must not take, what `list` shows.
        state = world.ctx.store.read()
        seen["record"] = state.instances.get(NEW)
        seen["used"] = state.used_ports()
        seen["swept"] = ownership.sweep(
            world.engine, world.root, lambda: world.ctx.store.read().instances
        )
        seen["claimed"] = claimed(world)
        raise OperationError("no space left on the device")

    monkeypatch.setattr(restore_op, "materialize", meanwhile)
    with pytest.raises(OperationError, match=f"restore of {NEW} failed .*removed {NEW} again"):
        restore_new(world)
    found = seen["record"]
    assert found is not None and found.phase == CREATING and found.host == "local"
    assert instance_status(found, [])[0] == INCOMPLETE
    assert set(found.ports.values()) <= seen["used"] and len(found.ports) == len(PORTS)
    assert seen["swept"] == [] and seen["claimed"]
    # The rollback: no record, no claim, no marker.
    assert NEW not in world.ctx.store.read().instances
    assert not claimed(world) and not marker(world).exists()


def test_a_failure_moving_kept_data_aside_is_rolled_back(world, monkeypatch):
    kept = world.settings.instance_dir(NEW)  # `delete` without --purge keeps the folder
    kept.mkdir(parents=True)
    (kept / "kept.txt").write_text("kept by delete")

    def fails(project):
        raise OperationError("docker volume ls failed")

    monkeypatch.setattr(restore_op, "_project_volumes", fails)
    with pytest.raises(OperationError, match=f"docker volume ls failed.*removed {NEW} again"):
        restore_new(world)
    assert (kept / "kept.txt").read_text() == "kept by delete"
    assert not claimed(world) and not marker(world).exists()
    assert not (world.settings.root / "restore" / f"{NEW}.aside").exists()
    assert NEW not in world.ctx.store.read().instances


def test_a_claim_taken_meanwhile_by_another_root_is_refused_and_left_to_it(world, monkeypatch):
    other = {
        ownership.CLAIM_LABEL: NEW,
        "io.supabase-manager.root": "0ther",
        ownership.ROOT_PATH_LABEL: "elsewhere:/srv/other",
    }
    # Between the look for foreign objects and the claim, another ROOT claims the name.
    monkeypatch.setattr(
        ownership,
        "_create_volume",
        lambda _e, name, labels: world.engine.vols.setdefault(name, other),
    )
    with pytest.raises(UsageError, match="claimed by the ROOT at elsewhere:/srv/other"):
        restore_new(world)
    assert world.engine.vols[ownership.claim_volume(NEW)] == other
    assert NEW not in world.ctx.store.read().instances and not marker(world).exists()


def test_a_killed_restore_is_settled_by_start_and_blocks_create(world, monkeypatch):
    from controller.manager import Manager

    def killed(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(restore_op, "materialize", killed)
    with pytest.raises(KeyboardInterrupt):
        restore_new(world)
    assert marker(world).exists() and claimed(world)
    proc = cli(world.settings.root, "create", NEW, "--no-start")  # no Docker, even when broken
    assert proc.returncode == 2
    assert proc.stderr.strip() == (
        f"supabase-manager: a restore of {NEW} was interrupted: run `restore {NEW}` or "
        f"`start {NEW}` to settle it first"
    )
    assert marker(world).exists() and NEW in world.ctx.store.read().instances
    # `delete` too: the rollback would otherwise bring back what it removes, or block a create.
    proc = cli(world.settings.root, "delete", NEW, "--purge", "--yes")
    assert proc.returncode == 1
    assert proc.stderr.strip() == (
        f"supabase-manager: a restore of {NEW} was interrupted: run `start {NEW}` first (it "
        "finishes or undoes it)"
    )
    assert marker(world).exists() and NEW in world.ctx.store.read().instances
    # `start` rolls the restore back (the instance it was making is gone, and says so).
    with pytest.raises(OperationError, match=f"restore .* is undone and {NEW} no longer exists"):
        Manager(world.settings).start(NEW)
    assert not marker(world).exists() and not claimed(world)
    assert NEW not in world.ctx.store.read().instances


def test_create_is_refused_while_a_marker_without_record_is_left(tmp_path):
    restore_dir = tmp_path / "restore"
    restore_dir.mkdir()
    (restore_dir / f"{NEW}.json").write_text(json.dumps({"phase": "aside", "record": None}))
    proc = cli(tmp_path, "create", NEW, "--no-start")  # no Docker, even when broken
    assert proc.returncode == 2
    assert proc.stderr.strip() == (
        f"supabase-manager: a restore of {NEW} was interrupted: run `restore {NEW}` to settle "
        "it first"
    )


def test_restore_on_another_host_is_refused_before_the_question(tmp_path):
    store = Context.of(Settings(root=tmp_path)).store
    with store.transaction() as state:
        state.hosts["w2"] = HostRecord("w2", "root", "10.0.0.2")
        state.instances["rr"] = InstanceRecord("rr", TEMPLATE, phase=READY, ports=PORTS)
    proc = cli(tmp_path, "restore", "rr", "--host", "w2")  # no terminal, no --yes
    assert proc.returncode == 2
    assert proc.stderr.strip() == (
        "supabase-manager: rr runs on host local: it is restored there "
        "(`move rr --to w2` takes it to w2)"
    )
