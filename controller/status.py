"""What an instance's containers say about it: its status word, and how to reach its database."""

import contextlib
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

from controller.dockerapi import ContainerState
from controller.state import CREATING, InstanceRecord
from controller.views import INCOMPLETE, MISSING, PARTIAL, RUNNING, STOPPED


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


def folder_size(path: Path) -> int:
    """Bytes on disk below ``path`` (the instance's files, database and storage)."""
    total = 0
    for folder, _dirs, files in os.walk(path):
        for name in files:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(folder, name)).st_blocks * 512
    return total


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
