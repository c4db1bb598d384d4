"""Metrics for Prometheus and the health check, from one gathering pass.

- ``probes.gather(settings, ...)`` -> ``Snapshot``: every instance's status, containers (health,
  restarts, CPU seconds, memory), disk use, an API request through Caddy, Caddy's routes, API key
  expiry and the last backup. One Engine listing for all containers, cgroup files for CPU and
  memory, one admin read of Caddy, the probes side by side; each source has its own timeout and a
  source that fails or hangs only marks its own figures (``Snapshot.docker_error`` ...).
- ``health.problems(snapshot)`` -> the lines `check` prints.
- ``collector.SnapshotCollector`` turns a gathering into Prometheus metric families on each
  scrape; ``exposition(settings)`` renders them once (`metrics`).
- ``server.serve(settings, listen)`` serves them over HTTP (`metrics serve`).

Heavy modules (the Docker client, httpx, prometheus_client) are imported where they are used.
"""

from controller.config import Settings


def exposition(settings: Settings) -> bytes:
    """The Prometheus text exposition of one gathering (what `metrics` prints)."""
    from prometheus_client import CollectorRegistry, generate_latest

    from controller.metrics.collector import SnapshotCollector

    registry = CollectorRegistry()
    registry.register(SnapshotCollector(settings))
    return generate_latest(registry)


def check(settings: Settings) -> list[str]:
    """The problems `check` lists: the same probes as the metrics, one line each."""
    from controller.metrics.health import problems
    from controller.metrics.probes import gather

    return problems(gather(settings, restarts=False), settings)


__all__ = ["check", "exposition"]
