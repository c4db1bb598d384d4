"""What an instance's containers say about it: its status word, its resource figures (all
instances in one pass, every host's engine asked side by side), and how to reach its database.

Instances live on hosts (controller/hosts.py). ``gather_hosts`` asks each host's engine for its
own instances in a thread of its own, under one deadline: a host that does not answer in time, or
answers with an error, marks only its instances UNREACHABLE and is named with its one-line reason;
the other hosts' figures come back as usual. Local-only (the common case) runs in the caller's
thread, as before hosts existed.
"""

from __future__ import annotations

import functools
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

import attrs

from controller.diskcache import DiskCache, folder_size
from controller.dockerapi import ContainerState, DockerAPI, Usage
from controller.state import CREATING, LOCAL_HOST, InstanceRecord
from controller.views import INCOMPLETE, MISSING, PARTIAL, RUNNING, STOPPED

if TYPE_CHECKING:
    from controller.config import Settings
    from controller.state import State

__all__ = [
    "HOST_TIMEOUT",
    "UNREACHABLE",
    "InstanceStatus",
    "by_host",
    "connector",
    "each_host",
    "folder_size",
    "gather",
    "gather_hosts",
    "host_line",
    "instance_status",
    "job_done",
]

UNREACHABLE = "unreachable"  # the engine of the instance's host did not answer
# How long one host's engine may take to answer everything a gathering asks it (listing, and
# with resources one short sampling window; the engine's stats, two ticks of about a second
# each, only for containers whose cgroup files were not found).
HOST_TIMEOUT = 6.0

T = TypeVar("T")
# host name -> a client of that host's engine (the caller closes it)
Connect = Callable[[str], DockerAPI]


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
    listed: Callable[[dict[str, InstanceStatus]], None] | None = None,
) -> dict[str, InstanceStatus]:
    """Status of every instance in ``records`` in one pass: one container listing for all of
    them; with ``resources``, one cgroup sampling window for all their running containers, and
    the disk use of ``folders`` (name -> instance folder) from ``disk`` (walked when None).

    ``one_shot(record)`` names the record's one-shot services (jobs that may exit 0); it is asked
    once per template and overlays, and only when a container exited 0, as it reads the template.
    ``listed``, with ``resources``, is handed the statuses without figures as soon as the listing
    is in (what a caller whose deadline comes before the figures still has).
    """
    grouped = api.by_instance()
    jobs: dict[tuple, set[str]] = {}
    if resources and listed is not None:
        listed(_statuses(records, grouped, one_shot, jobs, {}, {}))
    usage = {}
    if resources:
        running = [c.id for name in records for c in grouped.get(name, ()) if c.state == "running"]
        usage = api.usage(running)
    sizes: Mapping[str, int] = {}
    if resources and folders:
        sizes = disk.sizes(folders) if disk else {n: folder_size(p) for n, p in folders.items()}
    return _statuses(records, grouped, one_shot, jobs, usage, sizes)


def _statuses(
    records: Mapping[str, InstanceRecord],
    grouped: Mapping[str, list[ContainerState]],
    one_shot: Callable[[InstanceRecord], set[str]],
    jobs: dict[tuple, set[str]],
    usage: Mapping[str, Usage],
    sizes: Mapping[str, int],
) -> dict[str, InstanceStatus]:
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


def by_host(records: Mapping[str, InstanceRecord]) -> dict[str, dict[str, InstanceRecord]]:
    """The records grouped by the host they run on, local first."""
    groups: dict[str, dict[str, InstanceRecord]] = defaultdict(dict)
    for name, record in records.items():
        groups[record.host][name] = record
    return dict(sorted(groups.items(), key=lambda kv: (kv[0] != LOCAL_HOST, kv[0])))


def host_line(host: str, why: str) -> str:
    """One line naming a host that did not answer (its reason may already name it)."""
    return why if why.startswith(f"host {host}") else f"host {host}: {why}"


def one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:300] if text else type(exc).__name__


def each_host(
    hosts: Iterable[str], work: Callable[[str], T], timeout: float = HOST_TIMEOUT
) -> tuple[dict[str, T], dict[str, str]]:
    """``work(host)`` for every host, side by side: (host -> result, host -> one-line error).

    Each host runs in a daemon thread and all are waited for at most ``timeout`` seconds: a host
    still working then is reported as not answering and left behind (a daemon thread never
    holds up the process's exit). Only the local host alone runs in the caller's thread: it
    needs no thread, and its engine's socket timeout bounds it.
    """
    hosts = list(dict.fromkeys(hosts))
    results: dict[str, T] = {}
    errors: dict[str, str] = {}
    if hosts == [LOCAL_HOST]:
        try:
            results[LOCAL_HOST] = work(LOCAL_HOST)
        except Exception as exc:
            errors[LOCAL_HOST] = one_line(exc)
        return results, errors

    answers: dict[str, tuple[bool, object]] = {}

    def run(host: str) -> None:
        try:
            answers[host] = (True, work(host))
        except Exception as exc:
            answers[host] = (False, one_line(exc))

    threads = [
        threading.Thread(target=run, args=(host,), name=f"host-{host}", daemon=True)
        for host in hosts
    ]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + timeout
    for thread in threads:
        thread.join(max(0.0, deadline - time.monotonic()))
    for host in hosts:
        answer = answers.get(host)  # read once: a late thread may still write
        if answer is None:
            errors[host] = f"no answer within {timeout:g} s"
        elif answer[0]:
            results[host] = answer[1]  # type: ignore[assignment]
        else:
            errors[host] = answer[1]  # type: ignore[assignment]
    return results, errors


def each_engine(
    hosts: Iterable[str],
    connect: Connect,
    work: Callable[[str, DockerAPI, Callable[[T], None]], T],
    timeout: float = HOST_TIMEOUT,
) -> tuple[dict[str, T], dict[str, str]]:
    """``each_host`` with each host's engine client, closed after its ``work``. ``work(host,
    api, keep)`` may ``keep`` a partial answer first: a host that gave one but not its whole
    answer in time (its listing, not the figures of many containers over ssh) counts with it."""
    partial: dict[str, T] = {}

    def run(host: str) -> T:
        api = connect(host)
        try:
            return work(host, api, functools.partial(partial.__setitem__, host))
        finally:
            api.close()

    found, errors = each_host(hosts, run, timeout)
    for host in [h for h in errors if h in partial]:
        found[host] = partial[host]
        del errors[host]
    return found, errors


def connector(settings: Settings, state: State, timeout: float = HOST_TIMEOUT) -> Connect:
    """Clients of each host's engine that see only this ROOT's objects; an unknown host or an
    engine that cannot be set up raises (its instances then show as unreachable)."""
    from controller.engine import Engine, EngineAddress
    from controller.ownership import existing_root_id

    # No id yet: nothing of ours can exist, and "-" matches no id ever made.
    root = existing_root_id(settings.root) or "-"

    def connect(host: str) -> DockerAPI:
        if host == LOCAL_HOST:
            # What Place.engine_address() says for local, without loading the ssh machinery
            # (a tenth of a local-only `list`).
            address = EngineAddress.from_env()
        else:
            from controller.hosts import place

            address = place(settings, state, host).engine_address()
        return DockerAPI(engine=Engine(address, timeout=timeout), root=root)

    return connect


def gather_hosts(
    records: Mapping[str, InstanceRecord],
    connect: Connect,
    one_shot: Callable[[InstanceRecord], set[str]],
    resources: bool = False,
    folders: Mapping[str, Path] | None = None,
    disk: DiskCache | None = None,
    timeout: float = HOST_TIMEOUT,
) -> tuple[dict[str, InstanceStatus], dict[str, str]]:
    """``gather`` on every host that holds some of ``records``, side by side (``each_host``):
    (instance -> status, host -> why it did not answer). An instance on a host that did not
    answer is UNREACHABLE (INCOMPLETE when its create did not finish: state says so), with no
    figures; a host that listed its containers in time but not its figures (the stats of many
    containers) keeps its statuses, without figures. ``folders`` (disk use) is measured in the
    local host's pass, for its instances only: a remote instance's data is on its host."""
    groups = by_host(records)
    local_folders = {
        name: path
        for name, path in (folders or {}).items()
        if name in records and records[name].host == LOCAL_HOST
    }

    def work(host: str, api: DockerAPI, keep) -> dict[str, InstanceStatus]:
        # Disk use only in the local host's pass (one DiskCache user at a time).
        mine = local_folders if host == LOCAL_HOST else None
        return gather(groups[host], api, one_shot, resources, mine, disk, keep)

    # A host that listed its containers but not their figures in time keeps its statuses.
    found, errors = each_engine(groups, connect, work, timeout)
    out: dict[str, InstanceStatus] = {}
    for name, record in records.items():
        if record.host in found:
            out[name] = found[record.host][name]
            continue
        status = INCOMPLETE if record.phase == CREATING else UNREACHABLE
        size = None
        if resources and name in local_folders and disk is not None:
            size = disk.sizes({name: local_folders[name]}).get(name)
        out[name] = InstanceStatus(name, status, 0, 0, disk_bytes=size)
    return out, errors


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
