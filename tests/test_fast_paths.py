"""The shortcuts that keep fresh commands fast (issue 9) give the same results as the long way.

- state.json read without cattrs when it holds exactly the JSON types it is written with; anything
  else goes through cattrs as before (converted or refused).
- create hashes the new dashboard password in a background thread while it renders: the first
  render writes that very password and the hash cache then serves it without hashing again.
"""

import json
import subprocess
import sys
from pathlib import Path

import bcrypt
import pytest

from controller import state as state_mod
from controller.basicauth import PendingHash
from controller.caddy import remember_password_hash, studio_password_hash
from controller.config import Settings
from controller.envfile import EnvFile
from controller.errors import StateError
from controller.ports import allocate
from controller.render import render_instance
from controller.state import InstanceRecord, State, StateStore, TemplateRecord, dumps, loads
from controller.templatefiles import TemplateFiles, needed_ports
from tests.world.templates import fixtures_dir

REPO = Path(__file__).resolve().parents[1]


def _state() -> State:
    state = State()
    state.templates["v0.8.2"] = TemplateRecord(name="v0.8.2", source="import:/x")
    state.instances["alpha"] = InstanceRecord(
        name="alpha",
        template="v0.8.2",
        phase="ready",
        overlays=["mail"],
        extra_compose=["/srv/extra.yml"],
        ports={"kong:8000": 20000, "db:5432": 20001},
        cpus=1.5,
        memory="2g",
        autostart=False,
        started=True,
        previous_template="old",
        upgrade_backup="b1",
    )
    state.instances["beta"] = InstanceRecord(name="beta", template="v0.8.2")
    return state


def test_plain_state_reads_the_same_with_and_without_cattrs():
    written = _state()
    text = dumps(written)
    fast = state_mod._plain(json.loads(text), State)
    assert fast == state_mod.get_converter().structure(json.loads(text), State)
    assert fast == written
    assert loads(text, Path("state.json")) == written


def test_state_that_is_not_plain_goes_through_cattrs():
    raw = json.loads(dumps(_state()))
    raw["instances"]["alpha"]["cpus"] = 2  # an int where a float is written
    raw["instances"]["alpha"]["ports"]["kong:8000"] = "20000"
    raw["instances"]["alpha"]["unknown_key"] = "ignored"
    with pytest.raises(state_mod._NotPlain):
        state_mod._plain(raw, State)
    read = loads(json.dumps(raw), Path("state.json"))
    assert read.instances["alpha"].cpus == 2.0 and isinstance(read.instances["alpha"].cpus, float)
    assert read.instances["alpha"].ports["kong:8000"] == 20000

    del raw["instances"]["beta"]["template"]  # a required field missing: refused as before
    with pytest.raises(StateError, match="unexpected structure"):
        loads(json.dumps(raw), Path("state.json"))
    raw = json.loads(dumps(_state()))
    raw["instances"]["alpha"]["ports"] = ["not", "a", "dict"]
    with pytest.raises(StateError, match="unexpected structure"):
        loads(json.dumps(raw), Path("state.json"))


def test_reading_state_does_not_load_cattrs_but_writing_does(tmp_path):
    store = StateStore(tmp_path / "state.json", tmp_path / ".state.lock")
    with store.transaction() as state:
        state.instances.update(_state().instances)
    probe = (
        "import sys; from pathlib import Path; from controller.state import StateStore; "
        f"s = StateStore(Path({str(tmp_path / 'state.json')!r}), Path({str(tmp_path)!r}) / 'l'); "
        "n = len(s.read().instances); print(n, 'cattrs' in sys.modules)"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True, check=True
    )
    assert done.stdout.split() == ["2", "False"]
    from controller.state import converter  # still there for the modules that use it

    assert converter is state_mod.get_converter()


def _record(template: TemplateFiles, settings: Settings, name: str) -> InstanceRecord:
    ports = allocate(needed_ports(template, []), {}, set(), settings.port_range)
    return InstanceRecord(name=name, template=template.path.name, ports=ports)


def test_first_render_takes_the_password_being_hashed_and_a_rerender_keeps_its_own(tmp_path):
    settings = Settings(root=tmp_path, domain="example.dev", port_range=(23000, 23999))
    template = TemplateFiles(fixtures_dir() / "v0.8.2")
    record = _record(template, settings, "alpha")
    chosen = "A" * 32
    folder = render_instance(settings, record, template, initial={"DASHBOARD_PASSWORD": chosen})
    env = EnvFile.parse((folder / ".env").read_text())
    assert env.get("DASHBOARD_PASSWORD") == chosen
    assert env.get("POSTGRES_PASSWORD")  # the other secrets are still generated

    render_instance(settings, record, template, initial={"DASHBOARD_PASSWORD": "B" * 32})
    assert EnvFile.parse((folder / ".env").read_text()).get("DASHBOARD_PASSWORD") == chosen


def test_the_background_hash_is_served_from_the_cache_without_hashing_again(tmp_path, monkeypatch):
    pending = PendingHash("correct horse battery staple")
    hashed = pending.result()
    assert bcrypt.checkpw(pending.password.encode(), hashed.encode())
    cache = tmp_path / "alpha" / ".studio-auth"
    remember_password_hash(cache, pending.password, hashed)

    def no_bcrypt(*_args):
        raise AssertionError("hashed again")

    monkeypatch.setattr(bcrypt, "hashpw", no_bcrypt)
    monkeypatch.setattr(bcrypt, "checkpw", no_bcrypt)
    assert studio_password_hash(cache, pending.password) == hashed
    assert cache.stat().st_mode & 0o777 == 0o600


def test_create_publishes_a_hash_of_the_password_it_wrote(tmp_path):
    """End to end through the facade (Caddy down, so the route stays pending): the cached hash
    the snippet uses matches the .env's password."""
    from controller.manager import Manager

    settings = Settings(
        root=tmp_path,
        domain="example.dev",
        port_range=(23000, 23999),
        caddy_admin="http://127.0.0.1:9",
    )
    manager = Manager(settings)
    manager.template_import(fixtures_dir() / "v0.8.2", name="v0.8.2")
    from controller.ops.publish import RoutesPending

    with pytest.raises(RoutesPending, match="alpha was created"):
        manager.create("alpha", start=False)
    folder = settings.instance_dir("alpha")
    password = EnvFile.parse((folder / ".env").read_text()).get("DASHBOARD_PASSWORD")
    hashed = (folder / ".studio-auth").read_text().split()[0]
    assert bcrypt.checkpw(password.encode(), hashed.encode())
    assert hashed in settings.snippet_path("alpha").read_text()
