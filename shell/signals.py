"""Control flow between command handlers and the front-end running them (not errors)."""

from __future__ import annotations


class ShellSignal(Exception):
    """Raised by a handler for the front-end to act on; ``shell.run.execute`` lets it through."""


class LeaveShell(ShellSignal):
    """`exit`/`quit` inside the REPL."""


class EnterShell(ShellSignal):
    """`shell` given as a plain command on a terminal: the entry point starts the REPL."""
