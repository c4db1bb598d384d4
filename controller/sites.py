"""An instance's public sites as Caddy should serve them, derived from its record and .env, and
the Caddy adapter's typed configuration derived from Settings.

Who can reach what (issue 10, items 1 and 2):
- Studio has no host port of its own: NAME-studio routes to the instance's API gateway, which
  serves Studio at ``/`` behind basic auth with DASHBOARD_USERNAME / DASHBOARD_PASSWORD (upstream's
  design), and Caddy asks for the same credentials first. A local user who dials the gateway's
  127.0.0.1 port meets the same login.
- The mail catcher (overlay "mail", Mailpit) holds every Auth e-mail: Caddy puts the same basic
  auth in front of NAME-mail, and Mailpit's own web UI asks for it too (MP_UI_AUTH), so its
  127.0.0.1 port is no way around it.
"""

import os
from collections.abc import Mapping
from pathlib import Path

from controller.caddy import CaddyConfig, SiteSpec, published_hashes
from controller.caddy import studio_password_hash as password_hash
from controller.config import Settings
from controller.errors import UsageError
from controller.ownership import ROOT_ID_FILE, root_id
from controller.state import InstanceRecord
from controller.templatefiles import MAIL_OVERLAY, TemplateFiles, role_port_key

# Where a server that the adapter has to create listens ("" = every interface), e.g. 127.0.0.1
# behind another proxy; the Caddyfile's own servers are the usual way.
BIND_ENV = "SUPABASE_MANAGER_CADDY_BIND"
NO_OWNER = "unset"  # a ROOT without an id has published nothing yet


def caddy_config(
    settings: Settings, environ: Mapping[str, str] | None = None, *, write: bool = True
) -> CaddyConfig:
    """The adapter's view of Settings. Route ids and markers carry this ROOT's id (the one its
    Docker objects are labelled with); a read (``write=False``) never makes that id: without
    it, no route can be this ROOT's yet."""
    environ = os.environ if environ is None else environ
    if write:
        owner = root_id(settings.root)
    else:
        try:
            owner = (settings.root / ROOT_ID_FILE).read_text().strip() or NO_OWNER
        except FileNotFoundError:
            owner = NO_OWNER
    return CaddyConfig(
        admin=settings.caddy_admin,
        lock_path=settings.root / ".caddy.lock",
        snippet_dir=settings.caddy_dir,
        scheme=settings.scheme,
        public_port=settings.public_port,
        owner=owner,
        bind=environ.get(BIND_ENV, "").strip(),
    )


def studio_hash_cache(settings: Settings, name: str) -> Path:
    """Where the bcrypt hash of the instance's dashboard password is cached (see
    controller.caddy.studio_password_hash)."""
    return settings.instance_dir(name) / ".studio-auth"


def site_spec(
    settings: Settings,
    record: InstanceRecord,
    files: TemplateFiles,
    env: Mapping[str, str],
    *,
    write: bool = True,
    upstream_host: str = "127.0.0.1",
) -> SiteSpec:
    """API and Studio hosts to the gateway, mail host to the mail catcher's UI when the overlay
    is on; Studio and mail behind basic auth with the instance's dashboard credentials.
    ``upstream_host``: the address Caddy dials the ports on (another host's private address
    for an instance there, ``Place.upstream``).

    UsageError when those credentials could not guard a site. ``write=False`` (a read such as
    ``caddy status``) writes nothing, not even the hash cache.
    """

    dial = f"[{upstream_host}]" if ":" in upstream_host else upstream_host

    def upstream(role: str) -> str | None:
        key = role_port_key(files, record.overlays, role)
        return f"{dial}:{record.ports[key]}" if key in record.ports else None

    password = env.get("DASHBOARD_PASSWORD") or ""
    if not password:
        # An empty password would leave Studio open to anyone who knows the host name.
        raise UsageError(f"{record.name} has no DASHBOARD_PASSWORD: Studio is not published")
    user = env.get("DASHBOARD_USERNAME") or "supabase"
    if any(c.isspace() or c in ':"{}\\' for c in user):
        raise UsageError(
            "DASHBOARD_USERNAME must not hold spaces, colons, quotes, braces or backslashes"
        )
    hosts = settings.hosts(record.name)
    mail = upstream("mail") if MAIL_OVERLAY in record.overlays else None
    if not mail:
        hosts.pop("mail")
    gateway = upstream("gateway") or ""
    # The hash is cached beside the instance so the spec, and so the live route, stays the same
    # from one run to the next while the password does not change.
    cache = studio_hash_cache(settings, record.name)
    known = () if write else published_hashes(settings.snippet_path(record.name))
    return SiteSpec(
        name=record.name,
        hosts=hosts,
        api_upstream=gateway,
        studio_upstream=gateway,
        user=user,
        password_hash=password_hash(cache, password, write=write, known=known),
        mail_upstream=mail,
    )
