"""Running instances: start, stop, restart (all or some services), start every instance marked
to run (boot), delete, and waiting until services are healthy.

Each command refuses an unknown name before taking the instance's lock, then reads the record
again under that lock, so it acts on what the previous command left behind.
"""

from __future__ import annotations

import contextlib
import shutil
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, NamedTuple

from controller import faults
from controller.errors import DockerUnavailable, ManagerError, OperationError, UsageError
from controller.names import validate_name
from controller.ops import claims, publish
from controller.ops.base import (
    WAIT_TIMEOUT,
    Context,
    Progress,
    audited,
    busy,
    check_services,
    check_writable,
    compose,
    docker,
    jobs,
    quiet,
    record,
    require_ready,
)
from controller.state import READY, InstanceRecord

if TYPE_CHECKING:
    from controller.dockerapi import DockerAPI


def wait_healthy(
    ctx: Context,
    name: str,
    progress: Progress,
    services: list[str] | None = None,
    timeout: float | None = None,
    *,
    host: str | None = None,
    found: InstanceRecord | None = None,
) -> None:
    """Wait until the containers (of ``services``, or all) run, healthy where they have a
    healthcheck; a one-shot job only has to exit 0. An exited or unhealthy container fails the
    wait at once (named in the error). On the engine of ``host`` (named in the
    messages; default: the host the record names), going by ``found`` (default: the record in
    the state): a move waits for a copy that its record does not name yet."""
    from controller.status import job_done

    found = found or record(ctx, name)
    api = docker(ctx, host or found.host)
    there = f" on {host}" if host else ""
    one_shot = jobs(ctx, found)
    deadline = time.monotonic() + (WAIT_TIMEOUT if timeout is None else timeout)
    last = ""
    while True:
        containers = [c for c in api.containers(name) if not services or c.service in services]
        waiting = [
            c
            for c in containers
            if not (c.state == "running" and c.health in (None, "healthy"))
            and not job_done(c, one_shot)
        ]
        if containers and not waiting:
            progress(f"{name}: all {len(containers)} services are up{there}")
            return
        words = sorted(f"{c.service}: {c.health or c.state}" for c in waiting)
        line = "waiting for " + ", ".join(words) if words else "waiting for containers"
        if line != last:
            progress(line)
            last = line
        # An unhealthy container has failed its check `retries` times in a row: compose's own
        # `up --wait` and depends_on give up on it at once, and so do we.
        failed = [c for c in waiting if c.state in ("exited", "dead") or c.health == "unhealthy"]
        if failed or time.monotonic() > deadline:
            culprit = (failed or waiting or [None])[0]
            what = (
                f"service {culprit.service} ({culprit.health or culprit.state})"
                if culprit
                else "its containers"
            )
            raise OperationError(f"{name}: {what} did not become healthy{there}")
        time.sleep(0.5)


def _mark(ctx: Context, name: str, autostart: bool | None = None, started: bool = False) -> None:
    with ctx.store.transaction() as state:
        found = state.instances.get(name)
        if found is None:
            return
        if autostart is not None:
            found.autostart = autostart
        if started:
            found.started = True


def _verb(verb: str, services: list[str] | None) -> str:
    return " ".join([verb, *(services or [])])


def own_project(ctx: Context, name: str):
    """The engine client, once sure compose project ``name`` holds no container that is not
    this ROOT's: compose works by project name and would change or remove it (exit 2)."""
    api = docker(ctx, record(ctx, name).host)
    foreign = api.foreign_containers(name)
    if foreign:
        raise UsageError(
            f"compose project {name} on the Docker engine holds {foreign[0]}, which is not "
            "this ROOT's: left alone"
        )
    return api


class Held(NamedTuple):
    """What ``held`` hands its body: the record read under the lock, the services asked for
    (checked), and the engine client of the instance's host."""

    found: InstanceRecord
    services: list[str] | None
    api: DockerAPI


@contextlib.contextmanager
def held(
    ctx: Context,
    verb: str,
    name: str,
    services: list[str] | None,
    progress: Progress = quiet,
    recover: Callable[[str, Progress], object] | None = None,
) -> Iterator[Held]:
    """The guarded preamble of start, stop and restart: an unknown name refused before its lock
    file is made, the ROOT writable, one audit line, the instance's lock, ``recover`` (a killed
    restore or move finished or undone), a ready record, known services, and a compose project
    that holds only this ROOT's containers."""
    record(ctx, name)  # an unknown name is refused before its lock file is made
    check_writable(ctx)
    with audited(ctx, _verb(verb, services), name), busy(ctx, name):
        if recover is not None:
            recover(name, progress)
            if name not in ctx.store.read().instances:
                # A killed restore that was making NAME anew was undone: nothing is left to act on.
                raise OperationError(
                    f"{name} was being made by a restore that was interrupted; that restore is "
                    f"undone and {name} no longer exists: run the restore again"
                )
        found = record(ctx, name)
        require_ready(found)
        services = check_services(ctx, found, services)
        yield Held(found, services, own_project(ctx, name))


def start(
    ctx: Context,
    name: str,
    services: list[str] | None = None,
    progress: Progress = quiet,
    recover: Callable[[str, Progress], object] | None = None,
) -> None:
    """``recover(name, progress)`` runs first under the instance's lock (a killed restore is
    finished or undone there)."""
    with held(ctx, "start", name, services, progress, recover) as (found, services, api):
        claims.ensure(ctx, api, found)  # made now if Docker was down at `create --no-start`
        # Marked before `up`: a crash half-way still leaves containers that delete must find.
        _mark(ctx, name, autostart=True if not services else None, started=True)
        compose(ctx, name).up(services)
        wait_healthy(ctx, name, progress, services)


def start_all(
    ctx: Context,
    progress: Progress = quiet,
    recover: Callable[[str, Progress], object] | None = None,
) -> list[str]:
    """Start every instance marked to start (boot); returns the names started."""
    started, failures = [], []
    for name, found in sorted(ctx.store.read().instances.items()):
        if found.phase != READY or not found.autostart:
            continue
        try:
            start(ctx, name, progress=progress, recover=recover)
            started.append(name)
        except ManagerError as exc:
            failures.append(str(exc))
    if failures:
        raise OperationError(f"{len(failures)} instance(s) failed to start: {failures[0]}")
    return started


def stop(
    ctx: Context, name: str, services: list[str] | None = None, progress: Progress = quiet
) -> None:
    with held(ctx, "stop", name, services) as (_, services, _api):
        progress(f"stopping {name}")
        compose(ctx, name).stop(services)
        if not services:
            _mark(ctx, name, autostart=False)


def restart(
    ctx: Context, name: str, services: list[str] | None = None, progress: Progress = quiet
) -> None:
    with held(ctx, "restart", name, services) as (_, services, _api):
        progress(f"restarting {name}")
        _mark(ctx, name, started=True)
        # `up` recreates containers whose configuration (.env) changed; restart the rest.
        project = compose(ctx, name)
        project.up(services)
        project.restart(services)
        wait_healthy(ctx, name, progress, services)


def _release_claim(ctx: Context, api, name: str) -> None:
    """Remove the instance's claim (controller/ownership.py) and this ROOT's claims left behind
    by a delete that could not reach the engine."""
    from controller.engine import EngineError
    from controller.ownership import release, sweep

    try:
        release(api.engine, api.root, name)
        sweep(api.engine, api.root, lambda: set(ctx.store.read().instances) - {name})
    except EngineError as exc:
        raise DockerUnavailable(f"cannot remove the claim of {name} in Docker: {exc}") from None


def _purge_remote(ctx: Context, found, progress: Progress) -> list[str]:
    """Remove the folder of an instance on another host there; a warning when it cannot be."""
    from controller.ops.base import place
    from controller.remotefiles import remove_folder
    from controller.state import LOCAL_HOST

    if found.host == LOCAL_HOST:
        return []
    where = place(ctx, found.host)
    folder = where.instance_dir(found.name)
    progress(f"removing {folder} on host {found.host}")
    try:
        remove_folder(where, folder)
    except OperationError as exc:
        return [f"{folder} on host {found.host} could not be removed ({exc}); remove it by hand"]
    return []


def delete(ctx: Context, name: str, purge: bool = False, progress: Progress = quiet) -> list[str]:
    """Remove the instance's containers (and with ``purge`` its volumes and folder), its Caddy
    site, then its record. Caddy down: all the rest is done, then RoutesPending (exit 1) says
    that its live route waits for `caddy sync`; an instance never started needs no Docker."""
    validate_name(name)
    record(ctx, name)
    check_writable(ctx)
    warnings: list[str] = []
    with audited(ctx, "delete" + (" --purge" if purge else ""), name), busy(ctx, name):
        found = record(ctx, name)
        if found.move is not None:
            # Its copy on the other host would be stranded: settle the move first.
            raise OperationError(
                f"a move of {name} to {found.move.target} is not settled: run `start {name}` "
                "first (it finishes or undoes it)"
            )
        if ctx.settings.restore_marker(name).exists():
            # Its rollback would bring back what this delete removes, or block `create NAME`.
            raise OperationError(
                f"a restore of {name} was interrupted: run `start {name}` first (it finishes or "
                "undoes it)"
            )
        directory = ctx.settings.instance_dir(name)
        try:
            api = docker(ctx, found.host)
        except DockerUnavailable:
            if found.started:
                raise
            api = None  # never started: no container, network or volume can exist
        if api is not None:
            progress(f"removing the containers of {name}")
            foreign = api.foreign_containers(name)
            if foreign:
                # compose down works by project name: it would remove the other stack too.
                warnings.append(
                    f"compose project {name} also holds {foreign[0]}, which is not this "
                    "ROOT's: left alone"
                )
            elif (directory / ".env").is_file():
                with contextlib.suppress(OperationError):
                    compose(ctx, name, sync=False).down(volumes=purge)
            faults.point("delete.down")
            api.remove_instance_leftovers(name, volumes=purge)
            _release_claim(ctx, api, name)
            faults.point("delete.leftovers")
        live = publish.unpublish_live(ctx, name)
        faults.point("delete.unpublished")
        if purge:
            progress(f"removing {directory}")
            failed: list[str] = []
            if directory.exists():
                shutil.rmtree(directory, onerror=lambda _f, path, _e: failed.append(path))
            if failed:
                warnings.append(f"{failed[0]} could not be removed; remove it by hand")
            warnings += _purge_remote(ctx, found, progress)
            faults.point("delete.purged")
        with ctx.store.transaction() as state:
            state.instances.pop(name, None)
        if not live:
            also = f"also: {warnings[0]}" if warnings else ""
            raise publish.pending(ctx, f"{name} was deleted", also)
    return warnings
