"""CPU and memory of containers read straight from their cgroup files (no Docker call): a local
engine's here, another host's there by one shell script over ssh (``sample_remote``).

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

import re
import shlex
import time
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

import attrs

from controller.errors import OperationError

if TYPE_CHECKING:
    from controller.engine import EngineAddress

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


# --- another host's containers: the same files, read there by one shell script over ssh --------

# Full or short container ids only: they are written into the script.
_ID = re.compile(r"[0-9a-f]{12,64}")
# The script reads nothing but cgroup files (POSIX sh builtins, `date` and `sleep`): it finds
# each container's folder under Docker's usual layouts (cgroupfs or systemd driver, with or
# without a cgroup parent one or two levels deep), reads every CPU counter, sleeps, reads them
# again (with the clock of each pass: `date +%s%N`, and /proc/uptime with its 10 ms for a `date`
# without %N, e.g. busybox's), then the memory figures, and prints one line per figure (`s 1`
# when it had to fall back to a whole-second `sleep`). Containers it cannot find are left out
# (the caller asks the engine's stats then).
_SCRIPT = r"""R=__ROOT__
if [ -f "$R/cgroup.controllers" ]; then V=2; CR=$R; MR=$R
else V=1; CR=$R/cpuacct; [ -d "$CR" ] || CR="$R/cpu,cpuacct"; MR=$R/memory; fi
echo "v $V"
locate() {
  for D in "$1/docker/$2" "$1/system.slice/docker-$2.scope" "$1"/*/"$2" \
      "$1"/*/"docker-$2.scope" "$1"/*/*/"$2" "$1"/*/*/"docker-$2.scope"; do
    [ -d "$D" ] && return 0
  done
  return 1
}
L=""
for id in __IDS__; do
  locate "$CR" "$id" || continue; c=$D
  if [ "$V" = 2 ]; then m=$c; else locate "$MR" "$id" || continue; m=$D; fi
  L="$L$id $c $m
"
done
cpu() {
  N=""
  if [ "$V" = 1 ]; then { read -r N < "$1/cpuacct.usage"; } 2>/dev/null; return; fi
  { while read -r k v; do
      if [ "$k" = usage_usec ]; then N=${v}000; break; fi
    done < "$1/cpu.stat"; } 2>/dev/null
}
pass() {
  T=$(date +%s%N 2>/dev/null)
  case "$T" in *[!0-9]*) T="" ;; esac
  [ ${#T} -ge 19 ] && echo "t$1 $T"
  { read -r T _ < /proc/uptime && echo "u$1 $T"; } 2>/dev/null
  while read -r id c m; do
    [ -n "$id" ] || continue
    cpu "$c"; [ -n "$N" ] && echo "c$1 $id $N"
  done <<SBM
$L
SBM
}
pass 1
if [ __INTERVAL__ != 0 ]; then
  sleep __INTERVAL__ 2>/dev/null || { sleep 1; echo "s 1"; }
  pass 2
fi
while read -r id c m; do
  [ -n "$id" ] || continue
  U=""; I=""; T=""
  if [ "$V" = 1 ]; then f=memory.usage_in_bytes; else f=memory.current; fi
  { read -r U < "$m/$f"; } 2>/dev/null
  { while read -r k v; do
      case "$k" in total_inactive_file) T=$v ;; inactive_file) I=$v ;; esac
    done < "$m/memory.stat"; } 2>/dev/null
  if [ "$V" = 1 ] && [ -n "$T" ]; then I=$T; fi
  [ -n "$U" ] && [ -n "$I" ] && echo "m $id $U $I"
done <<SBM
$L
SBM
"""
# How long the script may take over ssh (the session, the interval, the reads).
REMOTE_TIMEOUT = 5.0


def remote_script(ids: Iterable[str], interval: float | None, root: str = str(ROOT)) -> str:
    """The script reading ``ids``' counters twice ``interval`` seconds apart (None: once)."""
    wanted = [cid for cid in ids if _ID.fullmatch(cid)]
    text = _SCRIPT.replace("__ROOT__", shlex.quote(root)).replace("__IDS__", " ".join(wanted))
    return text.replace("__INTERVAL__", "0" if not interval else f"{interval:.3f}")


@attrs.frozen
class RemoteFigures:
    """What the script printed: CPU counters (ns) with the clocks of each pass, memory."""

    first: dict[str, int]
    second: dict[str, int]
    walls: tuple[int | None, int | None]  # ns, per pass (None: the clock was not readable)
    memory: dict[str, int]
    # ns since boot from /proc/uptime (10 ms steps), per pass: the clock without `date +%N`.
    uptimes: tuple[int | None, int | None] = (None, None)
    slept: float | None = None  # the pause the script fell back to (`sleep 1`), if it did

    def window(self, interval: float) -> int:
        """The ns between the two passes: the wall clock, else the uptime, else the pause."""
        for a, b in (self.walls, self.uptimes):
            if a is not None and b is not None and b > a:
                return b - a
        return int((self.slept or interval) * 1e9)

    def readings(self, interval: float) -> dict[str, Reading]:
        """CPU percent and memory of each container with both passes and memory."""
        wall = self.window(interval)
        out = {}
        for cid, after in self.second.items():
            if cid in self.first and cid in self.memory:
                percent = cpu_percent(_Mark(self.first[cid], 0), _Mark(after, wall))
                out[cid] = Reading(percent, self.memory[cid])
        return out

    def counters(self) -> dict[str, tuple[float, int]]:
        """CPU seconds used so far and memory in use, from the first pass."""
        return {
            cid: (cpu_ns / 1e9, self.memory[cid])
            for cid, cpu_ns in self.first.items()
            if cid in self.memory
        }


def parse_remote(text: str) -> RemoteFigures:
    first: dict[str, int] = {}
    second: dict[str, int] = {}
    walls: list[int | None] = [None, None]
    uptimes: list[int | None] = [None, None]
    slept = None
    memory: dict[str, int] = {}
    for line in text.splitlines():
        words = line.split()
        try:
            if len(words) == 2 and words[0] in ("t1", "t2"):
                ns = int(words[1])
                if ns >= 10**18:  # not seconds from a `date` that dropped %N
                    walls[int(words[0][1]) - 1] = ns
            elif len(words) == 2 and words[0] in ("u1", "u2"):
                seconds, _, hundredths = words[1].partition(".")
                uptimes[int(words[0][1]) - 1] = int(seconds) * 10**9 + int(
                    (hundredths + "000000000")[:9]
                )
            elif words == ["s", "1"]:
                slept = 1.0
            elif len(words) == 3 and words[0] in ("c1", "c2"):
                (first if words[0] == "c1" else second)[words[1]] = int(words[2])
            elif len(words) == 4 and words[0] == "m":
                memory[words[1]] = max(0, int(words[2]) - int(words[3]))
        except ValueError:
            continue  # e.g. a `date` without %N: that pass has no clock
    return RemoteFigures(
        first, second, (walls[0], walls[1]), memory, (uptimes[0], uptimes[1]), slept
    )


def read_remote(
    address: EngineAddress, ids: Iterable[str], interval: float | None, timeout: float
) -> RemoteFigures | None:
    """Run the script on the host of ``address`` (an ssh engine with our config) through its
    ssh master; None when it cannot be run there (the caller asks the engine instead)."""
    from controller import ssh

    ids = list(ids)
    if address.scheme != "ssh" or not address.ssh_config or not ids:
        return None
    config = Path(address.ssh_config)
    host = address.host.removeprefix(ssh.ALIAS_PREFIX)
    text = remote_script(ids, interval)
    try:
        out = ssh.script(ssh.SshFiles(config.parent), host, text, timeout, config)
    except OperationError:
        return None
    return parse_remote(out.decode(errors="replace"))


def sample_remote(
    address: EngineAddress,
    ids: Iterable[str],
    interval: float = INTERVAL,
    timeout: float = REMOTE_TIMEOUT,
) -> dict[str, Reading]:
    """CPU percent and memory of another host's containers from their cgroup files there: one
    ssh session, one sampling window of ``interval`` seconds for all of them. Containers not
    found there are left out."""
    figures = read_remote(address, ids, interval, timeout)
    return {} if figures is None else figures.readings(interval)


def counters_remote(
    address: EngineAddress, ids: Iterable[str], timeout: float = REMOTE_TIMEOUT
) -> dict[str, tuple[float, int]]:
    """CPU seconds and memory in use of another host's containers, read once (no window)."""
    figures = read_remote(address, ids, None, timeout)
    return {} if figures is None else figures.counters()
