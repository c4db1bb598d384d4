"""What an instance looks like in Caddy's JSON config, and how a change to the routes is planned.

An instance is ONE route, ``"@id": "sbm-OWNER-NAME"``, matching all its hosts: a ``vars`` handler
marking it ours (``supabase_manager: OWNER/NAME``, which a Caddyfile can carry where ``@id``
cannot), then a subroute with one child per host: the API gateway, Studio and the mail catcher's
UI, the last two behind basic auth. Everything here is pure (no I/O): ``plan`` takes the
``/config/apps`` JSON as read and returns the single admin request that turns it into the wanted
config. A route that is not ours (another ROOT's, the operator's own site) is never changed: a
host it serves is refused (``HostTaken``).
"""

import hashlib
import hmac
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs
import bcrypt

from controller.basicauth import hash_password
from controller.caddy.config import MARKER, CaddyConfig
from controller.errors import OperationError, UsageError
from controller.fsutil import atomic_write

ROLES = ("api", "studio", "mail")  # the order of the children in the subroute and the snippet
AUTH_ROLES = ("studio", "mail")  # behind basic auth: neither has a login of its own
STREAM_CLOSE_DELAY = "10m"  # keep WebSockets (Realtime) open across config reloads
DEFAULT_SERVER_NAME = "supabase"

_UPSTREAM = re.compile(r"^[A-Za-z0-9.\-\[\]:]+:\d{1,5}$")
_USER = re.compile(r'^[^\s{}"\\:]+$')


class HostTaken(UsageError):
    """A host of the instance is already served by a route that is not this instance's."""


@attrs.frozen
class SiteSpec:
    """How one instance is published. ``user`` / ``password_hash`` guard Studio and mail."""

    name: str
    hosts: dict[str, str]  # role -> host: "api", "studio", optionally "mail"
    api_upstream: str  # "127.0.0.1:PORT": the instance's API gateway
    studio_upstream: str  # where Studio is reached (the gateway, which also asks for auth)
    user: str
    password_hash: str  # bcrypt
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


def check_spec(spec: SiteSpec) -> None:
    """OperationError when the spec could not be rendered safely (JSON and Caddyfile alike)."""
    if "api" not in spec.hosts or "studio" not in spec.hosts:
        raise OperationError(f"instance {spec.name}: site needs an api and a studio host")
    for _, host, upstream in spec.routed():
        if not re.fullmatch(r"[a-z0-9.\-]+", host):
            raise OperationError(f"instance {spec.name}: invalid host name {host!r}")
        if not _UPSTREAM.match(upstream):
            raise OperationError(f"instance {spec.name}: invalid upstream {upstream!r}")
    if not _USER.match(spec.user):
        raise OperationError(
            f"instance {spec.name}: DASHBOARD_USERNAME must not be empty nor hold spaces, "
            "colons, quotes, braces or backslashes"
        )
    if not spec.password_hash.startswith(("$2a$", "$2b$", "$2y$")):
        raise OperationError(f"instance {spec.name}: the dashboard password hash is not bcrypt")


# --- the dashboard password ---------------------------------------------------------------------
def _fingerprint(hashed: str, password: str) -> str:
    return hmac.new(hashed.encode(), password.encode(), hashlib.sha256).hexdigest()


def studio_password_hash(
    cache_file: Path, password: str, *, write: bool = True, known: Iterable[str] = ()
) -> str:
    """A bcrypt hash of ``password``, kept in ``cache_file`` (mode 0600) and reused while it still
    matches, so the rendered routes stay the same from one run to the next.

    The file holds the hash and an HMAC of the password keyed by that hash; the HMAC lets a
    sync of hundreds of instances skip one slow ``bcrypt.checkpw`` per instance. The file is as
    secret as the instance's .env, which holds the password itself.

    With ``write=False`` (a read such as ``caddy status``) nothing is written: a hash in ``known``
    (e.g. the one in the published snippet) that matches the password is used, else a new one
    that lives only in memory.
    """
    cache_file = Path(cache_file)
    try:
        lines = cache_file.read_text().split()
    except (FileNotFoundError, NotADirectoryError):
        lines = []
    except OSError as exc:
        raise OperationError(f"cannot read {cache_file}: {exc.strerror}") from None
    candidates = [lines[0]] if lines and lines[0].startswith("$2") else []
    fingerprint = lines[1] if candidates and len(lines) > 1 else ""
    if fingerprint and hmac.compare_digest(fingerprint, _fingerprint(candidates[0], password)):
        return candidates[0]
    candidates += [h for h in known if h.startswith("$2")]
    for hashed in candidates:
        try:
            if bcrypt.checkpw(password.encode(), hashed.encode()):
                if write:
                    _write_cache(cache_file, hashed, password)
                return hashed
        except ValueError:
            continue
    hashed = hash_password(password)
    if write:
        _write_cache(cache_file, hashed, password)
    return hashed


def _write_cache(cache_file: Path, hashed: str, password: str) -> None:
    cache_file.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(cache_file, f"{hashed}\n{_fingerprint(hashed, password)}\n", 0o600)


def remember_password_hash(cache_file: Path, password: str, hashed: str) -> None:
    """Keep ``hashed``, just made for ``password`` (controller.basicauth.PendingHash), in
    ``cache_file`` so that studio_password_hash returns it without hashing again."""
    _write_cache(Path(cache_file), hashed, password)


# --- route JSON ---------------------------------------------------------------------------------
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


def render_route(spec: SiteSpec, cfg: CaddyConfig) -> dict:
    """The one route (with ``@id`` and our marker) that publishes the instance."""
    check_spec(spec)
    children = []
    for role, host, upstream in spec.routed():
        handlers = [_proxy(upstream)]
        if role in AUTH_ROLES:
            handlers.insert(0, _basic_auth(spec.user, spec.password_hash))
        children.append({"match": [{"host": [host]}], "handle": handlers, "terminal": True})
    return {
        "@id": cfg.route_id(spec.name),
        "match": [{"host": [host for _, host, _ in spec.routed()]}],
        "handle": [
            {"handler": "vars", MARKER: cfg.marker(spec.name)},
            {"handler": "subroute", "routes": children},
        ],
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


def route_marker(route: Mapping[str, Any]) -> str | None:
    """The ``OWNER/NAME`` our ``vars`` handler carries: at the top of a route we pushed, or in
    the first level of the subroute a Caddyfile snippet of ours adapts to."""
    for handler in _handlers(route):
        if handler.get("handler") == "vars" and isinstance(handler.get(MARKER), str):
            return handler[MARKER]
    return None


def _handlers(route: Mapping[str, Any]) -> Iterator[Mapping[str, Any]]:
    for handler in route.get("handle") or []:
        if not isinstance(handler, Mapping):
            continue
        yield handler
        if handler.get("handler") == "subroute":
            for child in handler.get("routes") or []:
                for inner in (child or {}).get("handle") or []:
                    if isinstance(inner, Mapping):
                        yield inner


def route_instance(route: Any, cfg: CaddyConfig) -> str | None:
    """The name of our instance a route publishes (by ``@id`` or by marker), else None."""
    if not isinstance(route, Mapping):
        return None
    ident = route.get("@id")
    if isinstance(ident, str) and ident.startswith(cfg.id_prefix):
        return ident[len(cfg.id_prefix) :]
    marker = route_marker(route)
    if ident is None and marker and marker.startswith(cfg.owner + "/"):
        return marker[len(cfg.owner) + 1 :]
    return None


def instance_names(apps: Mapping[str, Any] | None, cfg: CaddyConfig) -> dict[str, list]:
    """Our instance name -> [(server, index)] of every route of ours (with id or id-less)."""
    found: dict[str, list[tuple[str, int]]] = {}
    for server, body in _servers(apps).items():
        for index, route in enumerate((body or {}).get("routes") or []):
            name = route_instance(route, cfg)
            if name is not None:
                found.setdefault(name, []).append((server, index))
    return found


def taken_hosts(
    apps: Mapping[str, Any] | None, cfg: CaddyConfig, name: str, hosts: Iterable[str]
) -> dict[str, str]:
    """Each of ``hosts`` that a route which is not instance ``name``'s serves -> that route."""
    wanted = {h.lower() for h in hosts}
    taken: dict[str, str] = {}
    for body in _servers(apps).values():
        for route in (body or {}).get("routes") or []:
            if not isinstance(route, Mapping) or route_instance(route, cfg) == name:
                continue
            for host in route_hosts(route) & wanted:
                taken.setdefault(host, _describe(route))
    return taken


def host_taken(name: str, taken: Mapping[str, str]) -> HostTaken:
    """The one-line refusal naming every taken host and what serves the first of them."""
    hosts = sorted(taken)
    verb = "is" if len(hosts) == 1 else "are"
    return HostTaken(
        f"{', '.join(hosts)} {verb} already served in Caddy by {taken[hosts[0]]}, "
        f"not by instance {name}"
    )


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


def _describe(route: Mapping[str, Any]) -> str:
    ident = route.get("@id")
    if isinstance(ident, str):
        return f"route {ident}"
    marker = route_marker(route)
    if marker:
        return f"a route of supabase-manager data root {marker.split('/', 1)[0]}"
    return "a site of the Caddyfile"


def plan(
    apps: Mapping[str, Any] | None,
    cfg: CaddyConfig,
    apply: Sequence[SiteSpec] = (),
    remove: Iterable[str] = (),
) -> Plan:
    """One admin request that publishes every spec in ``apply`` (replacing its old route and any
    id-less copy of it) and withdraws every instance in ``remove``. Only routes of ours are ever
    changed: HostTaken when a host is served by a route that is not the instance's own."""
    # Copies only of what is changed (dicts and lists on the way down to the routes): routes
    # themselves are never changed in place, so a plan costs little even with 1000s of routes.
    old_apps = dict(apps or {})
    new_apps = dict(old_apps)
    http = new_apps["http"] = dict(old_apps.get("http") or {})
    servers = http["servers"] = {
        name: _copy_server(body) for name, body in (http.get("servers") or {}).items()
    }
    lines: list[str] = []

    # 1. withdraw: the instance's route and its id-less copies.
    for name in remove:
        if _drop(servers, cfg, name)[0]:
            lines.append(f"removed route {cfg.route_id(name)}")

    # 2. publish.
    claimed: dict[str, str] = {}
    for spec in apply:
        for host in spec.host_set():
            if host in claimed and claimed[host] != spec.name:
                raise OperationError(
                    f"host {host} is wanted by both instance {claimed[host]} and {spec.name}"
                )
            claimed[host] = spec.name
    for spec in apply:
        route = render_route(spec, cfg)
        hosts = spec.host_set()
        taken = taken_hosts({"http": http}, cfg, spec.name, hosts)
        if taken:
            raise host_taken(spec.name, taken)
        target = public_server(servers, cfg.public_port)
        _, position = _drop(servers, cfg, spec.name, keep_in=target)
        if target is None:
            target = DEFAULT_SERVER_NAME
            while target in servers:
                target += "-sbm"
            listen = f"{_bind_host(cfg.bind)}:{cfg.public_port}"
            servers[target] = {"listen": [listen], "routes": []}
            if cfg.scheme == "http":
                servers[target]["automatic_https"] = {"disable": True}
            if not old_apps.get("http"):
                http.setdefault("metrics", {"per_host": True})
            lines.append(f"created Caddy server {target} listening on {listen}")
        server = servers[target]
        routes = server.setdefault("routes", [])
        first_catch_all = next((i for i, r in enumerate(routes) if is_catch_all(r)), len(routes))
        index = first_catch_all if position is None else min(position, first_catch_all)
        routes.insert(index, route)
        _skip_auto_https(http, server, cfg, hosts)
        lines.append(
            f"routed {', '.join(h for _, h, _ in spec.routed())} ({cfg.route_id(spec.name)})"
        )

    if not servers and "servers" not in (old_apps.get("http") or {}):
        if old_apps.get("http"):
            del http["servers"]
        else:
            new_apps = old_apps
    request = _request(old_apps, new_apps)
    return Plan(request=request, lines=lines if request else [])


def _bind_host(bind: str) -> str:
    if ":" in bind and not bind.startswith("["):
        bind = f"[{bind}]"
    return bind


def _copy_server(server: Mapping[str, Any] | None) -> dict:
    out = dict(server or {})
    if "routes" in out:
        out["routes"] = list(out["routes"] or [])
    return out


def _drop(
    servers: dict, cfg: CaddyConfig, name: str, keep_in: str | None = None
) -> tuple[bool, int | None]:
    """Remove every route of instance ``name`` (with its id, or an id-less copy carrying its
    marker) from every server. Returns whether anything changed and the index in server
    ``keep_in`` where the first removed route was (the new one goes there)."""
    position = None
    changed = False
    for server_name, server in servers.items():
        routes = (server or {}).get("routes")
        if not routes:
            continue
        kept = []
        for route in routes:
            if route_instance(route, cfg) != name:
                kept.append(route)
                continue
            if server_name == keep_in and position is None:
                position = len(kept)
        if len(kept) != len(routes):
            server["routes"] = kept
            changed = True
    return changed, position


def _skip_auto_https(http: dict, server: dict, cfg: CaddyConfig, hosts: set[str]) -> None:
    """Plain-HTTP sites on a port other than Caddy's HTTP port must be listed in
    ``automatic_https.skip`` (as the Caddyfile adapter does), or Caddy turns TLS on for them."""
    if cfg.scheme != "http" or cfg.public_port == int(http.get("http_port") or 80):
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
