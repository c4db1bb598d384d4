"""What a command handler gets: the settings and Manager (built on first use), output streams,
whether a human can be asked, and the progress callback."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any, TextIO

from shell.output import dim, isatty

if TYPE_CHECKING:
    from controller.config import Settings
    from controller.manager import Manager

PROG = "supabase-manager"

ARGV, REPL, BATCH = "argv", "repl", "batch"


class Context:
    def __init__(
        self,
        root: str | None = None,
        config: str | None = None,
        json: bool = False,
        mode: str = ARGV,
        out: TextIO | None = None,
        err: TextIO | None = None,
        interactive: bool | None = None,
        pt_input: Any = None,
        pt_output: Any = None,
        manager: Manager | None = None,
        stdin_is_script: bool = False,
    ) -> None:
        self.root = root
        self.config = config
        self.json_default = json
        self.json = json
        self.mode = mode
        self.out = out or sys.stdout
        self.err = err or sys.stderr
        if interactive is None:
            interactive = mode != BATCH and isatty(sys.stdin) and isatty(self.out)
        self.interactive = interactive
        # prompt_toolkit input/output for questions asked inside the REPL (tests pass pipes here).
        self.pt_input = pt_input
        self.pt_output = pt_output
        self._settings: Settings | None = None
        self._manager = manager
        self.repl: Any = None  # the running REPL, when there is one
        # A script read from stdin: stdin cannot also carry a value asked for.
        self.stdin_is_script = stdin_is_script

    # --- lazily built core objects ---------------------------------------------------------------
    @property
    def settings(self) -> Settings:
        if self._settings is None:
            if self._manager is not None:
                self._settings = self._manager.settings
            else:
                from controller.config import load_settings

                self._settings = load_settings(self.root, self.config)
        return self._settings

    @property
    def manager(self) -> Manager:
        if self._manager is None:
            from controller.manager import Manager

            self._manager = Manager(self.settings)
        return self._manager

    def new_manager(self) -> Manager:
        """A Manager of its own for a background thread (the injected one in tests)."""
        if self._manager is not None:
            return self._manager
        from controller.manager import Manager

        return Manager(self.settings)

    # --- talking to the user ---------------------------------------------------------------------
    def print(self, text: str = "") -> None:
        self.out.write(text + "\n")
        self.out.flush()

    def warn(self, text: str) -> None:
        self.err.write(text + "\n")
        self.err.flush()

    def progress(self, line: str) -> None:
        """Progress lines of long work go to stderr so that stdout stays clean for --json."""
        self.err.write(dim(f"… {line}", self.err) + "\n")
        self.err.flush()

    def ask(self, question: str, default: str = "") -> str | None:
        """A line typed by the user, or None when nobody can answer (batch, not a terminal)."""
        if not self.interactive:
            return None
        if self.mode == REPL or self.pt_input is not None:
            from prompt_toolkit import PromptSession

            session: PromptSession = PromptSession(input=self.pt_input, output=self.pt_output)
            return session.prompt(question, default=default)
        self.err.write(question)
        self.err.flush()
        line = sys.stdin.readline()
        if not line:
            raise EOFError
        return line.rstrip("\n")

    def read_secret(self, question: str) -> str:
        """A value that must stay off the command line: typed without echo on a terminal (never
        stored in the shell's history), else read whole from stdin (one trailing newline
        dropped). UsageError when there is neither."""
        from controller.errors import UsageError

        if self.mode == REPL or self.pt_input is not None:
            from prompt_toolkit import PromptSession

            session: PromptSession = PromptSession(input=self.pt_input, output=self.pt_output)
            return session.prompt(question, is_password=True)
        if self.stdin_is_script:
            raise UsageError(
                "no value: stdin holds this script; give KEY=VALUE, or run the command alone "
                "with the value on its stdin"
            )
        if isatty(sys.stdin):
            import getpass

            return getpass.getpass(question, stream=self.err)
        value = sys.stdin.read()
        return value[:-2] if value.endswith("\r\n") else value.removesuffix("\n")

    def confirm(self, question: str, default: bool = False) -> bool | None:
        """yes/no; None when nobody can answer."""
        hint = "[Y/n]" if default else "[y/N]"
        try:
            answer = self.ask(f"{question} {hint} ")
        except EOFError:
            return False
        if answer is None:
            return None
        answer = answer.strip().lower()
        if not answer:
            return default
        return answer in ("y", "yes")
