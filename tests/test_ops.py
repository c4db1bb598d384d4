"""The use cases' own decisions, in process (the CLI-level tests are test_hardening.py and, with
Docker, test_lifecycle.py)."""

import pytest

from controller.config import Settings
from controller.dockerapi import ContainerState
from controller.errors import UsageError
from controller.ops import templates
from controller.ops.base import Context
from controller.ops.create import _same_ports
from controller.ops.queries import _status
from controller.state import READY, InstanceRecord, State


def _record(**kwargs) -> InstanceRecord:
    return InstanceRecord("shop", "v0.8.2", phase=READY, **kwargs)


def _container(state: str) -> ContainerState:
    return ContainerState("id", "shop-db", "shop", "db", state, None)


def test_status_of_an_instance_never_started_is_stopped_not_missing():
    assert _status(_record(started=False), [], set())[0] == "stopped"
    # One that ran and lost its containers behind our back is missing.
    assert _status(_record(started=True), [], set())[0] == "missing"
    assert _status(_record(started=True), [_container("running")], set())[0] == "running"
    assert _status(_record(started=True), [_container("exited")], set())[0] == "stopped"


def test_a_resumed_create_compares_ports_as_allocated():
    held = {"api-gw:8000": 20000, "api-gw:8443": 20001, "db:5432": 20002}
    assert _same_ports({"api-gw": 20000}, held)  # a bare service means its first port
    assert _same_ports({"api-gw:8443": 20001, "db": 20002}, held)
    assert not _same_ports({"api-gw": 20001}, held)
    assert not _same_ports({"nosuch": 20000}, held)


def test_only_a_template_of_the_store_is_chosen(tmp_path):
    ctx = Context.of(Settings(root=tmp_path))
    with pytest.raises(UsageError, match="no template yet"):
        templates.chosen(ctx, None, State())
    for name in ("v1", "v2"):
        (tmp_path / "templates" / name).mkdir(parents=True)
        (tmp_path / "templates" / name / "docker-compose.yml").write_text("services: {}\n")
    (tmp_path / "instances" / "a").mkdir(parents=True)
    (tmp_path / "instances" / "a" / "docker-compose.yml").write_text("services: {}\n")
    assert templates.chosen(ctx, "v1", State()) == "v1"
    assert templates.chosen(ctx, None, State()) == "v2"  # none recorded: the last by name
    for bad in ("nosuch", "../instances/a", "v1/..", ""):
        with pytest.raises(UsageError, match="no template named"):
            templates.chosen(ctx, bad, State())


def test_list_flags_an_instance_whose_template_has_a_newer_import():
    from controller.ops.queries import _newer_template
    from controller.state import TemplateRecord

    state = State()
    state.templates["old"] = TemplateRecord("old", "import:/a", added_at="2026-01-01T00:00:00Z")
    state.templates["new"] = TemplateRecord("new", "import:/b", added_at="2026-02-01T00:00:00Z")
    newest = state.templates["new"]
    assert _newer_template(state, "old", newest) == "new"
    assert _newer_template(state, "new", newest) is None  # already on the newest
    assert _newer_template(state, "gone", newest) is None  # its template was removed
    # An instance on a template imported after the "newest" by name is not flagged backwards.
    state.templates["old"] = TemplateRecord("old", "import:/a", added_at="2026-03-01T00:00:00Z")
    assert _newer_template(state, "old", newest) is None
