"""REPL history in the user's state folder, with secret values removed before they are written.

Every line stored is redacted, whatever its command and whether or not it ran: a value that
follows a secret key name goes (``env a set JWT_SECRET=abc`` is stored as
``env a set JWT_SECRET=``), also in a mistyped command (``sett ...``), with spaces around the
``=`` (``SMTP_PASS= x``), or with unbalanced quotes (``JWT_SECRET='hun'ter2'``). Which keys are
secret is the controller's one rule, controller.envpolicy.is_secret.
"""

from __future__ import annotations

import os
import re
import shlex
from dataclasses import dataclass
from pathlib import Path

_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def history_path(env: dict | None = None) -> Path:
    env = os.environ if env is None else env
    base = env.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local", "state")
    return Path(base) / "supabase-manager" / "history"


def is_secret(key: str) -> bool:
    from controller.envpolicy import is_secret as rule

    return rule(key)


@dataclass(frozen=True)
class _Word:
    start: int  # span in the line, quotes included
    end: int
    text: str  # the word as a shell would pass it (quotes removed)


def _words(line: str) -> list[_Word]:
    """Split like a POSIX shell, but never fail: an unclosed quote runs to the end of the line.
    ``#`` is kept as text (a comment may hold a pasted secret too)."""
    words: list[_Word] = []
    i, n = 0, len(line)
    while i < n:
        if line[i].isspace():
            i += 1
            continue
        start, text = i, []
        while i < n and not line[i].isspace():
            ch = line[i]
            if ch in "'\"":
                close = line.find(ch, i + 1)
                close = n if close == -1 else close
                text.append(line[i + 1 : close])
                i = close + 1
            elif ch == "\\" and i + 1 < n:
                text.append(line[i + 1])
                i += 2
            else:
                text.append(ch)
                i += 1
        words.append(_Word(start, min(i, n), "".join(text)))
    return words


def _is_assignment(word: str) -> bool:
    key, eq, _ = word.partition("=")
    return bool(eq) and _KEY.fullmatch(key) is not None


def _secret_key(text: str) -> bool:
    return _KEY.fullmatch(text) is not None and is_secret(text)


def redact(line: str) -> str:
    """``line`` without any value that follows a secret key name."""
    words = _words(line)
    out: list[str] = []
    last = 0
    hide_next = False  # the previous word was a secret key whose value is still to come
    for word in words:
        key, eq, value = word.text.partition("=")
        keep = line[word.start : word.end]
        if hide_next and not word.text.startswith("-") and not _is_assignment(word.text):
            # `KEY= value`, `KEY = value`, `KEY value`: the value is this word.
            keep = "=" if word.text.startswith("=") else ""
            hide_next = word.text == "="
        elif eq and _secret_key(key.strip()):
            keep = _quote_key(key.strip()) + "="
            hide_next = value == ""
        elif _secret_key(word.text):
            hide_next = True
        else:
            hide_next = False
        # A word removed whole takes the blank before it along.
        out.append(line[last : word.start] + keep if keep else "")
        last = word.end
    return "".join(out) + line[last:]


def _quote_key(key: str) -> str:
    return key if _KEY.fullmatch(key) else shlex.quote(key)


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
