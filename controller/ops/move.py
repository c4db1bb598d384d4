"""`move NAME --to HOST`: an instance taken to another host's engine with its name, secrets and
data, made of the backup and restore machinery (controller/ops/backup.py, restore.py).

1. The record notes the move (``InstanceRecord.move``, phase "copying"); the instance is stopped
   where it runs, so that no write made after the snapshot is lost, and backed up (stopped: its
   data files as they are).
2. The instance folder here is set aside (ROOT/move/NAME.aside) and the backup restored for the
   new host: the folder rendered here with ports allocated anew (unique across hosts) and, for
   another machine, copied there; volumes, database files and bind-mounted data on its engine.
   It is started there and waited for.
3. The switch, one state transaction: the record names the new host (phase "switched"); then
   Caddy's route is pointed at the new place.
4. The old copy goes (containers, network, volumes, its folder there or the aside folder here);
   then the record forgets the move.

Until the switch the record names the old host: any failure, or the next `move`/`start` after a
kill, removes what was made on the new host, puts the folder back and starts the instance where
it was. After the switch it names the new host, and the next command finishes the cleanup.
"""

from __future__ import annotations

import contextlib
import shutil
import time
from pathlib import Path

import attrs

from controller import containerio, faults
from controller.errors import ManagerError, OperationError, UsageError
from controller.ops import publish
from controller.ops.base import (
    Context,
    Progress,
    audited,
    busy,
    check_writable,
    quiet,
    record,
    require_ready,
)
from controller.ops.lifecycle import wait_healthy
from controller.state import LOCAL_HOST, READY, InstanceRecord, MoveRecord

COPYING = "copying"
SWITCHED = "switched"
# Undone, but the draft on the target could not be removed (its host did not answer): the
# instance runs where it was, and the next `start`/`move` tries the removal again.
LEFTOVER = "leftover"


@attrs.frozen
class MoveResult:
    instance: str
    source: str
    target: str
    backup: str
    ports: dict[str, int]
    seconds: float
    recovered: str | None = None  # what an interrupted move was converged to
    warnings: list[str] = attrs.field(factory=list)


def aside_dir(ctx: Context, name: str) -> Path:
    """Where the instance folder waits while a move is under way."""
    return ctx.settings.root / "move" / f"{name}.aside"


# --- the places: engines, compose, files ---------------------------------------------------------
def _place(ctx: Context, host: str):
    from controller.hosts import place

    return place(ctx.settings, ctx.store.read(), host)


def _api(ctx: Context, where):
    """The Engine API client of ``where``, seeing only this ROOT's objects."""
    from controller.ops.base import docker

    return docker(ctx, where.host)


def _compose(ctx: Context, name: str, where):
    """The compose project of ``name`` on ``where``'s engine, whatever host the record names."""
    from controller.ops.restore import _compose as compose_at

    return compose_at(ctx.settings, name, where)


def _remove_copy(ctx: Context, name: str, where, image: str | None, folder_too: bool) -> None:
    """Containers, network and volumes of ``name`` on ``where``'s engine and, for another
    machine, its folder there (``folder_too``)."""
    from controller.ops.restore import _project_volumes
    from controller.ownership import release

    api = _api(ctx, where)
    api.remove_instance_leftovers(name, volumes=True)
    with contextlib.suppress(Exception):
        release(api.engine, api.root, name)
    with containerio.engine(where.docker_env()):
        # Also the project's volumes without this ROOT's label (a restore's, made before
        # restores labelled them), which remove_instance_leftovers does not see.
        for volume in _project_volumes(name):
            containerio.remove_volume(volume)
        if folder_too and not where.local and image:
            path = where.instance_dir(name)
            containerio.run_helper(
                image,
                {".": str(path.parent)},
                ["rm", "-rf", f"/sbm-data/{path.name}"],
                f"removing {path} on {where.host}",
            )


# --- the use case --------------------------------------------------------------------------------
def move(ctx: Context, name: str, to: str, progress: Progress = quiet) -> MoveResult:
    found = record(ctx, name)
    state = ctx.store.read()
    if to not in state.hosts and to != LOCAL_HOST:
        raise UsageError(f"no host named {to!r} (see `host list`)")
    if found.move is None:
        require_ready(found)
        if found.host == to:
            raise UsageError(f"{name} already runs on {to}")
    check_writable(ctx)
    started = time.monotonic()
    with audited(ctx, f"move --to {to}", name), busy(ctx, name):
        recovered = recover(ctx, name, progress)
        found = record(ctx, name)
        if found.move is not None:
            # A draft an earlier move left is still there: forgetting it could leave two copies.
            raise OperationError(
                f"the copy of {name} an earlier move left on {found.move.target} cannot be "
                f"removed yet ({found.move.target} does not answer): try again once it does"
            )
        if found.host == to:
            return MoveResult(name, found.host, to, "", dict(found.ports), 0.0, recovered, [])
        require_ready(found)
        result = _move_locked(ctx, found, to, progress)
    return attrs.evolve(result, seconds=round(time.monotonic() - started, 2), recovered=recovered)


def _move_locked(ctx: Context, found: InstanceRecord, to: str, progress: Progress) -> MoveResult:
    from controller import backupplan as bp
    from controller.ops import backup, restore

    name = found.name
    source, target = _place(ctx, found.host), _place(ctx, to)
    _claim_target(ctx, found, target)  # before anything is made there, or changed here
    with ctx.store.transaction() as state:
        state.instances[name].move = MoveRecord(found.host, to, COPYING)
    try:
        progress(f"stopping {name} on {found.host} for the copy")
        with contextlib.suppress(OperationError):
            _compose(ctx, name, source).stop()
        restic, _ = bp.open_repository(ctx.settings, create_key=True)
        if not backup._repository_exists(restic):
            restic.init()
        with containerio.engine(source.docker_env()):
            snap = backup._backup_locked(
                ctx.settings, restic, found, ["move"], progress, [], time.monotonic(), source
            )
        with ctx.store.transaction() as state:
            state.instances[name].move = MoveRecord(found.host, to, COPYING, snap.backup)
        faults.point("move.backed-up")
        _, manifest = restore.find_backup(restic, name, snap.backup)
        moved = _copy_to(ctx, found, target, restic, manifest, progress)
        faults.point("move.started")
    except BaseException as exc:
        if isinstance(exc, KeyboardInterrupt | SystemExit):
            raise  # the record says a move is under way: the next command undoes it
        reason = str(exc) if isinstance(exc, ManagerError) else type(exc).__name__
        try:
            _undo(ctx, name, progress)
        except ManagerError as again:
            raise OperationError(
                f"move of {name} to {to} failed ({reason}); undoing it failed too ({again}): "
                f"run `move {name} --to {to}` or `start {name}` again"
            ) from None
        left = record(ctx, name).move
        note = (
            f"; its draft copy on {to} could not be removed yet (`start {name}` tries again)"
            if left is not None
            else ""
        )
        raise OperationError(
            f"move of {name} to {to} failed ({reason}); it runs on {found.host} as before{note}"
        ) from None
    with ctx.store.transaction() as state:
        moved.move = MoveRecord(found.host, to, SWITCHED, snap.backup)
        state.instances[name] = moved
    faults.point("move.switched")
    if not _finish(ctx, name, progress):
        raise publish.pending(ctx, f"{name} was moved to {to}")
    return MoveResult(name, found.host, to, snap.backup, dict(moved.ports), 0.0, None, [])


def _claim_target(ctx: Context, found: InstanceRecord, target) -> None:
    """The name claimed on the target's engine first: refused (exit 2, nothing changed) when
    another ROOT's or a hand-run stack's objects already hold it there, so that nothing of
    theirs is ever overwritten, nor removed by an undo."""
    from controller.ops import create
    from controller.ownership import claim, root_id, where

    api = _api(ctx, target)  # the new host answers, before anything changes
    create._refuse_foreign(ctx, api, found)
    with containerio.engine(target.docker_env()):
        claim(api.engine, root_id(ctx.settings.root), where(ctx.settings.root), found.name, set())


def _copy_to(ctx, found: InstanceRecord, target, restic, manifest, progress) -> InstanceRecord:
    """The backup restored as ``found`` on ``target``, started and healthy; the record it
    runs under there (not written to the state yet)."""
    from controller.ops import create, restore
    from controller.ops.base import template
    from controller.ownership import claim, root_id, where
    from controller.ports import allocate
    from controller.render import render_instance
    from controller.templatefiles import needed_ports

    name = found.name
    folder = ctx.settings.instance_dir(name)
    aside = aside_dir(ctx, name)
    if folder.exists() and not aside.exists():
        aside.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        folder.rename(aside)
    restore._ensure_template(ctx.settings, ctx.store, restic, manifest, progress)
    with containerio.engine(target.docker_env()):
        # The volumes carry this ROOT's labels, as compose's would: a later `delete` (no
        # --purge) keeps them as this ROOT's, for `restore` to set aside.
        owner = restore.owner_labels(ctx.settings, name)
        restore.materialize(restic, manifest, folder, name, progress, target, owner=owner)
    files = template(ctx, found.template)
    # New ports, unique across hosts (the old copy holds its own until it is removed), free on
    # the target's engine; claimed there like a create's (controller/ownership.py).
    api = _api(ctx, target)
    used = ctx.store.read().used_ports() | create._engine_ports(api)
    free = {} if target.local else {"is_free": create._engine_port_free(api)}
    needed = needed_ports(files, found.overlays)
    ports = allocate(needed, {}, used, ctx.settings.port_range, **free)
    with containerio.engine(target.docker_env()):
        claim(
            api.engine,
            root_id(ctx.settings.root),
            where(ctx.settings.root),
            name,
            {*ports.values()},
        )
    moved = attrs.evolve(found, host=target.host, ports=ports, phase=READY, move=None)
    progress(f"rendering {name} for {target.host}")
    render_instance(ctx.settings, moved, files, [])
    with containerio.engine(target.docker_env()):
        restore.to_host(restic, manifest, folder, target, progress)
    progress(f"starting {name} on {target.host}")
    _compose(ctx, name, target).up()
    wait_healthy(ctx, name, progress, host=target.host, found=moved)
    if not found.autostart:
        _compose(ctx, name, target).stop()
    return moved


def _image(ctx: Context, name: str) -> str | None:
    """An image the instance's host has (its database's), for helper containers."""
    from controller.composemodel import instance_model

    for folder in (ctx.settings.instance_dir(name), aside_dir(ctx, name)):
        with contextlib.suppress(ManagerError, OSError):
            images = [s.image for s in instance_model(folder).services.values() if s.image]
            db = [i for i in images if "postgres" in i and "meta" not in i]
            return (db or images or [None])[0]
    return None


def _undo(ctx: Context, name: str, progress: Progress) -> None:
    """Before the switch: remove what was made on the target, put the folder back, start the
    instance where it was, forget the move."""
    found = record(ctx, name)
    step = found.move
    if step is None:
        return
    progress(f"undoing the move of {name} to {step.target}")
    target = _place(ctx, step.target)
    folder = ctx.settings.instance_dir(name)
    aside = aside_dir(ctx, name)
    image = _image(ctx, name)
    try:
        _remove_copy(ctx, name, target, image, folder_too=True)
        cleaned = True
    except ManagerError:
        cleaned = False  # remembered below: never forget a copy that may still run there
    if aside.exists():
        if folder.exists():
            shutil.rmtree(folder)
        aside.rename(folder)
    with ctx.store.transaction() as state:
        if name in state.instances:
            state.instances[name].move = (
                None if cleaned else MoveRecord(step.source, step.target, LEFTOVER, step.backup)
            )
    if found.autostart and (folder / ".env").is_file():
        source = _place(ctx, found.host)
        progress(f"starting {name} on {found.host} again")
        _compose(ctx, name, source).up()
        wait_healthy(ctx, name, progress, host=source.host, found=found)


def _finish(ctx: Context, name: str, progress: Progress) -> bool:
    """After the switch: the route to the new place, the old copy removed, the move forgotten.
    False when Caddy could not be reached (the snippet is written, the live route pending)."""
    found = record(ctx, name)
    step = found.move
    live = publish.publish_live(ctx, found)
    source = _place(ctx, step.source)
    progress(f"removing the old copy of {name} on {step.source}")
    _remove_copy(ctx, name, source, _image(ctx, name), folder_too=True)
    shutil.rmtree(aside_dir(ctx, name), ignore_errors=True)
    with ctx.store.transaction() as state:
        if name in state.instances:
            state.instances[name].move = None
    return live


def recover(ctx: Context, name: str, progress: Progress = quiet) -> str | None:
    """Converge a move of ``name`` that was killed (call under its lock): "undone" (it runs
    where it was) or "finished" (it runs on the new host), or None when none was under way."""
    found = ctx.store.read().instances.get(name)
    if found is None or found.move is None:
        return None
    if found.move.phase == LEFTOVER:
        return _retry_leftover(ctx, found, progress)
    if found.move.phase == SWITCHED:
        progress(f"finishing the interrupted move of {name} to {found.move.target}")
        _finish(ctx, name, progress)
        return "finished"
    _undo(ctx, name, progress)
    return "undone"


def _retry_leftover(ctx: Context, found: InstanceRecord, progress: Progress) -> str:
    step = found.move
    progress(f"removing the copy of {found.name} a failed move left on {step.target}")
    try:
        _remove_copy(ctx, found.name, _place(ctx, step.target), _image(ctx, found.name), True)
    except ManagerError:
        return f"a copy is still left on {step.target}"
    with ctx.store.transaction() as state:
        if found.name in state.instances:
            state.instances[found.name].move = None
    return "cleaned"


def pending(ctx: Context, name: str) -> bool:
    found = ctx.store.read().instances.get(name)
    return found is not None and found.move is not None
