"""bcrypt hashes of dashboard passwords, as Caddy's basic auth checks them.

Kept apart from controller.caddy (which loads httpx) so that a create can start hashing its new
password in the first milliseconds: at cost BCRYPT_ROUNDS one hash takes ~0.3 s, and bcrypt
releases the GIL, so the rest of the create runs meanwhile.
"""

import threading

import bcrypt

BCRYPT_ROUNDS = 12


def hash_password(password: str) -> str:
    return bcrypt.hashpw(password.encode(), bcrypt.gensalt(BCRYPT_ROUNDS)).decode()


class PendingHash:
    """``hash_password(password)`` made in a background thread; ``result()`` waits for it."""

    def __init__(self, password: str) -> None:
        self.password = password
        self._hashed: str | None = None
        # Not a daemon: the interpreter waits for it at exit. A daemon thread still inside bcrypt's
        # Rust code when the interpreter finalizes aborts the process ("FATAL: exception not
        # rethrown"), so a create that fails early would exit with SIGABRT instead of 1 or 2.
        self._thread = threading.Thread(target=self._run, name="bcrypt", daemon=False)
        self._thread.start()

    def _run(self) -> None:
        self._hashed = hash_password(self.password)

    def result(self) -> str | None:
        """The hash; None when the thread failed (the caller then hashes as usual)."""
        self._thread.join()
        return self._hashed
