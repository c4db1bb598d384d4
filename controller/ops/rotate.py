"""`rotate NAME SECRET ... | --all [--dry-run]`, `rotate NAME JWT_KEYS --finish`: new values in
.env AND wherever else the secret lives (database roles and settings, Supavisor's stored tenant,
Caddy's basic auth), the services that read it recreated, health waited for, and everything put
back when the instance does not come up.

Kill-safety: before anything changes, a journal (ROOT/rotate/NAME.json, 0600: it holds the old and
new values, like .env) records both sides. The database changes in ONE transaction, so it holds
all old or all new values. The next `rotate NAME` or `start NAME` finds the journal and converges:
forward (new everywhere) when the database already took the new values, else back (old
everywhere). A rotation with no database part goes forward once .env was written.

On another host (`create --host`) the same steps run through that host's engine (psql by `docker
exec` over ssh, its secrets in docker's environment, never on a command line), and the worker's
copy of .env is updated at once; the journal stays here, with the state.
"""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import attrs

from controller import pgroles, rotation
from controller.errors import ManagerError, OperationError, UsageError
from controller.ops import publish
from controller.ops.base import (
    Context,
    Progress,
    audited,
    busy,
    check_writable,
    compose,
    env,
    place,
    quiet,
    record,
    require_ready,
)
from controller.state import LOCAL_HOST, InstanceRecord

FAULT_ENV = "SUPABASE_MANAGER_FAULT"  # tests: "rotate:STEP" SIGKILLs this process at STEP


@attrs.frozen
class RotateResult:
    instance: str
    dry_run: bool
    secrets: list[rotation.SecretChange]
    services: list[str]
    client_keys: list[str]
    warnings: list[str]
    recovered: str | None = None  # what an interrupted rotation was converged to


# --- the journal ---
def journal_path(ctx: Context, name: str) -> Path:
    return ctx.settings.root / "rotate" / f"{name}.json"


def _write_journal(ctx: Context, name: str, data: dict) -> None:
    from controller.fsutil import atomic_write, ensure_dir

    ensure_dir(journal_path(ctx, name).parent, 0o700)
    atomic_write(journal_path(ctx, name), json.dumps(data, indent=1), mode=0o600)


def _read_journal(ctx: Context, name: str) -> dict | None:
    try:
        return json.loads(journal_path(ctx, name).read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        raise OperationError(
            f"the rotation journal {journal_path(ctx, name)} is unreadable; fix or remove it"
        ) from None


def _engine(ctx: Context, name: str):
    """docker exec (psql in the db container) on the engine of the instance's host."""
    from controller import containerio
    from controller.hosts import place_of

    where = place_of(ctx.settings, ctx.store.read(), record(ctx, name))
    return containerio.engine(where.docker_env())


def _checkpoint(step: str) -> None:
    if os.environ.get(FAULT_ENV) == f"rotate:{step}":
        os.kill(os.getpid(), signal.SIGKILL)


# --- the instance's database ---
def _db_mounts(ctx: Context, found: InstanceRecord) -> tuple[str | None, list[str]]:
    """The db service and the sources of its init scripts (relative to the instance folder)."""
    from controller.templatefiles import TemplateFiles

    folder = ctx.settings.instance_dir(found.name)
    files = TemplateFiles(folder)
    service = files.role("db", found.overlays)
    if service is None:
        return None, []
    model = files.model(found.overlays).services.get(service)
    sources = [m.source for m in (model.init_scripts() if model else ()) if m.source]
    return service, sources


def _pooler(ctx: Context, found: InstanceRecord) -> str | None:
    from controller.templatefiles import TemplateFiles

    return TemplateFiles(ctx.settings.instance_dir(found.name)).role("pooler", found.overlays)


def _db_container(ctx: Context, name: str, service: str, start: bool, progress: Progress) -> str:
    """The running container of the db service (started, and waited for, when ``start``)."""
    from controller.ops.backup import _running_container
    from controller.ops.lifecycle import wait_healthy

    container = _running_container(name, service)
    if container is None and start:
        progress(f"starting {service} of {name}")
        compose(ctx, name).up([service])
        wait_healthy(ctx, name, progress, [service])
        container = _running_container(name, service)
    if container is None:
        raise OperationError(f"{name}: its {service} service is not running; run `start {name}`")
    return container


def _facts(ctx: Context, found: InstanceRecord) -> tuple[rotation.DbFacts, str | None]:
    service, sources = _db_mounts(ctx, found)
    folder = ctx.settings.instance_dir(found.name)
    facts = rotation.DbFacts(
        roles=pgroles.password_roles(folder, sources),
        jwt_in_db=pgroles.sets_jwt_secret(folder, sources),
        pooler=_pooler(ctx, found) is not None,
    )
    return facts, service


# --- rotate ---
def rotate(
    ctx: Context,
    name: str,
    secrets: Sequence[str],
    every: bool = False,
    dry_run: bool = False,
    finish: bool = False,
    progress: Progress = quiet,
    given: Mapping[str, str] | None = None,
) -> RotateResult:
    """``given``: new values to use instead of generated ones (`env set POSTGRES_PASSWORD=`)."""
    record(ctx, name)
    if every and secrets:
        raise UsageError("rotate: give SECRET names or --all, not both")
    if finish and (every or [s.upper() for s in secrets] != ["JWT_KEYS"]):
        raise UsageError("rotate: --finish goes with JWT_KEYS alone")
    keys = rotation.normalise(secrets, env(ctx, name).as_dict(), every)
    if not dry_run:
        check_writable(ctx)
    words = " ".join(["rotate", *keys] + (["--finish"] if finish else []))
    with (
        audited(ctx, words + (" --dry-run" if dry_run else ""), name),
        busy(ctx, name),
        _engine(ctx, name),
    ):
        recovered = None if dry_run else recover(ctx, name, progress)
        found = record(ctx, name)
        require_ready(found)
        if not keys:
            return RotateResult(name, dry_run, [], [], [], [], recovered)
        result = _rotate_locked(ctx, found, keys, dry_run, finish, progress, recovered, given)
    if every:
        kept = "not rotated: " + rotation.NOT_IN_PLACE["PGSODIUM_ROOT_KEY"]
        result = attrs.evolve(result, warnings=[*result.warnings, kept])
    return result


def _rotate_locked(ctx, found, keys, dry_run, finish, progress, recovered, given):
    from controller.envusage import services_using
    from controller.render import compose_files

    name = found.name
    current = env(ctx, name)
    values = current.as_dict()
    facts, db_service = _facts(ctx, found)
    needs_db = "POSTGRES_PASSWORD" in keys or ("JWT_SECRET" in keys and facts.jwt_in_db)
    psql = None
    warnings: list[str] = []
    needles = rotation.copy_needles(keys, values)
    if db_service and (needs_db or needles):
        container = _db_container(ctx, name, db_service, not dry_run, progress)
        psql = pgroles.Psql(container, [values.get("POSTGRES_PASSWORD", "")])
        if "POSTGRES_PASSWORD" in keys:
            # Every login role that uses it: the template's and the image's, and any other
            # role someone gave the same password.
            extra = pgroles.login_roles_using(psql, values["POSTGRES_PASSWORD"])
            existing = set(pgroles.role_passwords(psql, facts.roles + extra))
            roles = [r for r in dict.fromkeys(facts.roles + extra) if r in existing]
            facts = attrs.evolve(facts, roles=roles)
        for place in pgroles.copies_in_database(psql, needles):
            warnings.append(f"a copy of the old {place} stays in the database: update it")
    elif needs_db:
        raise OperationError(f"{name} has no database service to rotate its password in")
    now = int(time.time())
    prepared, new_values = rotation.prepare_all(keys, values, facts, now, finish, given)
    changed = sorted(k for k in new_values if new_values[k] != values.get(k))
    folder = ctx.settings.instance_dir(name)
    services = services_using(changed, compose_files(folder))
    client_keys = [k for item in prepared for k in item.change.client_keys]
    changes = [item.change for item in prepared]
    if dry_run:
        return RotateResult(name, True, changes, services, client_keys, warnings, recovered)

    passwords = {}
    settings: dict[str, str] = {}
    old_settings: dict[str, str] = {}
    for item in prepared:
        settings.update(item.settings)
    if "POSTGRES_PASSWORD" in keys:
        passwords = {role: new_values["POSTGRES_PASSWORD"] for role in facts.roles}
    if settings and psql is not None:
        for key in settings:
            old_settings[key] = pgroles.database_setting(psql, key) or values.get("JWT_SECRET", "")
    journal = {
        "instance": name,
        "secrets": keys,
        "old": {k: values.get(k, "") for k in changed},
        "new": {k: new_values[k] for k in changed},
        "roles": sorted(passwords),
        "settings": {"old": old_settings, "new": settings},
        "pooler": any(item.pooler_reset for item in prepared),
        "caddy": any(item.caddy for item in prepared),
        "db_service": db_service,
        "tenant": values.get("POOLER_TENANT_ID", ""),
    }
    spec = publish.site_spec(ctx, found, new_values) if journal["caddy"] else None
    _write_journal(ctx, name, journal)
    _checkpoint("journal")
    try:
        _forward(ctx, found, journal, spec, progress)
    except ManagerError as exc:
        progress(f"{name} did not come up with the new values: putting the old ones back")
        try:
            _backward(ctx, found, journal, progress)
        except ManagerError as again:
            raise OperationError(
                f"rotation of {name} failed ({exc}) and so did putting the old values back "
                f"({again}); the journal {journal_path(ctx, name)} stays: run `rotate {name}`"
            ) from None
        journal_path(ctx, name).unlink(missing_ok=True)
        raise OperationError(
            f"rotation of {name} failed ({exc}); the old values are back everywhere"
        ) from None
    journal_path(ctx, name).unlink(missing_ok=True)
    return RotateResult(name, False, changes, services, client_keys, warnings, recovered)


# --- the two directions ---
def _psql_for(ctx: Context, name: str, journal: dict, progress: Progress) -> pgroles.Psql:
    container = _db_container(ctx, name, journal["db_service"], True, progress)
    return pgroles.Psql(
        container,
        [journal["new"].get("POSTGRES_PASSWORD", ""), journal["old"].get("POSTGRES_PASSWORD", "")]
        if "POSTGRES_PASSWORD" in journal["new"]
        else [env(ctx, name).get("POSTGRES_PASSWORD") or ""],
    )


def _has_db_part(journal: dict) -> bool:
    return bool(journal["roles"] or journal["settings"]["new"])


def _database(psql: pgroles.Psql, journal: dict, side: str) -> None:
    password = journal[side].get("POSTGRES_PASSWORD")
    passwords = {role: password for role in journal["roles"]} if password else {}
    pgroles.apply(psql, passwords, journal["settings"][side])


def _apply_side(ctx, found, journal, side: str, spec, progress, checkpoints: bool) -> None:
    from controller.fsutil import atomic_write
    from controller.ops.lifecycle import wait_healthy

    name = found.name
    step = _checkpoint if checkpoints else (lambda _s: None)
    if _has_db_part(journal):
        psql = _psql_for(ctx, name, journal, progress)
        progress(f"setting the {side} values in the database of {name}")
        _database(psql, journal, side)
        step("database")
        if journal["pooler"] and journal["tenant"]:
            pgroles.reset_pooler_tenant(psql, journal["tenant"])
            step("pooler")
    elif journal["pooler"] and journal["tenant"] and journal["db_service"]:
        pgroles.reset_pooler_tenant(_psql_for(ctx, name, journal, progress), journal["tenant"])
    current = env(ctx, name)
    for key, value in journal[side].items():
        current.set(key, value)
    atomic_write(ctx.settings.instance_dir(name) / ".env", current.render(), mode=0o600)
    _sync_env(ctx, found)
    step("env")
    if journal["caddy"]:
        spec = spec or publish.site_spec(ctx, found, current.as_dict())
        for warning in publish.publish(ctx, found, spec):
            progress(warning)
    if found.started:
        progress(f"recreating the services of {name} that read the changed values")
        compose(ctx, name).up()
        step("recreate")
        wait_healthy(ctx, name, progress)
        if not found.autostart:
            compose(ctx, name).stop()


def _sync_env(ctx: Context, found: InstanceRecord) -> None:
    """A remote instance's folder there takes the new .env at once (0600 kept), as `env set`
    does: compose copies it before each use, but an instance not started gets no compose run."""
    if found.host == LOCAL_HOST:
        return
    from controller.remotefiles import sync_folder

    where = place(ctx, found.host)
    sync_folder(where, ctx.settings.instance_dir(found.name), where.instance_dir(found.name))


def _forward(ctx, found, journal, spec, progress) -> None:
    _apply_side(ctx, found, journal, "new", spec, progress, checkpoints=True)


def _backward(ctx, found, journal, progress) -> None:
    _apply_side(ctx, found, journal, "old", None, progress, checkpoints=False)


def _database_side(ctx: Context, name: str, journal: dict, progress: Progress) -> str:
    """'new' when the database holds the journal's new values, else 'old'."""
    psql = _psql_for(ctx, name, journal, progress)
    new_password = journal["new"].get("POSTGRES_PASSWORD")
    if journal["roles"] and new_password:
        stored = pgroles.role_passwords(psql, journal["roles"])
        return (
            "new" if all(pgroles.scram_matches(new_password, v) for v in stored.values()) else "old"
        )
    for key, value in journal["settings"]["new"].items():
        return "new" if pgroles.database_setting(psql, key) == value else "old"
    return "old"


def recover(ctx: Context, name: str, progress: Progress = quiet) -> str | None:
    """Converge an interrupted rotation of ``name`` (call under its lock): 'new' or 'old', the
    side now everywhere, or None when there was nothing to do."""
    journal = _read_journal(ctx, name)
    if journal is None:
        return None
    with _engine(ctx, name):
        return _recover(ctx, name, journal, progress)


def _recover(ctx: Context, name: str, journal: dict, progress: Progress) -> str:
    found = record(ctx, name)
    if _has_db_part(journal):
        side = _database_side(ctx, name, journal, progress)
    else:
        values = env(ctx, name).as_dict()
        side = "new" if all(values.get(k) == v for k, v in journal["new"].items()) else "old"
    progress(f"an interrupted rotation of {name} is finished on the {side} values")
    _apply_side(ctx, found, journal, side, None, progress, checkpoints=False)
    journal_path(ctx, name).unlink(missing_ok=True)
    return side


def pending(ctx: Context, name: str) -> bool:
    return journal_path(ctx, name).is_file()


def rotate_password_via_env(
    ctx: Context, name: str, value: str, progress: Progress = quiet
) -> RotateResult:
    """`env set POSTGRES_PASSWORD=VALUE`: the same path as a rotation, with the given value."""
    from controller.secrets import check_secret

    problem = check_secret("POSTGRES_PASSWORD", value)
    if problem:
        raise UsageError(f"invalid value for POSTGRES_PASSWORD: {problem}")
    return rotate(
        ctx, name, ["POSTGRES_PASSWORD"], progress=progress, given={"POSTGRES_PASSWORD": value}
    )
