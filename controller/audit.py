"""The audit log: one JSON line per mutating command. Never a secret value."""

import getpass
import json
import os
from pathlib import Path

from controller.fsutil import ensure_dir
from controller.state import now_iso


def current_user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return str(os.getuid())


def append(path: Path, command: str, instance: str | None, outcome: str, detail: str = "") -> None:
    """Append one line. ``command`` must already be free of secret values (see redact_args)."""
    entry = {
        "time": now_iso(),
        "user": current_user(),
        "command": command,
        "instance": instance,
        "outcome": outcome,
    }
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
