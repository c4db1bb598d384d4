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
        from docker.errors import DockerException
        from requests.exceptions import RequestException

        label = INSTANCE_LABEL if instance is None else f"{INSTANCE_LABEL}={instance}"
        try:
            rows = self._api.containers(all=True, filters={"label": label})
        except (DockerException, RequestException) as exc:
            raise DockerUnavailable(f"cannot reach the Docker daemon: {_reason(exc)}") from None
        return [_container_state(row) for row in rows]

    def by_instance(self) -> dict[str, list[ContainerState]]:
        grouped: dict[str, list[ContainerState]] = defaultdict(list)
        for container in self.containers():
            grouped[container.instance].append(container)
        return grouped

    def usage(self, container_ids: Iterable[str]) -> dict[str, Usage]:
        """CPU percent and memory per running container, from two concurrent one-shot samples."""
        ids = list(container_ids)
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

    def remove_instance_leftovers(self, instance: str, volumes: bool) -> None:
        """Remove containers, the network and (optionally) volumes labelled for ``instance``.

        Compose's own `down` does this for the files it knows; this catches what a crashed create
        or a changed file left behind.
        """
        from docker.errors import DockerException, NotFound

        project_filter = {"label": f"com.docker.compose.project={instance}"}
        try:
            for row in self._api.containers(all=True, filters=project_filter):
                with contextlib.suppress(NotFound):
                    self._api.remove_container(row["Id"], force=True, v=volumes)
            for net in self._api.networks(filters=project_filter):
                with contextlib.suppress(NotFound):
                    self._api.remove_network(net["Id"])
            if volumes:
                listing = self._api.volumes(filters=project_filter) or {}
                for vol in listing.get("Volumes") or []:
                    with contextlib.suppress(NotFound):
                        self._api.remove_volume(vol["Name"], force=True)
        except DockerException as exc:
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
