"""`clone SRC NEW`: a fresh backup of SRC restored as NEW (controller/ops/restore.py gives it its
own project, ports, containers, network, volumes and routes), then every secret of NEW rotated
(controller/ops/rotate.py), the asymmetric signing key included and the shared one retired, so
the two share data and nothing else.
"""

from __future__ import annotations

import attrs

from controller.errors import ManagerError, OperationError, UsageError
from controller.names import validate_new_name
from controller.ops.base import Context, Progress, check_writable, quiet, record


@attrs.frozen
class CloneResult:
    source: str
    instance: str
    backup: str
    rotated: list[str]
    warnings: list[str]


def clone(ctx: Context, source: str, new: str, progress: Progress = quiet) -> CloneResult:
    from controller.ops import backup, restore, rotate
    from controller.ops.upgrade import _hooks

    found = record(ctx, source)
    validate_new_name(new)
    if new == source:
        raise UsageError("clone: NEW must differ from SRC")
    if new in ctx.store.read().instances:
        raise UsageError(f"instance {new!r} already exists")
    del found
    check_writable(ctx)
    progress(f"backing up {source}")
    snap = backup.backup_instance(ctx.settings, ctx.store, source, ["clone"], progress)
    progress(f"restoring it as {new}")
    restored = restore.restore(
        ctx.settings, ctx.store, source, _hooks(ctx), snap.backup, new, progress
    )
    # restore --as warns that NEW keeps SRC's secrets: that is what the rotation below ends.
    warnings = [w for w in restored.warnings if "keeps the secrets" not in w]
    try:
        result = rotate.rotate(ctx, new, [], every=True, progress=progress)
        rotated = [change.secret for change in result.secrets]
        if "JWT_KEYS" in rotated:
            rotate.rotate(ctx, new, ["JWT_KEYS"], finish=True, progress=progress)
    except ManagerError as exc:
        raise OperationError(
            f"{new} was restored from {source}'s backup {snap.backup} but rotating its secrets "
            f"failed ({exc}): it still shares them with {source}; run `rotate {new} --all`"
        ) from None
    return CloneResult(source, new, snap.backup, rotated, warnings + list(result.warnings))
