"""`upgrade NAME --template NEW [--dry-run] [--allow-major]` and `upgrade NAME --rollback`.

An upgrade takes a backup first (controller/ops/backup.py), records it and the template it came
from in the instance's record, re-renders the folder from the new template keeping the
instance's secrets, ports and options (new secrets generated, new published services given
ports), recreates the stack, waits for health and publishes the routes again (the gateway's
service or port may have changed). When the instance does not come up, the backup is restored in
place (controller/ops/restore.py: files, .env, volumes, database and the record with its old
template). `--rollback` restores that backup on request.

A Postgres major version change is refused: the data folder of one major cannot be opened by
another; it needs pg_upgrade or a dump and restore, which this version does not do.

Killed half-way: the record already names the backup and a marker (ROOT/upgrade/NAME.running)
makes the next upgrade ask for `upgrade NAME --rollback`, which goes back.
"""

from __future__ import annotations

import re

import attrs

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


def _marker(ctx: Context, name: str):
    """Present while an upgrade of ``name`` is between its re-render and its health check."""
    return ctx.settings.root / "upgrade" / f"{name}.running"


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
    from controller.ops.templates import names as template_names

    if new_template not in template_names(ctx):
        raise UsageError(f"no template named {new_template!r}; `template list` shows them")
    old_files, new_files = template(ctx, found.template), template(ctx, new_template)
    new_files.compose_paths(found.overlays)  # an overlay the new template lacks: UsageError
    diff = compare(old_files, new_files, list(found.overlays))
    if dry_run:
        return UpgradeResult(name, True, diff)
    if diff.major_change:
        raise UsageError(major_refusal(diff, allow_major))
    if new_template == found.template:
        raise UsageError(f"{name} already runs template {new_template}")
    if _marker(ctx, name).is_file():
        raise OperationError(
            f"an upgrade of {name} was interrupted: run `upgrade {name} --rollback` first"
        )
    check_writable(ctx)
    from controller.ops import backup, restore

    with audited(ctx, f"upgrade --template {new_template}", name):
        progress(f"backing up {name} before the upgrade")
        snap = backup.backup_instance(ctx.settings, ctx.store, name, ["pre-upgrade"], progress)
        try:
            warnings = _apply(ctx, name, new_template, new_files, snap.backup, progress)
        except ManagerError as exc:
            progress(f"{name} did not come up on {new_template}: restoring backup {snap.backup}")
            restore.restore(ctx.settings, ctx.store, name, _hooks(ctx), snap.backup, None, progress)
            _marker(ctx, name).unlink(missing_ok=True)
            raise OperationError(
                f"upgrade of {name} to {new_template} failed ({exc}); rolled back to "
                f"{found.template} from backup {snap.backup}"
            ) from None
    return UpgradeResult(name, False, diff, snap.backup, False, warnings)


def _apply(ctx, name, new_template, new_files, backup_id, progress) -> list[str]:
    from controller.ops.lifecycle import own_project, wait_healthy
    from controller.ports import allocate
    from controller.render import render_instance
    from controller.templatefiles import needed_ports

    with busy(ctx, name):
        with ctx.store.transaction() as state:
            found = state.instances[name]
            needed = needed_ports(new_files, found.overlays)
            kept = {k: p for k, p in found.ports.items() if k in needed}
            missing = [k for k in needed if k not in kept]
            fresh = (
                allocate(missing, {}, state.used_ports(), ctx.settings.port_range)
                if missing
                else {}
            )
            # Killed from here on: the marker makes the next upgrade ask for --rollback.
            _marker(ctx, name).parent.mkdir(mode=0o700, exist_ok=True)
            _marker(ctx, name).write_text(backup_id + "\n")
            found.previous_template = found.template
            found.upgrade_backup = backup_id
            found.template = new_template
            found.ports = {**kept, **fresh}
            updated = attrs.evolve(found)
        progress(f"rendering {name} from template {new_template}")
        render_instance(ctx.settings, updated, new_files)
        own_project(ctx, name)
        project = compose(ctx, name)
        # Services the new template dropped would stay as orphans: compose removes them.
        project._run("up", project._docker.compose.up, detach=True, quiet=True, remove_orphans=True)
        wait_healthy(ctx, name, progress)
        warnings = publish.publish(ctx, updated)
        _marker(ctx, name).unlink(missing_ok=True)
        return warnings


def rollback(ctx: Context, name: str, progress: Progress = quiet) -> UpgradeResult:
    """Restore the backup taken before the last upgrade."""
    from controller.ops import restore

    found = record(ctx, name)
    if not found.upgrade_backup:
        raise UsageError(f"{name} has no upgrade to roll back")
    check_writable(ctx)
    with audited(ctx, "upgrade --rollback", name):
        backup_id = found.upgrade_backup
        progress(f"restoring {name} from backup {backup_id}, taken before its upgrade")
        result = restore.restore(
            ctx.settings, ctx.store, name, _hooks(ctx), backup_id, None, progress
        )
        _marker(ctx, name).unlink(missing_ok=True)
    return UpgradeResult(name, False, None, backup_id, True, list(result.warnings))
