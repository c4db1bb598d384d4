"""`clone SRC NEW`: a fresh backup of SRC restored as NEW (controller/ops/restore.py gives it its
own project, ports, containers, network, volumes and routes), then every secret of NEW rotated
(controller/ops/rotate.py), the asymmetric signing key included and the shared one retired, so
the two share data and nothing else.

NEW goes to ``--host`` or, without it, where `create` would put it (controller/ops/hosts.py
``choose``), and claims its name on that engine before anything is made there, as `create`
does; SRC is backed up on its own host.
"""

from __future__ import annotations

import attrs

from controller.errors import ManagerError, OperationError, UsageError
from controller.names import validate_new_name
from controller.ops.base import Context, Progress, check_writable, quiet, record
from controller.state import LOCAL_HOST


@attrs.frozen
class CloneResult:
    source: str
    instance: str
    backup: str
    rotated: list[str]
    warnings: list[str]
    host: str = LOCAL_HOST


def clone(
    ctx: Context, source: str, new: str, progress: Progress = quiet, host: str | None = None
) -> CloneResult:
    from controller.ops import backup, restore, rotate
    from controller.ops.upgrade import _hooks

    record(ctx, source)
    validate_new_name(new)
    if new == source:
        raise UsageError("clone: NEW must differ from SRC")
    state = ctx.store.read()
    if new in state.instances:
        raise UsageError(f"instance {new!r} already exists")
    restore.check_host(state, host)  # an unknown --host: exit 2, before the backup
    check_writable(ctx)
    # Where NEW goes is decided before the backup: no host answering fails it before anything.
    host = restore.destination(ctx, None, host, progress)
    progress(f"backing up {source}")
    snap = backup.backup_instance(ctx.settings, ctx.store, source, ["clone"], progress)
    progress(f"restoring it as {new} on {host}")
    restored = restore.restore(
        ctx.settings, ctx.store, source, _hooks(ctx), snap.backup, new, progress, host
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
    return CloneResult(
        source, new, snap.backup, rotated, warnings + list(result.warnings), restored.host
    )
