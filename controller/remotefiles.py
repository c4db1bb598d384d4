"""An instance folder on another machine: the copy a remote engine's bind mounts read.

Compose resolves bind-mount sources on the client and hands the paths to the engine, so the
folder rendered here (ROOT/instances/NAME) must exist on the worker at ``Place.instance_dir``.
`sync_folder` copies what differs, over ssh, in two round trips: the worker's SHA-256 and mode of
each file we hold (paths on stdin), then one tar stream of the files that differ (on stdin,
extracted with their modes: .env stays 0600). Nothing is deleted there but our own stale copies
of extra compose files: the containers' data (database, storage) lives in that folder too.
"""

from __future__ import annotations

import hashlib
import io
import os
import shlex
import tarfile
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING

from controller.errors import OperationError

if TYPE_CHECKING:
    from controller.hosts import Place

# Local-only files: the bcrypt hash Caddy's basic auth is built from stays with Caddy.
LOCAL_ONLY = frozenset({".studio-auth"})
_STALE_EXTRA = "extra-"


def _check_remote_dir(path: PurePosixPath) -> PurePosixPath:
    """A folder we may write and remove: absolute, normalised, ending in instances/NAME."""
    text = str(path)
    if (
        not path.is_absolute()
        or ".." in path.parts
        or len(path.parts) < 3
        or path.parent.name != "instances"
        or any(c in text for c in "\n\r\0")
    ):
        raise OperationError(f"refusing to use {text!r} as an instance folder on a host")
    return path


def local_files(folder: Path) -> dict[str, tuple[str, int]]:
    """Every regular file under ``folder`` we send: relative path -> (sha256, mode)."""
    out: dict[str, tuple[str, int]] = {}
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = [d for d in dirnames if not os.path.islink(os.path.join(dirpath, d))]
        for filename in filenames:
            path = Path(dirpath) / filename
            relative = path.relative_to(folder).as_posix()
            if relative in LOCAL_ONLY or path.is_symlink() or not path.is_file():
                continue
            if any(c in relative for c in "\n\r\0"):
                raise OperationError(f"{path}: a file name with a line break cannot be copied")
            info = path.stat()
            digest = hashlib.sha256(path.read_bytes()).hexdigest()
            out[relative] = (digest, info.st_mode & 0o7777)
    return out


_REMOTE_STATE = r"""
cd "$1" 2>/dev/null || exit 0
list=$(cat)
printf '%s\n' "$list" | tr '\n' '\0' | xargs -0 -r stat -c 'm %a %n' -- 2>/dev/null
printf '%s\n' "$list" | tr '\n' '\0' | xargs -0 -r sha256sum -- 2>/dev/null
for f in extra-*.yml; do [ -f "$f" ] && printf 'extra %s\n' "$f"; done
exit 0
"""


def _remote_state(place: Place, remote: PurePosixPath, names: list[str]):
    """(path -> (sha256, mode)) of the files we hold, as they are there (a symlink shows mode
    777: it is replaced); and the extra-N.yml files there."""
    command = ["sh", "-c", _REMOTE_STATE, "sbm", str(remote)]
    out = place.run(command, "\n".join(names).encode()).decode(errors="replace")
    modes: dict[str, int] = {}
    digests: dict[str, str] = {}
    extras: set[str] = set()
    for line in out.splitlines():
        if line.startswith("extra "):
            extras.add(line[len("extra ") :])
        elif line.startswith("m "):
            mode, _, name = line[2:].partition(" ")
            if mode.isdigit():
                modes[name] = int(mode, 8)
        else:
            digest, _, name = line.partition("  ")
            if name:
                digests[name] = digest
    there = {name: (digests[name], modes[name]) for name in digests if name in modes}
    return there, extras


def _tar(folder: Path, names: list[str]) -> bytes:
    """The files ``names`` with their folders (modes as here: a container that reads a mounted
    init script may run as another user than the one that copied it)."""
    folders = sorted({str(p) for name in names for p in PurePosixPath(name).parents} - {"."})
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name in [*folders, *names]:
            path = folder / name
            info = tar.gettarinfo(str(path), arcname=name)
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            if info.isdir():
                tar.addfile(info)
                continue
            with path.open("rb") as handle:
                tar.addfile(info, handle)
    return buffer.getvalue()


def sync_folder(place: Place, local: Path, remote: PurePosixPath) -> list[str]:
    """Bring the folder on the host up to date with ``local``; returns the paths copied."""
    remote = _check_remote_dir(PurePosixPath(remote))
    mine = local_files(local)
    there, extras = _remote_state(place, remote, sorted(mine))
    changed = sorted(name for name, item in mine.items() if there.get(name) != item)
    stale = sorted(name for name in extras if name not in mine and name.startswith(_STALE_EXTRA))
    if not changed and not stale:
        return []
    quoted = shlex.quote(str(remote))
    steps = [
        f"umask 077 && mkdir -p {quoted} && chmod 700 {quoted} && cd {quoted}",
        # Files first removed: a symlink planted there by a container is replaced, never followed.
        *(f"rm -f -- {shlex.quote(name)}" for name in [*changed, *stale]),
        "tar --no-same-owner --no-overwrite-dir -xpf - ",
    ]
    place.run(["sh", "-c", " && ".join(steps)], _tar(local, changed))
    return changed


def remove_folder(place: Place, remote: PurePosixPath) -> None:
    """Remove the instance folder on the host (`delete --purge`)."""
    remote = _check_remote_dir(PurePosixPath(remote))
    place.run(["rm", "-rf", "--", str(remote)])


def read_file(place: Place, remote: PurePosixPath) -> bytes:
    """A file's content on the host (never on the remote argv but its path)."""
    return place.run(["cat", "--", str(remote)])
