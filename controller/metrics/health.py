"""What `check` reports: the problems a monitor should act on, read from one gathering pass (the
same facts the metrics show), one line each."""

from __future__ import annotations

import time

from controller.config import Settings
from controller.metrics.probes import Snapshot
from controller.state import LOCAL_HOST
from controller.status import host_line
from controller.views import INCOMPLETE

# An API key that expires within this many days is reported.
KEY_WARNING_DAYS = 30


def problems(snapshot: Snapshot, settings: Settings, now: float | None = None) -> list[str]:
    now = time.time() if now is None else now
    out: list[str] = []
    if snapshot.state_error:
        out.append(snapshot.state_error)
    # The adapters' messages name their system; a source that timed out says only that.
    if snapshot.docker_error:
        error = snapshot.docker_error
        out.append(error if "Docker" in error else f"Docker: {error}")
    for host, error in sorted(snapshot.host_errors.items()):
        if host != LOCAL_HOST:  # the local engine's line is docker_error's, above
            out.append(f"{host_line(host, error)} (its instances are unreachable)")
    if snapshot.caddy_error:
        error = snapshot.caddy_error
        out.append(
            error if "Caddy" in error else f"Caddy admin API at {settings.caddy_admin}: {error}"
        )
    if snapshot.backup_error:
        out.append(f"backups: {snapshot.backup_error}")
    for inst in snapshot.instances:
        name = inst.name
        if inst.status == INCOMPLETE:
            out.append(f"{name}: create did not finish (run `create {name}` or `delete {name}`)")
            continue
        if inst.file_error:
            out.append(f"{name}: {inst.file_error}")
        if inst.should_run and inst.host not in snapshot.host_errors:
            if not inst.containers:
                out.append(f"{name}: no containers (it should be running)")
            for c in inst.containers:
                if c.healthy:
                    continue
                word = "unhealthy" if c.state == "running" else c.state
                if c.health == "starting":
                    word = "still starting"
                out.append(f"{name}: service {c.service} is {word}")
        if inst.route_present is False:
            out.append(f"{name}: Caddy has no route for it (run `caddy sync {name}`)")
        if inst.should_run and inst.probe is not None and not inst.probe.success:
            host = inst.api_host
            out.append(
                f"{name}: the API at {host} does not answer through Caddy ({inst.probe.detail})"
            )
        for key, at in sorted(inst.key_expiry.items()):
            days = (at - now) / 86400
            when = time.strftime("%Y-%m-%d", time.gmtime(at))
            if days < 0:
                out.append(f"{name}: {key} expired on {when}")
            elif days < KEY_WARNING_DAYS:
                out.append(f"{name}: {key} expires on {when} (in {days:.0f} days)")
    return out
