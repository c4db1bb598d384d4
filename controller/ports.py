"""Host ports for instances: requested ones are checked, the rest are the lowest free ones in range.

Ports are keyed ``SERVICE:CONTAINER_PORT`` (e.g. ``api-gw:8000``) and bound on 127.0.0.1.
"""

import contextlib
import errno
import re
import socket
from collections.abc import Callable, Mapping, Sequence

from controller.errors import UsageError

# ASCII only: in a str pattern \d would also take other scripts' digits, which int() reads.
_OPTION = re.compile(
    r"(?P<service>[A-Za-z0-9][A-Za-z0-9_.-]*)(?::(?P<port>[0-9]{1,5}))?=(?P<host>[0-9]{1,5})",
    re.ASCII,
)


def host_port_free(port: int) -> bool:
    """Whether nothing on this host listens on ``port`` (TCP, 127.0.0.1 and 0.0.0.0)."""
    for address in ("127.0.0.1", "0.0.0.0"):
        with contextlib.closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as sock:
            # SO_REUSEADDR lets the test ignore closed connections in TIME_WAIT while still
            # failing when something listens on the port.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind((address, port))
            except OSError as exc:
                if exc.errno in (errno.EADDRINUSE, errno.EACCES):
                    return False
                raise
    return True


def parse_port_option(value: str) -> tuple[str, int]:
    """One ``--port SERVICE=PORT`` / ``SERVICE:CONTAINER_PORT=PORT`` value: (key, host port)."""
    match = _OPTION.fullmatch(value.strip())
    if not match:
        raise UsageError(
            f"invalid --port {value!r}: expected SERVICE=PORT or SERVICE:CONTAINER_PORT=PORT"
        )
    host = int(match["host"])
    if not 1 <= host <= 65535:
        raise UsageError(f"invalid --port {value!r}: {host} is not a port number 1-65535")
    if match["port"] is not None and not 1 <= int(match["port"]) <= 65535:
        raise UsageError(f"invalid --port {value!r}: {match['port']} is not a port number 1-65535")
    key = match["service"] if match["port"] is None else f"{match['service']}:{match['port']}"
    return key, host


def requested_from_options(values: Sequence[str]) -> dict[str, int]:
    """Parse every ``--port`` value; a service given twice is refused."""
    out: dict[str, int] = {}
    for value in values:
        key, host = parse_port_option(value)
        if key in out:
            raise UsageError(f"--port {key} is given twice")
        out[key] = host
    return out


def resolve(requested: Mapping[str, int], needed: Sequence[str]) -> dict[str, int]:
    """Requested ports keyed by full ``SERVICE:CONTAINER_PORT`` keys of ``needed``."""
    resolved: dict[str, int] = {}
    for key, port in requested.items():
        if ":" in key:
            if key not in needed:
                raise UsageError(
                    f"--port {key}: the instance publishes no such port; "
                    f"it publishes {', '.join(needed) or 'none'}"
                )
            full = key
        else:
            matches = [item for item in needed if item.split(":", 1)[0] == key]
            if not matches:
                services = sorted({item.split(":", 1)[0] for item in needed})
                raise UsageError(
                    f"--port {key}: no service {key!r} publishes a port; "
                    f"services with ports: {', '.join(services) or 'none'}"
                )
            full = matches[0]
        if full in resolved:
            raise UsageError(f"--port {full} is given twice")
        resolved[full] = int(port)
    return resolved


def allocate(
    needed: Sequence[str],
    requested: Mapping[str, int],
    used: set[int],
    port_range: tuple[int, int],
    is_free: Callable[[int], bool] = host_port_free,
) -> dict[str, int]:
    """Host ports for every key of ``needed``.

    ``requested`` ports (keys may be a bare SERVICE, meaning its first port) must lie in
    ``port_range``, be held by no other instance (``used``) and be free on the host. The others
    take the lowest ports of ``port_range`` that no instance holds and nothing on the host binds
    right now (``is_free``: on the engine's host, for an instance on another machine).
    """
    resolved = resolve(requested, needed)
    taken: set[int] = set()
    out: dict[str, int] = {}
    low, high = port_range
    for key, port in resolved.items():
        if not 1 <= port <= 65535:
            raise UsageError(f"port {port} for {key} is not a port number 1-65535")
        if not low <= port <= high:
            raise UsageError(
                f"port {port} for {key} is outside the port range {low}-{high} "
                "([ports] range in the config)"
            )
        if port in used:
            raise UsageError(f"port {port} for {key} is already held by another instance")
        if port in taken:
            raise UsageError(f"port {port} is requested for two services")
        if not is_free(port):
            raise UsageError(f"port {port} for {key} is in use on this host")
        taken.add(port)
        out[key] = port
    candidate = low
    for key in needed:
        if key in out:
            continue
        while candidate <= high and (
            candidate in used or candidate in taken or not is_free(candidate)
        ):
            candidate += 1
        if candidate > high:
            raise UsageError(
                f"no free host port left in the range {low}-{high} for {key}; "
                "widen [ports] range in the config"
            )
        out[key] = candidate
        taken.add(candidate)
        candidate += 1
    return {key: out[key] for key in needed}
