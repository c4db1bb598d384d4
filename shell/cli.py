"""Entry point: ``supabase-manager [GLOBAL OPTIONS] [COMMAND ...]``.

- words given: run that one command and exit with its status;
- ``-f FILE``: run the file as a script;
- nothing, stdin a terminal: the interactive shell;
- nothing, stdin not a terminal: read a script from stdin.

Global options (--root, --config, --keep-going, -f) may stand before or after the command words;
--json and --help belong to every command. Only the standard library is imported up front.
"""

from __future__ import annotations

import sys

from shell.context import ARGV, BATCH, PROG, REPL, Context

_GLOBAL_VALUE = {"--root": "root", "--config": "config", "-f": "file", "--file": "file"}
_GLOBAL_FLAG = {"--keep-going": "keep_going", "--json": "json", "--version": "version"}


class _GlobalError(Exception):
    pass


def split_globals(argv: list[str]) -> tuple[dict, list[str]]:
    """Take the global options out of ``argv``; the rest are the command's words.

    --json stays with the command words when there are any (every command accepts it), so that
    the command's parser sees it; before a bare script it applies to every line.
    """
    options: dict = {"root": None, "config": None, "file": None, "keep_going": False}
    options.update(json=False, version=False)
    rest: list[str] = []
    i = 0
    while i < len(argv):
        token = argv[i]
        i += 1
        if token == "--":
            rest.append(token)
            rest += argv[i:]
            break
        flag, eq, inline = token.partition("=")
        if flag in _GLOBAL_VALUE and (eq or flag != "-f" or not rest):
            if eq:
                value = inline
            elif i < len(argv):
                value = argv[i]
                i += 1
            else:
                raise _GlobalError(f"option {flag} needs a value")
            options[_GLOBAL_VALUE[flag]] = value
        elif token in _GLOBAL_FLAG and not (token == "--json" and rest):
            options[_GLOBAL_FLAG[token]] = True
        else:
            rest.append(token)
    return options, rest


def main(argv: list[str] | None = None) -> int:
    if argv is None:  # the program itself, not a caller in the same process (tests)
        import atexit
        import gc

        # At exit, skip the collector's last pass over every object: ~50 ms once the controller
        # is loaded, for a process that is ending (files and locks are closed by then).
        atexit.register(gc.freeze)
    argv = sys.argv[1:] if argv is None else argv
    try:
        options, words = split_globals(argv)
    except _GlobalError as exc:
        sys.stderr.write(f"{PROG}: {exc}\n")
        return 2
    if options["version"]:
        from controller import __version__

        print(f"{PROG} {__version__}")
        return 0
    try:
        return _run(options, words)
    except KeyboardInterrupt:
        sys.stderr.write("\n")
        return 130


def _run(options: dict, words: list[str]) -> int:
    common = {"root": options["root"], "config": options["config"], "json": options["json"]}
    if options["file"] is not None:
        if words:
            sys.stderr.write(f"{PROG}: -f FILE runs a script; give no command words with it\n")
            return 2
        from shell.batch import run_script

        try:
            # Undecodable bytes are kept (and then fail that line), never a traceback.
            handle = open(options["file"], encoding="utf-8", errors="surrogateescape")  # noqa: SIM115
        except OSError as exc:
            sys.stderr.write(f"{PROG}: cannot read {options['file']}: {exc.strerror}\n")
            return 2
        with handle:
            return run_script(Context(mode=BATCH, **common), handle, options["keep_going"])
    if words:
        from shell.run import execute
        from shell.signals import EnterShell

        ctx = Context(mode=ARGV, **common)
        try:
            return execute(ctx, words)
        except EnterShell:
            from shell.repl import run_repl

            return run_repl(ctx)
    if sys.stdin.isatty():
        from shell.repl import run_repl

        return run_repl(Context(mode=REPL, **common))
    from shell.batch import run_script

    ctx = Context(mode=BATCH, stdin_is_script=True, **common)
    return run_script(ctx, sys.stdin, options["keep_going"])
