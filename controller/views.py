"""What the controller hands to a front-end: plain attrs records, ready for a table or for JSON.

Secret values appear here only when the caller asked for them (``show --show-secrets``,
``env get``); otherwise they are masked before they leave the controller.
"""

import attrs

# Instance status words, derived from the real containers.
RUNNING = "running"  # every service's container is running
PARTIAL = "partial"  # some running, some not
STOPPED = "stopped"  # containers exist, none running
MISSING = "missing"  # no container at all (never started, or removed behind our back)
INCOMPLETE = "incomplete"  # a create that has not finished (see State phase "creating")


@attrs.frozen
class InstanceSummary:
    name: str
    status: str
    template: str
    api_url: str
    created_at: str
    running: int = 0  # containers running
    total: int = 0  # containers that exist
    cpu_percent: float | None = None
    memory_bytes: int | None = None
    disk_bytes: int | None = None
    # A template imported after this instance's own: what `upgrade NAME --template` could take.
    newer_template: str | None = None
    host: str = "local"  # where it runs (`host list`); "local" is this machine's engine


@attrs.frozen
class ContainerView:
    service: str
    name: str
    state: str  # running, exited, created, restarting, ...
    health: str | None  # healthy, unhealthy, starting, or None without a healthcheck


@attrs.frozen
class InstanceDetail:
    name: str
    status: str
    template: str
    created_at: str
    overlays: list[str]
    urls: dict[str, str]  # api, studio, mail (when the mail overlay is on)
    ports: dict[str, int]  # "SERVICE:CONTAINER_PORT" -> host port on 127.0.0.1
    containers: list[ContainerView]
    connections: dict[str, str]  # direct, pooler (transaction), session
    keys: dict[str, str]  # ANON_KEY, SERVICE_ROLE_KEY, ...; masked unless asked for
    requests: dict[str, float] | None = None  # requests per host from Caddy's metrics, when on
    host: str = "local"  # where it runs (`host list`)
    bind: str = "127.0.0.1"  # the address its ports are published on


@attrs.frozen
class TemplateView:
    name: str
    source: str
    images: dict[str, str]  # main services' image tags, e.g. {"studio": "supabase/studio:2026..."}
    instances: list[str]


@attrs.frozen
class EnvChange:
    """What an env change did: which keys changed and which services must restart for it."""

    changed: list[str]
    services: list[str]
    warnings: list[str] = attrs.field(factory=list)


def mask(value: str) -> str:
    """Show that a secret is set without showing it."""
    if not value:
        return ""
    return f"******** ({len(value)} chars)"
