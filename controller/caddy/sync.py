"""Live changes through the admin API: apply, remove, sync, status.

Every change is ONE admin request computed from a fresh read of ``/config/apps`` and sent with
``If-Match``; the read-modify-write runs under an flock (ROOT/.caddy.lock) so supabase-manager
processes never write at the same time, and is redone after a 412 or a dropped connection (Caddy
restarts its admin server on each load, so a write can fail after it was applied: the re-read
then shows the change in place and nothing more is sent).
"""

import time
from collections.abc import Callable, Collection, Mapping
from typing import Any

from controller.caddy import snippets
from controller.caddy.admin import AdminClient, Conflict, write_lock
from controller.caddy.routes import (
    ID_PREFIX,
    Plan,
    SiteSpec,
    instance_names,
    plan,
    public_server,
    render_route,
)
from controller.errors import CaddyUnavailable, OperationError

APPS = "/config/apps"
ATTEMPTS = 8
READ_TRIES = 4


def change(settings: Any, compute: Callable[[Any], Plan]) -> Plan:
    """Read ``/config/apps``, compute a plan from it and send its request with If-Match."""
    with AdminClient(settings.caddy_admin) as client, write_lock(settings.root):
        delay = 0.05
        last: Exception | None = None
        read_failures = 0
        for _ in range(ATTEMPTS):
            try:
                apps, etag = client.get(APPS)
            except CaddyUnavailable:
                # Down, or restarting its admin server after a load: a few quick tries (~0.35 s).
                read_failures += 1
                if read_failures >= READ_TRIES:
                    raise
                time.sleep(delay)
                delay *= 2
                continue
            result = compute(apps)
            if result.request is None:
                return result
            req = result.request
            try:
                client.request(req.method, req.path, body=req.body, etag=etag)
            except Conflict as exc:
                last = exc
                continue
            except CaddyUnavailable as exc:
                last = exc
                time.sleep(delay)
                delay *= 2
                continue
            return result
        if isinstance(last, CaddyUnavailable):
            raise last
        raise OperationError(f"Caddy config kept changing under supabase-manager: {last}")


def apply_instance(settings: Any, spec: SiteSpec) -> None:
    """Publish (or update) one instance with one admin change."""
    render_route(spec)  # bad input fails before Caddy is asked
    change(settings, lambda apps: plan(apps, settings, apply=[spec]))


def remove_instance(settings: Any, name: str) -> None:
    """Withdraw the instance's route and any id-less copy for its hosts."""
    change(settings, lambda apps: plan(apps, settings, remove=[name]))


def _live_state(apps: Any, settings: Any, spec: SiteSpec) -> str:
    if spec.name not in instance_names(apps):
        return "missing"
    try:
        return "ok" if plan(apps, settings, apply=[spec]).request is None else "stale"
    except OperationError:
        return "conflict"  # another route (not ours) serves one of its hosts


def _snippet_state(settings: Any, spec: SiteSpec) -> str:
    path = settings.snippet_path(spec.name)
    try:
        text = path.read_text()
    except FileNotFoundError:
        return "missing"
    return "ok" if text == snippets.render_snippet(settings, spec) else "stale"


def sync(
    settings: Any,
    specs: Mapping[str, SiteSpec],
    only: str | None = None,
    keep: Collection[str] = (),
) -> list[str]:
    """Make snippets and live routes match ``specs`` (all of them, or just instance ``only``).

    ``keep`` names instances that exist but whose spec could not be worked out: their snippets
    and routes are left as they are, never taken for leftovers.

    Snippets first (they do not need Caddy); then one admin change that adds missing or stale
    routes, removes ``sbm-*`` routes of instances not in ``specs`` and strips id-less duplicates.
    Raises CaddyUnavailable after writing the snippets when Caddy cannot be reached, and
    OperationError, after doing all it could, when a snippet was refused or a host is served by a
    route that is not ours.
    """
    wanted = {n: s for n, s in specs.items() if only is None or n == only}
    lines: list[str] = []
    # Extra snippets first: an address they hold may be wanted by an instance below.
    dropped: list[str] = []
    for name in snippets.snippet_names(settings):
        if name not in specs and name not in keep and (only is None or name == only):
            snippets.remove_snippet(settings, name)
            dropped.append(name)  # its id-less live copy (from a reload) goes too
            lines.append(f"removed snippet {name}.conf (no such instance)")
    notes: list[str] = []
    problems: list[str] = []
    index: dict[str, str] | None = None
    for name, spec in sorted(wanted.items()):
        state = _snippet_state(settings, spec)
        if state != "ok":
            if index is None:
                index = snippets.address_index(settings)
            try:
                snippets.write_snippet(settings, spec, notes, index=index)
            except OperationError as exc:
                problems.append(str(exc))
                continue
            lines.append(f"wrote snippet {settings.snippet_path(name).name} ({state} before)")
    lines.extend(dict.fromkeys(notes))

    refused: dict[str, str] = {}

    def compute(apps: Any) -> Plan:
        live = instance_names(apps)
        extra = [
            n
            for n in sorted(live)
            if n not in specs and n not in keep and (only is None or n == only)
        ]
        extra += [n for n in dropped if n not in live]
        todo = []
        refused.clear()
        for name, spec in sorted(wanted.items()):
            try:
                if plan(apps, settings, apply=[spec]).request is None:
                    continue
            except OperationError:
                pass  # another route serves one of its hosts: maybe one removed below
            try:
                plan(apps, settings, apply=[spec], remove=extra)
            except OperationError as exc:
                refused[name] = str(exc)
                continue
            todo.append(spec)
        return plan(apps, settings, apply=todo, remove=extra)

    try:
        result = change(settings, compute)
    except CaddyUnavailable as exc:
        raise CaddyUnavailable(f"{exc} (snippets are up to date: {len(lines)} change(s))") from None
    lines.extend(result.lines)
    problems.extend(f"not routed: {message}" for _, message in sorted(refused.items()))
    if problems:
        done = f" (done: {'; '.join(lines)})" if lines else ""
        raise OperationError("; ".join(problems) + done)
    return lines or ["nothing to do: Caddy and the snippets match"]


def reachable(settings: Any, timeout: float = 1.0) -> bool:
    """Whether Caddy's admin API answers (quick; for a toolbar or health check)."""
    with AdminClient(settings.caddy_admin, timeout=timeout) as client:
        return client.reachable()


def status(settings: Any, specs: Mapping[str, SiteSpec], keep: Collection[str] = ()) -> dict:
    """Drift between ``specs`` and Caddy (and the snippet files); never raises for Caddy down.
    Instances in ``keep`` (spec unknown) are not reported as extra."""
    out: dict[str, Any] = {
        "reachable": False,
        "admin": settings.caddy_admin,
        "metrics_per_host": False,
        "server": None,
        "instances": {},
        "extra": [],
        "snippets": {n: _snippet_state(settings, s) for n, s in sorted(specs.items())},
        "extra_snippets": [
            n for n in snippets.snippet_names(settings) if n not in specs and n not in keep
        ],
    }
    try:
        with AdminClient(settings.caddy_admin) as client:
            apps, _ = client.get(APPS)
    except CaddyUnavailable as exc:
        out["error"] = str(exc)
        out["instances"] = dict.fromkeys(sorted(specs), "unknown")
        return out
    http = (apps or {}).get("http") or {}
    out["reachable"] = True
    out["metrics_per_host"] = bool((http.get("metrics") or {}).get("per_host"))
    out["server"] = public_server(http.get("servers") or {}, settings.public_port)
    out["instances"] = {n: _live_state(apps, settings, s) for n, s in sorted(specs.items())}
    out["extra"] = sorted(n for n in instance_names(apps) if n not in specs and n not in keep)
    return out


__all__ = [
    "ID_PREFIX",
    "apply_instance",
    "change",
    "reachable",
    "remove_instance",
    "status",
    "sync",
]
