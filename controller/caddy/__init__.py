"""Caddy adapter: publishes each instance on NAME.domain, NAME-studio.domain and NAME-mail.domain.

Live changes go through Caddy's JSON admin API (one request per instance change); the same routes
are mirrored as Caddyfile snippets ROOT/caddy/NAME.conf so they survive a Caddy restart or reload.

What the manager calls (``settings`` is controller.config.Settings):

- ``studio_password_hash(cache_file, password)``: bcrypt hash, cached (0600) while it matches.
- ``SiteSpec(name, hosts, api_upstream, studio_upstream, studio_user, studio_password_hash,
  mail_upstream=None)``; ``site_addresses(settings, spec)``.
- ``apply_instance(settings, spec)`` / ``remove_instance(settings, name)``: one admin change each;
  CaddyUnavailable when Caddy cannot be reached, OperationError when Caddy refuses.
- ``write_snippet(settings, spec, notes=None)`` -> Path / ``remove_snippet(settings, name)``.
- ``sync(settings, specs, only=None)`` -> lines; ``status(settings, specs)`` -> dict;
  ``reachable(settings)`` -> bool; ``requests_per_host(settings)`` -> dict | None.

A server the adapter must create (no server listens on settings.public_port yet) listens on
``:PORT``, or ``HOST:PORT`` when ``settings.caddy_bind`` or env SUPABASE_MANAGER_CADDY_BIND is set.
"""

from controller.caddy.admin import AdminClient, parse_admin
from controller.caddy.metrics import requests_per_host
from controller.caddy.routes import (
    SiteSpec,
    render_route,
    route_id,
    site_addresses,
    studio_password_hash,
)
from controller.caddy.snippets import remove_snippet, render_snippet, write_snippet
from controller.caddy.sync import apply_instance, reachable, remove_instance, status, sync

__all__ = [
    "AdminClient",
    "SiteSpec",
    "apply_instance",
    "parse_admin",
    "reachable",
    "remove_instance",
    "remove_snippet",
    "render_route",
    "render_snippet",
    "requests_per_host",
    "route_id",
    "site_addresses",
    "status",
    "studio_password_hash",
    "sync",
    "write_snippet",
]
