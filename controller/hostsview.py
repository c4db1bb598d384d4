"""The live figures `host list` shows of each host (controller/ops/hosts.py ``details`` fills its
rows from here): the Docker version and the machine's CPUs and memory (the engine's /info), how
many of the host's instances run, and what our containers there use (CPU, memory).

Every host is asked side by side, each with its own timeout (controller/status.py
``each_host``): a host that does not answer comes back with its one-line reason and never holds
up the others. CPU and memory come from the containers' cgroup files, read here for this
machine's engine and there by one script over ssh for another host's (controller/dockerapi.py
``DockerAPI.usage``; the engine's stats for a container not found so).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import attrs

from controller.config import Settings
from controller.dockerapi import EngineInfo
from controller.state import InstanceRecord, State
from controller.status import HOST_TIMEOUT, Connect, by_host, connector, each_host, gather
from controller.views import RUNNING


@attrs.frozen
class HostFigures:
    info: EngineInfo  # version, CPUs and memory of the machine
    running: int  # instances there with every service running
    cpu_percent: float | None  # our containers there, summed; 100 = one CPU
    memory_bytes: int | None  # our containers there, page cache excluded


def host_figures(
    settings: Settings,
    state: State,
    hosts: Iterable[str],
    one_shot: Callable[[InstanceRecord], set[str]],
    connect: Connect | None = None,
    timeout: float = HOST_TIMEOUT,
) -> tuple[dict[str, HostFigures], dict[str, str]]:
    """(host -> figures, host -> why it did not answer) for every host in ``hosts``."""
    groups = by_host(state.instances)
    connect = connect or connector(settings, state, timeout=timeout)

    def work(host: str) -> HostFigures:
        api = connect(host)
        try:
            info = api.info()
            found = gather(groups.get(host, {}), api, one_shot, resources=True)
        finally:
            api.close()
        cpu = [s.cpu_percent for s in found.values() if s.cpu_percent is not None]
        memory = [s.memory_bytes for s in found.values() if s.memory_bytes is not None]
        return HostFigures(
            info,
            sum(1 for s in found.values() if s.status == RUNNING),
            round(sum(cpu), 2) if cpu else None,
            sum(memory) if memory else None,
        )

    return each_host(hosts, work, timeout)
