"""CPU and memory of local containers read straight from their cgroup files (no Docker call).

A container's cgroup is found by its full id under the layouts Docker uses (cgroupfs driver:
``docker/<id>``; systemd driver: ``system.slice/docker-<id>.scope``), or else from
``/proc/<pid>/cgroup`` of its main process. Either way the directory must carry the container's
id, so a path that belongs to something else (another pid namespace, a remote daemon) is never
read. Supports cgroup v1 (cpuacct + memory hierarchies) and v2 (unified). Anything missing or
unreadable yields None for that container, and the caller falls back to the Docker API.

CPU percent follows `docker stats` (100 = one full CPU): cpu-time delta over wall-clock delta.
Memory is usage minus inactive page cache, as `docker stats` shows it.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from pathlib import Path

import attrs

ROOT = Path("/sys/fs/cgroup")
PROC = Path("/proc")
# Wall-clock time between the two CPU readings of every container.
INTERVAL = 0.1


@attrs.frozen
class CgroupFiles:
    """The files that hold one container's figures."""

    cpu: Path  # v1 cpuacct.usage (ns) or v2 cpu.stat (usage_usec)
    memory: Path  # v1 memory.usage_in_bytes or v2 memory.current
    memory_stat: Path
    unified: bool


@attrs.frozen
class Reading:
    cpu_percent: float
    memory_bytes: int


@attrs.frozen
class _Mark:
    cpu_ns: int
    at_ns: int


class Cgroups:
    """Locates and reads containers' cgroups under ``root`` (a cgroup v1 or v2 mount point)."""

    def __init__(self, root: Path | None = None, proc: Path | None = None) -> None:
        self.root = root = ROOT if root is None else root
        self.proc = PROC if proc is None else proc
        self.unified = (root / "cgroup.controllers").is_file()
        cpuacct = root / "cpuacct"
        self._cpu_root = cpuacct if cpuacct.is_dir() else root / "cpu,cpuacct"
        self._memory_root = root / "memory"

    def available(self) -> bool:
        """Whether a cgroup v2 mount or v1 cpuacct and memory hierarchies are there at all."""
        return self.unified or (self._cpu_root.is_dir() and self._memory_root.is_dir())

    def locate(self, container_id: str, pid: int | None = None) -> CgroupFiles | None:
        """The cgroup files of a container: from ``pid``'s /proc entry if given, else by its
        full id under Docker's usual layouts. None when they are not there."""
        if pid is not None:
            relatives = self._from_proc(container_id, pid)
        else:
            relatives = [
                (rel, rel)
                for rel in (f"docker/{container_id}", f"system.slice/docker-{container_id}.scope")
            ]
        for cpu_rel, memory_rel in relatives:
            files = self._files(cpu_rel, memory_rel)
            if files is not None:
                return files
        return None

    def _from_proc(self, container_id: str, pid: int) -> list[tuple[str, str]]:
        try:
            lines = (self.proc / str(pid) / "cgroup").read_text().splitlines()
        except (OSError, ValueError):
            return []
        cpu_rel = memory_rel = None
        for line in lines:
            parts = line.split(":", 2)
            if len(parts) != 3 or container_id not in parts[2]:
                continue  # not this container's cgroup (e.g. a pid from another namespace)
            controllers, path = parts[1].split(","), parts[2].lstrip("/")
            if self.unified and parts[0] == "0" and parts[1] == "":
                cpu_rel = memory_rel = path
            elif "cpuacct" in controllers:
                cpu_rel = path
            elif "memory" in controllers:
                memory_rel = path
        if cpu_rel is None or memory_rel is None:
            return []
        return [(cpu_rel, memory_rel)]

    def _files(self, cpu_rel: str, memory_rel: str) -> CgroupFiles | None:
        if self.unified:
            base = self.root / cpu_rel
            files = CgroupFiles(
                base / "cpu.stat", base / "memory.current", base / "memory.stat", True
            )
        else:
            memory = self._memory_root / memory_rel
            files = CgroupFiles(
                self._cpu_root / cpu_rel / "cpuacct.usage",
                memory / "memory.usage_in_bytes",
                memory / "memory.stat",
                False,
            )
        if all(path.is_file() for path in (files.cpu, files.memory, files.memory_stat)):
            return files
        return None

    def sample(
        self, located: dict[str, CgroupFiles], interval: float = INTERVAL
    ) -> dict[str, Reading]:
        """CPU and memory of every located container: one pass over all CPU counters, a pause
        of ``interval`` seconds, a second pass (with memory). Containers whose files could not
        be read or parsed are left out."""
        first = _marks(located.items())
        time.sleep(interval)
        second = _marks((cid, located[cid]) for cid in first)
        readings = {}
        for cid, mark in second.items():
            memory = read_memory(located[cid])
            if memory is not None:
                readings[cid] = Reading(cpu_percent(first[cid], mark), memory)
        return readings


def _marks(items: Iterable[tuple[str, CgroupFiles]]) -> dict[str, _Mark]:
    marks = {}
    for cid, files in items:
        cpu_ns = read_cpu_ns(files)
        if cpu_ns is not None:
            marks[cid] = _Mark(cpu_ns, time.monotonic_ns())
    return marks


def cpu_percent(first: _Mark, second: _Mark) -> float:
    wall = second.at_ns - first.at_ns
    used = second.cpu_ns - first.cpu_ns
    if wall <= 0 or used < 0:
        return 0.0
    return round(used / wall * 100.0, 2)


def read_cpu_ns(files: CgroupFiles) -> int | None:
    """Total CPU time of the cgroup in nanoseconds."""
    try:
        if not files.unified:
            return int(files.cpu.read_text())
        usec = _stat_value(files.cpu.read_text(), "usage_usec")
    except (OSError, ValueError):
        return None
    return None if usec is None else usec * 1000


def read_memory(files: CgroupFiles) -> int | None:
    """Memory in use minus inactive file cache, in bytes."""
    try:
        usage = int(files.memory.read_text())
        stat = files.memory_stat.read_text()
        keys = ("inactive_file",) if files.unified else ("total_inactive_file", "inactive_file")
        for key in keys:
            cache = _stat_value(stat, key)
            if cache is not None:
                break
        else:
            return None
    except (OSError, ValueError):
        return None
    return max(0, usage - cache)


def _stat_value(text: str, key: str) -> int | None:
    for line in text.splitlines():
        name, _, value = line.partition(" ")
        if name == key:
            return int(value)
    return None
