"""One gathering pass over every instance: the facts both the metrics and `check` are made of.

Sources, asked side by side, each with its own timeout, under one overall deadline:
- Docker, on every host (this machine's engine and each `host add`ed one, side by side, see
  controller/status.py ``each_host``): ONE container listing per engine (status, health), the
  restart count of each container (cached by a long-running exporter), CPU seconds and memory
  from the containers' cgroup files on this machine (the engine's stats on another host, or for
  a container whose cgroup cannot be read);
- Caddy: ONE read of the admin API's ``/config/apps`` (which instances have their route);
- the API probe: one request per instance through Caddy's public listener to its gateway;
- files: disk use (the cache `list` keeps, controller/diskcache.py), API key expiry from .env,
  the last backup (controller/metrics/backups.py).

A source that fails or does not answer in time marks only its own figures: ``docker_error``
(this machine's engine), ``host_errors`` (any host's, whose instances' status is then UNKNOWN),
``caddy_error``, a failed probe, a missing disk figure. ``gather`` itself never raises.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import threading
import time
from collections.abc import Mapping
from pathlib import Path

import attrs

from controller.config import Settings
from controller.metrics.backups import BackupFacts, LastBackups
from controller.state import LOCAL_HOST, READY, InstanceRecord, State, StateStore
from controller.status import job_done
from controller.views import MISSING, STOPPED

DOCKER_TIMEOUT = 4.0
CADDY_TIMEOUT = 3.0
PROBE_TIMEOUT = 3.0
# The whole gathering, within Prometheus' default scrape timeout (10 s).
DEADLINE = 8.0
# Answered by every gateway the templates ship (Kong, Envoy) once the anon key is given, and by
# GoTrue behind it: 2xx means the public API works end to end.
PROBE_PATH = "/auth/v1/health"
PROBE_KEY = "ANON_KEY"
MAX_PARALLEL_PROBES = 32
# A long-running exporter asks the engine for a running container's restart count this often.
RESTARTS_MAX_AGE = 60.0
# The disk-use cache `list` keeps under ROOT (shared, so both show the same figures).
DISK_CACHE = "cache/disk-usage.json"
UNKNOWN = "unknown"  # an instance's status while Docker cannot be asked


@attrs.frozen
class ContainerFacts:
    service: str
    name: str
    state: str  # running, exited, created, restarting, paused, dead
    health: str | None  # healthy, unhealthy, starting, or None without a healthcheck
    healthy: bool  # running and passing its healthcheck (if any), or a one-shot job done
    restarts: int | None = None
    cpu_seconds: float | None = None
    memory_bytes: int | None = None


@attrs.frozen
class ProbeResult:
    success: bool
    seconds: float
    detail: str  # "HTTP 200", "HTTP 502", "timed out", ...


@attrs.frozen
class InstanceFacts:
    name: str
    template: str
    api_host: str
    studio_host: str
    status: str  # a status word of controller.views, or UNKNOWN
    ready: bool  # create finished
    should_run: bool  # ready and marked to start
    containers: tuple[ContainerFacts, ...] = ()
    disk_bytes: int | None = None
    probe: ProbeResult | None = None
    route_present: bool | None = None  # None: Caddy could not be asked
    key_expiry: Mapping[str, float] = attrs.field(factory=dict)  # .env key -> Unix time
    backup: BackupFacts | None = None
    file_error: str | None = None  # the instance's .env could not be read
    host: str = LOCAL_HOST  # where it runs (controller/hosts.py)


@attrs.frozen
class Snapshot:
    instances: tuple[InstanceFacts, ...]
    seconds: float
    docker_error: str | None = None  # this machine's engine (host "local") did not answer
    hosts: tuple[str, ...] = (LOCAL_HOST,)  # the hosts whose engine was asked
    host_errors: Mapping[str, str] = attrs.field(factory=dict)  # host -> why it did not answer
    caddy_error: str | None = None
    state_error: str | None = None
    backup_error: str | None = None  # the backup repository could not be read
    backups_read: bool = False  # the backup repository was read (or none is set up)


class Caches:
    """What a long-running exporter keeps from one scrape to the next."""

    def __init__(self) -> None:
        self.backups = LastBackups()
        self.restarts: dict[str, tuple[float, str, int]] = {}  # id -> (asked at, state, count)
        self.lock = threading.Lock()

    def close(self) -> None:
        self.backups.close()


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:300] if text else type(exc).__name__


# --- Docker -----------------------------------------------------------------------------------
@attrs.frozen
class _DockerFacts:
    found: Mapping[str, object]  # instance -> controller.status.InstanceStatus
    jobs: Mapping[str, set[str]]  # instance -> its one-shot services, where they were read
    resources: Mapping[str, tuple[float | None, int | None]]  # id -> (cpu seconds, memory)
    restarts: Mapping[str, int]


def _docker_hosts(
    settings: Settings,
    state: State,
    records: Mapping[str, InstanceRecord],
    caches: Caches | None,
    restarts: bool,
    timeout: float,
) -> tuple[dict[str, _DockerFacts], dict[str, str]]:
    """Every host's engine side by side (this machine's and each known host's, whether it holds
    instances or not: host_up says whether it answers): (host -> facts, host -> error)."""
    from controller.status import by_host, connector, each_engine

    connect = connector(settings, state, timeout=DOCKER_TIMEOUT)
    groups = by_host(records)
    hosts = [LOCAL_HOST, *sorted(state.hosts), *groups]

    def work(host: str, api, keep) -> _DockerFacts:
        return _docker(settings, api, groups.get(host, {}), caches, restarts, keep)

    # A host that answered the listing but not the per-container figures in time keeps its
    # statuses and health; CPU, memory and restarts are left out.
    return each_engine(hosts, connect, work, timeout)


def _docker(
    settings: Settings,
    api,
    records: Mapping[str, InstanceRecord],
    caches: Caches | None,
    restarts: bool = True,
    listed=None,
) -> _DockerFacts:
    """One engine's facts; ``listed`` is handed them without figures once the listing is in."""
    from controller.status import gather as engine_status

    by_template: dict[tuple, set[str]] = {}
    jobs: dict[str, set[str]] = {}

    def one_shot(record: InstanceRecord) -> set[str]:
        key = (record.template, tuple(record.overlays))
        if key not in by_template:
            by_template[key] = _jobs(settings, record)
        jobs[record.name] = by_template[key]
        return by_template[key]

    found = engine_status(records, api, one_shot)  # the one listing `list` makes too
    if listed is not None:
        listed(_DockerFacts(found, dict(jobs), {}, {}))
    containers = [c for status in found.values() for c in status.containers]
    running = [c.id for c in containers if c.state == "running"]
    if not restarts:
        return _DockerFacts(found, jobs, _resources(api, running), {})
    if api.engine.sessions_limited:
        # Each call is an ssh session there (sshd allows 10 at once): one pool after the other.
        counts = _restart_counts(api, containers, caches)
        return _DockerFacts(found, jobs, _resources(api, running), counts)
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        counts = pool.submit(_restart_counts, api, containers, caches)
        resources = _resources(api, running)
        return _DockerFacts(found, jobs, resources, counts.result())


def _resources(api, ids: list[str]) -> dict[str, tuple[float | None, int | None]]:
    """CPU seconds and memory per running container, read once from its cgroup (no sampling
    window: Prometheus takes the rate of the counter)."""
    from controller import cgroups

    out: dict[str, tuple[float | None, int | None]] = {}
    missing = []
    if api.engine.address.scheme == "ssh":
        # Another host's: its cgroup files, read there once in one ssh session.
        out.update(cgroups.counters_remote(api.engine.address, ids))
        ids = [cid for cid in ids if cid not in out]
    # Cgroup files are this machine's: only the local engine's containers are found there.
    reader = cgroups.Cgroups() if api.engine.address.local else None
    for cid in ids:
        files = reader.locate(cid) if reader is not None and reader.available() else None
        if files is None:
            missing.append(cid)
            continue
        cpu_ns, memory = cgroups.read_cpu_ns(files), cgroups.read_memory(files)
        out[cid] = (None if cpu_ns is None else cpu_ns / 1e9, memory)
    if missing:
        # Another host's engine or an unusual cgroup layout: one stats call each.
        out.update(api.counters(missing))
    return out


def _restart_counts(api, containers: list, caches: Caches | None) -> dict[str, int]:
    """Docker's restart count per container. The listing does not carry it: each container is
    inspected, and a long-running exporter asks again only when the container's state changed
    or its count is older than RESTARTS_MAX_AGE."""
    now = time.monotonic()
    known: dict[str, tuple[float, str, int]] = {}
    if caches is not None:
        with caches.lock:  # scrapes may gather side by side
            known = dict(caches.restarts)
    wanted = [
        c
        for c in containers
        if c.id not in known
        or known[c.id][1] != c.state
        or (c.state != "exited" and now - known[c.id][0] > RESTARTS_MAX_AGE)
    ]
    counts: dict[str, int] = {}
    if wanted:
        # As many at once as the engine's stats calls (fewer over ssh sessions).
        with concurrent.futures.ThreadPoolExecutor(api._parallel(len(wanted))) as pool:
            counts_asked = pool.map(lambda c: _restart_count(api, c.id), wanted)
            asked = dict(zip(wanted, counts_asked, strict=True))
        for container, count in asked.items():
            if count is not None:
                counts[container.id] = count
                if caches is not None:
                    with caches.lock:
                        caches.restarts[container.id] = (now, container.state, count)
    out = {}
    for c in containers:
        if c.id in counts:
            out[c.id] = counts[c.id]
        elif c.id in known:
            out[c.id] = known[c.id][2]
    if caches is not None:
        with caches.lock:
            live = {c.id for c in containers}
            for cid in [cid for cid in caches.restarts if cid not in live]:
                del caches.restarts[cid]
    return out


def _restart_count(api, container_id: str) -> int | None:
    from controller.errors import OperationError

    try:
        return api.engine.container_restarts(container_id)
    except OperationError:
        return None  # gone between listing and inspecting, or the engine stopped answering


# --- Caddy ------------------------------------------------------------------------------------
def _routes(settings: Settings) -> set[str]:
    """Names of the instances that have their route in Caddy's live config."""
    from controller.caddy import routed_instances
    from controller.sites import caddy_config

    return routed_instances(caddy_config(settings, write=False), timeout=CADDY_TIMEOUT)


def _listener(settings: Settings) -> str:
    """Where Caddy's public listener is reached from this host."""
    from controller.sites import caddy_config

    host = caddy_config(settings, write=False).bind or "127.0.0.1"
    if host in ("0.0.0.0", "::", "[::]"):
        host = "127.0.0.1"
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    return f"{settings.scheme}://{host}:{settings.public_port}"


def _probes(settings: Settings, targets: Mapping[str, tuple[str, str | None]]) -> dict:
    """One request per instance (name -> (api host, anon key)) through Caddy, side by side."""
    import httpx

    if not targets:
        return {}
    https = settings.scheme == "https"
    base = _listener(settings)
    timeout = httpx.Timeout(PROBE_TIMEOUT)
    limits = httpx.Limits(max_connections=MAX_PARALLEL_PROBES)
    with (
        httpx.Client(verify=https, timeout=timeout, limits=limits) as client,
        concurrent.futures.ThreadPoolExecutor(min(MAX_PARALLEL_PROBES, len(targets))) as pool,
    ):

        def probe(item: tuple[str, tuple[str, str | None]]) -> tuple[str, ProbeResult]:
            name, (host, key) = item
            headers = {"Host": host, **({"apikey": key} if key else {})}
            # Caddy picks the site by SNI: the certificate is checked against the public name.
            extensions = {"sni_hostname": host} if https else {}
            started = time.perf_counter()
            try:
                response = client.get(base + PROBE_PATH, headers=headers, extensions=extensions)
            except httpx.TimeoutException:
                return name, ProbeResult(False, time.perf_counter() - started, "timed out")
            except httpx.HTTPError as exc:
                detail = f"{type(exc).__name__}: {_one_line(exc)}"
                return name, ProbeResult(False, time.perf_counter() - started, detail)
            seconds = time.perf_counter() - started
            status = response.status_code
            if 200 <= status < 300 and not response.content:
                # Caddy answers a host that no route matches with an empty 200.
                return name, ProbeResult(False, seconds, f"HTTP {status} with no body: no route")
            return name, ProbeResult(200 <= status < 300, seconds, f"HTTP {status}")

        return dict(pool.map(probe, targets.items()))


def _disk(settings: Settings, folders: Mapping[str, Path]) -> dict[str, int]:
    from controller.diskcache import DiskCache

    return DiskCache(settings.root / DISK_CACHE).sizes(folders)


# --- files ------------------------------------------------------------------------------------
def _key_expiry(env: Mapping[str, str]) -> dict[str, float]:
    """Expiry (``exp``) of every JWT-shaped value of the .env: the anon and service keys."""
    import jwt

    out = {}
    for key, value in env.items():
        if not value.startswith("eyJ") or value.count(".") != 2:
            continue
        with contextlib.suppress(jwt.PyJWTError, ValueError):
            claims = jwt.decode(value, options={"verify_signature": False})
            if isinstance(claims.get("exp"), int | float):
                out[key] = float(claims["exp"])
    return out


def _read_env(settings: Settings, name: str) -> dict[str, str]:
    from controller.envfile import EnvFile

    path = settings.instance_dir(name) / ".env"
    return EnvFile.parse(path.read_text()).as_dict()


def _jobs(settings: Settings, record: InstanceRecord) -> set[str]:
    """One-shot services of the instance's template (they may exit 0 and be done)."""
    from controller.templatefiles import TemplateFiles

    try:
        return set(
            TemplateFiles(settings.template_dir(record.template)).one_shot_services(record.overlays)
        )
    except Exception:
        return set()


# --- the pass ---------------------------------------------------------------------------------
def gather(
    settings: Settings,
    caches: Caches | None = None,
    deadline: float = DEADLINE,
    restarts: bool = True,
) -> Snapshot:
    """Every instance's facts; never raises (a failing source shows in the snapshot).
    ``restarts=False`` spares the one engine request per container that restart counts cost."""
    started = time.monotonic()
    try:
        state = StateStore(settings.state_path, settings.lock_path).read()
    except Exception as exc:
        # No state, no hosts: no engine was asked.
        return Snapshot((), time.monotonic() - started, hosts=(), state_error=_one_line(exc))
    records = dict(sorted(state.instances.items()))
    engines_deadline = max(0.5, deadline - 0.5 - (time.monotonic() - started))

    envs: dict[str, dict[str, str]] = {}
    file_errors: dict[str, str] = {}
    for name, record in records.items():
        if record.phase != READY:
            continue
        try:
            envs[name] = _read_env(settings, name)
        except Exception as exc:
            file_errors[name] = f".env cannot be read: {_one_line(exc)}"
    targets = {
        name: (settings.hosts(name)["api"], envs.get(name, {}).get(PROBE_KEY) or None)
        for name, record in records.items()
        if record.phase == READY
    }
    # Disk use of local instances only: a remote instance's data is on its host.
    folders = {
        name: settings.instance_dir(name) for name, r in records.items() if r.host == LOCAL_HOST
    }
    own_caches = caches is None
    caches = caches or Caches()

    pool = concurrent.futures.ThreadPoolExecutor(5, thread_name_prefix="gather")
    tasks: dict[str, concurrent.futures.Future] = {
        "docker": pool.submit(
            _docker_hosts,
            settings,
            state,
            records,
            None if own_caches else caches,
            restarts,
            engines_deadline,
        ),
        "caddy": pool.submit(_routes, settings),
        "probes": pool.submit(_probes, settings, targets),
        "disk": pool.submit(_disk, settings, folders),
        "backups": pool.submit(caches.backups.get, settings, deadline - 0.5),
    }
    remaining = max(0.1, deadline - (time.monotonic() - started))
    concurrent.futures.wait(tasks.values(), timeout=remaining)
    pool.shutdown(wait=False, cancel_futures=True)
    if own_caches:
        caches.close()

    results: dict[str, object] = {}
    errors: dict[str, str] = {}
    for source, future in tasks.items():
        if not future.done():
            errors[source] = f"no answer within {deadline:.0f} s"
        elif future.exception() is not None:
            errors[source] = _one_line(future.exception())
        else:
            results[source] = future.result()

    asked = tuple(
        dict.fromkeys([LOCAL_HOST, *sorted(state.hosts), *(r.host for r in records.values())])
    )
    engines: dict[str, _DockerFacts] = {}
    host_errors: dict[str, str] = {}
    if "docker" in errors:
        host_errors = dict.fromkeys(asked, errors["docker"])
    elif "docker" in results:
        engines, host_errors = results["docker"]  # type: ignore[misc]
    routes: set[str] | None = results.get("caddy")  # type: ignore[assignment]
    probes: dict = results.get("probes") or {}  # type: ignore[assignment]
    if "probes" in errors:
        probes = {n: ProbeResult(False, PROBE_TIMEOUT, errors["probes"]) for n in targets}
    disk: dict = results.get("disk") or {}  # type: ignore[assignment]
    backups = results.get("backups")
    backup_error = errors.get("backups") or (backups.error if backups is not None else None)

    instances = []
    for name, record in records.items():
        hosts = settings.hosts(name)
        containers: tuple[ContainerFacts, ...] = ()
        status = UNKNOWN
        docker = engines.get(record.host)
        if docker is not None:
            found = docker.found[name]
            status = found.status
            if status == MISSING and not record.started:
                status = STOPPED  # as `list` says: created with --no-start, it never ran yet
            jobs = docker.jobs.get(name, set())
            containers = tuple(
                _container_facts(c, jobs, docker)
                for c in sorted(found.containers, key=lambda c: (c.service, c.name))
            )
        instances.append(
            InstanceFacts(
                name=name,
                template=record.template,
                api_host=hosts["api"],
                studio_host=hosts["studio"],
                status=status,
                ready=record.phase == READY,
                should_run=record.phase == READY and record.autostart,
                containers=containers,
                disk_bytes=disk.get(name),
                probe=probes.get(name),
                route_present=None if routes is None else name in routes,
                key_expiry=_key_expiry(envs[name]) if name in envs else {},
                backup=backups.last.get(name) if backups is not None else None,
                file_error=file_errors.get(name),
                host=record.host,
            )
        )
    return Snapshot(
        instances=tuple(instances),
        seconds=time.monotonic() - started,
        docker_error=host_errors.get(LOCAL_HOST),
        hosts=asked,
        host_errors=host_errors,
        caddy_error=errors.get("caddy"),
        backup_error=backup_error,
        backups_read=backups is not None,
    )


def _container_facts(container, jobs: set[str], docker: _DockerFacts) -> ContainerFacts:
    done = job_done(container, jobs)
    running_ok = container.state == "running" and container.health in (None, "healthy")
    cpu, memory = docker.resources.get(container.id, (None, None))
    return ContainerFacts(
        service=container.service,
        name=container.name,
        state=container.state,
        health=container.health,
        healthy=running_ok or done,
        restarts=docker.restarts.get(container.id),
        cpu_seconds=cpu,
        memory_bytes=memory,
    )


__all__ = [
    "BackupFacts",
    "Caches",
    "ContainerFacts",
    "InstanceFacts",
    "ProbeResult",
    "Snapshot",
    "gather",
]
