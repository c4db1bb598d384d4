"""REPL history in the user's state folder, with secret values removed before they are written.

``env NAME set JWT_SECRET=abc`` is stored as ``env NAME set JWT_SECRET=``. Which keys are secret
comes from controller.secrets.is_secret when it exists, else from the key's name.
"""

from __future__ import annotations

import functools
import os
import re
import shlex
from pathlib import Path

_SECRET_WORDS = ("PASSWORD", "SECRET", "KEY", "TOKEN", "PASS", "JWT", "PRIVATE", "CREDENTIAL")


def history_path(env: dict | None = None) -> Path:
    env = os.environ if env is None else env
    base = env.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local", "state")
    return Path(base) / "supabase-manager" / "history"


def is_secret(key: str) -> bool:
    """The controller's rule when it has one, else: the key's name says secret."""
    rule = _controller_rule()
    if rule is not None:
        try:
            return bool(rule(key))
        except Exception:
            pass
    upper = key.upper()
    return any(word in upper for word in _SECRET_WORDS)


@functools.cache
def _controller_rule():
    try:
        from controller.secrets import is_secret as rule
    except ImportError:
        return None
    return rule


_ASSIGNMENT = re.compile(r"""(?P<key>[A-Za-z_][A-Za-z0-9_]*)=(?P<value>"[^"]*"?|'[^']*'?|\S*)""")


def redact(line: str) -> str:
    """The line with the values of secret keys removed from ``env NAME set`` assignments."""
    try:
        words = shlex.split(line, comments=True)
    except ValueError:
        words = None
    if words is not None:
        # Options may stand anywhere (`env --json shop set K=V`): look at every word.
        if not words or words[0] != "env" or "set" not in words:
            return line
        out = []
        for word in words:
            key, eq, _ = word.partition("=")
            out.append(f"{key}=" if eq and is_secret(key) else word)
        return " ".join(shlex.quote(w) if not w.endswith("=") else _quote_key(w) for w in out)
    # Unbalanced quotes: fall back to removing anything that looks like KEY=VALUE for secret keys.
    if not line.lstrip().startswith("env"):
        return line
    return _ASSIGNMENT.sub(
        lambda m: f"{m.group('key')}=" if is_secret(m.group("key")) else m.group(0), line
    )


def _quote_key(word: str) -> str:
    key = word[:-1]
    return (shlex.quote(key) if key else "") + "="


def make_history(path: Path | None = None):
    """A prompt_toolkit FileHistory (file mode 0600, folder 0700) that redacts what it stores."""
    from prompt_toolkit.history import FileHistory

    path = path or history_path()
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    if not path.exists():
        fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
        os.close(fd)

    class RedactingHistory(FileHistory):
        def store_string(self, string: str) -> None:
            super().store_string(redact(string))

    return RedactingHistory(str(path))
