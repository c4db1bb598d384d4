"""An instance's Caddy site from its record and .env (controller/sites.py), without Caddy: who is
routed where, what the dashboard credentials guard, and that a read writes nothing."""

from pathlib import Path

import bcrypt
import pytest

from controller.caddy import render_snippet
from controller.config import Settings
from controller.errors import UsageError
from controller.sites import caddy_config, site_spec
from controller.state import InstanceRecord
from controller.templatefiles import TemplateFiles, needed_ports
from tests.world.templates import fixtures_dir

TEMPLATE = TemplateFiles(fixtures_dir() / "v0.8.2")
ENV = {"DASHBOARD_USERNAME": "admin", "DASHBOARD_PASSWORD": "Pw-123"}


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(root=tmp_path / "root", domain="d.test", scheme="https", public_port=443)


def record(name: str, overlays: list[str]) -> InstanceRecord:
    keys = needed_ports(TEMPLATE, overlays)
    return InstanceRecord(
        name=name,
        template="v0.8.2",
        overlays=overlays,
        ports={key: 21000 + i for i, key in enumerate(keys)},
    )


def test_studio_goes_through_the_gateway_and_mail_is_guarded_too(settings):
    spec = site_spec(settings, record("a", ["mail"]), TEMPLATE, ENV)
    assert spec.hosts == {"api": "a.d.test", "studio": "a-studio.d.test", "mail": "a-mail.d.test"}
    gateway = f"127.0.0.1:{record('a', ['mail']).ports['api-gw:8000']}"
    assert spec.api_upstream == spec.studio_upstream == gateway
    assert spec.mail_upstream == f"127.0.0.1:{record('a', ['mail']).ports['mail:8025']}"
    assert spec.user == "admin" and bcrypt.checkpw(b"Pw-123", spec.password_hash.encode())
    snippet = render_snippet(caddy_config(settings), spec)
    assert snippet.count('basic_auth {\n\t\t\t"admin" ' + spec.password_hash) == 2
    # Without the overlay there is no mail host at all.
    assert "mail" not in site_spec(settings, record("b", []), TEMPLATE, ENV).hosts


def test_credentials_that_could_not_guard_a_site_are_bad_input(settings):
    for env, word in (
        ({**ENV, "DASHBOARD_PASSWORD": ""}, "no DASHBOARD_PASSWORD"),
        ({**ENV, "DASHBOARD_USERNAME": "ad min"}, "DASHBOARD_USERNAME must not hold spaces"),
        ({**ENV, "DASHBOARD_USERNAME": "a:b"}, "DASHBOARD_USERNAME must not hold spaces, colons"),
    ):
        with pytest.raises(UsageError, match=word):
            site_spec(settings, record("c", []), TEMPLATE, env)


def test_a_read_writes_nothing(settings):
    cfg = caddy_config(settings, write=False)
    assert cfg.owner == "unset" and not settings.root.exists()  # no root-id made for a read
    spec = site_spec(settings, record("r", []), TEMPLATE, ENV, write=False)
    assert not settings.root.exists()
    # With a published snippet, a read reuses its hash while the password still matches it.
    written = caddy_config(settings)
    assert (settings.root / "root-id").read_text().strip() == written.owner
    published = site_spec(settings, record("r", []), TEMPLATE, ENV)
    path = settings.snippet_path("r")
    path.parent.mkdir(parents=True)
    path.write_text(render_snippet(written, published))
    (settings.instance_dir("r") / ".studio-auth").unlink()
    again = site_spec(settings, record("r", []), TEMPLATE, ENV, write=False)
    assert again.password_hash == published.password_hash != spec.password_hash
    assert not (settings.instance_dir("r") / ".studio-auth").exists()
    assert caddy_config(settings, write=False).owner == written.owner


def test_sync_sees_an_instance_another_command_holds(settings):
    from controller.fsutil import file_lock
    from controller.ops.base import Context
    from controller.ops.publish import busy_elsewhere

    ctx = Context.of(settings)
    assert not busy_elsewhere(ctx, "x")  # no lock file: never worked on
    with file_lock(settings.root / "locks" / "x.lock"):
        assert busy_elsewhere(ctx, "x")
        assert not busy_elsewhere(ctx, "y")
    assert not busy_elsewhere(ctx, "x")
