"""What an instance looks like in Caddy's JSON config, and how a change to the routes is planned.

An instance is ONE route, ``"@id": "sbm-NAME"``, matching all its hosts, whose subroute has one
child per host: the API gateway, Studio behind basic auth, and the mail catcher's UI. Everything
here is pure (no I/O): ``plan`` takes the ``/config/apps`` JSON as read and returns the single
admin request that turns it into the wanted config.
"""

import hashlib
import hmac
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs
import bcrypt

from controller.errors import OperationError
from controller.fsutil import atomic_write

ID_PREFIX = "sbm-"
ROLES = ("api", "studio", "mail")  # the order of the children in the subroute and the snippet
STREAM_CLOSE_DELAY = "10m"  # keep WebSockets (Realtime) open across config reloads
DEFAULT_SERVER_NAME = "supabase"
BCRYPT_ROUNDS = 12
BIND_ENV = "SUPABASE_MANAGER_CADDY_BIND"

_UPSTREAM = re.compile(r"^[A-Za-z0-9.\-\[\]:]+:\d{1,5}$")
_USER = re.compile(r'^[^\s{}"\\]+$')


@attrs.frozen
class SiteSpec:
    """How one instance is published."""

    name: str
    hosts: dict[str, str]  # role -> host: "api", "studio", optionally "mail"
    api_upstream: str  # "127.0.0.1:PORT": the instance's API gateway
    studio_upstream: str  # "127.0.0.1:PORT": Studio itself, so basic auth is required in Caddy
    studio_user: str
    studio_password_hash: str  # bcrypt
    mail_upstream: str | None = None

    def upstream(self, role: str) -> str | None:
        return {
            "api": self.api_upstream,
            "studio": self.studio_upstream,
            "mail": self.mail_upstream,
        }.get(role)

    def routed(self) -> list[tuple[str, str, str]]:
        """``(role, host, upstream)`` for every host that is published, in ROLES order."""
        out = []
        for role in ROLES:
            host, upstream = self.hosts.get(role), self.upstream(role)
            if host and upstream:
                out.append((role, host.lower(), upstream))
        return out

    def host_set(self) -> set[str]:
        return {host for _, host, _ in self.routed()}


def route_id(name: str) -> str:
    return ID_PREFIX + name


def check_spec(spec: SiteSpec) -> None:
    """OperationError when the spec could not be rendered safely (JSON and Caddyfile alike)."""
    if "api" not in spec.hosts or "studio" not in spec.hosts:
        raise OperationError(f"instance {spec.name}: site needs an api and a studio host")
    for _, host, upstream in spec.routed():
        if not re.fullmatch(r"[a-z0-9.\-]+", host):
            raise OperationError(f"instance {spec.name}: invalid host name {host!r}")
        if not _UPSTREAM.match(upstream):
            raise OperationError(f"instance {spec.name}: invalid upstream {upstream!r}")
    if not _USER.match(spec.studio_user):
        raise OperationError(
            f"instance {spec.name}: the Studio user name must not be empty nor hold spaces, "
            "quotes, braces or backslashes"
        )
    if not spec.studio_password_hash.startswith(("$2a$", "$2b$", "$2y$")):
        raise OperationError(f"instance {spec.name}: the Studio password hash is not bcrypt")


# --- the Studio password ------------------------------------------------------------------------
def _fingerprint(hashed: str, password: str) -> str:
    return hmac.new(hashed.encode(), password.encode(), hashlib.sha256).hexdigest()


def studio_password_hash(cache_file: Path, password: str) -> str:
    """A bcrypt hash of ``password``, kept in ``cache_file`` (mode 0600) and reused while it still
    matches, so the rendered routes stay the same from one run to the next.

    The file holds the hash and an HMAC of the password keyed by that hash; the HMAC lets a
    sync of hundreds of instances skip one slow ``bcrypt.checkpw`` per instance. The file is as
    secret as the instance's .env, which holds the password itself.
    """
    cache_file = Path(cache_file)
    try:
        lines = cache_file.read_text().split()
    except (FileNotFoundError, NotADirectoryError):
        lines = []
    except OSError as exc:
        raise OperationError(f"cannot read {cache_file}: {exc.strerror}") from None
    if lines and lines[0].startswith("$2"):
        hashed = lines[0]
        if len(lines) > 1 and hmac.compare_digest(lines[1], _fingerprint(hashed, password)):
            return hashed
        try:
            if bcrypt.checkpw(password.encode(), hashed.encode()):
                atomic_write(cache_file, f"{hashed}\n{_fingerprint(hashed, password)}\n", 0o600)
                return hashed
        except ValueError:
            pass
    hashed = bcrypt.hashpw(password.encode(), bcrypt.gensalt(BCRYPT_ROUNDS)).decode()
    cache_file.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(cache_file, f"{hashed}\n{_fingerprint(hashed, password)}\n", 0o600)
    return hashed


# --- addresses and route JSON ---------------------------------------------------------------------
def site_addresses(settings: Any, spec: SiteSpec) -> list[str]:
    """Caddyfile site addresses: ``scheme://host[:port]``, no port when the scheme implies it."""
    default = {"https": 443, "http": 80}[settings.scheme]
    port = "" if settings.public_port == default else f":{settings.public_port}"
    return [f"{settings.scheme}://{host}{port}" for _, host, _ in spec.routed()]


def _proxy(upstream: str) -> dict:
    return {
        "handler": "reverse_proxy",
        "upstreams": [{"dial": upstream}],
        "stream_close_delay": STREAM_CLOSE_DELAY,
    }


def _basic_auth(user: str, hashed: str) -> dict:
    return {
        "handler": "authentication",
        "providers": {
            "http_basic": {
                "accounts": [{"username": user, "password": hashed}],
                "hash": {"algorithm": "bcrypt"},
                "hash_cache": {},
            }
        },
    }


def render_route(spec: SiteSpec) -> dict:
    """The one route (with ``@id``) that publishes the instance."""
    check_spec(spec)
    children = []
    for role, host, upstream in spec.routed():
        handlers = [_proxy(upstream)]
        if role == "studio":
            handlers.insert(0, _basic_auth(spec.studio_user, spec.studio_password_hash))
        children.append({"match": [{"host": [host]}], "handle": handlers, "terminal": True})
    return {
        "@id": route_id(spec.name),
        "match": [{"host": [host for _, host, _ in spec.routed()]}],
        "handle": [{"handler": "subroute", "routes": children}],
        "terminal": True,
    }


# --- reading the live config ----------------------------------------------------------------------
def listen_ports(address: str) -> range | None:
    """The ports a Caddy listen address covers (``:443``, ``tcp/127.0.0.1:80-81``, ...)."""
    text = address.split("/", 1)[1] if "/" in address.split(":", 1)[0] else address
    if address.startswith(("unix", "fd/", "fdgram/")) or ":" not in text:
        return None
    port = text.rsplit(":", 1)[1]
    try:
        low, _, high = port.partition("-")
        return range(int(low), int(high or low) + 1)
    except ValueError:
        return None


def public_server(servers: Mapping[str, Any], port: int) -> str | None:
    """The name of the server listening on ``port`` (preferring one named "supabase")."""
    names = sorted(servers, key=lambda n: (n != DEFAULT_SERVER_NAME, n))
    for name in names:
        server = servers[name] or {}
        for address in server.get("listen") or []:
            ports = listen_ports(str(address))
            if ports is not None and port in ports and not str(address).startswith("udp"):
                return name
    return None


def route_hosts(route: Mapping[str, Any]) -> set[str]:
    """Hosts named by a route's own matchers (lowercase)."""
    hosts: set[str] = set()
    for matcher in route.get("match") or []:
        for host in matcher.get("host") or []:
            hosts.add(str(host).lower())
    return hosts


def is_catch_all(route: Mapping[str, Any]) -> bool:
    """A route that can match hosts not listed (no matcher, a matcher set without host, or a
    wildcard host): anything placed after it may be shadowed."""
    matchers = route.get("match")
    if not matchers:
        return True
    for matcher in matchers:
        hosts = matcher.get("host")
        if not hosts or any("*" in str(h) or "{" in str(h) for h in hosts):
            return True
    return False


def instance_names(apps: Mapping[str, Any] | None) -> dict[str, list[tuple[str, int]]]:
    """Instance name -> [(server, index)] of every ``sbm-*`` route."""
    found: dict[str, list[tuple[str, int]]] = {}
    for server, body in _servers(apps).items():
        for index, route in enumerate((body or {}).get("routes") or []):
            ident = route.get("@id") if isinstance(route, dict) else None
            if isinstance(ident, str) and ident.startswith(ID_PREFIX):
                found.setdefault(ident[len(ID_PREFIX) :], []).append((server, index))
    return found


def _servers(apps: Mapping[str, Any] | None) -> dict[str, Any]:
    return ((apps or {}).get("http") or {}).get("servers") or {}


# --- planning a change ----------------------------------------------------------------------------
@attrs.frozen
class Request:
    method: str
    path: str
    body: Any = None


@attrs.frozen
class Plan:
    """The admin request to send (None: nothing to do) and what it does, in words."""

    request: Request | None
    lines: list[str]


def _strip_hosts(route: dict, hosts: set[str]) -> dict | None:
    """``route`` without ``hosts`` in its host matchers; None when nothing of it is left."""
    kept = []
    for matcher in route.get("match") or []:
        if "host" not in matcher:
            kept.append(matcher)
            continue
        left = [h for h in matcher["host"] if str(h).lower() not in hosts]
        if left:
            kept.append({**matcher, "host": left})
    if not kept:
        return None
    return {**route, "match": kept}


def _bind_host(settings: Any) -> str:
    bind = getattr(settings, "caddy_bind", None) or os.environ.get(BIND_ENV, "")
    if ":" in bind and not bind.startswith("["):
        bind = f"[{bind}]"
    return bind


def plan(
    apps: Mapping[str, Any] | None,
    settings: Any,
    apply: Sequence[SiteSpec] = (),
    remove: Iterable[str] = (),
) -> Plan:
    """One admin request that publishes every spec in ``apply`` (replacing its old route, and any
    id-less route for its hosts) and withdraws every instance in ``remove``."""
    # Copies only of what is changed (dicts and lists on the way down to the routes): routes
    # themselves are never changed in place, so a plan costs little even with 1000s of routes.
    old_apps = dict(apps or {})
    new_apps = dict(old_apps)
    http = new_apps["http"] = dict(old_apps.get("http") or {})
    servers = http["servers"] = {
        name: _copy_server(body) for name, body in (http.get("servers") or {}).items()
    }
    lines: list[str] = []

    # 1. withdraw: the sbm-NAME route and id-less routes for the instance's default hosts.
    for name in remove:
        hosts = {h.lower() for h in settings.hosts(name).values()}
        if _drop(servers, route_id(name), hosts)[0]:
            lines.append(f"removed route {route_id(name)}")

    # 2. publish.
    claimed: dict[str, str] = {}
    for spec in apply:
        hosts = spec.host_set()
        for host in hosts:
            if host in claimed and claimed[host] != spec.name:
                raise OperationError(
                    f"host {host} is wanted by both instance {claimed[host]} and {spec.name}"
                )
            claimed[host] = spec.name
    for spec in apply:
        route = render_route(spec)
        hosts = spec.host_set()
        target = public_server(servers, settings.public_port)
        _, position = _drop(servers, route_id(spec.name), hosts, keep_in=target)
        if target is None:
            target = DEFAULT_SERVER_NAME
            while target in servers:
                target += "-sbm"
            listen = f"{_bind_host(settings)}:{settings.public_port}"
            servers[target] = {"listen": [listen], "routes": []}
            if settings.scheme == "http":
                servers[target]["automatic_https"] = {"disable": True}
            if not old_apps.get("http"):
                http.setdefault("metrics", {"per_host": True})
            lines.append(f"created Caddy server {target} listening on {listen}")
        server = servers[target]
        routes = server.setdefault("routes", [])
        for other in routes:
            ident = other.get("@id")
            if ident and ident != route_id(spec.name) and route_hosts(other) & hosts:
                raise OperationError(
                    f"instance {spec.name}: route {ident} in Caddy already serves "
                    f"{', '.join(sorted(route_hosts(other) & hosts))}"
                )
        first_catch_all = next((i for i, r in enumerate(routes) if is_catch_all(r)), len(routes))
        index = first_catch_all if position is None else min(position, first_catch_all)
        routes.insert(index, route)
        _skip_auto_https(http, server, settings, hosts)
        lines.append(f"routed {', '.join(h for _, h, _ in spec.routed())} ({route_id(spec.name)})")

    if not servers and "servers" not in (old_apps.get("http") or {}):
        if old_apps.get("http"):
            del http["servers"]
        else:
            new_apps = old_apps
    request = _request(old_apps, new_apps)
    return Plan(request=request, lines=lines if request else [])


def _copy_server(server: Mapping[str, Any] | None) -> dict:
    out = dict(server or {})
    if "routes" in out:
        out["routes"] = list(out["routes"] or [])
    return out


def _drop(
    servers: dict, ident: str, hosts: set[str], keep_in: str | None = None
) -> tuple[bool, int | None]:
    """Remove route ``ident`` and strip ``hosts`` from id-less routes in every server. Returns
    whether anything changed and the index in server ``keep_in`` where the first removed route
    was (the new one goes there)."""
    position = None
    changed = False
    for server_name, server in servers.items():
        routes = (server or {}).get("routes")
        if not routes:
            continue
        kept = []
        for route in routes:
            if route.get("@id") == ident:
                dropped = True
            elif "@id" not in route and route_hosts(route) & hosts:
                stripped = _strip_hosts(route, hosts)
                dropped = stripped is None
                if stripped is not None:
                    kept.append(stripped)
            else:
                kept.append(route)
                continue
            if server_name == keep_in and position is None:
                position = len(kept) - (0 if dropped else 1)
        if kept != routes:
            server["routes"] = kept
            changed = True
    return changed, position


def _skip_auto_https(http: dict, server: dict, settings: Any, hosts: set[str]) -> None:
    """Plain-HTTP sites on a port other than Caddy's HTTP port must be listed in
    ``automatic_https.skip`` (as the Caddyfile adapter does), or Caddy turns TLS on for them."""
    if settings.scheme != "http" or settings.public_port == int(http.get("http_port") or 80):
        return
    auto = dict(server.get("automatic_https") or {})
    if auto.get("disable"):
        return
    skip = list(auto.get("skip") or [])
    missing = sorted(hosts - set(skip))
    if missing:
        auto["skip"] = skip + missing
        server["automatic_https"] = auto


def _request(old_apps: dict, new_apps: dict) -> Request | None:
    """The smallest single request that turns ``old_apps`` into ``new_apps``."""
    if old_apps == new_apps:
        return None
    if "http" not in old_apps:
        if not old_apps:
            return Request("PUT", "/config/apps", new_apps)
        return Request("PUT", "/config/apps/http", new_apps["http"])
    old_http, new_http = old_apps["http"], new_apps["http"]
    base = "/config/apps/http"
    if {k: v for k, v in old_http.items() if k != "servers"} != {
        k: v for k, v in new_http.items() if k != "servers"
    }:
        return Request("PATCH", base, new_http)
    if "servers" not in old_http:
        return Request("PUT", f"{base}/servers", new_http["servers"])
    old_servers, new_servers = old_http["servers"], new_http["servers"]
    changed = sorted(
        n for n in set(old_servers) | set(new_servers) if old_servers.get(n) != new_servers.get(n)
    )
    if len(changed) > 1 or any(n not in new_servers for n in changed):
        return Request("PATCH", f"{base}/servers", new_servers)
    (name,) = changed
    path = f"{base}/servers/{name}"
    if name not in old_servers:
        return Request("PUT", path, new_servers[name])
    old_server, new_server = old_servers[name], new_servers[name]
    if {k: v for k, v in old_server.items() if k != "routes"} != {
        k: v for k, v in new_server.items() if k != "routes"
    }:
        return Request("PATCH", path, new_server)
    if "routes" not in old_server:
        return Request("PUT", f"{path}/routes", new_server["routes"])
    return _routes_request(f"{path}/routes", old_server["routes"], new_server["routes"])


def _routes_request(path: str, old: list, new: list) -> Request:
    """One route inserted, replaced or deleted: a request carrying just that route."""
    head = 0
    while head < min(len(old), len(new)) and old[head] == new[head]:
        head += 1
    tail = 0
    room = min(len(old), len(new)) - head
    while tail < room and old[len(old) - 1 - tail] == new[len(new) - 1 - tail]:
        tail += 1
    removed, added = len(old) - head - tail, len(new) - head - tail
    if removed == 0 and added == 1:
        return Request("PUT", f"{path}/{head}", new[head])
    if removed == 1 and added == 1:
        return Request("PATCH", f"{path}/{head}", new[head])
    if removed == 1 and added == 0:
        return Request("DELETE", f"{path}/{head}")
    return Request("PATCH", path, new)
