"""The audit log: one JSON line per mutating command. Never a secret value."""

import json
import os
import pwd
from collections.abc import Mapping
from pathlib import Path

from controller.fsutil import ensure_dir
from controller.state import now_iso


def current_user() -> str:
    """The name of the real uid (never $LOGNAME or $USER, which anyone can set)."""
    uid = os.getuid()
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def sudo_user(env: Mapping[str, str] | None = None) -> str | None:
    """Who ran the command through sudo: SUDO_USER, recorded beside the real user (root)."""
    env = os.environ if env is None else env
    return env.get("SUDO_USER") or None


def append(path: Path, command: str, instance: str | None, outcome: str, detail: str = "") -> None:
    """Append one line. ``command`` must already be free of secret values (see redact_args)."""
    entry = {
        "time": now_iso(),
        "user": current_user(),
        "command": command,
        "instance": instance,
        "outcome": outcome,
    }
    via = sudo_user()
    if via:
        entry["sudo_user"] = via
    if detail:
        entry["detail"] = detail
    ensure_dir(path.parent, 0o755)
    # O_APPEND writes of one short line are atomic, so concurrent commands never interleave lines.
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, (json.dumps(entry, sort_keys=True) + "\n").encode())
    finally:
        os.close(fd)


def read(path: Path, instance: str | None = None) -> list[dict]:
    """Entries in order, optionally only those of one instance; unreadable lines are skipped."""
    try:
        lines = path.read_text().splitlines()
    except FileNotFoundError:
        return []
    entries = []
    for line in lines:
        try:
            entry = json.loads(line)
        except json.JSONDecodeError:
            continue
        if instance is None or entry.get("instance") == instance:
            entries.append(entry)
    return entries
