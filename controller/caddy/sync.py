"""Live changes through the admin API and the snippet files: publish, unpublish, sync, status.

Every change is ONE admin request computed from a fresh read of ``/config/apps`` and sent with
``If-Match``; it runs under an flock (``CaddyConfig.lock_path``) so processes of one data root
never write at the same time, and is redone after a 412 or a dropped connection (Caddy restarts
its admin server on each load, so a write can fail after it was applied: the re-read then shows
the change in place and nothing more is sent). Snippet files are written under the same lock, so
``sync``, which decides from the desired state what is a leftover, never races a publish.
"""

import contextlib
import time
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping
from typing import Any

import attrs
import httpx

from controller import faults
from controller.caddy import snippets
from controller.caddy.admin import AdminClient, Conflict
from controller.caddy.config import CaddyConfig
from controller.caddy.routes import (
    Plan,
    SiteSpec,
    check_spec,
    host_taken,
    instance_names,
    plan,
    public_server,
    render_route,
    taken_hosts,
)
from controller.errors import CaddyUnavailable, ManagerError, OperationError
from controller.fsutil import file_lock

APPS = "/config/apps"
ATTEMPTS = 8
READ_TRIES = 4


@contextlib.contextmanager
def locked(cfg: CaddyConfig) -> Iterator[None]:
    """Serialize every change of this data root's routes and snippets, across processes."""
    with file_lock(cfg.lock_path):
        yield


def client_for(
    cfg: CaddyConfig, transport: httpx.BaseTransport | None = None, **kw: Any
) -> AdminClient:
    return AdminClient(cfg.admin, transport=transport, **kw)


def change(client: AdminClient, compute: Callable[[Any], Plan], pause: float = 0.05) -> Plan:
    """Read ``/config/apps``, compute a plan from it and send its request with If-Match; redo
    it after a 412 or a dropped connection. The caller holds ``locked``."""
    delay = pause
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


# --- one instance ---------------------------------------------------------------------------------
def apply_instance(
    cfg: CaddyConfig, spec: SiteSpec, transport: httpx.BaseTransport | None = None
) -> None:
    """Publish (or update) one instance's live route with one admin change."""
    render_route(spec, cfg)  # bad input fails before Caddy is asked
    with locked(cfg), client_for(cfg, transport) as client:
        change(client, lambda apps: plan(apps, cfg, apply=[spec]))


def remove_instance(
    cfg: CaddyConfig, name: str, transport: httpx.BaseTransport | None = None
) -> None:
    """Withdraw the instance's live route and any id-less copy of it."""
    with locked(cfg), client_for(cfg, transport) as client:
        change(client, lambda apps: plan(apps, cfg, remove=[name]))


def check_hosts(cfg: CaddyConfig, name: str, hosts: Iterable[str]) -> list[str]:
    """Refuse (HostTaken, exit 2) instance ``name`` when Caddy already serves one of ``hosts``
    through a route that is not this instance's own. Caddy down: nothing can be checked, the
    returned note says so."""
    try:
        with client_for(cfg) as client:
            apps, _ = client.get(APPS)
    except CaddyUnavailable:
        return ["Caddy is not reachable: its sites could not be checked for a clash"]
    taken = taken_hosts(apps, cfg, name, hosts)
    if taken:
        raise host_taken(name, taken)
    return []


def publish(cfg: CaddyConfig, spec: SiteSpec) -> list[str]:
    """Write the snippet and push the live route, as one step under the lock. Returns notes; a
    Caddy that cannot be reached only postpones the live part (a note says so)."""
    render_route(spec, cfg)
    notes: list[str] = []
    with locked(cfg), client_for(cfg) as client:
        with contextlib.suppress(CaddyUnavailable):
            plan(client.get(APPS)[0], cfg, apply=[spec])  # HostTaken before anything is written
        snippets.write_snippet(cfg, spec, notes, client=client)
        faults.point("caddy.snippet-written")
        try:
            change(client, lambda apps: plan(apps, cfg, apply=[spec]))
        except CaddyUnavailable as exc:
            return [
                f"Caddy's live route for {spec.name} is pending ({exc}); "
                f"run `caddy sync {spec.name}`"
            ]
    return []


def unpublish(cfg: CaddyConfig, name: str) -> list[str]:
    """Remove the snippet and the live route under the lock; returns notes (Caddy down)."""
    with locked(cfg), client_for(cfg) as client:
        snippets.remove_snippet(cfg, name)
        faults.point("caddy.snippet-removed")
        try:
            change(client, lambda apps: plan(apps, cfg, remove=[name]))
        except CaddyUnavailable as exc:
            return [
                f"Caddy's live route for {name} could not be removed ({exc}); "
                "run `caddy sync` later"
            ]
    return []


# --- every instance -------------------------------------------------------------------------------
@attrs.frozen
class Desired:
    """What should be published: specs by name, and instances to leave exactly as they are
    (their spec could not be worked out, or another command is working on them) with why."""

    specs: Mapping[str, SiteSpec]
    keep: Mapping[str, str] = attrs.field(factory=dict)


def _snippet_state(cfg: CaddyConfig, spec: SiteSpec) -> str:
    path = cfg.snippet_path(spec.name)
    try:
        text = path.read_text()
    except FileNotFoundError:
        return "missing"
    return "ok" if text == snippets.render_snippet(cfg, spec) else "stale"


def sync(
    cfg: CaddyConfig,
    desired: Callable[[], Desired],
    only: str | None = None,
    busy: Callable[[str], bool] = lambda name: False,
) -> list[str]:
    """Make snippets and live routes match what ``desired()`` returns (all instances, or just
    ``only``).

    ``desired`` is called under the lock, so a publish or unpublish of another process happens
    wholly before or wholly after this sync's view of the state. Instances in ``keep``, and any
    for which ``busy(name)`` is true (a create or delete in progress) are left as they are, never
    taken for leftovers nor re-created.

    Snippets first (they do not need Caddy); then one admin change that adds missing or stale
    routes and removes routes of ours whose instance is gone. One instance's failure (a spec
    Caddy rejects, a host served by a route that is not ours) does not stop the others: after
    doing all it could, OperationError names it. CaddyUnavailable after writing the snippets when
    Caddy cannot be reached.
    """
    with locked(cfg), client_for(cfg) as client:
        want = desired()
        left: dict[str, str] = dict(want.keep)
        for name in want.specs:
            if (only is None or name == only) and busy(name):
                left[name] = "another command is working on it"
        wanted = {
            n: s for n, s in want.specs.items() if (only is None or n == only) and n not in left
        }

        def leftover(name: str) -> bool:
            if name in want.specs or name in left or (only is not None and name != only):
                return False
            if busy(name):
                left[name] = "another command is working on it"
                return False
            return True

        lines: list[str] = []
        # Extra snippets first: an address they hold may be wanted by an instance below.
        dropped: list[str] = []
        for name in snippets.snippet_names(cfg):
            if leftover(name):
                snippets.remove_snippet(cfg, name)
                dropped.append(name)  # its id-less live copy (from a reload) goes too
                lines.append(f"removed snippet {name}.conf (no such instance)")
        faults.point("sync.snippets-removed")
        notes: list[str] = []
        problems: dict[str, str] = {}
        index: dict[str, str] | None = None
        for name, spec in sorted(wanted.items()):
            try:
                state = _snippet_state(cfg, spec)
                if state == "ok":
                    continue
                if index is None:
                    index = snippets.address_index(cfg)
                snippets.write_snippet(cfg, spec, notes, client=client, index=index)
            except ManagerError as exc:
                problems[name] = str(exc)
                continue
            lines.append(f"wrote snippet {cfg.snippet_path(name).name} ({state} before)")
        lines.extend(dict.fromkeys(notes))
        faults.point("sync.snippets-written")

        refused: dict[str, str] = {}

        def compute(apps: Any) -> Plan:
            live = instance_names(apps, cfg)
            extra = [n for n in sorted(live) if leftover(n)]
            extra += [n for n in dropped if n not in live]
            todo = []
            refused.clear()
            for name, spec in sorted(wanted.items()):
                try:
                    if plan(apps, cfg, apply=[spec]).request is None:
                        continue
                except ManagerError:
                    pass  # a host served by another route: maybe one removed below
                try:
                    plan(apps, cfg, apply=[spec], remove=extra)
                except ManagerError as exc:
                    refused[name] = str(exc)
                    continue
                todo.append(spec)
            return plan(apps, cfg, apply=todo, remove=extra)

        try:
            result = change(client, compute)
        except CaddyUnavailable as exc:
            raise CaddyUnavailable(
                f"{exc} (snippets are up to date: {len(lines)} change(s))"
            ) from None
        faults.point("sync.routed")
    lines.extend(result.lines)
    for name, message in sorted(refused.items()):
        problems.setdefault(name, f"not routed: {message}")
    busy_names = sorted(n for n, why in left.items() if n not in want.keep)
    if busy_names:
        lines.append(f"left as they were (another command is working on them): {busy_names}")
    if problems:
        done = f" (done: {'; '.join(lines)})" if lines else ""
        first = sorted(problems)[0]
        more = f" and {len(problems) - 1} more" if len(problems) > 1 else ""
        raise OperationError(f"{first}: {problems[first]}{more}{done}")
    return lines or ["nothing to do: Caddy and the snippets match"]


def reachable(cfg: CaddyConfig, timeout: float = 1.0) -> bool:
    """Whether Caddy's admin API answers (quick; for a toolbar or health check)."""
    with client_for(cfg, timeout=timeout) as client:
        return client.reachable()


def routed_instances(cfg: CaddyConfig, timeout: float = 5.0) -> set[str]:
    """Names of this data root's instances that have a route in Caddy's live config."""
    with client_for(cfg, timeout=timeout) as client:
        apps, _ = client.get(APPS)
    return set(instance_names(apps, cfg))


def _live_state(apps: Any, cfg: CaddyConfig, spec: SiteSpec) -> str:
    if spec.name not in instance_names(apps, cfg):
        return "missing"
    try:
        return "ok" if plan(apps, cfg, apply=[spec]).request is None else "stale"
    except ManagerError:
        return "conflict"  # another route (not ours) serves one of its hosts


def status(
    cfg: CaddyConfig,
    specs: Mapping[str, SiteSpec],
    keep: Collection[str] = (),
    transport: httpx.BaseTransport | None = None,
) -> dict:
    """Drift between ``specs`` and Caddy (and the snippet files); a read: writes nothing, never
    raises for Caddy down (``reachable`` is False) nor for one instance's bad spec (its state is
    "invalid" and ``problems`` says why). Instances in ``keep`` are not reported as extra."""
    problems: dict[str, str] = {}
    snippet_states: dict[str, str] = {}
    for name, spec in sorted(specs.items()):
        try:
            check_spec(spec)
            snippet_states[name] = _snippet_state(cfg, spec)
        except OperationError as exc:
            snippet_states[name] = "invalid"
            problems[name] = str(exc)
    out: dict[str, Any] = {
        "reachable": False,
        "admin": cfg.admin,
        "metrics_per_host": False,
        "server": None,
        "instances": {},
        "extra": [],
        "snippets": snippet_states,
        "extra_snippets": [
            n for n in snippets.snippet_names(cfg) if n not in specs and n not in keep
        ],
        "problems": problems,
    }
    try:
        with client_for(cfg, transport) as client:
            apps, _ = client.get(APPS)
    except CaddyUnavailable as exc:
        out["error"] = str(exc)
        out["instances"] = {n: "invalid" if n in problems else "unknown" for n in sorted(specs)}
        return out
    http = (apps or {}).get("http") or {}
    out["reachable"] = True
    out["metrics_per_host"] = bool((http.get("metrics") or {}).get("per_host"))
    out["server"] = public_server(http.get("servers") or {}, cfg.public_port)
    out["instances"] = {
        n: "invalid" if n in problems else _live_state(apps, cfg, s)
        for n, s in sorted(specs.items())
    }
    out["extra"] = sorted(n for n in instance_names(apps, cfg) if n not in specs and n not in keep)
    return out
