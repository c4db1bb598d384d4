"""Create an instance, or finish one whose create was interrupted.

Every refusal (bad options, unknown template or overlay, a host name or port taken) happens
against a snapshot of the state before anything is written, and again under the state lock. Then
the record is committed in phase "creating", the folder rendered, the site published and the
containers started; only then does the record become "ready". Running `create NAME` again after a
crash picks up where it stopped and keeps the secrets already generated.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping, Sequence
from pathlib import Path

from controller import faults
from controller.errors import DockerUnavailable, OperationError, UsageError
from controller.limits import check_cpus, check_memory
from controller.names import validate_name, validate_new_name
from controller.ops import claims, publish, templates
from controller.ops.base import (
    Context,
    Progress,
    audited,
    busy,
    check_writable,
    compose,
    docker,
    quiet,
    template,
)
from controller.ops.lifecycle import wait_healthy
from controller.state import LOCAL_HOST, READY, InstanceRecord, State


def create(
    ctx: Context,
    name: str,
    template_name: str | None = None,
    overlays: Sequence[str] | None = None,
    extra_compose: Sequence[Path] | None = None,
    ports: Mapping[str, int] | None = None,
    cpus: float | None = None,
    memory: str | None = None,
    start: bool = True,
    progress: Progress = quiet,
    host: str | None = None,
) -> list[str]:
    """Create (or finish creating) an instance on ``host`` (None: the one with the most free
    memory, see ops/hosts.py; local when there is no other); returns warnings. Caddy out of
    reach: the instance is created all the same (snippet on disk), then RoutesPending (exit 1)
    says that its live routes wait for `caddy sync`."""
    from controller.render import read_extra_compose

    validate_name(name)
    if name not in ctx.store.read().instances:
        validate_new_name(name)  # a reserved word is refused for a new instance, not a resume
    _refuse_restore_left(ctx, name)
    cpus, memory = check_cpus(cpus), check_memory(memory)
    ports = _check_ports(ports)
    overlays = list(dict.fromkeys(overlays or []))
    extra = [Path(p).absolute() for p in extra_compose or []]
    for path in extra:
        if not path.is_file():
            raise UsageError(f"extra compose file {path} does not exist")
    read_extra_compose(extra)  # unreadable or not a compose file: refused before any write
    check_writable(ctx)
    asked = _Asked(template_name, overlays, extra, ports, cpus, memory, start)
    command = "create" + (" --no-start" if not start else "")
    # An unreadable state file stops it before anything, even an audit line.
    pending = None if name in ctx.store.read().instances else _start_studio_hash()
    asked.host = _host(ctx, name, host, progress)
    with audited(ctx, command, name), _engine_of(ctx, asked.host):
        api = None
        if start:
            from controller.compose import check_cli

            # Docker down: fail now, before anything is written.
            api = docker(ctx, asked.host)
            check_cli()
        else:
            with contextlib.suppress(DockerUnavailable):
                api = docker(ctx, asked.host)  # --no-start: the engine checks need not fail it
        if api is not None:
            asked.reserved = _engine_ports(api)
            if asked.host != LOCAL_HOST:
                asked.port_free = _engine_port_free(api)
        # Refuse bad input against a snapshot first, so that nothing at all is written for it
        # (not even the instance's lock file); the transaction checks again under the lock.
        snapshot = ctx.store.read()
        planned = _decide(ctx, name, asked, snapshot)
        _refuse_foreign(ctx, api, planned)
        if name not in snapshot.instances:
            # A host Caddy already serves for someone else: refused before anything is written.
            publish.check_hosts(ctx, name, mail="mail" in overlays)
        with busy(ctx, name):
            return _create_locked(ctx, name, asked, progress, pending, api)


def _refuse_restore_left(ctx: Context, name: str) -> None:
    """Refused (exit 2) while a killed restore of ``name`` left its marker (ROOT/restore/
    NAME.json, controller/ops/restore.py): its rollback would remove what this create makes.
    `restore NAME` settles it, and so does `start NAME` while its record is there (a restore's
    new record is committed with the marker)."""
    if not ctx.settings.restore_marker(name).exists():
        return
    also = f" or `start {name}`" if name in ctx.store.read().instances else ""
    raise UsageError(
        f"a restore of {name} was interrupted: run `restore {name}`{also} to settle it first"
    )


def _start_studio_hash():
    """The dashboard password of a new instance, chosen now so that its bcrypt hash for Caddy's
    basic auth (~0.3 s) is made in the background while the checks and the render run."""
    from controller.basicauth import PendingHash
    from controller.secrets import generate_secrets

    return PendingHash(generate_secrets(["DASHBOARD_PASSWORD"])["DASHBOARD_PASSWORD"])


def _remember_studio_hash(ctx: Context, name: str, pending) -> None:
    """Cache the background hash when the rendered .env holds its password (a first render;
    a .env already there keeps its own password, whose hash publish makes as before)."""
    from controller.caddy import remember_password_hash
    from controller.ops.base import env
    from controller.sites import studio_hash_cache

    if env(ctx, name).get("DASHBOARD_PASSWORD") == pending.password:
        hashed = pending.result()
        if hashed is not None:
            remember_password_hash(studio_hash_cache(ctx.settings, name), pending.password, hashed)


def _host(ctx: Context, name: str, host: str | None, progress: Progress = quiet) -> str:
    """The host the instance goes to: the one it is half-created on, ``host``, or a choice
    (said through ``progress``: where, and why)."""
    from controller.ops import hosts

    state = ctx.store.read()
    existing = state.instances.get(name)
    if existing is not None and existing.phase != READY:
        if host is not None and host != existing.host:
            raise UsageError(
                f"{name} is half-created on host {existing.host}: run `create {name}` alone "
                f"to finish it, or `delete {name}`"
            )
        return existing.host
    if host is None:
        chosen = hosts.placement(ctx, state)
        for line in chosen.says():
            progress(line)
        return chosen.host
    if host != LOCAL_HOST and host not in state.hosts:
        raise UsageError(f"no host named {host!r} (see `host list`)")
    return host


def _engine_of(ctx: Context, host: str):
    """docker CLI processes of this create (the claim volume, controller/ownership.py) talk to
    the engine of the instance's host."""
    from controller.containerio import engine
    from controller.ops.base import place

    return engine(place(ctx, host).docker_env())


def _engine_port_free(api):
    """A test whether a port is free on a remote engine: no container there publishes it."""
    from controller.engine import EngineError

    try:
        taken = api.engine.published_ports()
    except EngineError as exc:
        raise DockerUnavailable(f"cannot list containers: {exc}") from None
    return lambda port: port not in taken


class _Asked:
    """The options of one create call."""

    def __init__(self, template_name, overlays, extra, ports, cpus, memory, start) -> None:
        self.template = template_name
        self.overlays = overlays
        self.extra = extra
        self.ports = ports
        self.cpus = cpus
        self.memory = memory
        self.start = start
        # Host ports other ROOTs' containers hold on the engine (stopped ones too).
        self.reserved: set[int] = set()
        self.host = LOCAL_HOST
        self.port_free = None  # for a remote host: whether its engine has the port free


def _check_ports(ports: Mapping[str, int] | None) -> dict[str, int]:
    out = {}
    for key, port in (ports or {}).items():
        if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
            raise UsageError(f"invalid --port {key}={port!r}: not a port number 1-65535")
        out[str(key)] = port
    return out


def _check_hosts_free(ctx: Context, name: str, state: State) -> None:
    """Flat names can collide: instance `a`'s Studio host is instance `a-studio`'s API host."""
    mine = set(ctx.settings.hosts(name).values())
    for other in state.instances:
        if mine & set(ctx.settings.hosts(other).values()):
            raise UsageError(
                f"instance name {name!r} would share a host name with instance {other!r}"
            )


def _same_ports(asked: Mapping[str, int], held: Mapping[str, int]) -> bool:
    from controller.ports import resolve

    try:
        resolved = resolve(asked, list(held))
    except UsageError:
        return False
    return all(held[key] == port for key, port in resolved.items())


def _resume_conflicts(existing: InstanceRecord, asked: _Asked) -> list[str]:
    """Options of a repeated create that differ from what the half-created instance has."""
    differs = {
        "--template": asked.template is not None and asked.template != existing.template,
        "--overlay": bool(asked.overlays) and asked.overlays != existing.overlays,
        "--extra-compose": bool(asked.extra)
        and [str(p) for p in asked.extra] != existing.extra_compose,
        "--port": bool(asked.ports) and not _same_ports(asked.ports, existing.ports),
        "--cpus": asked.cpus is not None and asked.cpus != existing.cpus,
        "--memory": asked.memory is not None and asked.memory != existing.memory,
    }
    return [option for option, differ in differs.items() if differ]


def _decide(ctx: Context, name: str, asked: _Asked, state: State) -> InstanceRecord:
    """The record to create or finish, or UsageError; ``state`` is not changed."""
    from controller.ports import allocate
    from controller.templatefiles import needed_ports

    existing = state.instances.get(name)
    if existing and existing.phase == READY:
        raise UsageError(f"instance {name!r} already exists")
    if existing:
        different = _resume_conflicts(existing, asked)
        if different:
            raise UsageError(
                f"{name} is half-created with other options ({', '.join(different)}): "
                f"run `create {name}` alone to finish it, or `delete {name}`"
            )
        return existing
    _check_hosts_free(ctx, name, state)
    files = template(ctx, templates.chosen(ctx, asked.template, state))
    files.compose_paths(asked.overlays)  # unknown overlay: UsageError naming the known ones
    # Ports are unique across all hosts (state.used_ports() holds every host's).
    allocated = allocate(
        needed_ports(files, asked.overlays),
        asked.ports,
        state.used_ports() | asked.reserved,
        ctx.settings.port_range,
        **({"is_free": asked.port_free} if asked.port_free is not None else {}),
    )
    return InstanceRecord(
        name=name,
        template=files.path.name,
        overlays=list(asked.overlays),
        extra_compose=[str(p) for p in asked.extra],
        ports=allocated,
        cpus=asked.cpus,
        memory=asked.memory,
        autostart=asked.start,
        started=False,
        host=asked.host,
    )


def _engine_ports(api) -> set[int]:
    from controller.engine import EngineError
    from controller.ownership import engine_ports

    try:
        return engine_ports(api.engine)
    except EngineError as exc:
        raise DockerUnavailable(f"cannot list containers: {exc}") from None


def _refuse_foreign(ctx: Context, api, found: InstanceRecord) -> None:
    """Refuse (exit 2) when the instance's project, container, network or volume names are
    already taken on the engine by objects that are not this ROOT's; the extra compose files are
    checked by compose-go first (also with Docker down)."""
    from controller.engine import EngineError
    from controller.ownership import existing_root_id, refuse_foreign
    from controller.render import merged_project
    from controller.render.names import engine_names

    extras = [Path(p) for p in found.extra_compose if Path(p).is_file()]
    project = merged_project(template(ctx, found.template), found.overlays, extras)
    if api is None:
        return
    # Before the first render there is no id yet, and so nothing on the engine is ours.
    root = existing_root_id(ctx.settings.root) or "-"
    try:
        refuse_foreign(api.engine, root, engine_names(project, found.name))
    except EngineError as exc:
        raise DockerUnavailable(f"cannot list Docker objects: {exc}") from None


def _on(host: str) -> str:
    return "" if host == LOCAL_HOST else f" (for host {host})"


def _create_locked(
    ctx: Context, name: str, asked: _Asked, progress: Progress, pending=None, api=None
) -> list[str]:
    from controller.render import render_instance

    _refuse_restore_left(ctx, name)  # again under the lock: a restore may have run meanwhile
    with ctx.store.transaction() as state:
        found = _decide(ctx, name, asked, state)
        fresh = name not in state.instances
        if not fresh:
            progress(f"finishing the interrupted create of {name}")
        if asked.start:
            found.started = True  # from here on, delete must look for containers
        state.instances[name] = found
    faults.point("create.recorded")
    claims.make(ctx, api, found, fresh, asked.start)

    files = template(ctx, found.template)
    progress(f"rendering {ctx.settings.instance_dir(name)}" + _on(found.host))
    # On a resumed create the sources may be gone; render keeps the copies it already made.
    sources = [Path(p) for p in found.extra_compose if Path(p).is_file()]
    initial = {"DASHBOARD_PASSWORD": pending.password} if pending is not None else None
    render_instance(ctx.settings, found, files, sources, initial)
    if pending is not None:
        _remember_studio_hash(ctx, name, pending)
    faults.point("create.rendered")
    live = publish.publish_live(ctx, found)
    faults.point("create.published")
    if asked.start:
        progress("starting containers")
        compose(ctx, name).up()
        faults.point("create.started")
        wait_healthy(ctx, name, progress)
        faults.point("create.healthy")
    with ctx.store.transaction() as state:
        if name not in state.instances:
            raise OperationError(f"{name} was deleted while it was being created")
        state.instances[name].phase = READY
    if not live:
        started = " and started" if asked.start else ""
        raise publish.pending(ctx, f"{name} was created{started}")
    return []
