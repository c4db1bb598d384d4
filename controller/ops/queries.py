"""What front-ends read: the list of instances, one instance in detail, its logs, the audit log,
and the names completion offers (state and files only, never Docker)."""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator

from controller import audit
from controller.names import validate_name
from controller.ops import publish
from controller.ops.base import (
    Context,
    check_services,
    compose,
    docker,
    env,
    jobs,
    record,
    template,
)
from controller.state import InstanceRecord, State, TemplateRecord
from controller.views import (
    MISSING,
    STOPPED,
    ContainerView,
    InstanceDetail,
    InstanceSummary,
    mask,
)

# The keys clients and servers use to call an instance's API (what `show` lists).
API_KEYS = (
    "ANON_KEY",
    "SERVICE_ROLE_KEY",
    "SUPABASE_PUBLISHABLE_KEY",
    "SUPABASE_SECRET_KEY",
)
_ERROR_LINE = re.compile(
    r"\b(error|fatal|panic|critical|emerg|alert)\b|\"level\"\s*:\s*\"(error|fatal)\"",
    re.IGNORECASE,
)


def _status(found: InstanceRecord, containers, one_shot: set[str]) -> tuple[str, int, int]:
    from controller.status import instance_status

    status, running, total = instance_status(found, containers, one_shot)
    if status == MISSING and not found.started:
        status = STOPPED  # created with --no-start: nothing is missing, it never ran yet
    return status, running, total


def list_instances(
    ctx: Context, resources: bool = True, problems: list[str] | None = None
) -> list[InstanceSummary]:
    """Every instance with its status (and figures), every host asked side by side; an
    instance whose host does not answer is `unreachable`, and ``problems`` (when given)
    receives one line per such host."""
    from controller.diskcache import DiskCache
    from controller.status import connector, gather_hosts, host_line

    state = ctx.store.read()
    if not state.instances:
        return []
    folders = {name: ctx.settings.instance_dir(name) for name in state.instances}
    found_all, unreachable = gather_hosts(
        state.instances,
        connector(ctx.settings, state),
        lambda found: jobs(ctx, found),
        resources=resources,
        folders=folders,
        disk=DiskCache(ctx.settings.root / "cache" / "disk-usage.json"),
    )
    if problems is not None:
        problems.extend(host_line(host, why) for host, why in unreachable.items())
    newest = max(state.templates.values(), key=lambda t: t.added_at, default=None)
    summaries = []
    for name, found in sorted(state.instances.items()):
        figures = found_all[name]
        status = figures.status
        if status == MISSING and not found.started:
            status = STOPPED  # created with --no-start: nothing is missing, it never ran yet
        summaries.append(
            InstanceSummary(
                name=name,
                status=status,
                template=found.template,
                api_url=ctx.settings.public_origin(ctx.settings.hosts(name)["api"]),
                created_at=found.created_at,
                running=figures.running,
                total=figures.total,
                cpu_percent=figures.cpu_percent,
                memory_bytes=figures.memory_bytes,
                disk_bytes=figures.disk_bytes,
                newer_template=_newer_template(state, found.template, newest),
                host=found.host,
            )
        )
    return summaries


def _newer_template(state: State, current: str, newest: TemplateRecord | None) -> str | None:
    own = state.templates.get(current)
    if newest is None or own is None or newest.name == current:
        return None
    return newest.name if newest.added_at > own.added_at else None


def show(ctx: Context, name: str, show_secrets: bool = False) -> InstanceDetail:
    from controller.envpolicy import is_secret  # imports PyJWT: not on list's path
    from controller.status import connection_strings

    found = record(ctx, name)
    containers = docker(ctx, found.host).containers(name)
    status, _, _ = _status(found, containers, jobs(ctx, found))
    values = env(ctx, name)
    files = template(ctx, found.template)
    hosts = ctx.settings.hosts(name)
    urls = {
        "api": ctx.settings.public_origin(hosts["api"]),
        "studio": ctx.settings.public_origin(hosts["studio"]),
    }
    if "mail" in found.overlays:
        urls["mail"] = ctx.settings.public_origin(hosts["mail"])
    password = values.get("POSTGRES_PASSWORD") or ""
    shown = password if show_secrets else "********"
    keys = {}
    for key in API_KEYS:
        value = values.get(key) or ""
        if value:
            keys[key] = value if show_secrets or not is_secret(key) else mask(value)
    requests = None
    with contextlib.suppress(Exception):
        requests = publish.requests_per_host(ctx, name)
    return InstanceDetail(
        name=name,
        status=status,
        template=found.template,
        created_at=found.created_at,
        overlays=list(found.overlays),
        urls=urls,
        ports=dict(found.ports),
        containers=[
            ContainerView(c.service, c.name, c.state, c.health)
            for c in sorted(containers, key=lambda c: c.service)
        ],
        connections=connection_strings(
            found,
            files.role("db", found.overlays),
            files.role("pooler", found.overlays),
            values.as_dict(),
            shown,
        ),
        keys=keys,
        requests=requests,
        host=found.host,
        bind=_bind(ctx, found),
    )


def _bind(ctx: Context, found: InstanceRecord) -> str:
    from controller.hosts import LOOPBACK, place_of

    if found.host == "local":
        return LOOPBACK
    return place_of(ctx.settings, ctx.store.read(), found).bind


def logs(
    ctx: Context,
    name: str,
    services: list[str] | None = None,
    follow: bool = False,
    tail: int | None = None,
    errors_only: bool = False,
) -> Iterator[str]:
    """Log lines ("service | text"); with follow, until the caller stops iterating."""
    found = record(ctx, name)
    services = check_services(ctx, found, services)
    docker(ctx, found.host)
    for line in compose(ctx, name).logs(services or (), tail=tail, follow=follow):
        if not errors_only or _ERROR_LINE.search(line):
            yield line


def audit_entries(ctx: Context, name: str | None = None) -> list[dict]:
    if name is not None:
        validate_name(name)
    return audit.read(ctx.settings.audit_path, name)


# --- names for completion (cheap: state and files only, no Docker) -------------------------------


def instance_names(ctx: Context) -> list[str]:
    return sorted(ctx.store.read().instances)


def health(ctx: Context) -> dict[str, bool]:
    """Whether Docker and Caddy answer (for the shell's toolbar); quick, never raises."""
    result = {"docker": False, "caddy": False}
    with contextlib.suppress(Exception):
        from controller.dockerapi import DockerAPI

        DockerAPI(timeout=2).ping()
        result["docker"] = True
    with contextlib.suppress(Exception):
        from controller.caddy import reachable
        from controller.sites import caddy_config

        result["caddy"] = reachable(caddy_config(ctx.settings, write=False), timeout=1.0)
    return result
