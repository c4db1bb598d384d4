"""Placement (issue 15): `create` without --host puts the instance on the host with the most free
memory whose engine answers, and says where and why.

Both hosts run on this machine's kernel, so the worker (tests/world/worker.py) is made to report
more or less free memory than here by a file bind-mounted over /proc/meminfo inside its private
mount namespace: its ssh sessions read that file, this machine keeps its own. Instances are made
with --no-start (placement happens before anything starts: no containers are needed), through
the real CLI, a real Caddy, and the worker's real sshd and engine.
"""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pytest

from controller.errors import OperationError
from controller.ops import hosts as host_ops
from tests.world.remote import HOST, RemoteRoot, remote_world

TEMPLATE = "v0.8.2"
GIB_KIB = 1024 * 1024


def _available_here_kib() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1])
    raise AssertionError("no MemAvailable here")


def much_more() -> int:
    """KiB the worker reports when it has far more free memory than this machine."""
    return _available_here_kib() + 64 * GIB_KIB


MUCH_LESS = 64 * 1024  # 64 MiB


class World(RemoteRoot):
    def create(self, name: str, *extra: str) -> subprocess.CompletedProcess:
        """`create NAME --no-start`; returns the finished process (exit 0 checked)."""
        return self.run("create", name, "--template", TEMPLATE, "--no-start", *extra)

    def host_of(self, name: str) -> str:
        return self.json("show", name)["host"]

    def delete(self, name: str) -> None:
        self.run("delete", name, "--purge", "--yes")
        assert name not in self.state().get("instances", {})

    def state(self) -> dict:
        return json.loads((self.root / "state.json").read_text())

    def placement(self) -> tuple[host_ops.Placement, float]:
        """The choice made in this process, and how long it took (s)."""
        from controller.config import load_settings
        from controller.ops.base import Context

        ctx = Context.of(load_settings(env=self.env))
        began = time.monotonic()
        chosen = host_ops.placement(ctx, ctx.store.read())
        return chosen, time.monotonic() - began


# --- what placement reads and says (no Docker) -------------------------------------------------


def test_free_memory_is_memavailable_or_on_old_kernels_free_plus_cache():
    meminfo = "MemTotal: 8000 kB\nMemFree: 1000 kB\nMemAvailable: 3000 kB\nCached: 1500 kB\n"
    assert host_ops._available("w2", meminfo) == 3000 * 1024
    old = "MemTotal: 8000 kB\nMemFree: 1000 kB\nBuffers: 200 kB\nCached: 1500 kB\n"
    assert host_ops._available("w2", old) == 2700 * 1024
    with pytest.raises(OperationError, match="host w2: /proc/meminfo says nothing"):
        host_ops._available("w2", "sbm-place no-engine\n")


def test_the_choice_is_said_with_the_figures_and_what_was_passed_over():
    gib = 2**30
    free = {"local": 2 * gib, "w2": 6 * gib, "w3": 6 * gib}
    chosen = host_ops.Placement("w2", free, {"w4": "no answer within 5 s"}, ("w3",))
    assert chosen.says() == [
        "w4 passed over: no answer within 5 s",
        "placed on w2: most free memory (local 2.0 GiB, w2 6.0 GiB, w3 6.0 GiB available; "
        "tied with w3, first in order (local, then by name))",
    ]
    # Local alone: nothing was asked, nothing to say.
    assert host_ops.Placement("local", {}, {}).says() == []


# --- through the CLI, with the worker ---------------------------------------------------------


@pytest.fixture(scope="module")
def world(tmp_path_factory, docker_client, worker):
    base = tmp_path_factory.mktemp("placement")
    with remote_world(base, docker_client, worker, world=World, template=TEMPLATE, bind=False) as w:
        yield w


@pytest.mark.docker
def test_the_host_with_more_free_memory_gets_the_instance(world):
    fake = much_more()
    with world.worker.fake_meminfo(fake):
        made = world.create("pl-more")
    # The mount is gone with the block: the worker reads this machine's figures again.
    theirs = world.worker.run("grep MemAvailable: /proc/meminfo").stdout.split()[1]
    assert int(theirs) != fake and abs(int(theirs) - _available_here_kib()) < GIB_KIB
    said = made.stderr
    assert "placed on w2: most free memory" in said, said
    assert "w2 " in said and "local " in said and "GiB available" in said
    assert world.host_of("pl-more") == HOST
    assert "host      w2" in world.run("show", "pl-more").stdout
    listed = {row["name"]: row for row in world.json("list", "--no-stats")}
    assert listed["pl-more"]["host"] == HOST
    world.delete("pl-more")


@pytest.mark.docker
def test_the_host_with_less_free_memory_is_passed_by(world):
    with world.worker.fake_meminfo(MUCH_LESS):
        made = world.create("pl-less")
    assert "placed on local: most free memory" in made.stderr, made.stderr
    assert "w2 0.1 GiB" in made.stderr
    assert world.host_of("pl-less") == "local"
    world.delete("pl-less")


@pytest.mark.docker
def test_create_host_overrides_placement(world):
    with world.worker.fake_meminfo(MUCH_LESS):
        made = world.create("pl-forced", "--host", HOST)
        assert "placed on" not in made.stderr
        assert world.host_of("pl-forced") == HOST
        world.delete("pl-forced")
    with world.worker.fake_meminfo(much_more()):
        made = world.create("pl-here", "--host", "local")
        assert "placed on" not in made.stderr
        assert world.host_of("pl-here") == "local"
        world.delete("pl-here")


@pytest.mark.docker
def test_ties_go_to_the_first_host_by_name(world):
    # w3 is the same machine under another name: both report the very same free memory.
    world.run("host", "add", "w3", world.worker.ssh_url)
    try:
        with world.worker.fake_meminfo(much_more()):
            for _ in range(2):
                chosen, _seconds = world.placement()
                assert (chosen.host, chosen.tied) == ("w2", ("w3",))
            made = world.create("pl-tie")
        assert "placed on w2: most free memory" in made.stderr and "tied with w3" in made.stderr
        assert world.host_of("pl-tie") == HOST
        world.delete("pl-tie")
    finally:
        world.run("host", "remove", "w3")
    # w3 was w2 under another name: w2 keeps its recorded key and still answers.
    with world.worker.fake_meminfo(much_more()):
        chosen, _seconds = world.placement()
    assert chosen.host == HOST and not chosen.passed_over, chosen.passed_over


@pytest.mark.docker
def test_a_worker_whose_sshd_is_down_is_passed_over_at_once(world):
    worker = world.worker
    with worker.fake_meminfo(much_more()):
        world.close_masters()
        worker.stop_ssh()
        try:
            chosen, seconds = world.placement()
            made = world.create("pl-nossh")
        finally:
            worker.start_ssh()
    print(f"placement with {HOST}'s sshd stopped: {seconds:.2f} s")
    assert chosen.host == "local" and "unreachable" in chosen.passed_over[HOST]
    assert seconds < 2, seconds  # a refused connection is an answer: no waiting for it
    assert "w2 passed over: host w2 is unreachable over ssh" in made.stderr, made.stderr
    assert "placed on local: the only host that answers" in made.stderr
    assert world.host_of("pl-nossh") == "local"
    world.delete("pl-nossh")


@pytest.mark.docker
def test_a_worker_that_hangs_holds_create_up_only_for_the_placement_timeout(world):
    worker = world.worker
    with worker.fake_meminfo(much_more()):
        world.close_masters()
        with worker.hang_ssh():
            began = time.monotonic()
            made = world.create("pl-hang")
            seconds = time.monotonic() - began
    print(f"create with {HOST} hanging: {seconds:.2f} s")
    assert "w2 passed over: host w2: no answer" in made.stderr, made.stderr
    assert "placed on local: the only host that answers" in made.stderr
    # Bounded by the placement timeout (ssh alone would wait its ConnectTimeout, 10 s).
    assert host_ops.PLACEMENT_TIMEOUT - 1 < seconds < host_ops.PLACEMENT_TIMEOUT + 3, seconds
    assert world.host_of("pl-hang") == "local"
    world.delete("pl-hang")


@pytest.mark.docker
def test_a_worker_whose_engine_is_down_is_passed_over(world):
    worker = world.worker
    with worker.fake_meminfo(much_more()):
        worker.stop_engine()
        try:
            made = world.create("pl-noengine")
        finally:
            worker.start_engine()
    assert "w2 passed over: host w2: its Docker engine does not answer" in made.stderr
    assert world.host_of("pl-noengine") == "local"
    world.delete("pl-noengine")
