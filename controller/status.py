"""What an instance's containers say about it: its status word, its resource figures (all
instances in one pass), and how to reach its database."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import attrs

from controller.diskcache import DiskCache, folder_size
from controller.dockerapi import ContainerState, DockerAPI
from controller.state import CREATING, InstanceRecord
from controller.views import INCOMPLETE, MISSING, PARTIAL, RUNNING, STOPPED

__all__ = ["InstanceStatus", "folder_size", "gather", "instance_status", "job_done"]


@attrs.frozen
class InstanceStatus:
    """One instance as Docker (and its folder) shows it."""

    name: str
    status: str  # a status word of controller.views
    running: int
    total: int
    containers: tuple[ContainerState, ...] = ()
    cpu_percent: float | None = None  # summed over its containers; 100 = one CPU
    memory_bytes: int | None = None
    disk_bytes: int | None = None


def job_done(container: ContainerState, jobs: set[str]) -> bool:
    """A one-shot job that exited 0 has done its work; any other exited container is down."""
    return container.service in jobs and container.state == "exited" and container.exit_code == 0


def instance_status(
    record: InstanceRecord, containers: Sequence[ContainerState], jobs: set[str] = frozenset()
) -> tuple[str, int, int]:
    """(status word, containers running, containers that exist)."""
    running = sum(1 for c in containers if c.state == "running")
    done = sum(1 for c in containers if job_done(c, jobs))
    if record.phase == CREATING:
        return INCOMPLETE, running, len(containers)
    if not containers:
        return MISSING, 0, 0
    if running == 0:
        return STOPPED, 0, len(containers)
    if running + done == len(containers):
        return RUNNING, running, len(containers)
    return PARTIAL, running, len(containers)


def gather(
    records: Mapping[str, InstanceRecord],
    api: DockerAPI,
    one_shot: Callable[[InstanceRecord], set[str]],
    resources: bool = False,
    folders: Mapping[str, Path] | None = None,
    disk: DiskCache | None = None,
) -> dict[str, InstanceStatus]:
    """Status of every instance in ``records`` in one pass: one container listing for all of
    them; with ``resources``, one cgroup sampling window for all their running containers, and
    the disk use of ``folders`` (name -> instance folder) from ``disk`` (walked when None).

    ``one_shot(record)`` names the record's one-shot services (jobs that may exit 0); it is asked
    once per template and overlays, and only when a container exited 0, as it reads the template.
    """
    grouped = api.by_instance()
    usage = {}
    if resources:
        running = [c.id for name in records for c in grouped.get(name, ()) if c.state == "running"]
        usage = api.usage(running)
    sizes: Mapping[str, int] = {}
    if resources and folders:
        sizes = disk.sizes(folders) if disk else {n: folder_size(p) for n, p in folders.items()}
    jobs: dict[tuple, set[str]] = {}
    out = {}
    for name, record in records.items():
        containers = grouped.get(name, [])
        key = (record.template, tuple(record.overlays))
        if key not in jobs and any(c.state == "exited" and c.exit_code == 0 for c in containers):
            jobs[key] = one_shot(record)
        status, running_count, total = instance_status(record, containers, jobs.get(key, set()))
        cpu = memory = None
        samples = [usage[c.id] for c in containers if c.id in usage]
        if samples:
            cpu = round(sum(s.cpu_percent for s in samples), 2)
            memory = sum(s.memory_bytes for s in samples)
        out[name] = InstanceStatus(
            name,
            status,
            running_count,
            total,
            tuple(containers),
            cpu,
            memory,
            sizes.get(name),
        )
    return out


def connection_strings(
    record: InstanceRecord,
    db: str | None,
    pooler: str | None,
    env: Mapping[str, str],
    password: str,
) -> dict[str, str]:
    """Database URLs: direct (on the host when db publishes a port, else inside the instance
    network) and through the pooler (session and transaction mode) on the host."""
    db_name = env.get("POSTGRES_DB") or "postgres"
    db_port = env.get("POSTGRES_PORT") or "5432"
    connections = {}
    db_keys = sorted(k for k in record.ports if db and k.startswith(f"{db}:"))
    if db_keys:
        port = record.ports[db_keys[0]]
        connections["direct"] = f"postgres://postgres:{password}@127.0.0.1:{port}/{db_name}"
    elif db:
        connections["direct"] = (
            f"postgres://postgres:{password}@{db}:{db_port}/{db_name} (inside the instance network)"
        )
    tenant = env.get("POOLER_TENANT_ID") or record.name
    for key, port in sorted(record.ports.items()):
        if not pooler or not key.startswith(f"{pooler}:"):
            continue
        mode = "pooler (transaction)" if key.endswith(":6543") else "pooler (session)"
        connections[mode] = f"postgres://postgres.{tenant}:{password}@127.0.0.1:{port}/{db_name}"
    return connections
