"""Container CPU and memory from cgroup files (controller/cgroups.py) and DockerAPI.usage.

Real containers on the real engine for the figures; small fake cgroup trees for the layouts this
machine does not have (cgroup v2, systemd driver) and for broken files. The script that reads
another host's cgroup files over ssh runs here with `sh` on fake v1 and v2 trees (its counters
changed between its two passes); tests/test_gather_hosts.py runs it on the worker over ssh.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import uuid
from pathlib import Path

import pytest

from controller import cgroups
from controller.cgroups import Cgroups
from controller.dockerapi import DockerAPI
from tests.world.dockerworld import BUSYBOX_IMAGE

TEST_LABEL = "io.supabase-manager.test"
BUSY = ["sh", "-c", "while :; do :; done"]
IDLE = ["sleep", "3600"]
# Holds ~40 MB in tmpfs (shared memory is charged to the container and is not page cache).
HOG = ["sh", "-c", "dd if=/dev/zero of=/dev/shm/x bs=1M count=40 2>/dev/null; sleep 3600"]
MB = 1024 * 1024


@pytest.fixture
def containers(docker_client, docker_sandbox):
    """Starts labelled busybox containers; docker_sandbox removes them."""
    label = {TEST_LABEL: f"cgroups-{uuid.uuid4().hex[:8]}"}

    def start(*commands: list[str]) -> list[str]:
        ids = []
        for command in commands:
            container = docker_client.containers.run(
                BUSYBOX_IMAGE, command, detach=True, labels=label
            )
            ids.append(container.id)
        return ids

    return start


def _wait_memory(api: DockerAPI, cid: str, at_least: int) -> None:
    for _ in range(50):
        usage = api.usage([cid])
        if cid in usage and usage[cid].memory_bytes >= at_least:
            return
    pytest.fail(f"memory of {cid[:12]} never reached {at_least} bytes")


def _docker_stats(ids: list[str]) -> dict[str, tuple[float, float]]:
    out = subprocess.run(
        ["docker", "stats", "--no-stream", "--format", "{{.ID}} {{.CPUPerc}} {{.MemUsage}}", *ids],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    units = {"B": 1, "KiB": 1024, "MiB": MB, "GiB": 1024 * MB}
    figures = {}
    for line in out.splitlines():
        short, cpu, mem = line.split(" ", 2)
        number, unit = re.match(r"([\d.]+)(\w+)", mem).groups()
        figures[short] = (float(cpu.rstrip("%")), float(number) * units[unit])
    return {cid: figures[cid[:12]] for cid in ids}


@pytest.mark.docker
def test_direct_figures_from_cgroups(containers):
    busy, idle, hog = containers(BUSY, IDLE, HOG)
    api = DockerAPI()
    reader = Cgroups()
    assert reader.available()
    for cid in (busy, idle, hog):
        assert reader.locate(cid) is not None, "cgroup of a local container not found"
    _wait_memory(api, hog, 35 * MB)

    usage = api.usage([busy, idle, hog])
    assert set(usage) == {busy, idle, hog}
    assert usage[busy].cpu_percent > 50
    assert usage[idle].cpu_percent < 5
    assert usage[busy].cpu_percent > usage[idle].cpu_percent + 40
    assert usage[hog].memory_bytes > usage[idle].memory_bytes + 30 * MB
    assert 35 * MB <= usage[hog].memory_bytes < 200 * MB

    # Roughly what `docker stats` says (same order of magnitude).
    stats = _docker_stats([busy, idle, hog])
    assert stats[busy][0] / 3 < usage[busy].cpu_percent < stats[busy][0] * 3
    assert stats[hog][1] / 3 < usage[hog].memory_bytes < stats[hog][1] * 3


@pytest.mark.docker
@pytest.mark.parametrize("how", ["parameter", "no cgroup files"])
def test_fallback_through_the_api(containers, monkeypatch, tmp_path, how):
    busy, idle, hog = containers(BUSY, IDLE, HOG)
    api = DockerAPI()
    _wait_memory(api, hog, 35 * MB)
    if how == "parameter":
        usage = api.usage([busy, idle, hog], direct=False)
    else:
        monkeypatch.setattr(cgroups, "ROOT", tmp_path)
        assert not Cgroups().available()
        usage = api.usage([busy, idle, hog])
    assert set(usage) == {busy, idle, hog}
    assert usage[busy].cpu_percent > 50
    assert usage[idle].cpu_percent < 5
    assert usage[hog].memory_bytes > usage[idle].memory_bytes + 30 * MB


@pytest.mark.docker
def test_fallback_per_container(containers, monkeypatch):
    """One container's cgroup unreadable: it alone goes through the API, the rest stay direct."""
    busy, idle = containers(BUSY, IDLE)
    real_locate = Cgroups.locate
    calls = []

    def locate(self, cid, pid=None):
        calls.append((cid, pid))
        return None if cid == busy else real_locate(self, cid, pid)

    monkeypatch.setattr(Cgroups, "locate", locate)
    api = DockerAPI()
    sampled = []
    real_sampled = DockerAPI._sampled_usage

    def spy(self, ids):
        sampled.append(list(ids))
        return real_sampled(self, ids)

    monkeypatch.setattr(DockerAPI, "_sampled_usage", spy)
    usage = api.usage([busy, idle])
    assert set(usage) == {busy, idle}
    assert usage[busy].cpu_percent > 50
    assert sampled == [[busy]]
    assert any(cid == busy and pid for cid, pid in calls), "the main process was not asked"


@pytest.mark.docker
def test_locate_from_main_process(containers, docker_client):
    (cid,) = containers(IDLE)
    pid = docker_client.api.inspect_container(cid)["State"]["Pid"]
    reader = Cgroups()
    assert reader.locate(cid, pid) == reader.locate(cid)
    # A process that is not the container's (the host's init) is never taken for it.
    assert reader.locate(cid, 1) is None


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


CID = "ab" * 32


def test_cgroup_v2_layouts(tmp_path):
    root = tmp_path / "cgroup"
    _write(root / "cgroup.controllers", "cpu memory\n")
    scope = root / "system.slice" / f"docker-{CID}.scope"
    _write(scope / "cpu.stat", "usage_usec 1000\nuser_usec 800\nsystem_usec 200\n")
    _write(scope / "memory.current", str(50 * MB))
    _write(scope / "memory.stat", f"anon {40 * MB}\nfile {10 * MB}\ninactive_file {8 * MB}\n")
    reader = Cgroups(root, tmp_path / "proc")
    files = reader.locate(CID)
    assert files is not None and files.unified
    assert cgroups.read_cpu_ns(files) == 1_000_000
    assert cgroups.read_memory(files) == 42 * MB
    # Found through /proc/<pid>/cgroup too.
    _write(tmp_path / "proc" / "42" / "cgroup", f"0::/system.slice/docker-{CID}.scope\n")
    assert reader.locate(CID, 42) == files


def test_cgroup_v1_systemd_layout_and_proc(tmp_path):
    root = tmp_path / "cgroup"
    rel = f"system.slice/docker-{CID}.scope"
    _write(root / "cpu,cpuacct" / rel / "cpuacct.usage", "123456789\n")
    _write(root / "memory" / rel / "memory.usage_in_bytes", str(30 * MB))
    _write(root / "memory" / rel / "memory.stat", f"inactive_file 0\ntotal_inactive_file {MB}\n")
    reader = Cgroups(root, tmp_path / "proc")
    files = reader.locate(CID)
    assert files is not None and not files.unified
    assert cgroups.read_cpu_ns(files) == 123456789
    assert cgroups.read_memory(files) == 29 * MB
    _write(
        tmp_path / "proc" / "7" / "cgroup",
        f"4:memory:/{rel}\n2:cpu,cpuacct:/{rel}\n1:name=systemd:/{rel}\n",
    )
    assert reader.locate(CID, 7) == files
    _write(tmp_path / "proc" / "8" / "cgroup", "4:memory:/user.slice\n2:cpu,cpuacct:/\n")
    assert reader.locate(CID, 8) is None


def test_broken_files_give_nothing(tmp_path):
    root = tmp_path / "cgroup"
    rel = f"docker/{CID}"
    _write(root / "cpuacct" / rel / "cpuacct.usage", "not a number\n")
    _write(root / "memory" / rel / "memory.usage_in_bytes", "12\n")
    _write(root / "memory" / rel / "memory.stat", "rss 12\n")  # no inactive_file
    reader = Cgroups(root, tmp_path / "proc")
    files = reader.locate(CID)
    assert files is not None
    assert cgroups.read_cpu_ns(files) is None
    assert cgroups.read_memory(files) is None
    assert reader.sample({CID: files}, interval=0.01) == {}
    assert reader.locate("cd" * 32) is None
    assert reader.locate(CID, 999999) is None  # no such process


# --- another host's containers: the script run there over ssh, here with sh on fake trees ------

OTHER = "cd" * 32
MISSING = "ef" * 32


def _run_remote(root: Path, ids: list[str], interval: float | None, between=None, env=None) -> str:
    """The script as ssh would run it there (``sh -s``, on stdin); ``between`` runs once the
    first pass's CPU lines are out (the script then sleeps)."""
    proc = subprocess.Popen(
        ["sh", "-s"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env
    )
    assert proc.stdin is not None and proc.stdout is not None
    proc.stdin.write(cgroups.remote_script(ids, interval, root=str(root)))
    proc.stdin.close()
    lines = []
    if between is not None:
        firsts = 0
        while firsts < len([i for i in ids if i != MISSING]):
            line = proc.stdout.readline()
            assert line, f"the script ended early: {lines}"
            lines.append(line)
            firsts += line.startswith("c1 ")
        between()
    lines.append(proc.stdout.read())
    assert proc.wait(10) == 0
    return "".join(lines)


def test_remote_figures_on_cgroup_v2(tmp_path):
    root = tmp_path / "cgroup"
    _write(root / "cgroup.controllers", "cpu memory\n")
    systemd = root / "system.slice" / f"docker-{CID}.scope"
    parent = root / "sbmw-1-1" / OTHER  # cgroupfs driver with a cgroup parent
    for folder, used in ((systemd, 1000), (parent, 5000)):
        _write(folder / "cpu.stat", f"usage_usec {used}\nuser_usec 1\nsystem_usec 1\n")
        _write(folder / "memory.current", str(50 * MB))
        _write(folder / "memory.stat", f"anon {40 * MB}\ninactive_file {8 * MB}\n")

    def busy() -> None:  # 50 ms of CPU for CID while the script sleeps; OTHER idles
        _write(systemd / "cpu.stat", f"usage_usec {1000 + 50_000}\nuser_usec 1\nsystem_usec 1\n")

    out = _run_remote(root, [CID, OTHER, MISSING], 0.2, between=busy)
    figures = cgroups.parse_remote(out)
    assert figures.walls[1] - figures.walls[0] >= 0.2e9  # the wall clock of each pass
    readings = figures.readings(0.2)
    assert set(readings) == {CID, OTHER}  # MISSING is left to the engine's stats
    assert 0 < readings[CID].cpu_percent <= 25.0  # 50 ms of CPU in at least 0.2 s
    assert readings[OTHER].cpu_percent == 0.0
    assert readings[CID].memory_bytes == readings[OTHER].memory_bytes == 42 * MB


def test_remote_figures_on_cgroup_v1(tmp_path):
    root = tmp_path / "cgroup"
    layouts = {CID: f"docker/{CID}", OTHER: f"machine/workers/{OTHER}"}
    for rel in layouts.values():
        _write(root / "cpu,cpuacct" / rel / "cpuacct.usage", "2000000000\n")
        _write(root / "memory" / rel / "memory.usage_in_bytes", str(30 * MB))
        # v1: the hierarchy's total_inactive_file wins over the cgroup's own inactive_file.
        _write(
            root / "memory" / rel / "memory.stat",
            f"cache {5 * MB}\ninactive_file 0\ntotal_inactive_file {MB}\n",
        )

    def busy() -> None:
        _write(root / "cpu,cpuacct" / layouts[CID] / "cpuacct.usage", "2100000000\n")

    readings = cgroups.parse_remote(_run_remote(root, [CID, OTHER], 0.2, busy)).readings(0.2)
    assert 0 < readings[CID].cpu_percent <= 50.0  # 100 ms of CPU in at least 0.2 s
    assert readings[OTHER].cpu_percent == 0.0
    assert readings[CID].memory_bytes == readings[OTHER].memory_bytes == 29 * MB
    # Read once, for Prometheus' counters: no sleep, CPU seconds so far.
    counters = cgroups.parse_remote(_run_remote(root, [CID, OTHER], None)).counters()
    assert counters == {CID: (2.1, 29 * MB), OTHER: (2.0, 29 * MB)}


@pytest.mark.parametrize("whole_sleep", [False, True], ids=["sleep", "whole-second-sleep"])
def test_remote_figures_with_a_busybox_date_and_sleep(tmp_path, whole_sleep):
    """A `date` without %N (busybox prints it as is): the window comes from /proc/uptime; a
    `sleep` without fractions: the script sleeps 1 s and says so."""
    shims = tmp_path / "bin"
    real_date, real_sleep = shutil.which("date"), shutil.which("sleep")
    _write(shims / "date", f'#!/bin/sh\nprintf "%s%%N\\n" "$({real_date} +%s)"\n')
    sleep = f'#!/bin/sh\ncase "$1" in *.*) exit 1 ;; esac\nexec {real_sleep} "$1"\n'
    if whole_sleep:
        _write(shims / "sleep", sleep)
    for shim in shims.iterdir():
        shim.chmod(0o755)
    root = tmp_path / "cgroup"
    _write(root / "cgroup.controllers", "cpu memory\n")
    folder = root / "docker" / CID
    _write(folder / "cpu.stat", "usage_usec 1000\n")
    _write(folder / "memory.current", str(50 * MB))
    _write(folder / "memory.stat", f"inactive_file {8 * MB}\n")

    def busy() -> None:  # 50 ms of CPU while the script sleeps
        _write(folder / "cpu.stat", f"usage_usec {1000 + 50_000}\n")

    env = {**os.environ, "PATH": f"{shims}:{os.environ['PATH']}"}
    out = _run_remote(root, [CID], 0.2, busy, env=env)
    figures = cgroups.parse_remote(out)
    assert figures.walls == (None, None)  # no nanoseconds from this `date`
    assert figures.slept == (1.0 if whole_sleep else None)
    up1, up2 = figures.uptimes
    assert up1 is not None and up2 is not None and figures.window(0.2) == up2 - up1
    window = 1.0 if whole_sleep else 0.2
    assert window - 0.01 <= figures.window(0.2) / 1e9 < window + 0.5  # /proc/uptime's window
    percent = figures.readings(0.2)[CID].cpu_percent
    assert 0.05 / (window + 0.5) * 100 < percent <= 0.05 / (window - 0.01) * 100


def test_remote_figures_without_a_nanosecond_clock_or_with_broken_files():
    text = "\n".join(
        [
            "v 1",
            "t1 1700000000N",  # a `date` without %N
            f"c1 {CID} 1000000",
            f"c1 {OTHER} 5",
            "t2 1700000001",  # one that dropped %N: seconds, not a clock
            f"c2 {CID} 51000000",
            f"c2 {OTHER} 5",
            f"m {CID} 100 40",
            f"m {OTHER} 100",  # cut short
            "garbage line",
        ]
    )
    readings = cgroups.parse_remote(text).readings(0.1)
    assert readings == {CID: cgroups.Reading(50.0, 60)}  # 50 ms in the nominal 0.1 s


def test_only_container_ids_go_into_the_remote_script():
    script = cgroups.remote_script([CID, "x; rm -rf /", "$(reboot)", OTHER[:12]], 0.1)
    assert f"for id in {CID} {OTHER[:12]}; do" in script
    assert "rm -rf" not in script and "reboot" not in script
