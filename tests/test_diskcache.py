"""Disk use of instance folders, cached under ROOT (controller/diskcache.py)."""

from __future__ import annotations

import json
import time
from pathlib import Path

from controller.diskcache import DiskCache, folder_size, spawn_refresh


def _fill(folder: Path, size: int) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"data-{size}").write_bytes(b"x" * size)


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def test_new_folders_are_measured_then_served_from_the_cache(tmp_path):
    instances = tmp_path / "instances"
    _fill(instances / "a", 64 * 1024)
    _fill(instances / "b", 256 * 1024)
    spawned = []
    clock = Clock()
    cache = DiskCache(
        tmp_path / "cache" / "disk.json", ttl=300, spawn=lambda *a: spawned.append(a), clock=clock
    )
    folders = {"a": instances / "a", "b": instances / "b", "gone": instances / "gone"}

    first = cache.sizes(folders)
    assert first == {"a": folder_size(instances / "a"), "b": folder_size(instances / "b")}
    assert first["b"] >= 256 * 1024 > first["a"] >= 64 * 1024
    assert spawned == []

    # Data grows: within the TTL the cached figure is served and nothing is walked again.
    _fill(instances / "a", 1024 * 1024)
    clock.now += 299
    assert cache.sizes(folders) == first
    assert spawned == []

    # Past the TTL: still the cached figure (no waiting), and a refresh is started.
    clock.now += 2
    assert cache.sizes(folders) == first
    assert spawned == [(cache.path, instances)]

    # The refresh (what the background process runs) stores the new figure.
    refreshed = cache.refresh(instances)
    assert refreshed["a"] >= 1024 * 1024
    spawned.clear()
    assert cache.sizes(folders)["a"] == refreshed["a"]
    assert spawned == []


def test_deleted_instances_leave_the_cache_and_a_corrupt_cache_costs_only_a_walk(tmp_path):
    instances = tmp_path / "instances"
    _fill(instances / "a", 4096)
    _fill(instances / "b", 4096)
    cache = DiskCache(tmp_path / "disk.json", spawn=lambda *a: None)
    cache.sizes({"a": instances / "a", "b": instances / "b"})
    cache.sizes({"a": instances / "a", "c": instances / "c"})
    _fill(instances / "c", 8192)
    cache.sizes({"a": instances / "a", "c": instances / "c"})
    stored = json.loads(cache.path.read_text())["sizes"]
    assert sorted(stored) == ["a", "c"]

    cache.path.write_text("{not json")
    assert cache.sizes({"a": instances / "a"}) == {"a": folder_size(instances / "a")}
    assert sorted(json.loads(cache.path.read_text())["sizes"]) == ["a"]


def test_an_unwritable_cache_still_answers(tmp_path):
    instances = tmp_path / "instances"
    _fill(instances / "a", 4096)
    blocker = tmp_path / "file"
    blocker.write_text("")
    cache = DiskCache(blocker / "disk.json", spawn=lambda *a: None)  # its folder cannot exist
    assert cache.sizes({"a": instances / "a"}) == {"a": folder_size(instances / "a")}


def test_the_background_refresh_process_updates_the_cache(tmp_path):
    instances = tmp_path / "instances"
    _fill(instances / "a", 4096)
    clock = Clock()
    cache = DiskCache(tmp_path / "cache" / "disk.json", ttl=10, clock=clock)
    before = cache.sizes({"a": instances / "a"})["a"]
    _fill(instances / "a", 512 * 1024)
    spawn_refresh(cache.path, instances)  # a real detached `python -m controller.diskcache`
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        after = DiskCache(cache.path, spawn=lambda *a: None).sizes({"a": instances / "a"})["a"]
        if after != before:
            break
        time.sleep(0.1)
    assert after >= before + 512 * 1024
