"""Engine API clients are closed when the command that opened them ends (issue 15).

Over ssh an Engine's connection is an ``ssh HOST docker system dial-stdio`` process (a child of
this process) or a channel of the host's ssh master (controller/engine.py).
controller/ops/base.py keeps one client per (ROOT, host) for the length of one Manager call
(``engine_clients``, put on every Manager method by ``one_call_each``) and closes them all when
the call returns or fails, so a long REPL session keeps no idle ssh process or channel.

The first part checks the scope with a stand-in Engine (no Docker). The second runs many
commands through the Manager facade in this one process against an instance on the worker
(tests/world/worker.py: a second dockerd behind a real sshd) and, after each, counts this
process's ssh children (a dial-stdio stream; the ControlMaster is not among them: ssh hands it
to the background) and its open sockets (a stream forwarded through the master is one). Some
calls fail and their errors are kept, as a caller may keep the last one: the traceback then
holds the client, and only closing it ends its connection.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import pytest

from controller.config import load_settings
from controller.errors import OperationError
from controller.ops import base
from tests.world.remote import HOST, SHARED

# --- the scope, with a stand-in Engine --------------------------------------------------------


class FakeEngine:
    made: list[FakeEngine] = []

    def __init__(self, address, timeout: float = 10) -> None:
        self.address = address
        self.closed = 0
        FakeEngine.made.append(self)

    def ping(self) -> None:
        pass

    def close(self) -> None:
        self.closed += 1


@pytest.fixture
def fake_engines(monkeypatch, tmp_path):
    import controller.engine

    FakeEngine.made = []
    monkeypatch.setattr(controller.engine, "Engine", FakeEngine)
    monkeypatch.setenv("DOCKER_HOST", "unix:///nowhere.sock")
    return base.Context.of(load_settings(tmp_path / "root", env={}))


def test_one_engine_per_host_in_a_call_closed_once_at_its_end(fake_engines):
    ctx = fake_engines
    with base.engine_clients():
        first, second = base.docker(ctx), base.docker(ctx)
        with base.engine_clients():  # nested: the outer call owns the clients
            third = base.docker(ctx)
        assert first.engine is second.engine is third.engine
        assert FakeEngine.made[0].closed == 0
    assert [e.closed for e in FakeEngine.made] == [1]
    base.docker(ctx)  # a new call: a new client
    assert len(FakeEngine.made) == 2


def test_clients_are_closed_when_the_call_fails(fake_engines):
    ctx = fake_engines
    with pytest.raises(OperationError), base.engine_clients():
        base.docker(ctx)
        raise OperationError("boom")
    assert [e.closed for e in FakeEngine.made] == [1]


def test_every_manager_method_and_the_iterator_it_returns_get_a_scope(fake_engines):
    ctx = fake_engines

    @base.one_call_each
    class Facade:
        def fails(self) -> None:
            base.docker(ctx)
            raise OperationError("boom")

        def lines(self):
            base.docker(ctx)
            yield "one"
            base.docker(ctx)
            yield "two"

    with pytest.raises(OperationError):
        Facade().fails()
    assert [e.closed for e in FakeEngine.made] == [1]
    lines = Facade().lines()
    assert next(lines) == "one" and FakeEngine.made[1].closed == 0
    # Half-way through an iterator, another call still closes its own client.
    with pytest.raises(OperationError):
        Facade().fails()
    assert [e.closed for e in FakeEngine.made] == [1, 0, 1]
    assert list(lines) == ["two"]
    assert [e.closed for e in FakeEngine.made] == [1, 1, 1]  # one client for all its steps
    dropped = Facade().lines()
    next(dropped)
    dropped.close()  # left half-way (Ctrl-C during `logs --follow`)
    assert [e.closed for e in FakeEngine.made] == [1, 1, 1, 1]


# --- the real thing: an instance on the worker, many commands in one process -----------------
NAME = SHARED  # the session's instance on the worker (tests/world/remote.py shared_world)


def ssh_children() -> list[str]:
    """This process's ssh children, as "pid:state" (a zombie not yet reaped counts too)."""
    me, found = os.getpid(), []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:
            continue  # it ended meanwhile
        comm = text[text.index("(") + 1 : text.rindex(")")]
        state, ppid = text[text.rindex(")") + 2 :].split()[:2]
        if comm == "ssh" and int(ppid) == me:
            found.append(f"{stat.parent.name}:{state}")
    return found


@pytest.fixture(scope="module")
def world(shared_world):
    return shared_world.converge()


@pytest.fixture
def manager(world, monkeypatch):
    """A Manager in this process, with the settings the CLI runs with."""
    from controller.manager import Manager

    for key, value in world.env.items():
        if key.startswith("SUPABASE_MANAGER_"):
            monkeypatch.setenv(key, value)
    return Manager(load_settings())


def open_sockets() -> int:
    """This process's open sockets: over ssh an Engine connection is one, whether its stream
    is an ssh process or a channel of the master (a forwarded socket)."""
    count = 0
    for fd in Path("/proc/self/fd").iterdir():
        with contextlib.suppress(OSError):
            count += os.readlink(fd).startswith("socket:")
    return count


@pytest.mark.docker
def test_many_facade_calls_leave_no_ssh_process_or_connection_behind(manager, monkeypatch):
    from controller.ops import lifecycle

    assert manager.show(NAME).host == HOST  # the master (ControlPersist) is up from here on
    sockets = open_sockets()
    after: list[tuple[list[str], int]] = []

    def look() -> None:
        after.append((ssh_children(), open_sockets() - sockets))

    for _ in range(6):
        assert manager.show(NAME).status == "running"
        look()
    assert any(line.strip() for line in manager.logs(NAME, tail=5))
    look()
    manager.restart(NAME)  # own_project, compose over ssh, wait_healthy: one client reused
    look()

    def broken(*_args, **_kwargs):
        raise OperationError("compose broke")

    monkeypatch.setattr(lifecycle, "compose", broken)
    kept = []
    for _ in range(3):
        with pytest.raises(OperationError, match="compose broke") as failed:
            manager.stop(NAME)  # fails after its engine client was opened
        # Kept, as a caller may keep the last error: its traceback holds the frames that held
        # the client, so only closing it (not the collector) ends its connection.
        kept.append(failed)
        look()
    print("after each call (ssh children, sockets opened):", after)
    # No ssh child is left and no socket more than before (one may close: the count may drop).
    assert [children for children, _ in after] == [[]] * len(after), after
    assert all(opened <= 0 for _, opened in after), after
