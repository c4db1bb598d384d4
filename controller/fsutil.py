"""File-system helpers: atomic replacement and cross-process locks."""

import contextlib
import errno
import fcntl
import os
import stat
from collections.abc import Iterator
from pathlib import Path

from controller.errors import OperationError


def atomic_write(path: Path, data: str | bytes, mode: int = 0o600) -> None:
    """Replace ``path`` with ``data`` so that readers see the old or the new file, never a part.

    The temp file lives in the same folder (rename is atomic only within a file system) and is
    fsynced before the rename; the folder is fsynced after it so the rename survives a crash.
    """
    path = Path(path)
    import tempfile  # here, not at the top: it pulls shutil and random into every fresh process

    raw = data.encode() if isinstance(data, str) else data
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as handle:
            handle.write(raw)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def file_lock(path: Path, shared: bool = False, wait: bool = True) -> Iterator[None]:
    """Hold an flock on ``path`` (created if missing) for the duration of the block.

    flock is released by the kernel when the process dies, so a killed command never leaves a
    stale lock behind. With ``wait=False`` a lock held elsewhere raises BlockingIOError at once.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        flags = fcntl.LOCK_SH if shared else fcntl.LOCK_EX
        fcntl.flock(fd, flags if wait else flags | fcntl.LOCK_NB)
        yield
    finally:
        os.close(fd)


def ensure_dir(path: Path, mode: int) -> Path:
    """Create ``path`` (and parents) with ``mode``, which mkdir alone leaves to the umask.

    An existing folder keeps its mode: the admin may have tightened ROOT to 0711 or 0700 (the
    NixOS module does), and a command must not loosen it again.
    """
    path = Path(path)
    if not path.parent.is_dir():
        path.parent.mkdir(parents=True, exist_ok=True)
    try:
        path.mkdir()
    except FileExistsError:
        if not path.is_dir():
            raise
        return path
    os.chmod(path, mode)
    return path


# --- writing inside a folder that others can write into, without following symlinks -------------

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


class NoFollowTree:
    """A folder tree written through directory file descriptors, never through a symlink.

    Containers write into parts of an instance folder (bind mounts such as volumes/functions), so
    a planted symlink there must not redirect our writes or mode changes elsewhere: every path
    component is opened with O_NOFOLLOW relative to its parent, a symlink (or a file) where a
    folder belongs is replaced by a folder, and a file is replaced by rename, which replaces a
    symlink itself rather than its target.
    """

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self._fds: dict[tuple[str, ...], int] = {(): os.open(self.root, _DIR_FLAGS)}
        self._renamed: set[int] = set()  # folders whose renames are not yet fsynced

    def close(self) -> None:
        """Make the renames durable (one fsync per folder, not per file), then let go."""
        try:
            for fd in self._renamed:
                os.fsync(fd)
        finally:
            self._renamed.clear()
            for fd in self._fds.values():
                os.close(fd)
            self._fds.clear()

    def __enter__(self) -> "NoFollowTree":
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def folder(self, relative: Path | str, mode: int = 0o700) -> int:
        """The fd of ``relative`` (created with ``mode`` when missing)."""
        parts = tuple(p for p in Path(relative).parts if p not in ("", "."))
        if ".." in parts:
            raise ValueError(f"{relative}: no '..' in an instance folder path")
        for depth in range(1, len(parts) + 1):
            key = parts[:depth]
            if key in self._fds:
                continue
            parent, name = self._fds[key[:-1]], key[-1]
            try:
                fd = os.open(name, _DIR_FLAGS, dir_fd=parent)
            except FileNotFoundError:
                os.mkdir(name, mode, dir_fd=parent)
                fd = os.open(name, _DIR_FLAGS, dir_fd=parent)
                os.fchmod(fd, mode)
            except (NotADirectoryError, OSError) as exc:
                # ELOOP / ENOTDIR: a symlink or a file stands where a folder belongs.
                if not isinstance(exc, NotADirectoryError) and exc.errno != errno.ELOOP:
                    raise
                os.unlink(name, dir_fd=parent)
                os.mkdir(name, mode, dir_fd=parent)
                fd = os.open(name, _DIR_FLAGS, dir_fd=parent)
                os.fchmod(fd, mode)
            self._fds[key] = fd
        return self._fds[parts]

    def read(self, relative: Path | str) -> bytes | None:
        """A regular file's bytes; None when missing or not a regular file (e.g. a symlink)."""
        relative = Path(relative)
        try:
            parent = self.folder(relative.parent) if relative.parent != Path(".") else self._fds[()]
            fd = os.open(relative.name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=parent)
        except OSError:
            return None
        with os.fdopen(fd, "rb") as handle:
            if not stat.S_ISREG(os.fstat(handle.fileno()).st_mode):
                return None
            return handle.read()

    def write(self, relative: Path | str, data: bytes, mode: int, dir_mode: int = 0o700) -> bool:
        """Replace ``relative`` with ``data`` and ``mode`` unless it already is exactly that;
        whether it wrote."""
        relative = Path(relative)
        parent = self.folder(relative.parent, dir_mode)
        name = relative.name
        try:
            info = os.stat(name, dir_fd=parent, follow_symlinks=False)
        except FileNotFoundError:
            info = None
        if info is not None and stat.S_ISDIR(info.st_mode):
            # e.g. Docker made a folder for a bind mount whose file was not there yet
            raise OperationError(
                f"{self.root / relative} is a folder where a file belongs: remove it and retry"
            )
        if (
            info is not None
            and stat.S_ISREG(info.st_mode)
            and stat.S_IMODE(info.st_mode) == mode
            and self.read(relative) == data
        ):
            return False
        tmp = f".{name}.{os.getpid()}.{os.urandom(4).hex()}.tmp"
        fd = os.open(
            tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600, dir_fd=parent
        )
        try:
            os.fchmod(fd, mode)
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, name, src_dir_fd=parent, dst_dir_fd=parent)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp, dir_fd=parent)
            raise
        self._renamed.add(parent)
        return True

    def unlink(self, relative: Path | str) -> None:
        relative = Path(relative)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(relative.name, dir_fd=self.folder(relative.parent))
