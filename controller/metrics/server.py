"""`metrics serve`: the exposition over HTTP, with prometheus_client's own server (any path;
``/metrics`` by convention), until SIGTERM or Ctrl-C."""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Callable

from controller.config import Settings
from controller.errors import OperationError, UsageError


def parse_listen(text: str) -> tuple[str, int]:
    """``HOST:PORT``, ``[IPV6]:PORT`` or ``:PORT`` (every interface) -> (host, port)."""
    value = text.strip()
    if value.startswith("["):
        host, _, rest = value[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else ""
    else:
        host, colon, port = value.rpartition(":")
        if not colon or ":" in host:  # no port; or a bare IPv6 address, which needs brackets
            port = ""
    if not port.isascii() or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise UsageError(
            f"invalid metrics listen address {text!r}: expected HOST:PORT, e.g. 127.0.0.1:9464"
        )
    return host or "0.0.0.0", int(port)


def serve(
    settings: Settings,
    listen: str | None = None,
    ready: Callable[[str], None] = lambda _: None,
    stop: threading.Event | None = None,
) -> None:
    """Serve until ``stop`` is set, SIGTERM or Ctrl-C; ``ready`` gets the URL once listening."""
    from prometheus_client import CollectorRegistry, start_http_server

    from controller.metrics.collector import SnapshotCollector
    from controller.metrics.probes import Caches

    host, port = parse_listen(listen or settings.metrics_listen)
    caches = Caches()
    collector = SnapshotCollector(settings, caches)
    registry = CollectorRegistry()
    registry.register(collector)
    try:
        server, _thread = start_http_server(port, addr=host, registry=registry)
    except OSError as exc:
        caches.close()
        raise OperationError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    shown = f"[{host}]" if ":" in host else host
    ready(f"serving metrics on http://{shown}:{port}/metrics")
    # The first scrape then finds disk use measured and restart counts known.
    threading.Thread(target=collector.snapshot, name="metrics-warm-up", daemon=True).start()

    stop = stop or threading.Event()
    previous = None
    if threading.current_thread() is threading.main_thread():
        previous = signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        # A timed wait, so that Ctrl-C reaches this thread.
        while not stop.wait(0.5):
            pass
    except KeyboardInterrupt:
        pass
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
        server.shutdown()
        with contextlib.suppress(OSError):
            server.server_close()
        caches.close()
