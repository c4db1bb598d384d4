"""`env NAME edit`: the .env text in an editor, validated before it replaces the real file.

The editor works on a private temp copy (0600). On save the text is checked with
Manager.env_check; when it has problems they are shown and the user edits again or drops the
change. The instance's .env is only ever replaced by Manager.env_replace with a checked text, so it
is never left broken.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import shutil
import subprocess
import tempfile

from controller.errors import OperationError, UsageError
from shell.context import Context

_FALLBACK_EDITORS = ("sensible-editor", "editor", "nano", "vi")


def editor_command() -> list[str]:
    for variable in ("VISUAL", "EDITOR"):
        value = os.environ.get(variable, "").strip()
        if value:
            return shlex.split(value)
    for name in _FALLBACK_EDITORS:
        path = shutil.which(name)
        if path:
            return [path]
    raise OperationError("no editor found: set $EDITOR")


def edit_env(ctx: Context, name: str):
    """The EnvChange of the saved edit, or None when nothing changed or the edit was dropped."""
    m = ctx.manager
    original = m.env_text(name)
    command = editor_command()
    fd, path = tempfile.mkstemp(prefix=f"{name}-", suffix=".env")
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(original)
        while True:
            result = subprocess.run([*command, path], check=False)
            if result.returncode != 0:
                raise OperationError(
                    f"the editor exited with status {result.returncode}; .env is unchanged"
                )
            with open(path) as handle:
                text = handle.read()
            if text == original:
                ctx.print("no change")
                return None
            problems = m.env_check(name, text, original)
            if not problems:
                return m.env_replace(name, text, original)
            ctx.warn(f"the edited .env of {name} has problems:")
            for problem in problems:
                ctx.warn(f"  {problem}")
            try:
                again = ctx.confirm("edit again? (no drops the change)", default=True)
            except (KeyboardInterrupt, EOFError):
                again = False
            if not again:
                raise UsageError(f"change dropped: .env of {name} is unchanged")
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
