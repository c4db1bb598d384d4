"""Prometheus metric families from one gathering pass, made on each scrape.

Every name starts with ``supabase_manager_``; labels are ``instance`` (the instance's name) and,
per container, ``service``; ``host_up`` has ``host`` (where instances run, controller/hosts.py),
which ``instance_info`` carries too. Caddy's own per-host request metrics are not copied:
``instance_info`` carries the instance's host names to join them on (see README, "Metrics").
A figure that could not be read is left out rather than reported as 0, except where 0 is the
truth a monitor needs (``instance_up``, ``docker_up``, ``host_up``, ``caddy_up``, a failed probe).
An instance on a host whose engine did not answer has status ``unknown`` and no container
figures: that host's ``host_up`` is 0, and the scrape itself succeeds.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, InfoMetricFamily
from prometheus_client.registry import Collector

from controller.config import Settings
from controller.metrics.probes import UNKNOWN, Caches, Snapshot, gather
from controller.views import INCOMPLETE, MISSING, PARTIAL, RUNNING, STOPPED

PREFIX = "supabase_manager_"
STATUSES = (RUNNING, PARTIAL, STOPPED, MISSING, INCOMPLETE, UNKNOWN)
CONTAINER_STATES = ("running", "restarting", "paused", "created", "exited", "dead")


def _gauge(name: str, doc: str, labels: list[str]) -> GaugeMetricFamily:
    return GaugeMetricFamily(PREFIX + name, doc, labels=labels)


def families(snapshot: Snapshot) -> list:
    """The metric families of one snapshot."""
    info = InfoMetricFamily(
        PREFIX + "instance",
        "An instance and its public host names (join Caddy's per-host metrics on api_host).",
        labels=["instance", "template", "api_host", "studio_host", "host"],
    )
    one = ["instance"]
    per_service = ["instance", "service"]
    up = _gauge("instance_up", "1 when every service of the instance runs (status running).", one)
    status = _gauge(
        "instance_status",
        "1 for the instance's status word, as `list` shows it.",
        ["instance", "status"],
    )
    should_run = _gauge(
        "instance_should_run", "1 when the instance is marked to run (created and started).", one
    )
    counts = _gauge(
        "instance_containers", "Containers of the instance by state.", ["instance", "state"]
    )
    disk = _gauge("instance_disk_bytes", "Disk used by the instance's folder (cached).", one)
    probe_ok = _gauge(
        "instance_api_probe_success",
        "1 when a request through Caddy to the instance's API gateway succeeded.",
        one,
    )
    probe_time = _gauge(
        "instance_api_probe_duration_seconds", "Time the API probe through Caddy took.", one
    )
    route = _gauge(
        "caddy_route_present",
        "1 when Caddy's live config holds the instance's route (absent: Caddy not reachable).",
        one,
    )
    expiry = _gauge(
        "api_key_expiry_timestamp_seconds",
        "When a JWT API key in the instance's .env expires.",
        ["instance", "key"],
    )
    backup_time = _gauge(
        "backup_last_success_timestamp_seconds", "When the last successful backup was taken.", one
    )
    backup_size = _gauge("backup_last_size_bytes", "Size of the last successful backup.", one)
    healthy = _gauge(
        "container_healthy",
        "1 when the container runs and passes its healthcheck, or is a one-shot job that finished.",
        per_service,
    )
    restarts = CounterMetricFamily(
        PREFIX + "container_restarts", "Times Docker restarted the container.", labels=per_service
    )
    cpu = CounterMetricFamily(
        PREFIX + "container_cpu_seconds", "CPU time used by the container.", labels=per_service
    )
    memory = _gauge(
        "container_memory_bytes", "Memory used by the container, page cache excluded.", per_service
    )

    for inst in snapshot.instances:
        name = inst.name
        info.add_metric([name, inst.template, inst.api_host, inst.studio_host, inst.host], {})
        up.add_metric([name], 1.0 if inst.status == RUNNING else 0.0)
        for word in STATUSES:
            status.add_metric([name, word], 1.0 if inst.status == word else 0.0)
        should_run.add_metric([name], 1.0 if inst.should_run else 0.0)
        if inst.status != UNKNOWN:
            for state in CONTAINER_STATES:
                n = sum(1 for c in inst.containers if c.state == state)
                counts.add_metric([name, state], float(n))
        if inst.disk_bytes is not None:
            disk.add_metric([name], float(inst.disk_bytes))
        if inst.probe is not None:
            probe_ok.add_metric([name], 1.0 if inst.probe.success else 0.0)
            probe_time.add_metric([name], inst.probe.seconds)
        if inst.route_present is not None:
            route.add_metric([name], 1.0 if inst.route_present else 0.0)
        for key, at in sorted(inst.key_expiry.items()):
            expiry.add_metric([name, key], at)
        if inst.backup is not None:
            backup_time.add_metric([name], inst.backup.finished_at)
            if inst.backup.size_bytes is not None:
                backup_size.add_metric([name], float(inst.backup.size_bytes))
        seen: set[str] = set()
        for c in inst.containers:
            if c.service in seen:
                continue  # one series per service (compose runs one container for each)
            seen.add(c.service)
            labels = [name, c.service]
            healthy.add_metric(labels, 1.0 if c.healthy else 0.0)
            if c.restarts is not None:
                restarts.add_metric(labels, float(c.restarts))
            if c.cpu_seconds is not None:
                cpu.add_metric(labels, c.cpu_seconds)
            if c.memory_bytes is not None:
                memory.add_metric(labels, float(c.memory_bytes))

    docker_up = _gauge("docker_up", "1 when the Docker engine answered this scrape.", [])
    docker_up.add_metric([], 0.0 if snapshot.docker_error else 1.0)
    host_up = _gauge(
        "host_up",
        "1 when the host's Docker engine answered this scrape (local: this one).",
        ["host"],
    )
    for host in snapshot.hosts:
        host_up.add_metric([host], 0.0 if host in snapshot.host_errors else 1.0)
    caddy_up = _gauge("caddy_up", "1 when Caddy's admin API answered this scrape.", [])
    caddy_up.add_metric([], 0.0 if snapshot.caddy_error else 1.0)
    if snapshot.backups_read or snapshot.backup_error:
        repository = _gauge(
            "backup_repository_up",
            "1 when the backup repository could be read (or no backup is set up yet).",
            [],
        )
        repository.add_metric([], 0.0 if snapshot.backup_error else 1.0)
        extra = [repository]
    else:
        extra = []
    state_ok = _gauge("state_ok", "1 when state.json could be read.", [])
    state_ok.add_metric([], 0.0 if snapshot.state_error else 1.0)
    duration = _gauge("scrape_duration_seconds", "Time this scrape's gathering took.", [])
    duration.add_metric([], snapshot.seconds)
    return [
        info,
        up,
        status,
        should_run,
        counts,
        disk,
        probe_ok,
        probe_time,
        route,
        expiry,
        backup_time,
        backup_size,
        healthy,
        restarts,
        cpu,
        memory,
        docker_up,
        host_up,
        caddy_up,
        *extra,
        state_ok,
        duration,
    ]


class SnapshotCollector(Collector):
    """Gathers afresh on every scrape (scrapes that arrive together each gather: every source
    is read-only and the caches are shared safely)."""

    def __init__(self, settings: Settings, caches: Caches | None = None) -> None:
        self.settings = settings
        self.caches = caches

    def snapshot(self) -> Snapshot:
        return gather(self.settings, self.caches)

    def collect(self) -> Iterator:
        yield from families(self.snapshot())
