"""The Docker Engine API, through the docker SDK: fast status of every instance and their stats.

Status comes from one container listing for all instances (compose would cost one process per
instance). CPU figures need two samples. The engine answers a one-shot stats call at its stats
collector's next tick (about a second), whatever the number of callers waiting: so every container
is sampled at once, twice, and the whole gathering costs about two ticks, not two per container.
"""

import concurrent.futures
import contextlib
import re
from collections import defaultdict
from collections.abc import Iterable

import attrs

from controller.errors import DockerUnavailable

INSTANCE_LABEL = "io.supabase-manager.instance"
SERVICE_LABEL = "com.docker.compose.service"
_HEALTH = re.compile(r"\((healthy|unhealthy|health: starting)\)")
# Concurrent stats calls (and connections in the client's pool) at the most.
MAX_PARALLEL = 64


@attrs.frozen
class ContainerState:
    id: str
    name: str
    instance: str
    service: str
    state: str  # running, exited, created, restarting, paused, dead
    health: str | None  # healthy, unhealthy, starting, or None
    exit_code: int | None = None


@attrs.frozen
class Usage:
    cpu_percent: float
    memory_bytes: int


def _client(timeout: float = 10):
    import docker
    from docker.errors import DockerException

    try:
        return docker.from_env(timeout=timeout, max_pool_size=MAX_PARALLEL)
    except DockerException as exc:
        raise DockerUnavailable(f"cannot reach the Docker daemon: {_reason(exc)}") from None


def _reason(exc: Exception) -> str:
    text = str(exc)
    if "No such file" in text or "FileNotFoundError" in text or "Connection refused" in text:
        return "is dockerd running?"
    return text.splitlines()[0][:200] if text else type(exc).__name__


class DockerAPI:
    """A thin adapter over the docker SDK's low-level client."""

    def __init__(self, timeout: float = 10) -> None:
        self._docker = _client(timeout)
        self._api = self._docker.api

    def ping(self) -> None:
        from docker.errors import DockerException
        from requests.exceptions import RequestException

        try:
            self._api.ping()
        except (DockerException, RequestException) as exc:
            raise DockerUnavailable(f"cannot reach the Docker daemon: {_reason(exc)}") from None

    def containers(self, instance: str | None = None) -> list[ContainerState]:
        """Every container of every instance (or of one), from a single listing."""
        label = INSTANCE_LABEL if instance is None else f"{INSTANCE_LABEL}={instance}"
        return [_container_state(row) for row in self._list({"label": label})]

    def by_instance(self) -> dict[str, list[ContainerState]]:
        grouped: dict[str, list[ContainerState]] = defaultdict(list)
        for container in self.containers():
            grouped[container.instance].append(container)
        return grouped

    def usage(self, container_ids: Iterable[str], direct: bool = True) -> dict[str, Usage]:
        """CPU percent and memory per running container.

        With a local daemon the figures come from the containers' cgroup files (a fraction of a
        second for all of them, see controller/cgroups.py); a container whose cgroup cannot be
        found or read, a remote daemon, or ``direct=False`` falls back to the engine's stats.
        """
        from controller import cgroups

        ids = list(dict.fromkeys(container_ids))
        if not ids:
            return {}
        reader = cgroups.Cgroups()
        if not (direct and self._daemon_is_local() and reader.available()):
            return self._sampled_usage(ids)
        located = {cid: files for cid in ids if (files := reader.locate(cid))}
        unknown = [cid for cid in ids if cid not in located]
        if unknown:  # an unusual cgroup layout: ask where the main process lives
            with concurrent.futures.ThreadPoolExecutor(min(MAX_PARALLEL, len(unknown))) as pool:
                pids = dict(zip(unknown, pool.map(self._pid, unknown), strict=True))
            for cid, pid in pids.items():
                if pid and (files := reader.locate(cid, pid)):
                    located[cid] = files
        with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
            missing = [cid for cid in ids if cid not in located]
            fallback = pool.submit(self._sampled_usage, missing) if missing else None
            readings = reader.sample(located)
            usage = {cid: Usage(r.cpu_percent, r.memory_bytes) for cid, r in readings.items()}
            unread = [cid for cid in located if cid not in readings]
            if unread:
                usage.update(self._sampled_usage(unread))
            if fallback is not None:
                usage.update(fallback.result())
        return {cid: usage[cid] for cid in ids if cid in usage}

    def _daemon_is_local(self) -> bool:
        """A daemon on this host's unix socket or loopback (not ssh://, not another host)."""
        from urllib.parse import urlsplit

        url = urlsplit(self._api.base_url)
        if url.scheme == "http+docker":
            return url.hostname == "localhost"  # unix socket; ssh:// shows as http+docker://ssh
        return url.hostname in ("localhost", "127.0.0.1", "::1")

    def _pid(self, container_id: str) -> int | None:
        from docker.errors import DockerException
        from requests.exceptions import RequestException

        try:
            return (self._api.inspect_container(container_id).get("State") or {}).get("Pid")
        except (DockerException, RequestException):
            return None

    def _sampled_usage(self, ids: list[str]) -> dict[str, Usage]:
        """Figures from the engine: two concurrent one-shot stats calls per container."""
        if not ids:
            return {}
        with concurrent.futures.ThreadPoolExecutor(max_workers=min(MAX_PARALLEL, len(ids))) as pool:
            first = dict(zip(ids, pool.map(self._sample, ids), strict=True))
            # No sleep: each call already waits for the collector's next tick.
            second = dict(zip(ids, pool.map(self._sample, ids), strict=True))
        usage = {}
        for cid in ids:
            if first[cid] is None or second[cid] is None:
                continue
            usage[cid] = Usage(_cpu_percent(first[cid], second[cid]), _memory(second[cid]))
        return usage

    def _sample(self, container_id: str) -> dict | None:
        from docker.errors import DockerException
        from requests.exceptions import RequestException

        try:
            return self._api.stats(container_id, stream=False, one_shot=True)
        except (DockerException, RequestException):
            return None  # the container went away between listing and sampling

    def foreign_containers(self, project: str) -> list[str]:
        """Containers of compose project ``project`` that are not an instance's: another stack
        on this host already uses the name."""
        rows = self._list({"label": f"com.docker.compose.project={project}"})
        return [
            (row.get("Names") or ["?"])[0].lstrip("/")
            for row in rows
            if INSTANCE_LABEL not in (row.get("Labels") or {})
        ]

    def _list(self, filters: dict) -> list[dict]:
        from docker.errors import DockerException
        from requests.exceptions import RequestException

        try:
            return self._api.containers(all=True, filters=filters)
        except (DockerException, RequestException) as exc:
            raise DockerUnavailable(f"cannot reach the Docker daemon: {_reason(exc)}") from None

    def remove_instance_leftovers(self, instance: str, volumes: bool) -> None:
        """Remove the instance's containers, its network and (optionally) its volumes.

        Compose's own `down` does this for the files it knows; this catches what a crashed create
        or a changed file left behind. Containers are chosen by the instance label; networks and
        volumes by project label and the project's name prefix, so another compose project is
        never touched.
        """
        from docker.errors import DockerException, NotFound
        from requests.exceptions import RequestException

        project_filter = {"label": f"com.docker.compose.project={instance}"}
        own_name = f"{instance}_"
        try:
            for row in self._list({"label": f"{INSTANCE_LABEL}={instance}"}):
                with contextlib.suppress(NotFound):
                    self._api.remove_container(row["Id"], force=True, v=volumes)
            for net in self._api.networks(filters=project_filter):
                if net["Name"].startswith(own_name):
                    with contextlib.suppress(NotFound):
                        self._api.remove_network(net["Id"])
            if volumes:
                listing = self._api.volumes(filters=project_filter) or {}
                for vol in listing.get("Volumes") or []:
                    if vol["Name"].startswith(own_name):
                        with contextlib.suppress(NotFound):
                            self._api.remove_volume(vol["Name"], force=True)
        except (DockerException, RequestException) as exc:
            message = f"cannot clean up {instance} in Docker: {_reason(exc)}"
            raise DockerUnavailable(message) from None


def _container_state(row: dict) -> ContainerState:
    labels = row.get("Labels") or {}
    names = row.get("Names") or [""]
    health_match = _HEALTH.search(row.get("Status") or "")
    health = None
    if health_match:
        health = health_match.group(1).replace("health: ", "")
    exit_code = None
    exited = re.search(r"Exited \((\d+)\)", row.get("Status") or "")
    if exited:
        exit_code = int(exited.group(1))
    return ContainerState(
        id=row["Id"],
        name=names[0].lstrip("/"),
        instance=labels.get(INSTANCE_LABEL, ""),
        service=labels.get(SERVICE_LABEL, ""),
        state=row.get("State") or "unknown",
        health=health,
        exit_code=exit_code,
    )


def _cpu_percent(first: dict, second: dict) -> float:
    try:
        cpu_delta = (
            second["cpu_stats"]["cpu_usage"]["total_usage"]
            - first["cpu_stats"]["cpu_usage"]["total_usage"]
        )
        system_delta = (
            second["cpu_stats"]["system_cpu_usage"] - first["cpu_stats"]["system_cpu_usage"]
        )
        cpus = second["cpu_stats"].get("online_cpus") or len(
            second["cpu_stats"]["cpu_usage"].get("percpu_usage") or [1]
        )
    except (KeyError, TypeError):
        return 0.0
    if system_delta <= 0 or cpu_delta < 0:
        return 0.0
    return round(cpu_delta / system_delta * cpus * 100.0, 2)


def _memory(sample: dict) -> int:
    mem = sample.get("memory_stats") or {}
    usage = mem.get("usage") or 0
    stats = mem.get("stats") or {}
    # Like `docker stats`: page cache that the kernel can drop does not count.
    cache = stats.get("inactive_file", stats.get("total_inactive_file", 0)) or 0
    return max(0, usage - cache)
