"""Checks of the resource limits a user gives an instance (``--cpus``, ``--memory``)."""

import math
import os
import re

from controller.errors import UsageError

# ASCII digits only: \d would also take other scripts' digits, which float() reads.
_MEMORY_RE = re.compile(r"([0-9]+(?:\.[0-9]+)?)([bkmg])?b?", re.IGNORECASE | re.ASCII)
_CPUS_RE = re.compile(r"[0-9]+(?:\.[0-9]+)?", re.ASCII)
_UNITS = {"b": 1, "k": 1024, "m": 1024**2, "g": 1024**3}
MIN_MEMORY = 6 * 1024**2  # Docker refuses less
MAX_MEMORY = 2**63 - 1  # Docker keeps the limit in a signed 64-bit integer
MIN_CPUS = 0.01  # Docker's smallest CPU quota


def check_memory(memory: str | None) -> str | None:
    """Validate a memory limit like 512m, 2g or 1073741824 (bytes; compose's mem_limit), within
    what Docker accepts, so that it never fails later at `up`."""
    if memory is None:
        return None
    text = str(memory).strip().lower()
    match = _MEMORY_RE.fullmatch(text)
    if not match or float(match.group(1)) <= 0:
        raise UsageError(f"invalid memory limit {memory!r}: use a size like 512m or 2g")
    size = float(match.group(1)) * _UNITS[match.group(2) or "b"]
    if size < MIN_MEMORY:
        raise UsageError(f"invalid memory limit {memory!r}: Docker needs at least 6m")
    if size > MAX_MEMORY:
        raise UsageError(f"invalid memory limit {memory!r}: more than Docker can take")
    return text


def check_cpus(cpus: float | str | None) -> float | None:
    """A CPU limit from 0.01 to the number of CPUs of this host (Docker refuses more)."""
    if cpus is None:
        return None
    if isinstance(cpus, str):
        if not _CPUS_RE.fullmatch(cpus.strip()):
            raise UsageError(f"invalid CPU limit {cpus!r}: use a number like 1.5")
        value = float(cpus)
    elif isinstance(cpus, int | float) and not isinstance(cpus, bool):
        value = float(cpus)
    else:
        raise UsageError(f"invalid CPU limit {cpus!r}: use a number like 1.5")
    available = os.cpu_count() or 1
    if not math.isfinite(value) or not MIN_CPUS <= value <= available:
        raise UsageError(
            f"invalid CPU limit {cpus!r}: use {MIN_CPUS} to {available} (this host's CPUs)"
        )
    return value
