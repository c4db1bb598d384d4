"""Per-host request counts from the admin listener's ``/metrics`` (Prometheus text).

Caddy labels ``caddy_http_requests_total`` with ``host`` only when the Caddyfile's global options
hold ``metrics { per_host }`` (JSON: ``apps.http.metrics.per_host``); without it there is nothing
per host to report and ``requests_per_host`` returns None.

Caddy v2.11 counts each request once (``handler="subroute"``, the outermost handler of our routes)
and starts its counters from zero at EVERY config load (any admin change, reload or restart), so a
rate must treat a counter that went down as a reset: see ``rates``.
"""

import re
from typing import Any

from controller.caddy.admin import AdminClient

METRIC = "caddy_http_requests_total"
_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


def parse_requests(text: str) -> dict[str, float]:
    """Sum ``caddy_http_requests_total`` per ``host`` label over every other label."""
    totals: dict[str, float] = {}
    for line in text.splitlines():
        if not line.startswith(METRIC + "{"):
            continue
        labels_text, _, rest = line[len(METRIC) + 1 :].rpartition("}")
        try:
            value = float(rest.split()[0])
        except (IndexError, ValueError):
            continue
        labels = dict(_LABEL.findall(labels_text))
        host = labels.get("host")
        if host:
            totals[host] = totals.get(host, 0.0) + value
    return totals


def per_host_enabled(client: AdminClient) -> bool:
    metrics, _ = client.get("/config/apps/http/metrics")
    return bool((metrics or {}).get("per_host"))


def requests_per_host(settings: Any) -> dict[str, float] | None:
    """Requests served per host since Caddy started, or None when per-host metrics are off.

    Raises CaddyUnavailable when the admin API cannot be reached.
    """
    with AdminClient(settings.caddy_admin) as client:
        if not per_host_enabled(client):
            return None
        return parse_requests(client.text("/metrics"))


def rates(before: dict[str, float], after: dict[str, float], seconds: float) -> dict[str, float]:
    """Requests per second per host between two samples; a host whose counter went down (Caddy
    loaded a config in between) counts from zero."""
    if seconds <= 0:
        return {}
    out = {}
    for host, count in after.items():
        previous = before.get(host, 0.0)
        delta = count - previous if count >= previous else count
        out[host] = delta / seconds
    return out
