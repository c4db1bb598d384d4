"""Scripts: commands read line by line from stdin (not a terminal) or from ``-f FILE``.

No prompt_toolkit here. Blank lines and ``#`` comments are skipped; a line is split like a POSIX
shell. The first failing line stops the script with that line's exit status, unless keep_going
(then the script runs to the end and exits with the last failure's status). Every failing line
is reported with its line number.
"""

from __future__ import annotations

from collections.abc import Iterable

from controller.errors import ManagerError
from shell.context import PROG, Context
from shell.parse import split_line
from shell.run import EXIT_INTERRUPTED, execute


def run_script(ctx: Context, lines: Iterable[str], keep_going: bool = False) -> int:
    status = 0
    for number, raw in enumerate(lines, start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        where = f"line {number}: "
        try:
            tokens = split_line(line)
        except ManagerError as exc:
            ctx.warn(f"{PROG}: {where}{exc}")
            code = exc.exit_code
        else:
            if not tokens:
                continue
            try:
                code = execute(ctx, tokens, where=where)
            except KeyboardInterrupt:
                ctx.warn(f"{PROG}: {where}interrupted")
                return EXIT_INTERRUPTED
        if code != 0:
            status = code
            if not keep_going:
                return code
    return status
