"""Run one command line (already split into words) and turn its outcome into an exit status.

ManagerError: one line "supabase-manager: <message>" on stderr and its exit_code (1 or 2);
a parsing error also shows the usage; KeyboardInterrupt propagates to the caller (argv and batch
map it to 130, the REPL returns to the prompt).
"""

from __future__ import annotations

import os

from controller.errors import ManagerError
from shell.commands import command_help, overview, table_for
from shell.context import PROG, Context
from shell.parse import ParseError, parse
from shell.signals import ShellSignal

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130


def execute(ctx: Context, tokens: list[str], where: str = "") -> int:
    """Parse and run ``tokens``; ``where`` prefixes error lines (e.g. "line 3: ")."""
    prefix = f"{PROG}: {where}"
    try:
        parsed = parse(table_for(ctx.mode), tokens)
    except ParseError as exc:
        ctx.warn(f"{prefix}{exc}")
        for line in exc.usage:
            ctx.warn(f"usage: {line}")
        return EXIT_USAGE
    if parsed.help:
        ctx.print(command_help(parsed.help_for) if parsed.help_for else overview(ctx.mode))
        return EXIT_OK
    command = parsed.command
    assert command is not None
    ctx.json = ctx.json_default or parsed.json
    try:
        status = command.handler(ctx, parsed.values)
    except ShellSignal:
        raise
    except ParseError as exc:
        ctx.warn(f"{prefix}{exc}")
        for line in exc.usage:
            ctx.warn(f"usage: {line}")
        return EXIT_USAGE
    except ManagerError as exc:
        ctx.warn(f"{prefix}{exc}")
        return exc.exit_code
    except BrokenPipeError:
        _quiet_broken_pipe()
        return EXIT_FAILED
    except (KeyboardInterrupt, EOFError):
        raise
    except Exception as exc:  # a bug: say so in one line, the traceback only when asked
        first = (str(exc).strip().splitlines() or [""])[0]
        ctx.warn(f"{prefix}internal error in {command.name}: {type(exc).__name__}: {first}")
        if os.environ.get("SUPABASE_MANAGER_DEBUG"):
            import traceback  # only here: it costs every fresh process ~2 ms

            traceback.print_exc()
        return EXIT_FAILED
    finally:
        ctx.json = ctx.json_default
    return int(status or 0)


def _quiet_broken_pipe() -> None:
    """stdout was closed by the reader (``| head``): stop writing without a second error."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, 1)
    except OSError:
        pass
