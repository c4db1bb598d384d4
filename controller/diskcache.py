"""Disk use of instance folders, cached in a file under ROOT for short-lived commands.

Walking a Postgres data folder takes far longer than the rest of `list`. A figure younger than
``ttl`` is served as is; an older one is served too, while a detached background process walks
the folders again and stores fresh figures. Only a folder never measured (a new instance) is
walked on the spot. The cache is advisory: a cache file that cannot be read or written costs a
walk, never a failed command.

Run as ``python -m controller.diskcache CACHE_FILE INSTANCES_DIR`` it is that background refresh
(also what a maintenance run can call): every folder under INSTANCES_DIR is measured and stored.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path

TTL = 300.0
SCHEMA = 1


def folder_size(path: Path) -> int:
    """Bytes on disk below ``path`` (the instance's files, database and storage)."""
    total = 0
    for folder, _dirs, files in os.walk(path):
        for name in files:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(folder, name)).st_blocks * 512
    return total


def spawn_refresh(cache: Path, instances_dir: Path) -> None:
    """Start ``python -m controller.diskcache`` detached: it outlives this command."""
    import subprocess

    package_parent = str(Path(__file__).resolve().parents[1])
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (package_parent, env.get("PYTHONPATH")) if p)
    with contextlib.suppress(OSError):
        subprocess.Popen(
            [sys.executable, "-m", "controller.diskcache", str(cache), str(instances_dir)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
            env=env,
        )


class DiskCache:
    """Disk figures per instance name, kept in ``path`` (JSON: name -> [bytes, measured at])."""

    def __init__(
        self,
        path: Path,
        ttl: float = TTL,
        spawn: Callable[[Path, Path], None] = spawn_refresh,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.path = path
        self.ttl = ttl
        self._spawn = spawn
        self._clock = clock

    def sizes(self, folders: Mapping[str, Path]) -> dict[str, int]:
        """Bytes per name. Stale figures are returned and refreshed in the background (the
        folders must share one parent, the instances folder); folders never measured are walked
        now. A folder that does not exist is left out."""
        known = self._read()
        now = self._clock()
        out: dict[str, int] = {}
        measured: dict[str, int] = {}
        stale = False
        for name, folder in folders.items():
            entry = known.get(name)
            if entry is None:
                if folder.is_dir():
                    out[name] = measured[name] = folder_size(folder)
                continue
            out[name] = entry[0]
            stale = stale or now - entry[1] > self.ttl
        if measured:
            self._store(measured, keep=set(folders))
        if stale and folders:
            parent = next(iter(folders.values())).parent
            self._spawn(self.path, parent)
        return out

    def refresh(self, instances_dir: Path) -> dict[str, int]:
        """Walk every instance folder now and store the figures (one refresh at a time: if
        another is running, this one does nothing and returns {})."""
        lock_path = self.path.with_name(self.path.name + ".refresh")
        try:
            self.path.parent.mkdir(exist_ok=True)  # never re-creates a removed ROOT
            handle = open(lock_path, "a")  # noqa: SIM115 (held for the whole walk)
        except OSError:
            return {}
        with handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                return {}
            folders = {}
            with contextlib.suppress(OSError):
                folders = {p.name: p for p in instances_dir.iterdir() if p.is_dir()}
            sizes = {name: folder_size(folder) for name, folder in folders.items()}
            self._store(sizes, keep=set(folders))
            return sizes

    def _read(self) -> dict[str, tuple[int, float]]:
        try:
            data = json.loads(self.path.read_text())
            entries = data["sizes"] if data.get("schema") == SCHEMA else {}
            return {
                str(name): (int(value[0]), float(value[1]))
                for name, value in entries.items()
                if isinstance(value, list) and len(value) == 2
            }
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            return {}

    def _store(self, sizes: Mapping[str, int], keep: set[str]) -> None:
        """Merge ``sizes`` into the file (under its lock), dropping names not in ``keep``."""
        now = self._clock()
        with contextlib.suppress(OSError):
            self.path.parent.mkdir(exist_ok=True)  # never re-creates a removed ROOT
            with open(self.path.with_name(self.path.name + ".lock"), "a") as lock:
                fcntl.flock(lock, fcntl.LOCK_EX)
                entries = {n: [b, t] for n, (b, t) in self._read().items() if n in keep}
                entries.update({name: [size, now] for name, size in sizes.items()})
                tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
                try:
                    tmp.write_text(json.dumps({"schema": SCHEMA, "sizes": entries}))
                    os.replace(tmp, self.path)
                finally:
                    tmp.unlink(missing_ok=True)


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: python -m controller.diskcache CACHE_FILE INSTANCES_DIR", file=sys.stderr)
        return 2
    DiskCache(Path(argv[0])).refresh(Path(argv[1]))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
