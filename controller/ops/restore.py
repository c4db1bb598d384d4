"""Restores: put an instance back to a backup (in place, after a delete, or as a new instance),
or prove a backup restorable in a throwaway project (``--dry-run``).

In place, the current data is moved aside first (folder renamed, named volumes copied) and only
removed once the restored instance is healthy; if it does not become healthy the aside copy is
put back. A marker file (ROOT/restore/NAME.json) records how far a restore got, so that a killed
restore is finished or rolled back by the next `restore` or `start` of that instance.

Where: in place, on the instance's own host. A new instance (``--as``, `clone`, or one that
was deleted) goes to ``--host``, else (deleted) the host its backup was taken on when that host
is still known, else where `create` would put it (controller/ops/hosts.py ``choose``); it claims
its name on that engine first, as `create` does (controller/ownership.py). ``--dry-run`` proves
the backup on the instance's host (or ``--host``) and leaves nothing there or here.
"""

from __future__ import annotations

import contextlib
import json
import secrets
import shutil
import time
from collections.abc import Callable, Mapping
from pathlib import Path, PurePosixPath

import attrs

from controller import backupplan as bp
from controller import containerio
from controller.config import Settings
from controller.errors import ManagerError, OperationError, UsageError
from controller.fsutil import atomic_write, ensure_dir
from controller.names import validate_name, validate_new_name
from controller.ops.backup import instance_lock, superuser
from controller.restic import Restic, Snapshot
from controller.state import (
    CREATING,
    LOCAL_HOST,
    READY,
    InstanceRecord,
    StateStore,
    TemplateRecord,
    converter,
)

Progress = Callable[[str], None]
ASIDE_SUFFIX = "-sbm-aside"


def _quiet(_: str) -> None:
    pass


@attrs.frozen
class Hooks:
    """What the facade lends a restore: waiting for health and publishing routes."""

    wait_healthy: Callable[[str, Progress], None]
    publish: Callable[[str, InstanceRecord], list[str]]
    unpublish: Callable[[str], list[str]]


@attrs.frozen
class RestoreResult:
    instance: str
    source: str
    backup: str
    snapshot: str
    created: bool
    ports_changed: dict[str, int]
    warnings: list[str]
    host: str = LOCAL_HOST


@attrs.frozen
class Check:
    what: str
    ok: bool
    detail: str


@attrs.frozen
class DryRunResult:
    instance: str
    backup: str
    ok: bool
    checks: list[Check]
    host: str = LOCAL_HOST


# --- finding the backup ------------------------------------------------------------------------
def find_backup(restic: Restic, name: str, ref: str | None) -> tuple[Snapshot, bp.Manifest]:
    snaps = restic.snapshots([f"{bp.SBM_TAG},part=manifest,instance={name}"])
    if ref:
        snaps = [s for s in snaps if s.id.startswith(ref) or s.tag("backup") == ref]
        if not snaps:
            raise UsageError(f"no backup {ref!r} of {name}: `backup list {name}` shows them")
    if not snaps:
        raise OperationError(f"no backup of {name} in {restic.repository}")
    snap = max(snaps, key=lambda s: s.time)
    manifest = bp.Manifest.loads(restic.cat_file(snap.id, "/" + bp.stdin_name(name, "manifest")))
    if manifest.instance != name:
        raise OperationError(f"snapshot {snap.short_id} is not a backup of {name}")
    return snap, manifest


# --- the marker ----------------------------------------------------------------------------------
def _restore_dir(settings: Settings) -> Path:
    return ensure_dir(settings.root / "restore", 0o700)


def _marker_path(settings: Settings, name: str) -> Path:
    return settings.restore_marker(name)


def _write_marker(settings: Settings, name: str, data: dict) -> None:
    _restore_dir(settings)
    atomic_write(_marker_path(settings, name), json.dumps(data, indent=2), mode=0o600)


def _aside_dir(settings: Settings, name: str) -> Path:
    return settings.root / "restore" / f"{name}.aside"


# --- putting data in place ----------------------------------------------------------------------
def _volume_labels(project: str, key: str, owner: Mapping[str, str] = ()) -> dict[str, str]:
    """A restored volume's labels: compose's, and this ROOT's (``owner``) as compose would put
    them, so that a later restore or `delete` sees it as this ROOT's own."""
    return {**dict(owner), "com.docker.compose.project": project, "com.docker.compose.volume": key}


def owner_labels(settings: Settings, project: str) -> dict[str, str]:
    from controller.labels import INSTANCE_LABEL, ROOT_LABEL
    from controller.ownership import root_id

    return {INSTANCE_LABEL: project, ROOT_LABEL: root_id(settings.root)}


def _stream_in(
    restic: Restic, snapshot: str, path: str, image: str, mounts: dict[str, str], what: str
) -> None:
    dump = restic.dump(snapshot, path)
    try:
        tin = containerio.tar_in(image, mounts, dump.stdout)
    finally:
        if dump.stdout:
            dump.stdout.close()
    try:
        containerio.finish(tin, f"extracting {what}")
    finally:
        restic.finish_dump(dump)


def materialize(
    restic: Restic,
    manifest: bp.Manifest,
    folder: Path,
    project: str,
    progress: Progress,
    where=None,
    there: PurePosixPath | None = None,
    owner: Mapping[str, str] = (),
) -> None:
    """The backup's folder, volumes and database files for compose project ``project``, on
    the host ``where`` (a controller.hosts.Place; None: this machine) whose engine the caller
    made current (containerio.engine). The folder is restored here; for another host it is
    copied there (to ``there``, default the instance folder of ``folder``'s name), and then
    ``put_binds`` fills its bind mounts there. ``owner``: labels the volumes also get."""
    ensure_dir(folder.parent, 0o755)
    ensure_dir(folder, 0o700)
    name = manifest.instance
    restic.restore(manifest.parts["files"].snapshot, folder, progress)
    helper = _db_image(manifest)
    if "volumes" in manifest.parts:
        mounts = {}
        for key in sorted(manifest.volumes):
            volume = f"{project}_{key}"
            containerio.remove_volume(volume)
            containerio.create_volume(volume, _volume_labels(project, key, owner))
            mounts[key] = volume
        progress(f"restoring volumes {', '.join(mounts)}")
        path = "/" + bp.stdin_name(name, "volumes")
        _stream_in(restic, manifest.parts["volumes"].snapshot, path, helper, mounts, "volumes")
    pgdata = manifest.pgdata_mount()
    if pgdata is not None and "db" in manifest.parts:
        progress("restoring the database files")
        if pgdata.type == "volume":
            mount = f"{project}_{pgdata.source}"
            containerio.remove_volume(mount)
            containerio.create_volume(mount, _volume_labels(project, pgdata.source, owner))
        elif where is not None and not where.local:
            # A path on that host: the engine makes it; the host's copy was removed or set aside.
            source = Path(pgdata.source)
            base = there or where.instance_dir(folder.name)
            mount = str(source if source.is_absolute() else base / source)
        else:
            path = Path(pgdata.source)
            path = path if path.is_absolute() else folder / path
            if path.exists() and any(path.iterdir()):
                raise OperationError(f"{path} is not empty: cannot restore the database into it")
            path.mkdir(parents=True, exist_ok=True)
            mount = str(path.resolve())
        image = manifest.images.get(manifest.db_service or "", helper)
        path = "/" + bp.stdin_name(name, "db")
        snapshot = manifest.parts["db"].snapshot
        _stream_in(restic, snapshot, path, image, {".": mount}, "the database")


def put_binds(
    restic: Restic,
    manifest: bp.Manifest,
    folder: Path,
    where,
    progress: Progress,
    there: PurePosixPath | None = None,
) -> None:
    """The bind-mounted data of the backup (storage files, functions...) where the engine of
    ``where`` reads it (for another host: in ``there``, default the instance folder of
    ``folder``'s name), once the folder is there: from the backup's ``binds`` part (taken on
    another host), else, for another host, from the folder restored here."""
    import subprocess

    helper = _db_image(manifest)
    remote = where is not None and not where.local
    target = str(there or where.instance_dir(folder.name)) if remote else str(folder.resolve())
    if "binds" in manifest.parts:
        progress("restoring the bind-mounted data")
        path = "/" + bp.stdin_name(manifest.instance, "binds")
        _stream_in(restic, manifest.parts["binds"].snapshot, path, helper, {".": target}, "data")
        return
    if not remote:
        return  # the files part put them in the folder already
    from controller.templatefiles import TemplateFiles

    db_service = TemplateFiles(folder).role("db", list(manifest.record.get("overlays") or []))
    present = [b for b in bp.plan_for(folder, db_service).binds if (folder / b).exists()]
    if not present:
        return
    progress(f"copying the bind-mounted data to {where.host}")
    tar = subprocess.Popen(
        ["tar", "-C", str(folder), "-cf", "-", *present],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        tin = containerio.tar_in(helper, {".": target}, tar.stdout)
    finally:
        if tar.stdout:
            tar.stdout.close()
    containerio.finish(tin, "copying the bind-mounted data")
    containerio.finish(tar, "reading the bind-mounted data")


def _ensure_template(settings, store, restic: Restic, manifest: bp.Manifest, progress) -> None:
    """A host without the backup's template gets it from the backup."""
    target = settings.template_dir(manifest.template)
    if (target / "docker-compose.yml").is_file() or "template" not in manifest.parts:
        return
    progress(f"restoring template {manifest.template} from the backup")
    staging = settings.templates_dir / f".{manifest.template}.restoring"
    shutil.rmtree(staging, ignore_errors=True)
    ensure_dir(staging, 0o755)
    restic.restore(manifest.parts["template"].snapshot, staging)
    staging.rename(target)
    with store.transaction() as state:
        state.templates.setdefault(
            manifest.template, TemplateRecord(manifest.template, f"backup:{manifest.id}")
        )


def _port_rules(api, where) -> tuple[set[int], Callable[[int], bool]]:
    """What a new instance's ports are chosen against, asked of the engine before the state
    lock is taken: the ports other ROOTs' instances hold there, and whether a port is free on
    the machine of ``where`` (this one: its sockets; another: its engine's published ports)."""
    from controller.ops.create import _engine_port_free, _engine_ports
    from controller.ports import host_port_free

    return _engine_ports(api), host_port_free if where.local else _engine_port_free(api)


def _choose_ports(
    settings, state, record: InstanceRecord, own: str, reserved: set[int], is_free
) -> dict[str, int]:
    """The snapshot's ports where they are free, the lowest free ones of the range elsewhere:
    unique across hosts (``state``, read under its lock), held by no other ROOT's instance on
    the engine (``reserved``) and free there (``is_free``)."""
    from controller.ports import allocate

    used = state.used_ports(exclude=own) | reserved
    keep = {k: p for k, p in record.ports.items() if p not in used and is_free(p)}
    return allocate(list(record.ports), keep, used, settings.port_range, is_free)


# --- where it goes ------------------------------------------------------------------------------
def _known(state, host: str) -> bool:
    return host == LOCAL_HOST or host in state.hosts


def check_host(state, host: str | None) -> None:
    """An unknown ``--host`` is refused (exit 2) before anything is read or written."""
    if host is not None and not _known(state, host):
        raise UsageError(f"no host named {host!r} (see `host list`)")


def destination(
    ctx, manifest: bp.Manifest | None, host: str | None, progress: Progress = _quiet
) -> str:
    """The host a new instance restored from ``manifest`` goes to: ``host`` when given; else,
    for an instance put back under its own name (``manifest`` given), the host its backup was
    taken on while that host is known; else where `create` would put it (said through
    ``progress``, as `create` says it)."""
    from controller.ops import hosts

    state = ctx.store.read()
    check_host(state, host)
    if host is not None:
        return host
    if manifest is not None and _known(state, manifest.host()):
        if state.hosts:
            progress(f"restoring on {manifest.host()}, the host its backup was taken on")
        return manifest.host()
    chosen = hosts.placement(ctx, state)
    for line in chosen.says():
        progress(line)
    return chosen.host


def _claim_new(ctx, api, where, record: InstanceRecord) -> None:
    """The new instance's claim on the engine of its host (controller/ownership.py), made once
    its record is committed, as `create` does (a concurrent create's sweep keeps the claim of a
    committed record): UsageError (exit 2) when another ROOT made it meanwhile."""
    from controller.ownership import claim, root_id
    from controller.ownership import where as root_place

    with containerio.engine(where.docker_env()):
        claim(
            api.engine,
            root_id(ctx.settings.root),
            root_place(ctx.settings.root),
            record.name,
            set(record.ports.values()),
        )


def _release_claim(settings: Settings, store: StateStore, name: str, host: str) -> None:
    """Drop the claim a restore that created ``name`` made (its engine gone: a later `create`
    or `delete` sweeps it)."""
    from controller.ops.base import Context, docker
    from controller.ownership import release, root_id

    with contextlib.suppress(Exception):
        api = docker(Context(settings, store), host)
        release(api.engine, root_id(settings.root), name)


# --- the use case -------------------------------------------------------------------------------
def check_request(settings: Settings, state, name: str, as_name: str | None, host: str | None):
    """The refusals (UsageError, exit 2) a restore makes before it reads the backup, for a
    front-end to ask before its "replace the data?" question: bad names, an unknown ``host``,
    an ``as_name`` taken, or another host than its own for an instance restored in place."""
    validate_name(name)
    target = as_name or name
    if as_name:
        validate_new_name(as_name)  # a new instance may not take a reserved word
    check_host(state, host)
    existing = state.instances.get(target)
    if as_name:
        if existing is not None:
            raise UsageError(f"instance {as_name!r} already exists: pick another name for --as")
        mine = set(settings.hosts(as_name).values())
        for other in state.instances:
            if mine & set(settings.hosts(other).values()):
                raise UsageError(
                    f"instance name {as_name!r} would share a host name with instance {other!r}"
                )
    elif existing is not None and host is not None and host != existing.host:
        raise UsageError(
            f"{target} runs on host {existing.host}: it is restored there "
            f"(`move {target} --to {host}` takes it to {host})"
        )


def restore(
    settings: Settings,
    store: StateStore,
    name: str,
    hooks: Hooks,
    ref: str | None = None,
    as_name: str | None = None,
    progress: Progress = _quiet,
    host: str | None = None,
) -> RestoreResult:
    """Restore ``name`` in place (on its host), as the deleted ``name`` or as ``as_name`` (on
    ``host``, see ``destination``)."""
    check_request(settings, store.read(), name, as_name, host)
    target = as_name or name
    restic, _ = bp.open_repository(settings)
    snap, manifest = find_backup(restic, name, ref)
    with instance_lock(settings, target):
        return _restore_locked(
            settings, store, restic, snap, manifest, target, hooks, progress, host, bool(as_name)
        )


def restore_locked(
    settings: Settings,
    store: StateStore,
    name: str,
    hooks: Hooks,
    ref: str | None = None,
    progress: Progress = _quiet,
) -> RestoreResult:
    """``restore`` of ``name`` in place, for a caller that already holds its lock (an upgrade's
    rollback, or `start` converging an interrupted upgrade): the lock is not reentrant."""
    validate_name(name)
    restic, _ = bp.open_repository(settings)
    snap, manifest = find_backup(restic, name, ref)
    return _restore_locked(settings, store, restic, snap, manifest, name, hooks, progress)


def _restore_locked(
    settings, store, restic, snap, manifest, target, hooks, progress, host=None, renamed=False
):
    from controller.ops.base import Context, docker

    recover(settings, store, target, hooks, progress)
    ctx = Context(settings, store)
    existing = store.read().instances.get(target)
    if existing is None:
        # A new instance: --host, the host its backup was taken on (the same name), or a choice.
        host = destination(ctx, None if renamed else manifest, host, progress)
    else:
        host = existing.host
    where = _place(settings, store, host)
    api = docker(ctx, host)  # its engine answers (DockerUnavailable: exit 1, nothing changed)
    # Every docker run of the restore goes to that engine.
    with containerio.engine(where.docker_env()):
        if existing is not None:
            return _in_place(settings, store, restic, snap, manifest, existing, hooks, progress)
        return _fresh(settings, store, restic, snap, manifest, target, hooks, progress, api, where)


def _place(settings: Settings, store: StateStore, host: str | None):
    from controller.hosts import place

    return place(settings, store.read(), host or LOCAL_HOST)


def _compose(settings: Settings, name: str, where=None):
    """The compose project of ``name`` on ``where``'s engine (None: this machine); the folder
    is rendered here and, for another machine, copied there by the caller."""
    from controller.compose import Compose
    from controller.render import compose_files

    folder = settings.instance_dir(name)
    if where is None or where.local:
        return Compose(name, folder, compose_files(folder))
    return Compose(
        name, folder, compose_files(folder), where.docker_env(), where.instance_dir(name)
    )


def _remote_folder(where, name: str, script: str, image: str | None, what: str) -> None:
    """Run ``script`` (sh, ``$1``: the folder's name) in the parent of the instance folder on
    another host, as root through its engine (the containers' files are theirs)."""
    if where is None or where.local or not image:
        return
    path = where.instance_dir(name)
    command = ["sh", "-c", "cd /sbm-data && " + script, "sh", path.name]
    containerio.run_helper(image, {".": str(path.parent)}, command, f"{what} on {where.host}")


_REMOTE_ASIDE = 'if [ -e "$1" ]; then rm -rf ".$1.sbm-aside" && mv "$1" ".$1.sbm-aside"; fi'
_REMOTE_BACK = 'if [ -e ".$1.sbm-aside" ]; then rm -rf "$1" && mv ".$1.sbm-aside" "$1"; fi'
_REMOTE_DROP_ASIDE = 'rm -rf ".$1.sbm-aside"'
_REMOTE_REMOVE = 'rm -rf "$1"'


def drop_local_binds(folder: Path, binds) -> None:
    """For an instance on another machine, the data of its bind mounts lives there only: a copy
    left here would be copied over it by the next sync (which copies every file that differs)."""
    for source in binds:
        path = folder / source
        if path.is_dir() and not path.is_symlink():
            for child in path.iterdir():
                if child.is_dir() and not child.is_symlink():
                    shutil.rmtree(child)
                else:
                    child.unlink()


def to_host(
    restic,
    manifest: bp.Manifest,
    folder: Path,
    where,
    progress: Progress,
    there: PurePosixPath | None = None,
) -> None:
    """The folder rendered here copied to another host (to ``there``, default the instance
    folder of ``folder``'s name), and the backup's bind-mounted data put there (nothing to do
    for this machine but data from a backup taken elsewhere)."""
    if where is not None and not where.local:
        from controller.remotefiles import sync_folder
        from controller.templatefiles import TemplateFiles

        there = there or where.instance_dir(folder.name)
        put_binds(restic, manifest, folder, where, progress, there)
        overlays = list(manifest.record.get("overlays") or [])
        db_service = TemplateFiles(folder).role("db", overlays)
        drop_local_binds(folder, bp.plan_for(folder, db_service).binds)
        progress(f"copying the folder of {folder.name} to {where.host}")
        sync_folder(where, folder, there)
    else:
        put_binds(restic, manifest, folder, where, progress)


def _project_volumes(project: str) -> list[str]:
    """The engine's volumes of compose project ``project`` (named in its files or not)."""
    out = containerio.run_docker(
        ["volume", "ls", "-q", "--filter", f"label=com.docker.compose.project={project}"],
        "docker volume ls",
    )
    return [v for v in out.split() if not v.endswith(ASIDE_SUFFIX)]


def _set_aside(settings, name: str, image: str | None, marker: dict, progress, where=None):
    """Stop the instance and move its folder and volumes aside, noting each step in the marker
    before the original goes, so that a kill at any point can be undone."""
    folder = settings.instance_dir(name)
    aside = Path(marker["aside"])
    _write_marker(settings, name, marker)
    progress(f"stopping {name} and moving its data aside")
    if (folder / ".env").is_file():
        with contextlib.suppress(OperationError):
            _compose(settings, name, where).down(volumes=False)
    if where is not None and not where.local:
        # Its folder there holds the data the containers wrote (bind mounts): aside there too.
        marker["remote_aside"] = True
        _write_marker(settings, name, marker)
        _remote_folder(where, name, _REMOTE_ASIDE, image, "moving the folder aside")
    ensure_dir(aside, 0o700)
    if folder.exists():
        folder.rename(aside / "folder")
    for volume in _project_volumes(name):
        containerio.copy_volume(image, volume, volume + ASIDE_SUFFIX)
        marker["volumes"].append(volume)
        _write_marker(settings, name, marker)  # the copy is whole: the original may go
        containerio.remove_volume(volume)
    marker["phase"] = "restoring"
    _write_marker(settings, name, marker)


def _marker(settings, name: str, manifest: bp.Manifest, record, image, host=None, ports=None):
    """What a restore notes before it changes anything: for a new instance (``record`` None)
    the host it goes to and the ports it was given (claimed there already)."""
    return {
        "phase": "aside",
        "backup": manifest.id,
        "record": converter.unstructure(record) if record is not None else None,
        "aside": str(_aside_dir(settings, name)),
        "volumes": [],
        "image": image,
        "created": record is None,
        "host": record.host if record is not None else (host or LOCAL_HOST),
        "ports": dict(record.ports) if record is not None else dict(ports or {}),
    }


def _db_image(manifest: bp.Manifest) -> str:
    return manifest.images.get(manifest.db_service or "") or next(iter(manifest.images.values()))


def _in_place(settings, store, restic, snap, manifest, existing, hooks, progress):
    name = existing.name
    marker = _marker(settings, name, manifest, existing, _db_image(manifest))
    where = _place(settings, store, existing.host)

    def aside() -> None:
        _set_aside(settings, name, marker["image"], marker, progress, where)

    return _finish(
        settings, store, restic, snap, manifest, name, existing, hooks, progress, marker, aside
    )


def _new_record(manifest: bp.Manifest, target: str, host: str) -> InstanceRecord:
    record = converter.structure(dict(manifest.record), InstanceRecord)
    record.name = target
    record.move = None  # a backup taken by a `move` records it under way
    record.host = host
    return record


def _fresh(settings, store, restic, snap, manifest, target, hooks, progress, api, where):
    """A new instance: refused (exit 2, nothing written) when another ROOT's or a hand-run
    stack's objects hold its name on that engine; else its record (phase "creating": `list`
    shows it incomplete), its ports and the marker are committed in one transaction before the
    claim is made, as `create` does: a concurrent create's sweep keeps the claim of a committed
    record (controller/ownership.py), other creates see its ports taken, and `host remove`
    refuses its host meanwhile. From there on any failure is rolled back (_finish)."""
    from controller.ops.base import Context
    from controller.ops.create import _refuse_foreign

    ctx = Context(settings, store)
    _ensure_template(settings, store, restic, manifest, progress)
    record = _new_record(manifest, target, where.host)
    _refuse_foreign(ctx, api, record)
    reserved, is_free = _port_rules(api, where)
    image = _db_image(manifest)
    with store.transaction() as state:
        if target in state.instances:
            raise UsageError(f"instance {target!r} already exists")
        record.ports = _choose_ports(settings, state, record, target, reserved, is_free)
        record.phase = CREATING
        record.started = True  # a `delete` after a kill looks for its containers
        state.instances[target] = record
        marker = _marker(settings, target, manifest, None, image, where.host, record.ports)
        # Before the commit: a kill between the two leaves a marker whose rollback is a no-op.
        _write_marker(settings, target, marker)

    def claim_and_aside() -> None:
        _claim_new(ctx, api, where, record)
        # A folder and volumes kept by `delete` without --purge are set aside like live data.
        _set_aside(settings, target, image, marker, progress, where)

    return _finish(
        settings,
        store,
        restic,
        snap,
        manifest,
        target,
        None,
        hooks,
        progress,
        marker,
        claim_and_aside,
    )


def _finish(
    settings, store, restic, snap, manifest, target, existing, hooks, progress, marker, prepare
):
    """``prepare()`` (the claim, moving the current data aside), then the backup put in place
    and started; any failure on the way rolls back to what was there (the marker)."""
    from controller.render import render_instance
    from controller.templatefiles import TemplateFiles

    warnings: list[str] = []
    where = _place(settings, store, marker.get("host"))
    # The database goes back in time: its next backup must not take it for unchanged.
    bp.remember_db_snapshot(settings, None, target, None, None)
    prepared = False
    try:
        prepare()
        prepared = True
        _ensure_template(settings, store, restic, manifest, progress)
        folder = settings.instance_dir(target)
        owner = owner_labels(settings, target)
        materialize(restic, manifest, folder, target, progress, where, owner=owner)
        record = _new_record(manifest, target, where.host)
        record.created_at = existing.created_at if existing else record.created_at
        before = dict(record.ports)
        # In place: the ports it has; new: those chosen and claimed before it began.
        record.ports = dict(existing.ports) if existing else dict(marker["ports"])
        changed = {k: p for k, p in record.ports.items() if before.get(k) != p}
        moved = record.host != manifest.host()
        if target != manifest.instance or changed or moved:
            files = TemplateFiles(settings.template_dir(record.template))
            render_instance(settings, record, files, [])
        to_host(restic, manifest, folder, where, progress)
        record.phase = READY if existing else CREATING
        record.autostart = True
        with store.transaction() as state:
            state.instances[target] = record
        marker["phase"] = "starting"
        _write_marker(settings, target, marker)
        progress(f"starting {target}")
        _compose(settings, target, where).up()
        hooks.wait_healthy(target, progress)
        warnings += hooks.publish(target, record)
        with store.transaction() as state:
            if target in state.instances:
                state.instances[target].phase = READY
    except BaseException as exc:
        reason = str(exc) if isinstance(exc, ManagerError) else type(exc).__name__
        if isinstance(exc, KeyboardInterrupt | SystemExit):
            raise  # the marker stays: the next restore or start rolls back
        _rollback(settings, store, target, hooks, marker, progress)
        if isinstance(exc, UsageError) and not prepared:
            raise  # the name claimed by another ROOT meanwhile: refused, as `create` does
        what = "put back what was there" if not marker["created"] else f"removed {target} again"
        raise OperationError(f"restore of {target} failed ({reason}); {what}") from None
    marker["phase"] = "cleanup"
    _write_marker(settings, target, marker)
    _cleanup(settings, target, marker, where)
    if target != manifest.instance:
        warnings.append(
            f"{target} keeps the secrets of {manifest.instance}'s backup (passwords, JWT keys); "
            "rotate them if the two must not share any"
        )
    if changed:
        ports = ", ".join(f"{k}->{p}" for k, p in sorted(changed.items()))
        warnings.append(f"ports taken elsewhere were re-allocated: {ports}")
    return RestoreResult(
        instance=target,
        source=manifest.instance,
        backup=manifest.id,
        snapshot=snap.short_id,
        created=bool(marker["created"]),
        ports_changed=changed,
        warnings=warnings,
        host=record.host,
    )


def _cleanup(settings: Settings, name: str, marker: dict, where=None) -> None:
    """After success: drop the aside copy, then the marker."""
    shutil.rmtree(marker["aside"], ignore_errors=True)
    if marker.get("remote_aside"):
        _remote_folder(where, name, _REMOTE_DROP_ASIDE, marker["image"], "removing the aside copy")
    for volume in marker["volumes"]:
        with contextlib.suppress(OperationError):
            containerio.remove_volume(volume + ASIDE_SUFFIX)
    with contextlib.suppress(FileNotFoundError):
        _marker_path(settings, name).unlink()


def _remove_restored(settings: Settings, name: str, where=None, image: str | None = None):
    folder = settings.instance_dir(name)
    if (folder / ".env").is_file():
        with contextlib.suppress(OperationError):
            _compose(settings, name, where).down(volumes=True)
    shutil.rmtree(folder, ignore_errors=True)
    with contextlib.suppress(OperationError):
        _remote_folder(where, name, _REMOTE_REMOVE, image, "removing the restored folder")


def _rollback(settings, store, name, hooks: Hooks, marker: dict, progress: Progress) -> None:
    """Put back what was there before the restore began (or remove what it created)."""
    progress(f"rolling back the restore of {name}")
    folder = settings.instance_dir(name)
    aside = Path(marker["aside"])
    where = _place(settings, store, marker.get("host"))
    if marker["phase"] != "aside":
        # everything there now came from the backup
        _remove_restored(settings, name, where, marker["image"])
    if (aside / "folder").is_dir():
        if folder.exists():  # a kill between creating and filling it: nothing of value
            shutil.rmtree(folder)
        (aside / "folder").rename(folder)
    if marker.get("remote_aside"):
        _remote_folder(where, name, _REMOTE_BACK, marker["image"], "putting the folder back")
    for volume in marker["volumes"]:
        copy = volume + ASIDE_SUFFIX
        # During "aside" the original may still be whole (the kill came before its removal).
        original_gone = marker["phase"] != "aside" or not containerio.volume_exists(volume)
        if original_gone and containerio.volume_exists(copy):
            containerio.remove_volume(volume)
            key = volume.removeprefix(f"{name}_")
            labels = _volume_labels(name, key, owner_labels(settings, name))
            containerio.copy_volume(marker["image"], copy, volume, labels)
    with store.transaction() as state:
        if marker["record"] is not None:
            state.instances[name] = converter.structure(marker["record"], InstanceRecord)
        else:
            state.instances.pop(name, None)
    if marker["record"] is None:
        with contextlib.suppress(ManagerError):
            hooks.unpublish(name)
        _release_claim(settings, store, name, where.host)
    elif marker["record"].get("autostart", True) and (folder / ".env").is_file():
        with contextlib.suppress(ManagerError):
            _compose(settings, name, where).up()
            hooks.wait_healthy(name, progress)
    _cleanup(settings, name, marker, where)


def recover(settings, store, name: str, hooks: Hooks, progress: Progress = _quiet) -> str | None:
    """Finish or roll back a restore of ``name`` that was killed; what was done, or None.
    The caller holds the instance lock."""
    path = _marker_path(settings, name)
    try:
        marker = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        raise OperationError(
            f"{path} is unreadable: a killed restore needs a look by hand"
        ) from None
    where = _place(settings, store, marker.get("host"))
    with containerio.engine(where.docker_env()):
        if marker.get("phase") == "cleanup":
            _cleanup(settings, name, marker, where)
            progress(f"finished the interrupted restore of {name}")
            return "finished"
        _rollback(settings, store, name, hooks, marker, progress)
    progress(f"rolled back the interrupted restore of {name}")
    return "rolled back"


# --- dry run ------------------------------------------------------------------------------------
def _dryrun_overlay(folder: Path, project: str) -> Path:
    from controller.composemodel import instance_model
    from controller.composeyaml import Override, dump_yaml
    from controller.render import INSTANCE_LABEL

    model = instance_model(folder)
    services = {}
    for service in model.services:
        services[service] = {
            "container_name": f"{project}-{service}",
            "ports": Override([]),
            "labels": {INSTANCE_LABEL: project},
        }
    doc: dict = {"services": services}
    for section, items in (("networks", model.networks), ("volumes", model.volumes)):
        fixed = {k: {"name": f"{project}_{k}"} for k, r in items.items() if r.fixed_name}
        if fixed:
            doc[section] = fixed
    path = folder / "docker-compose.sbm-dryrun.yml"
    path.write_text(dump_yaml(doc))
    return path


def _compose_argv(
    folder: Path, project: str, overlay: Path, there: PurePosixPath | None = None
) -> list[str]:
    """compose of the throwaway project: the files and .env read here, relative bind mounts
    resolved against ``there`` (the folder's copy on another host) when given."""
    from controller.render import compose_files

    argv = ["compose", "-p", project, "--project-directory", str(there or folder)]
    for path in [*compose_files(folder), overlay]:
        argv += ["-f", str(path)]
    return [*argv, "--env-file", str(folder / ".env")]


def _wait_container(container: str, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while True:
        state = containerio.run_docker(
            [
                "inspect",
                "-f",
                "{{.State.Status}} {{if .State.Health}}{{.State.Health.Status}}{{end}}",
                container,
            ],
            "docker inspect",
        ).split()
        if state and state[0] == "running" and (len(state) == 1 or state[1] == "healthy"):
            return
        if state and state[0] in ("exited", "dead"):
            raise OperationError(f"the restored database exited ({container})")
        if time.monotonic() > deadline:
            raise OperationError("the restored database did not become healthy")
        time.sleep(0.5)


def dry_host(ctx, name: str, manifest: bp.Manifest, host: str | None) -> str:
    """Where ``restore --dry-run`` proves a backup: ``host``, else the instance's own host,
    else (deleted) the host its backup was taken on while known, else this machine."""
    state = ctx.store.read()
    check_host(state, host)
    if host is not None:
        return host
    if name in state.instances:
        return state.instances[name].host
    return manifest.host() if _known(state, manifest.host()) else LOCAL_HOST


def dry_run(
    settings: Settings,
    name: str,
    ref: str | None = None,
    progress: Progress = _quiet,
    host: str | None = None,
) -> DryRunResult:
    """Restore the backup into a throwaway project on the instance's host (no port, no
    route), start its database, check it, and remove everything again, there and here."""
    from controller.ops.base import Context, docker

    validate_name(name)
    ctx = Context.of(settings)
    check_host(ctx.store.read(), host)
    restic, _ = bp.open_repository(settings)
    _, manifest = find_backup(restic, name, ref)
    host = dry_host(ctx, name, manifest, host)
    where = _place(settings, ctx.store, host)
    docker(ctx, host)  # its engine answers (DockerUnavailable: exit 1)
    with containerio.engine(where.docker_env()):
        checks = _dry_run_on(settings, restic, manifest, where, progress)
    return DryRunResult(name, manifest.id, all(c.ok for c in checks), checks, host)


def _dry_run_on(settings, restic, manifest: bp.Manifest, where, progress) -> list[Check]:
    """The throwaway restore on ``where``'s engine (made current by the caller). For another
    host the folder is restored here, then copied to a hidden folder beside the instance
    folders there (a name no instance can have), which the database's bind mounts use."""
    from controller.envfile import EnvFile

    token = secrets.token_hex(4)
    project = f"sbm_dryrun_{token}"
    folder = _restore_dir(settings) / f"dryrun-{token}"
    there = None if where.local else where.instance_dir(f".dryrun-{token}")
    image = _db_image(manifest)
    checks: list[Check] = []
    overlay = None
    try:
        owner = owner_labels(settings, project)
        materialize(restic, manifest, folder, project, progress, where, there, owner)
        if "binds" in manifest.parts:
            put_binds(restic, manifest, folder, where, progress, there)
        checks.append(Check("restic restore of every part", True, f"backup {manifest.id}"))
        nodes = restic.ls(manifest.parts["files"].snapshot)
        files = [n for n in nodes if n.type == "file"]
        wrong = [n.path for n in files if _size(folder / n.path.lstrip("/")) != n.size]
        checks.append(
            Check(
                "restored files match the snapshot's sizes",
                not wrong,
                f"{len(files) - len(wrong)}/{len(files)} files"
                + (f"; e.g. {wrong[0]}" if wrong else ""),
            )
        )
        if manifest.db_service and "db" in manifest.parts:
            overlay = _dryrun_overlay(folder, project)
            if there is not None:
                _dry_folder_to(folder, manifest, where, there, progress)
            progress(f"starting the restored database (no port, no route) on {where.host}")
            containerio.run_docker(
                [
                    *_compose_argv(folder, project, overlay, there),
                    "up",
                    "-d",
                    "--no-deps",
                    manifest.db_service,
                ],
                "starting the restored database",
            )
            container = f"{project}-{manifest.db_service}"
            _wait_container(container)
            published = containerio.run_docker(["port", container], "docker port").strip()
            checks.append(Check("the throwaway project publishes no port", not published, project))
            env = EnvFile.parse((folder / ".env").read_text())
            password = env.get("POSTGRES_PASSWORD") or ""
            database = env.get("POSTGRES_DB") or "postgres"
            checks += _db_checks(container, password, database, manifest)
    except ManagerError as exc:
        checks.append(Check("restore into a throwaway project", False, str(exc)))
    finally:
        progress("removing the throwaway project")
        if overlay is not None:
            with contextlib.suppress(ManagerError):
                containerio.run_docker(
                    [
                        *_compose_argv(folder, project, overlay, there),
                        "down",
                        "-v",
                        "--remove-orphans",
                    ],
                    "removing the throwaway project",
                )
        _remove_project_volumes(project)
        if there is not None:
            with contextlib.suppress(ManagerError):
                containerio.run_helper(
                    image,
                    {".": str(there.parent)},
                    ["rm", "-rf", f"/sbm-data/{there.name}"],
                    f"removing {there} on {where.host}",
                )
        shutil.rmtree(folder, ignore_errors=True)
    return checks


def _dry_folder_to(folder: Path, manifest: bp.Manifest, where, there, progress) -> None:
    """The throwaway folder's files copied to ``there`` on another host: what its database
    reads (init scripts, config), not the bind-mounted data, which only the other services
    use and which stays out of the copy."""
    from controller.remotefiles import sync_folder
    from controller.templatefiles import TemplateFiles

    overlays = list(manifest.record.get("overlays") or [])
    db_service = TemplateFiles(folder).role("db", overlays)
    drop_local_binds(folder, bp.plan_for(folder, db_service).binds)
    progress(f"copying the throwaway folder to {where.host}")
    sync_folder(where, folder, there)


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return -1


def _remove_project_volumes(project: str) -> None:
    with contextlib.suppress(ManagerError):
        out = containerio.run_docker(
            ["volume", "ls", "-q", "--filter", f"label=com.docker.compose.project={project}"],
            "docker volume ls",
        )
        for volume in out.split():
            containerio.remove_volume(volume)


def _db_checks(container: str, password: str, database: str, manifest: bp.Manifest) -> list[Check]:
    from controller.ops.backup import _SCHEMAS_SQL, _psql

    checks = []
    try:
        user = superuser(container, password)
    except OperationError as exc:
        return [Check("Postgres accepts connections as the superuser", False, str(exc))]
    checks.append(Check("Postgres accepts connections as the superuser", True, user))
    schemas = {row[0] for row in _psql(container, user, database, _SCHEMAS_SQL, password)}
    missing = [s for s in manifest.schemas if s not in schemas]
    checks.append(
        Check(
            "the instance's schemas are there",
            not missing,
            f"{len(manifest.schemas) - len(missing)}/{len(manifest.schemas)}"
            + (f"; missing {', '.join(missing[:3])}" if missing else ""),
        )
    )
    if manifest.tables:
        parts = [
            f"select '{_lit(s)}.{_lit(t)}', count(*) from {_ident(s)}.{_ident(t)}"
            for s, t, _ in manifest.tables
        ]
        try:
            rows = _psql(container, user, database, " union all ".join(parts), password)
            total = sum(int(r[1]) for r in rows)
            checks.append(
                Check(
                    "every table reads back (row counts)",
                    len(rows) == len(manifest.tables),
                    f"{len(rows)} tables, {total} rows",
                )
            )
        except OperationError as exc:
            checks.append(Check("every table reads back (row counts)", False, str(exc)))
    return checks


def _ident(text: str) -> str:
    return '"' + text.replace('"', '""') + '"'


def _lit(text: str) -> str:
    return text.replace("'", "''")
