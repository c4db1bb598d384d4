"""Where the backup repository's password lives, and how restic gets it without argv.

In order: ``[backup] password_file`` when set (on NixOS a systemd credential or an agenix/sops
file); else the system keyring when a real backend is available (never keyring's fail backend or
a plaintext one); else ROOT/keys/backup.key, generated on first use, 0600 in a 0700 folder.

restic reads the password from a file (``RESTIC_PASSWORD_FILE``) or, for the keyring, from the
child's environment (``RESTIC_PASSWORD``): never from its argv.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import stat
from pathlib import Path

import attrs

from controller.config import Settings
from controller.errors import OperationError, UsageError
from controller.fsutil import atomic_write, ensure_dir, file_lock

KEYRING_SERVICE = "supabase-manager"
# Backends that are no keyring at all (fail) or that keep the secret in clear text on disk.
_UNSAFE_BACKENDS = ("keyring.backends.fail", "keyrings.alt", "keyring.backends.null")


@attrs.frozen
class PasswordSource:
    """``kind`` is file, keyring or generated; ``where`` says where, for people."""

    kind: str
    where: str
    path: Path | None = None  # for file and generated

    def env(self) -> dict[str, str]:
        """Variables for the restic child process."""
        if self.path is not None:
            return {"RESTIC_PASSWORD_FILE": str(self.path)}
        value = _keyring_get(self.where)
        if not value:
            raise OperationError(f"the backup password is missing from the keyring ({self.where})")
        return {"RESTIC_PASSWORD": value}

    def read(self) -> str:
        """The password itself (for `backup key export` only)."""
        if self.path is not None:
            try:
                return self.path.read_text().splitlines()[0]
            except (OSError, IndexError) as exc:
                why = getattr(exc, "strerror", None) or "it is empty"
                raise OperationError(
                    f"cannot read the backup password file {self.path}: {why}"
                ) from None
        return self.env()["RESTIC_PASSWORD"]


def key_path(settings: Settings) -> Path:
    return settings.root / "keys" / "backup.key"


def _keyring_name(settings: Settings) -> str:
    return f"backup:{settings.root}"


def _real_keyring():
    """The keyring backend when it is a real one, else None."""
    try:
        import keyring
        from keyring.backends import chainer
    except ImportError:
        return None
    try:
        backend = keyring.get_keyring()
    except Exception:
        return None
    backends = backend.backends if isinstance(backend, chainer.ChainerBackend) else [backend]
    real = [b for b in backends if not type(b).__module__.startswith(_UNSAFE_BACKENDS)]
    if not real or getattr(backend, "priority", 0) <= 0:
        return None
    return real[0]


def _keyring_get(name: str) -> str | None:
    backend = _real_keyring()
    if backend is None:
        return None
    try:
        return backend.get_password(KEYRING_SERVICE, name)
    except Exception:
        return None


def locate(settings: Settings) -> PasswordSource | None:
    """Where the password is today, without creating anything (None: not yet generated)."""
    configured = settings.backup.password_file
    if configured is not None:
        return PasswordSource("file", str(configured), Path(configured))
    name = _keyring_name(settings)
    if _keyring_get(name):
        return PasswordSource("keyring", name)
    path = key_path(settings)
    if path.is_file():
        return PasswordSource("generated", str(path), path)
    return None


def ensure(settings: Settings) -> tuple[PasswordSource, bool]:
    """The password source, generating a password on first use; (source, created now)."""
    configured = settings.backup.password_file
    if configured is not None:
        path = Path(configured)
        try:
            ok = path.is_file() and path.stat().st_size > 0
        except OSError:
            ok = False
        if not ok:
            raise UsageError(f"backup.password_file {path} does not exist or is empty")
        return PasswordSource("file", str(path), path), False
    found = locate(settings)
    if found is not None:
        _check_mode(found)
        return found, False
    password = secrets.token_urlsafe(32)
    backend = _real_keyring()
    if backend is not None:
        name = _keyring_name(settings)
        with contextlib.suppress(Exception):
            backend.set_password(KEYRING_SERVICE, name, password)
            if backend.get_password(KEYRING_SERVICE, name) == password:
                return PasswordSource("keyring", name), True
    path = key_path(settings)
    ensure_dir(path.parent, 0o700)
    with file_lock(path.parent / ".backup.key.lock"):
        if not path.is_file():  # another process may have made it meanwhile
            atomic_write(path, password + "\n", mode=0o600)
            return PasswordSource("generated", str(path), path), True
    return PasswordSource("generated", str(path), path), False


def _check_mode(source: PasswordSource) -> None:
    """A generated key file readable by others is tightened, not trusted as it is."""
    if source.kind == "generated" and source.path is not None:
        mode = stat.S_IMODE(source.path.stat().st_mode)
        if mode & 0o077:
            os.chmod(source.path, 0o600)
