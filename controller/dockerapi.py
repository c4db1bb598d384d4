"""Instances as the Docker engine sees them: the status of every one, and their containers' usage.

Status comes from one container listing for all instances (compose would cost one process per
instance), made through the small Engine API client in controller/engine.py. CPU and memory come
from the containers' cgroup files when the engine is on this host (controller/cgroups.py) or on
a host reached over ssh (read there by one script), else from the engine's stats: it answers a
one-shot stats call at its stats collector's next tick (about a second), whatever the number of
callers waiting, so every container is sampled at once, twice, and the whole gathering costs
about two ticks, not two per container.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Iterable

import attrs

from controller.engine import Container, Engine, EngineAddress, EngineError, StatsSample
from controller.errors import DockerUnavailable
from controller.labels import INSTANCE_LABEL, ROOT_LABEL

SERVICE_LABEL = "com.docker.compose.service"
PROJECT_LABEL = "com.docker.compose.project"
_HEALTH = re.compile(r"\((healthy|unhealthy|health: starting)\)")
_EXITED = re.compile(r"Exited \((\d+)\)")
# Concurrent stats calls at the most (each thread keeps its own connection to the engine).
MAX_PARALLEL = 64
# Over ssh through dial-stdio each connection is a session of the shared master connection: stay
# under sshd's MaxSessions (10 by default). A forwarded socket's connections are not sessions.
MAX_PARALLEL_SSH = 8


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


@attrs.frozen
class EngineInfo:
    """The engine and the machine it runs on, as its /info says."""

    version: str  # the engine's (dockerd's) version
    cpus: int
    memory_bytes: int
    os: str = ""


class DockerAPI:
    """Instance-level questions to one Docker engine (default: DOCKER_HOST, else the local
    socket). With ``root`` (this ROOT's id, controller/ownership.py) only objects labelled with
    it are listed or removed: another ROOT's, or a hand-run stack's, are never touched."""

    def __init__(
        self, timeout: float = 10, engine: Engine | None = None, root: str | None = None
    ) -> None:
        if engine is None:
            engine = Engine(EngineAddress.from_env(), timeout=timeout)
        self.engine = engine
        self.root = root

    def _owned(self) -> list[str]:
        return [f"{ROOT_LABEL}={self.root}"] if self.root is not None else []

    def close(self) -> None:
        self.engine.close()

    def ping(self) -> None:
        try:
            self.engine.ping()
        except EngineError as exc:
            raise DockerUnavailable(f"the Docker daemon does not answer: {exc}") from None

    def info(self) -> EngineInfo:
        """What `host list` shows of an engine's machine (one /info request)."""
        try:
            # engine.py has no typed /info call (yet): the raw request, read here.
            data = self.engine._request("GET", "/info").json()
        except EngineError as exc:
            raise DockerUnavailable(f"the Docker daemon does not answer: {exc}") from None
        return EngineInfo(
            version=str(data.get("ServerVersion") or "?"),
            cpus=int(data.get("NCPU") or 0),
            memory_bytes=int(data.get("MemTotal") or 0),
            os=str(data.get("OperatingSystem") or ""),
        )

    def containers(self, instance: str | None = None) -> list[ContainerState]:
        """Every container of every instance (or of one), from a single listing."""
        label = INSTANCE_LABEL if instance is None else f"{INSTANCE_LABEL}={instance}"
        return [_container_state(c) for c in self._list([label, *self._owned()])]

    def by_instance(self) -> dict[str, list[ContainerState]]:
        grouped: dict[str, list[ContainerState]] = defaultdict(list)
        for container in self.containers():
            grouped[container.instance].append(container)
        return grouped

    def usage(self, container_ids: Iterable[str], direct: bool = True) -> dict[str, Usage]:
        """CPU percent and memory per running container.

        With the engine on this host the figures come from the containers' cgroup files (one
        short sampling window for all of them, see controller/cgroups.py), and on a host reached
        over ssh from its cgroup files there (one ssh session); a container whose cgroup cannot
        be found or read, another remote engine, or ``direct=False`` falls back to the engine's
        stats.
        """
        ids = list(dict.fromkeys(container_ids))
        if not ids:
            return {}
        import concurrent.futures

        from controller import cgroups

        if direct and self.engine.address.scheme == "ssh":
            # Another host's cgroup files, read there in one ssh session (one short window).
            readings = cgroups.sample_remote(self.engine.address, ids)
            usage = {cid: Usage(r.cpu_percent, r.memory_bytes) for cid, r in readings.items()}
            usage.update(self._sampled_usage([cid for cid in ids if cid not in usage]))
            return {cid: usage[cid] for cid in ids if cid in usage}
        reader = cgroups.Cgroups()
        if not (direct and self.engine.address.local and reader.available()):
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

    def _parallel(self, wanted: int) -> int:
        most = MAX_PARALLEL_SSH if self.engine.sessions_limited else MAX_PARALLEL
        return max(1, min(most, wanted))

    def _pid(self, container_id: str) -> int | None:
        try:
            return self.engine.container_pid(container_id)
        except EngineError:
            return None

    def _sampled_usage(self, ids: list[str]) -> dict[str, Usage]:
        """Figures from the engine: two concurrent one-shot stats calls per container."""
        if not ids:
            return {}
        import concurrent.futures

        with concurrent.futures.ThreadPoolExecutor(max_workers=self._parallel(len(ids))) as pool:
            first = dict(zip(ids, pool.map(self._sample, ids), strict=True))
            # No sleep: each call already waits for the collector's next tick.
            second = dict(zip(ids, pool.map(self._sample, ids), strict=True))
        usage = {}
        for cid in ids:
            before, after = first[cid], second[cid]
            if before is None or after is None:
                continue
            usage[cid] = Usage(_cpu_percent(before, after), _memory(after))
        return usage

    def counters(self, container_ids: Iterable[str]) -> dict[str, tuple[float, int]]:
        """CPU seconds used so far and memory in use per running container, from ONE stats
        call each, side by side (all answered at the engine's next collector tick): the figures
        a remote engine can give for a Prometheus counter, where no rate is needed."""
        ids = list(dict.fromkeys(container_ids))
        if not ids:
            return {}
        import concurrent.futures

        with concurrent.futures.ThreadPoolExecutor(max_workers=self._parallel(len(ids))) as pool:
            samples = dict(zip(ids, pool.map(self._sample, ids), strict=True))
        return {
            cid: (sample.cpu_total_ns / 1e9, _memory(sample))
            for cid, sample in samples.items()
            if sample is not None
        }

    def _sample(self, container_id: str) -> StatsSample | None:
        try:
            return self.engine.stats(container_id)
        except EngineError:
            return None  # the container went away between listing and sampling

    def foreign_containers(self, project: str) -> list[str]:
        """Containers of compose project ``project`` that are not an instance's of this ROOT
        (of any ROOT without ``root``): another stack on the engine already uses the name."""
        return [
            c.name or "?"
            for c in self._list([f"{PROJECT_LABEL}={project}"])
            if INSTANCE_LABEL not in c.labels
            or (self.root is not None and c.labels.get(ROOT_LABEL) != self.root)
        ]

    def _list(self, labels: list[str]) -> list[Container]:
        try:
            return self.engine.containers(labels)
        except EngineError as exc:
            raise DockerUnavailable(f"cannot list containers: {exc}") from None

    def remove_instance_leftovers(self, instance: str, volumes: bool) -> None:
        """Remove the instance's containers, its network and (optionally) its volumes.

        Compose's own `down` does this for the files it knows; this catches what a crashed create
        or a changed file left behind. Containers are chosen by the instance label; networks and
        volumes by project label and the project's name prefix, so another compose project is
        never touched.
        """
        project = [f"{PROJECT_LABEL}={instance}", *self._owned()]
        own_name = f"{instance}_"
        engine = self.engine
        try:
            for container in self._list([f"{INSTANCE_LABEL}={instance}", *self._owned()]):
                engine.remove_container(container.id, volumes=volumes)
            for network in engine.networks(project):
                if network.name.startswith(own_name):
                    engine.remove_network(network.id)
            if volumes:
                for volume in engine.volumes(project):
                    if volume.name.startswith(own_name):
                        engine.remove_volume(volume.name)
        except EngineError as exc:
            message = f"cannot clean up {instance} in Docker: {exc}"
            raise DockerUnavailable(message) from None


def _container_state(container: Container) -> ContainerState:
    health_match = _HEALTH.search(container.status)
    health = health_match.group(1).replace("health: ", "") if health_match else None
    exited = _EXITED.search(container.status)
    return ContainerState(
        id=container.id,
        name=container.name,
        instance=container.labels.get(INSTANCE_LABEL, ""),
        service=container.labels.get(SERVICE_LABEL, ""),
        state=container.state,
        health=health,
        exit_code=int(exited.group(1)) if exited else None,
    )


def _cpu_percent(first: StatsSample, second: StatsSample) -> float:
    """Like `docker stats`: the container's share of the host's CPU time, times the CPUs."""
    cpu_delta = second.cpu_total_ns - first.cpu_total_ns
    system_delta = second.system_cpu_ns - first.system_cpu_ns
    if system_delta <= 0 or cpu_delta < 0:
        return 0.0
    return round(cpu_delta / system_delta * second.online_cpus * 100.0, 2)


def _memory(sample: StatsSample) -> int:
    # Like `docker stats`: page cache that the kernel can drop does not count.
    return max(0, sample.memory_usage - sample.inactive_file)
