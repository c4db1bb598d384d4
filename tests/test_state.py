"""state.json: atomic, locked read-modify-write; a corrupt file stops everything and is kept."""

import json
import multiprocessing
import os

import pytest

from controller.errors import StateError
from controller.state import SCHEMA_VERSION, InstanceRecord, StateStore


def _store(root):
    return StateStore(root / "state.json", root / ".state.lock")


def test_round_trip_keeps_records(tmp_path):
    store = _store(tmp_path)
    with store.transaction() as state:
        state.instances["shop"] = InstanceRecord("shop", "v0.8.2", ports={"api-gw:8000": 20000})
    again = store.read()
    assert again.instances["shop"].ports == {"api-gw:8000": 20000}
    assert again.schema == SCHEMA_VERSION
    assert oct(os.stat(tmp_path / "state.json").st_mode & 0o777) == "0o600"


def test_exception_inside_transaction_leaves_file_untouched(tmp_path):
    store = _store(tmp_path)
    with store.transaction() as state:
        state.instances["a"] = InstanceRecord("a", "t")
    before = (tmp_path / "state.json").read_text()
    with pytest.raises(RuntimeError), store.transaction() as state:
        state.instances["b"] = InstanceRecord("b", "t")
        raise RuntimeError("boom")
    assert (tmp_path / "state.json").read_text() == before


@pytest.mark.parametrize(
    "content",
    ["{not json", json.dumps({"instances": {}}), json.dumps({"schema": 1, "instances": 5})],
)
def test_corrupt_file_is_reported_and_never_overwritten(tmp_path, content):
    path = tmp_path / "state.json"
    path.write_text(content)
    store = _store(tmp_path)
    with pytest.raises(StateError) as info:
        store.read()
    assert str(path) in str(info.value)
    with pytest.raises(StateError), store.transaction() as state:
        state.instances["x"] = InstanceRecord("x", "t")
    assert path.read_text() == content


def _add_many(root, prefix, count):
    store = _store(root)
    for i in range(count):
        with store.transaction() as state:
            used = state.used_ports()
            port = next(p for p in range(20000, 30000) if p not in used)
            state.instances[f"{prefix}{i}"] = InstanceRecord(
                f"{prefix}{i}", "t", ports={"x:1": port}
            )


def test_concurrent_writers_lose_nothing(tmp_path):
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=_add_many, args=(tmp_path, f"p{n}-", 10)) for n in range(6)]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join(60)
        assert proc.exitcode == 0
    state = _store(tmp_path).read()
    assert len(state.instances) == 60
    ports = [p for r in state.instances.values() for p in r.ports.values()]
    assert len(set(ports)) == 60


def test_a_state_file_of_another_schema_version_is_refused_and_kept(tmp_path):
    path = tmp_path / "state.json"
    newer = json.dumps({"schema": SCHEMA_VERSION + 1, "instances": {}, "templates": {}})
    path.write_text(newer)
    store = _store(tmp_path)
    with pytest.raises(StateError, match=f"schema version {SCHEMA_VERSION + 1}"):
        store.read()
    with pytest.raises(StateError), store.transaction() as state:
        state.instances["x"] = InstanceRecord("x", "t")
    assert path.read_text() == newer


@pytest.mark.parametrize(
    "content",
    [b"[" * 100_000 + b"]" * 100_000, b'{"schema": 1, "instances": ' + b"[" * 5000, b"\xff\xfe"],
    ids=["deep", "deep-truncated", "binary"],
)
def test_unparseable_state_is_a_state_error(tmp_path, content):
    path = tmp_path / "state.json"
    path.write_bytes(content)
    with pytest.raises(StateError, match="corrupt"):
        _store(tmp_path).read()
    assert path.read_bytes() == content


def test_records_from_before_the_started_field_count_as_started(tmp_path):
    # A record written before `started` existed may have containers: delete must look for them.
    path = tmp_path / "state.json"
    path.write_text(
        json.dumps({"schema": 1, "instances": {"old": {"name": "old", "template": "t"}}})
    )
    assert _store(tmp_path).read().instances["old"].started is True
    assert InstanceRecord("new", "t", started=False).started is False
