"""Per-host request rates from the admin listener's ``/metrics`` (Prometheus text).

Caddy labels ``caddy_http_requests_total`` with ``host`` only when the Caddyfile's global options
hold ``metrics { per_host }`` (JSON: ``apps.http.metrics.per_host``); without it there is nothing
per host to report and the functions here return None.

Caddy v2.11 counts each request once (``handler="subroute"``, the outermost handler of our routes)
and starts its counters from zero at EVERY config load (any admin change, reload or restart). A
counter is therefore no rate: a rate is the difference of two samples over the time between them,
a counter that went down counting from zero (``rates``).
"""

import re
import time
from collections.abc import Callable, Mapping

import attrs

from controller.caddy.admin import AdminClient
from controller.caddy.config import CaddyConfig

METRIC = "caddy_http_requests_total"
_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')
DEFAULT_WINDOW = 1.0


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


def request_counts(client: AdminClient) -> dict[str, float] | None:
    """Requests per host since Caddy's last config load, or None when per-host metrics are off.
    Raises CaddyUnavailable when the admin API cannot be reached."""
    if not per_host_enabled(client):
        return None
    return parse_requests(client.text("/metrics"))


def rates(before: Mapping[str, float], after: Mapping[str, float], seconds: float) -> dict:
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


@attrs.define
class RateMeter:
    """Rates between successive samples (``top``): the first sample gives no rate (None)."""

    last: dict[str, float] | None = None
    at: float = 0.0

    def sample(self, counts: Mapping[str, float] | None, now: float) -> dict[str, float] | None:
        if counts is None:
            self.last = None
            return None
        previous, since = self.last, self.at
        self.last, self.at = dict(counts), now
        if previous is None:
            return None
        return rates(previous, counts, now - since)


def request_rates(
    cfg: CaddyConfig,
    window: float = DEFAULT_WINDOW,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> dict[str, float] | None:
    """Requests per second per host over ``window`` seconds (two samples of the counters), or
    None when per-host metrics are off. Raises CaddyUnavailable when Caddy cannot be reached."""
    with AdminClient(cfg.admin) as client:
        first = request_counts(client)
        if first is None:
            return None
        start = clock()
        sleep(window)
        second = request_counts(client) or {}
        return rates(first, second, clock() - start)
