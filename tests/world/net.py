"""Loopback networking helpers of the test world: free ports and waiting for listeners."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable

import httpx

_handed_out: set[int] = set()


def free_port() -> int:
    """A TCP port that is free on 127.0.0.1 now, never the same one twice in this process."""
    for _ in range(100):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        if port not in _handed_out:
            _handed_out.add(port)
            return port
    raise RuntimeError("no free TCP port on 127.0.0.1")


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    """True when something accepts TCP connections on host:port."""
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def wait_until(
    check: Callable[[], object], timeout: float = 30.0, what: str = "condition"
) -> object:
    """Call check() until it returns something truthy (returned) or timeout seconds pass."""
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while True:
        try:
            result = check()
        except Exception as exc:  # retried until the deadline
            last_error = exc
            result = None
        if result:
            return result
        if time.monotonic() > deadline:
            detail = f": last error {last_error!r}" if last_error else ""
            raise TimeoutError(f"{what} not reached within {timeout:.0f} s{detail}")
        time.sleep(0.1)


def wait_for_port(port: int, host: str = "127.0.0.1", timeout: float = 30.0) -> None:
    """Wait until host:port accepts TCP connections."""
    wait_until(lambda: port_open(port, host), timeout, f"TCP listener on {host}:{port}")


def wait_for_http(url: str, timeout: float = 30.0, **kwargs: object) -> httpx.Response:
    """Wait until url answers with a status below 500; returns that response."""

    def check() -> httpx.Response | None:
        response = httpx.get(url, timeout=2.0, **kwargs)  # type: ignore[arg-type]
        return response if response.status_code < 500 else None

    return wait_until(check, timeout, f"HTTP answer from {url}")  # type: ignore[return-value]
