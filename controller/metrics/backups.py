"""The last successful backup of each instance, as the backup feature records it: a backup is done
once its manifest snapshot is in the restic repository (see controller/ops/backup.py), tagged
with the instance, the backup's total size and the time restic took it.

Asking restic means a subprocess and a read of the repository (maybe remote): a long-running
exporter reads it at most every MAX_AGE seconds, in the background, and serves the last reading.
"""

from __future__ import annotations

import concurrent.futures
import threading
import time
from collections.abc import Mapping
from datetime import datetime

import attrs

from controller.config import Settings

MAX_AGE = 120.0


@attrs.frozen
class BackupFacts:
    finished_at: float  # Unix time of the last successful snapshot
    size_bytes: int | None


@attrs.frozen
class BackupReading:
    last: Mapping[str, BackupFacts]  # instance -> its newest backup
    error: str | None = None  # the repository could not be read (None: fine, or no backups set up)


def read_last_backups(settings: Settings) -> BackupReading:
    from controller import backupplan
    from controller.errors import UsageError
    from controller.restic import ResticError

    try:
        restic, _ = backupplan.open_repository(settings)
    except UsageError:
        return BackupReading({})  # no backup password yet: nothing was ever backed up
    try:
        snapshots = restic.snapshots([f"{backupplan.SBM_TAG},part=manifest"])
    except ResticError as exc:
        if exc.kind == "missing":
            return BackupReading({})
        return BackupReading({}, str(exc))
    last: dict[str, BackupFacts] = {}
    for snap in snapshots:
        name = snap.tag("instance")
        try:
            at = datetime.fromisoformat(snap.time).timestamp()
        except ValueError:
            continue
        if not name or (name in last and last[name].finished_at >= at):
            continue
        size = snap.tag("size")
        last[name] = BackupFacts(at, int(size) if size and size.isdigit() else None)
    return BackupReading(last)


class LastBackups:
    """``read_last_backups`` kept for MAX_AGE seconds, read again in the background."""

    def __init__(self, max_age: float = MAX_AGE) -> None:
        self.max_age = max_age
        self._value: tuple[float, BackupReading] | None = None
        self._pending: concurrent.futures.Future | None = None
        self._lock = threading.Lock()
        self._pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="backups")

    def get(self, settings: Settings, timeout: float) -> BackupReading | None:
        """The latest reading; waits up to ``timeout`` only when there is none yet."""
        with self._lock:
            value = self._value
            stale = value is None or time.monotonic() - value[0] > self.max_age
            if stale and self._pending is None:
                self._pending = self._pool.submit(self._read, settings)
            pending = self._pending
        if value is None and pending is not None:
            concurrent.futures.wait([pending], timeout=timeout)
            with self._lock:
                value = self._value
        return None if value is None else value[1]

    def _read(self, settings: Settings) -> None:
        try:
            reading = read_last_backups(settings)
        except Exception as exc:
            reading = BackupReading({}, f"{type(exc).__name__}: {exc}")
        with self._lock:
            self._value = (time.monotonic(), reading)
            self._pending = None

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
