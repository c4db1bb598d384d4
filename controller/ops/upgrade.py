"""`upgrade NAME --template NEW [--dry-run] [--allow-major]` and `upgrade NAME --rollback`.

An upgrade takes a backup first (controller/ops/backup.py), records it and the template it came
from in the instance's record, re-renders the folder from the new template keeping the
instance's secrets, ports and options (new secrets generated, new published services given
ports), recreates the stack, waits for health and publishes the routes again (the gateway's
service or port may have changed). When the instance does not come up, the backup is restored in
place (controller/ops/restore.py: files, .env, volumes, database and the record with its old
template). `--rollback` restores that backup on request.

An instance on another host is upgraded there: the folder is rendered here and copied to it
before compose runs against its engine (controller/ops/base.py), a port for a newly published
service is one that engine has free, and the rollback restores on that host.

A Postgres major version change is refused: the data folder of one major cannot be opened by
another; it needs pg_upgrade or a dump and restore, which this version does not do.

Killed half-way (or a rollback killed): a marker (ROOT/upgrade/NAME.running) names the backup,
and the next `start NAME` (or `start --all`), `upgrade NAME` or `upgrade NAME --rollback` restores
it under the instance's lock (``recover``), as a failed health check would have; a killed restore
of that rollback is first finished or undone by restore's own marker.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import attrs

from controller import faults
from controller.errors import ManagerError, OperationError, UsageError
from controller.ops import publish
from controller.ops.base import (
    Context,
    Progress,
    audited,
    busy,
    check_writable,
    compose,
    quiet,
    record,
    require_ready,
    template,
)
from controller.state import LOCAL_HOST


@attrs.frozen
class ImageChange:
    service: str
    old: str
    new: str


@attrs.frozen
class UpgradeDiff:
    old_template: str
    new_template: str
    added: list[str]
    removed: list[str]
    renamed: dict[str, str]  # old service -> new service
    images: list[ImageChange]
    new_variables: list[str]
    removed_variables: list[str]
    ports_added: list[str]
    ports_removed: list[str]
    gateway: tuple[str | None, str | None]  # (old "service (image)", new ...)
    postgres: tuple[str | None, str | None]  # major versions
    major_change: bool


@attrs.frozen
class UpgradeResult:
    instance: str
    dry_run: bool
    diff: UpgradeDiff | None
    backup: str | None = None
    rolled_back: bool = False
    warnings: list[str] = attrs.field(factory=list)


def _image_name(image: str | None) -> str:
    ref = (image or "").split("@", 1)[0]
    last = ref.rsplit("/", 1)[-1]
    return ref.rsplit(":", 1)[0] if ":" in last else ref


def _postgres_major(image: str | None) -> str | None:
    """The major version in a Postgres image tag (supabase/postgres:17.6.1.136 -> 17)."""
    if not image or ":" not in image.rsplit("/", 1)[-1]:
        return None
    match = re.match(r"(\d+)", image.rsplit(":", 1)[1])
    return match.group(1) if match else None


def _gateway(files, overlays) -> str | None:
    service = files.role("gateway", overlays)
    if service is None:
        return None
    image = files.services(overlays)[service].image
    return f"{service} ({_image_name(image).rsplit('/', 1)[-1]})"


def compare(old, new, overlays: list[str]) -> UpgradeDiff:
    """What moving from template files ``old`` to ``new`` changes for these overlays."""
    from controller.envfile import EnvFile
    from controller.templatefiles import needed_ports

    before = old.services(overlays)
    after = new.services(overlays)
    added = sorted(set(after) - set(before))
    removed = sorted(set(before) - set(after))
    renamed: dict[str, str] = {}
    for gone in removed:
        for fresh in added:
            same_container = (
                before[gone].container_name
                and before[gone].container_name == after[fresh].container_name
            )
            same_image = _image_name(before[gone].image) == _image_name(after[fresh].image)
            if (same_container or same_image) and fresh not in renamed.values():
                renamed[gone] = fresh
                break
    images = [
        ImageChange(name, before[name].image or "", after[name].image or "")
        for name in sorted(set(before) & set(after))
        if before[name].image != after[name].image
    ]
    images += [
        ImageChange(f"{gone}->{fresh}", before[gone].image or "", after[fresh].image or "")
        for gone, fresh in renamed.items()
        if before[gone].image != after[fresh].image
    ]
    old_vars = set(EnvFile.parse(old.env_example()).keys())
    new_vars = set(EnvFile.parse(new.env_example()).keys())
    old_ports = set(needed_ports(old, overlays))
    new_ports = set(needed_ports(new, overlays))
    old_db, new_db = old.role("db", overlays), new.role("db", overlays)
    old_major = _postgres_major(before[old_db].image) if old_db else None
    new_major = _postgres_major(after[new_db].image) if new_db else None
    return UpgradeDiff(
        old_template=old.path.name,
        new_template=new.path.name,
        added=[s for s in added if s not in renamed.values()],
        removed=[s for s in removed if s not in renamed],
        renamed=renamed,
        images=images,
        new_variables=sorted(new_vars - old_vars),
        removed_variables=sorted(old_vars - new_vars),
        ports_added=sorted(new_ports - old_ports),
        ports_removed=sorted(old_ports - new_ports),
        gateway=(_gateway(old, overlays), _gateway(new, overlays)),
        postgres=(old_major, new_major),
        major_change=bool(old_major and new_major and old_major != new_major),
    )


def _marker(ctx: Context, name: str) -> Path:
    """Present while an upgrade of ``name`` is past its backup and not yet done (or rolled
    back): {"backup": ID, "from": OLD, "to": NEW} (an older version wrote the backup id alone)."""
    return ctx.settings.root / "upgrade" / f"{name}.running"


def _write_marker(ctx: Context, name: str, data: dict) -> None:
    from controller.fsutil import atomic_write, ensure_dir

    ensure_dir(_marker(ctx, name).parent, 0o700)
    atomic_write(_marker(ctx, name), json.dumps(data) + "\n", mode=0o600)


def _read_marker(ctx: Context, name: str) -> dict | None:
    try:
        text = _marker(ctx, name).read_text()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise OperationError(f"{_marker(ctx, name)} cannot be read: {exc.strerror}") from None
    try:
        data = json.loads(text)
    except ValueError:
        data = {"backup": text.strip()}
    return data if isinstance(data, dict) else {"backup": str(data)}


def pending(ctx: Context, name: str) -> bool:
    return _marker(ctx, name).is_file()


def _hooks(ctx: Context):
    from controller.ops.lifecycle import wait_healthy
    from controller.ops.restore import Hooks

    return Hooks(
        wait_healthy=lambda name, progress: wait_healthy(ctx, name, progress),
        publish=lambda name, found: publish.publish(ctx, found),
        unpublish=lambda name: publish.unpublish(ctx, name),
    )


def major_refusal(diff: UpgradeDiff, allow_major: bool) -> str:
    old, new = diff.postgres
    what = (
        f"Postgres {old} -> {new} is a major version change: the data folder of Postgres {old} "
        f"cannot be opened by Postgres {new}; it needs pg_upgrade or a dump and restore"
    )
    if allow_major:
        return what + ", which this version of supabase-manager does not do yet"
    return what + " (give --allow-major once that is supported; nothing was changed)"


def _plan(ctx: Context, found, new_template: str):
    """The new template's files and the difference, or UsageError for a template that is not
    there or lacks one of the instance's overlays."""
    from controller.ops.templates import names as template_names

    if new_template not in template_names(ctx):
        raise UsageError(f"no template named {new_template!r}; `template list` shows them")
    old_files, new_files = template(ctx, found.template), template(ctx, new_template)
    new_files.compose_paths(found.overlays)  # an overlay the new template lacks: UsageError
    return new_files, compare(old_files, new_files, list(found.overlays))


def _refuse(name: str, found, new_template: str, diff: UpgradeDiff, allow_major: bool) -> None:
    if diff.major_change:
        raise UsageError(major_refusal(diff, allow_major))
    if new_template == found.template:
        raise UsageError(f"{name} already runs template {new_template}")


def upgrade(
    ctx: Context,
    name: str,
    new_template: str,
    dry_run: bool = False,
    allow_major: bool = False,
    progress: Progress = quiet,
) -> UpgradeResult:
    found = record(ctx, name)
    require_ready(found)
    new_files, diff = _plan(ctx, found, new_template)
    interrupted = pending(ctx, name)
    unfinished = interrupted or _unfinished_elsewhere(ctx, name)
    if dry_run:
        interrupted_note = f"an upgrade of {name} was interrupted: the next start puts it back"
        notes = [interrupted_note] if interrupted else []
        return UpgradeResult(name, True, diff, warnings=notes)
    if not unfinished:
        _refuse(name, found, new_template, diff, allow_major)
    check_writable(ctx)
    from controller.ops import backup

    with audited(ctx, f"upgrade --template {new_template}", name):
        if unfinished:
            # The backup below must not take a half-restored or half-rotated instance.
            with busy(ctx, name):
                converge(ctx, name, progress)
            found = record(ctx, name)
            require_ready(found)
            new_files, diff = _plan(ctx, found, new_template)
            _refuse(name, found, new_template, diff, allow_major)
        progress(f"backing up {name} before the upgrade")
        snap = backup.backup_instance(ctx.settings, ctx.store, name, ["pre-upgrade"], progress)
        # One lock from the re-render to the end of a rollback: no other command sees the
        # instance half-upgraded.
        with busy(ctx, name):
            current = record(ctx, name)
            if current.template != found.template or pending(ctx, name):
                raise OperationError(f"{name} changed during its backup; run the upgrade again")
            try:
                warnings = _apply(ctx, name, new_template, new_files, snap.backup, progress)
            except ManagerError as exc:
                if not pending(ctx, name):  # failed before anything changed
                    raise OperationError(
                        f"upgrade of {name} failed ({exc}); nothing changed"
                    ) from None
                progress(
                    f"{name} did not come up on {new_template}: restoring backup {snap.backup}"
                )
                try:
                    _rollback_locked(ctx, name, snap.backup, progress)
                except ManagerError as again:
                    raise OperationError(
                        f"upgrade of {name} to {new_template} failed ({exc}) and so did its "
                        f"rollback ({again}); `start {name}` or `upgrade {name} --rollback` "
                        "tries again"
                    ) from None
                raise OperationError(
                    f"upgrade of {name} to {new_template} failed ({exc}); rolled back to "
                    f"{found.template} from backup {snap.backup}"
                ) from None
    return UpgradeResult(name, False, diff, snap.backup, False, warnings)


def _apply(ctx, name, new_template, new_files, backup_id, progress) -> list[str]:
    """Re-render, recreate, wait for health, publish; the caller holds the instance's lock."""
    from controller.ops.lifecycle import own_project, wait_healthy
    from controller.ports import allocate, host_port_free
    from controller.render import render_instance
    from controller.templatefiles import needed_ports

    api = own_project(ctx, name)
    found = record(ctx, name)
    needed = needed_ports(new_files, found.overlays)
    reserved, is_free = set(), host_port_free
    if set(needed) - set(found.ports):
        # The engine is asked before the state lock is taken (over SSH it takes a while).
        reserved, is_free = _port_checks(api, found.host)
    with ctx.store.transaction() as state:
        found = state.instances[name]
        kept = {k: p for k, p in found.ports.items() if k in needed}
        missing = [k for k in needed if k not in kept]
        fresh = (
            allocate(missing, {}, state.used_ports() | reserved, ctx.settings.port_range, is_free)
            if missing
            else {}
        )
        # Killed from here on: the marker makes the next start, upgrade or --rollback restore
        # the backup (recover below).
        _write_marker(ctx, name, {"backup": backup_id, "from": found.template, "to": new_template})
        found.previous_template = found.template
        found.upgrade_backup = backup_id
        found.template = new_template
        found.ports = {**kept, **fresh}
        updated = attrs.evolve(found)
    progress(f"rendering {name} from template {new_template}")
    render_instance(ctx.settings, updated, new_files)
    project = compose(ctx, name)
    # Services the new template dropped would stay as orphans: compose removes them.
    project._run("up", project._docker.compose.up, detach=True, quiet=True, remove_orphans=True)
    faults.point("upgrade.recreated")
    wait_healthy(ctx, name, progress)
    warnings = publish.publish(ctx, updated)
    _marker(ctx, name).unlink(missing_ok=True)
    return warnings


def _port_checks(api, host: str):
    """Ports a new published service must not take: those other ROOTs' instances hold on the
    engine, and whether a port is free where the instance runs (for another host, its engine's
    containers say so: this machine's sockets know nothing of it)."""
    from controller.ownership import engine_ports
    from controller.ports import host_port_free

    reserved = engine_ports(api.engine)
    if host == LOCAL_HOST:
        return reserved, host_port_free
    published = api.engine.published_ports()
    return reserved, lambda port: port not in published


def _rollback_locked(ctx: Context, name: str, backup_id: str, progress: Progress):
    """Restore ``backup_id`` in place (the caller holds the lock), then drop the marker."""
    from controller.ops import restore

    result = restore.restore_locked(ctx.settings, ctx.store, name, _hooks(ctx), backup_id, progress)
    _marker(ctx, name).unlink(missing_ok=True)
    return result


def recover(ctx: Context, name: str, progress: Progress = quiet) -> str | None:
    """Put back an upgrade of ``name`` that was killed (the caller holds its lock), exactly as
    `upgrade NAME --rollback` does: the backup taken before it is restored. 'rolled back', or
    None when no upgrade was interrupted. A killed restore (the rollback's own) goes first."""
    from controller.ops import restore

    marker = _read_marker(ctx, name)
    if marker is None:
        return None
    restore.recover(ctx.settings, ctx.store, name, _hooks(ctx), progress)
    found = ctx.store.read().instances.get(name)
    backup_id = marker.get("backup") or (found.upgrade_backup if found else None)
    if found is None or not backup_id:
        _marker(ctx, name).unlink(missing_ok=True)
        return None
    if found.template == marker.get("from") and found.upgrade_backup != backup_id:
        # The record never took the new template, or the rollback's restore had finished.
        _marker(ctx, name).unlink(missing_ok=True)
        progress(f"the interrupted upgrade of {name} had not changed it: nothing to put back")
        return "rolled back"
    target = marker.get("to", found.template)
    progress(
        f"an upgrade of {name} to {target} was interrupted: restoring backup {backup_id}, "
        "taken before it"
    )
    _rollback_locked(ctx, name, backup_id, progress)
    return "rolled back"


def _unfinished_elsewhere(ctx: Context, name: str) -> bool:
    from controller.ops import rotate

    restoring = ctx.settings.restore_marker(name)
    return restoring.is_file() or rotate.pending(ctx, name)


def converge(ctx: Context, name: str, progress: Progress = quiet) -> str | None:
    """Finish or undo whatever a killed restore, upgrade or rotation of ``name`` left (the caller
    holds its lock), in that order: a restore may be an upgrade's rollback, which the upgrade's
    marker then completes. What was done, or None. `upgrade` runs it first; `start` does the
    same through the facade (Manager._recover_pending)."""
    from controller.ops import restore, rotate

    restored = restore.recover(ctx.settings, ctx.store, name, _hooks(ctx), progress)
    undone = recover(ctx, name, progress)
    side = rotate.recover(ctx, name, progress)
    return restored or undone or side


def rollback(ctx: Context, name: str, progress: Progress = quiet) -> UpgradeResult:
    """Restore the backup taken before the last upgrade (or the interrupted one)."""
    record(ctx, name)
    check_writable(ctx)
    with audited(ctx, "upgrade --rollback", name), busy(ctx, name):
        found = record(ctx, name)
        backup_id = (_read_marker(ctx, name) or {}).get("backup") or found.upgrade_backup
        if not backup_id:
            raise UsageError(f"{name} has no upgrade to roll back")
        progress(f"restoring {name} from backup {backup_id}, taken before its upgrade")
        result = _rollback_locked(ctx, name, backup_id, progress)
    return UpgradeResult(name, False, None, backup_id, True, list(result.warnings))
