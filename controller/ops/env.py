"""An instance's .env: list, get, set, unset and a whole edited text (`env edit`).

What may change is controller.envpolicy's rule, checked before anything is written. A change is
written atomically under the instance's lock; a change to Studio's credentials also updates its
Caddy site, worked out (and checked) before the file is written.
"""

from __future__ import annotations

from collections.abc import Mapping

from controller import faults
from controller.envfile import EnvFile
from controller.envpolicy import changed_keys, check_change, check_key, edit_problems, is_secret
from controller.envusage import services_using
from controller.errors import OperationError, UsageError
from controller.ops import publish
from controller.ops.base import Context, audited, busy, check_writable, env, env_text, record
from controller.state import LOCAL_HOST, InstanceRecord
from controller.views import EnvChange, mask


def env_list(ctx: Context, name: str, show_secrets: bool = False) -> list[tuple[str, str]]:
    record(ctx, name)
    return [
        (key, value if show_secrets or not is_secret(key) else mask(value))
        for key, value in env(ctx, name).items()
    ]


def env_get(ctx: Context, name: str, key: str) -> str:
    record(ctx, name)
    check_key(key)
    value = env(ctx, name).get(key)
    if value is None:
        raise OperationError(f"{name} has no variable {key}")
    return value


def env_set(ctx: Context, name: str, assignments: Mapping[str, str]) -> EnvChange:
    record(ctx, name)
    if not assignments:
        raise UsageError("nothing to set: give KEY=VALUE")
    if "POSTGRES_PASSWORD" in assignments:
        # It lives in the database roles too: the rotation path changes both (controller/ops/
        # rotate.py), recreates the services and rolls back when they do not come up.
        if len(assignments) > 1:
            raise UsageError("set POSTGRES_PASSWORD on its own: it is rotated, not just written")
        from controller.ops.rotate import rotate_password_via_env

        result = rotate_password_via_env(ctx, name, assignments["POSTGRES_PASSWORD"])
        return EnvChange(changed=["POSTGRES_PASSWORD"], services=[], warnings=result.warnings)
    for key, value in assignments.items():
        check_change(key, value)
    check_writable(ctx)
    with audited(ctx, "env set " + " ".join(sorted(assignments)), name), busy(ctx, name):
        found = record(ctx, name)
        current = env(ctx, name)
        for key, value in assignments.items():
            current.set(key, value)
        return _write(ctx, found, current, sorted(assignments))


def env_unset(ctx: Context, name: str, key: str) -> EnvChange:
    record(ctx, name)
    check_change(key, None)
    check_writable(ctx)
    with audited(ctx, f"env unset {key}", name), busy(ctx, name):
        found = record(ctx, name)
        current = env(ctx, name)
        if current.get(key) is None:
            raise OperationError(f"{name} has no variable {key}")
        current.unset(key)
        return _write(ctx, found, current, [key])


def env_edit_text(ctx: Context, name: str) -> str:
    """The .env text, for `env edit` to put in the editor (and to hand back to env_replace)."""
    record(ctx, name)
    return env_text(ctx, name)


def env_check(ctx: Context, name: str, text: str, original: str | None = None) -> list[str]:
    """Problems with an edited .env ``text`` (empty list: fine), against ``original`` (the text
    the edit started from) or the current file."""
    before = EnvFile.parse(env_text(ctx, name) if original is None else original)
    return edit_problems(before.as_dict(), text, EnvFile.parse(text).as_dict())


def env_replace(ctx: Context, name: str, text: str, original: str | None = None) -> EnvChange:
    """Validate and atomically write an edited .env ``text``. With ``original`` (the text the
    edit started from), a .env that changed meanwhile is not overwritten."""
    record(ctx, name)
    problems = env_check(ctx, name, text, original)
    if problems:
        raise UsageError(f"the edited .env has {len(problems)} problem(s): {problems[0]}")
    check_writable(ctx)
    after = EnvFile.parse(text)
    before = EnvFile.parse(env_text(ctx, name) if original is None else original)
    changed = changed_keys(before.as_dict(), after.as_dict())
    with audited(ctx, "env edit " + " ".join(changed), name), busy(ctx, name):
        found = record(ctx, name)
        if original is not None and env_text(ctx, name) != original:
            raise OperationError(
                f"{name}'s .env changed while it was being edited; nothing was saved "
                "(run `env edit` again)"
            )
        return _write(ctx, found, after, changed)


def _write(ctx: Context, found: InstanceRecord, values: EnvFile, changed: list[str]) -> EnvChange:
    from controller.fsutil import atomic_write
    from controller.render import compose_files

    directory = ctx.settings.instance_dir(found.name)
    spec = None
    if any(key.startswith("DASHBOARD_") for key in changed):
        # Studio's Caddy site carries these credentials: work it out and check it before
        # writing, so a refusal leaves .env as it was.
        spec = publish.site_spec(ctx, found, values.as_dict())
    atomic_write(directory / ".env", values.render(), mode=0o600)
    if found.host != LOCAL_HOST:
        # The engine there reads the folder there: the new .env goes there now (0600 kept).
        from controller.ops.base import place
        from controller.remotefiles import sync_folder

        where = place(ctx, found.host)
        sync_folder(where, directory, where.instance_dir(found.name))
    faults.point("env.written")
    services = services_using(changed, compose_files(directory)) if changed else []
    live = publish.publish_live(ctx, found, spec) if spec else True
    faults.point("env.published")
    if not live:
        restart = f"`restart {found.name}` applies it to {', '.join(services)}" if services else ""
        raise publish.pending(ctx, f"{found.name}'s {', '.join(changed)} was changed", restart)
    return EnvChange(changed=changed, services=services, warnings=[])
