"""The Caddy side of instances: publish one (snippet on disk and the live route, one locked step),
unpublish one, sync every route with the desired state, report drift, and per-host request rates.

Caddy being down only postpones the live part: the snippet on disk is what a Caddy restart loads,
and `caddy sync` pushes what is pending. A create, delete or env set that could not reach Caddy
still does everything else, then fails (exit 1) with one RoutesPending line naming what was done
and what is pending. `caddy sync` reads the state under the adapter's lock
and leaves alone an instance another command is working on (its per-instance lock is held), so a
create or delete running meanwhile never loses its route nor gets it back.
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Mapping

from controller.errors import CaddyUnavailable, ManagerError, OperationError
from controller.ops.base import Context, audited, check_writable, env, record, template
from controller.state import LOCAL_HOST, InstanceRecord


def config(ctx: Context, write: bool = True):
    from controller.sites import caddy_config

    return caddy_config(ctx.settings, write=write)


def site_spec(
    ctx: Context,
    found: InstanceRecord,
    values: Mapping[str, str] | None = None,
    write: bool = True,
):
    """The instance's Caddy site, from its record and .env (``values``: an .env about to be
    written), checked so that Caddy accepts it (UsageError for bad dashboard credentials).
    ``write=False``: a read, nothing is written (not even the password hash cache)."""
    from controller.caddy import render_route
    from controller.sites import site_spec as make

    if values is None:
        values = env(ctx, found.name).as_dict()
    files = template(ctx, found.template)
    upstream = {}
    if found.host != LOCAL_HOST:  # Caddy dials the ports on that host's private address
        from controller.hosts import place_of

        upstream["upstream_host"] = place_of(ctx.settings, ctx.store.read(), found).upstream
    spec = make(ctx.settings, found, files, values, write=write, **upstream)
    render_route(spec, config(ctx, write=False))  # checks the spec; needs no id
    return spec


def check_hosts(ctx: Context, name: str, mail: bool) -> list[str]:
    """Before anything of a new instance is written: HostTaken (exit 2) naming a host Caddy
    already serves through a route that is not this instance's (the operator's own site, another
    data root's instance). Returns notes (Caddy down: nothing could be checked)."""
    from controller.caddy import check_hosts as check

    hosts = dict(ctx.settings.hosts(name))
    if not mail:
        hosts.pop("mail")
    return check(config(ctx, write=False), name, hosts.values())


class RoutesPending(CaddyUnavailable):
    """The command did all it could, but Caddy's live routes wait for `caddy sync` (exit 1)."""


def publish(ctx: Context, found: InstanceRecord, spec=None) -> list[str]:
    """Write the snippet and push the live route; returns a warning when Caddy is down."""
    from controller.caddy import publish as publish_site

    spec = spec or site_spec(ctx, found)
    return publish_site(config(ctx), spec)


def unpublish(ctx: Context, name: str) -> list[str]:
    from controller.caddy import unpublish as unpublish_site

    return unpublish_site(config(ctx), name)


def publish_live(ctx: Context, found: InstanceRecord, spec=None) -> bool:
    """Write the snippet and push the live route; False when Caddy could not be reached (the
    snippet is written, the route is pending). controller.caddy's publish has a note to return
    only then."""
    return not publish(ctx, found, spec)


def unpublish_live(ctx: Context, name: str) -> bool:
    """Remove the snippet and the live route; False when Caddy could not be reached."""
    return not unpublish(ctx, name)


def pending(ctx: Context, done: str, note: str = "") -> RoutesPending:
    """The one line for a command that did ``done`` but could not reach Caddy (``note``: what
    else the user should know, at its end)."""
    return RoutesPending(
        f"{done}, but Caddy's admin API at {ctx.settings.caddy_admin} cannot be reached: its "
        f"routes are pending; run `caddy sync` once Caddy is back" + (f"; {note}" if note else "")
    )


def specs(ctx: Context, write: bool = True) -> tuple[dict, dict[str, str]]:
    """Every instance's site, and why some could not be worked out (their routes and snippets
    are then left alone, never mistaken for leftovers)."""
    out, failures = {}, {}
    for name, found in ctx.store.read().instances.items():
        try:
            out[name] = site_spec(ctx, found, write=write)
        except ManagerError as exc:
            failures[name] = str(exc)
    return out, failures


def busy_elsewhere(ctx: Context, name: str) -> bool:
    """Whether another command holds the instance's lock (ops.base.busy) right now."""
    try:
        fd = os.open(ctx.settings.root / "locks" / f"{name}.lock", os.O_RDONLY)
    except FileNotFoundError:
        return False  # no command ever worked on it
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)  # also releases the probe's own lock
    return False


def sync(ctx: Context, name: str | None = None) -> list[str]:
    from controller.caddy import Desired
    from controller.caddy import sync as caddy_sync

    if name is not None:
        record(ctx, name)
    check_writable(ctx)
    failures: dict[str, str] = {}

    def desired() -> Desired:
        wanted, failed = specs(ctx)
        failures.update(failed)
        return Desired(specs=wanted, keep=failed)

    with audited(ctx, "caddy sync", name):
        lines = caddy_sync(config(ctx), desired, only=name, busy=lambda n: busy_elsewhere(ctx, n))
        skipped = {n: why for n, why in failures.items() if name in (None, n)}
        if skipped:
            first = sorted(skipped)[0]
            raise OperationError(
                f"left {len(skipped)} instance(s) as they were, e.g. {first}: "
                f"{skipped[first]} (done: {'; '.join(lines)})"
            )
        return lines


def status(ctx: Context) -> dict:
    """Drift between the state and Caddy; a read: nothing is written. ``reachable`` False when
    Caddy's admin API does not answer (the front-end exits 1)."""
    from controller.caddy import status as caddy_status

    wanted, failures = specs(ctx, write=False)
    result = caddy_status(config(ctx, write=False), wanted, keep=failures)
    result["skipped"] = failures
    return result


def request_rates(
    ctx: Context, name: str | None = None, window: float = 1.0
) -> dict[str, float] | None:
    """Requests per second per host over ``window`` seconds (two samples of Caddy's counters),
    or None when Caddy has no per-host metrics. CaddyUnavailable when Caddy does not answer."""
    from controller.caddy import request_rates as rates_of

    rates = rates_of(config(ctx, write=False), window)
    if rates is None or name is None:
        return rates
    hosts = set(ctx.settings.hosts(name).values())
    return {host: value for host, value in rates.items() if host in hosts}


def request_counts(ctx: Context) -> dict[str, float] | None:
    """Caddy's per-host counters since its last config load (for a caller that keeps its own
    previous sample, as ``top`` does with controller.caddy.RateMeter)."""
    from controller.caddy.admin import AdminClient
    from controller.caddy.metrics import request_counts as counts_of

    with AdminClient(ctx.settings.caddy_admin) as client:
        return counts_of(client)


__all__ = [
    "CaddyUnavailable",
    "RoutesPending",
    "busy_elsewhere",
    "check_hosts",
    "pending",
    "publish",
    "publish_live",
    "request_counts",
    "request_rates",
    "site_spec",
    "specs",
    "status",
    "sync",
    "unpublish",
    "unpublish_live",
]


def requests_per_host(ctx: Context, name: str | None = None) -> dict[str, float] | None:
    """Requests per second per host (two samples): what `show` prints as "/s"."""
    return request_rates(ctx, name)
