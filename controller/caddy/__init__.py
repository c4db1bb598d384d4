"""Caddy adapter: publishes each instance on NAME.domain, NAME-studio.domain and NAME-mail.domain
(the last two behind basic auth with the instance's dashboard credentials).

Live changes go through Caddy's JSON admin API (one request per instance change); the same routes
are mirrored as Caddyfile snippets SNIPPET_DIR/NAME.conf so they survive a Caddy restart or reload.
Every function takes a ``CaddyConfig`` (admin address, lock path, snippet folder, scheme, public
port, the data root's owner tag): no settings object, no environment lookups.

- ``SiteSpec(name, hosts, api_upstream, studio_upstream, user, password_hash, mail_upstream)``;
  ``studio_password_hash(cache_file, password, write=True)``.
- ``publish(cfg, spec)`` / ``unpublish(cfg, name)``: snippet and live route in one locked step;
  return notes (Caddy down postpones the live part). ``check_hosts(cfg, spec)``: HostTaken
  (exit 2) when a route that is not the instance's serves one of its hosts.
- ``sync(cfg, desired, only=None, busy=...)`` -> lines; ``status(cfg, specs, keep)`` -> dict.
- ``reachable(cfg)``, ``routed_instances(cfg)``, ``request_rates(cfg, window)``.
"""

from controller.caddy.admin import AdminClient, parse_admin
from controller.caddy.config import CaddyConfig
from controller.caddy.metrics import RateMeter, request_rates
from controller.caddy.routes import (
    HostTaken,
    SiteSpec,
    remember_password_hash,
    render_route,
    studio_password_hash,
)
from controller.caddy.snippets import (
    published_hashes,
    remove_snippet,
    render_snippet,
    site_addresses,
    write_snippet,
)
from controller.caddy.sync import (
    Desired,
    apply_instance,
    check_hosts,
    publish,
    reachable,
    remove_instance,
    routed_instances,
    status,
    sync,
    unpublish,
)

__all__ = [
    "AdminClient",
    "CaddyConfig",
    "Desired",
    "HostTaken",
    "RateMeter",
    "SiteSpec",
    "apply_instance",
    "check_hosts",
    "parse_admin",
    "publish",
    "published_hashes",
    "reachable",
    "remember_password_hash",
    "remove_instance",
    "remove_snippet",
    "render_route",
    "render_snippet",
    "request_rates",
    "routed_instances",
    "site_addresses",
    "status",
    "studio_password_hash",
    "sync",
    "unpublish",
    "write_snippet",
]
