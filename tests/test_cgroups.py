"""Container CPU and memory from cgroup files (controller/cgroups.py) and DockerAPI.usage.

Real containers on the real engine for the figures; small fake cgroup trees for the layouts this
machine does not have (cgroup v2, systemd driver) and for broken files.
"""

from __future__ import annotations

import re
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
