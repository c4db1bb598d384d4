"""The interactive shell: a prompt_toolkit PromptSession over the same command table.

Completion comes from shell.completion with names the refresher (shell.refresher) reloads in the
background after each command; key bindings are in shell.keys, the bottom toolbar in
shell.toolbar, history in shell.history (secret values removed). Ctrl-C at the prompt clears the
line; Ctrl-C while a command runs cancels it and returns to the prompt; Ctrl-D leaves.
"""

from __future__ import annotations

from typing import Any

from shell.completion import Completer
from shell.context import REPL, Context
from shell.parse import split_line
from shell.refresher import CompletionRefresher
from shell.run import execute
from shell.signals import LeaveShell
from shell.toolbar import StatusCache

PROMPT = "supabase> "


class Repl:
    def __init__(
        self,
        ctx: Context,
        pt_input: Any = None,
        pt_output: Any = None,
        history: Any = None,
        toolbar: bool = True,
    ) -> None:
        from prompt_toolkit import PromptSession
        from prompt_toolkit.auto_suggest import AutoSuggestFromHistory

        from shell.completion import prompt_toolkit_completer
        from shell.history import make_history
        from shell.keys import shell_bindings

        self.ctx = ctx
        ctx.mode = REPL
        ctx.interactive = True
        ctx.pt_input = pt_input
        ctx.pt_output = pt_output
        ctx.repl = self
        self.completer = Completer()  # no names until the first refresh hands some over
        self.refresher = CompletionRefresher(lambda: ctx.new_manager().completion_snapshot())
        self.status = StatusCache(ctx) if toolbar else None
        if history is None:
            try:
                history = make_history()
            except OSError:
                from prompt_toolkit.history import InMemoryHistory

                history = InMemoryHistory()
        self.session: PromptSession = PromptSession(
            PROMPT,
            completer=prompt_toolkit_completer(lambda: self.completer),
            complete_while_typing=True,
            history=history,
            auto_suggest=AutoSuggestFromHistory(),
            bottom_toolbar=self._toolbar if toolbar else None,
            key_bindings=shell_bindings(lambda: self.completer, self.refresher.wait),
            input=pt_input,
            output=pt_output,
        )

    def _swap_completer(self, completer: Completer) -> None:
        """Called by the refresher's thread: one assignment, so the prompt sees the old
        completer or the new one, never a half-filled one."""
        self.completer = completer

    def refresh_names(self) -> None:
        self.refresher.refresh(self._swap_completer)

    def _toolbar(self) -> str:
        return self.status.text() if self.status is not None else ""

    def _invalidate(self) -> None:
        app = self.session.app
        if app.is_running:
            app.invalidate()

    def run(self) -> int:
        self.refresh_names()
        if self.status is not None:
            self.status.on_change = self._invalidate
            self.status.start()
        self.ctx.print(
            "supabase-manager shell: Tab completes, 'help' lists the commands, Ctrl-D leaves."
        )
        try:
            while True:
                try:
                    line = self.session.prompt()
                except KeyboardInterrupt:
                    continue  # Ctrl-C at the prompt: drop the line
                except EOFError:
                    break
                try:
                    self.run_line(line)
                except LeaveShell:
                    break
        finally:
            if self.status is not None:
                self.status.stop()
        return 0

    def run_line(self, line: str) -> int:
        """Run one typed line; Ctrl-C while it runs cancels it and comes back here."""
        from controller.errors import ManagerError

        try:
            words = split_line(line)
        except ManagerError as exc:
            self.ctx.warn(f"supabase-manager: {exc}")
            return exc.exit_code
        if not words:
            return 0
        try:
            return execute(self.ctx, words)
        except KeyboardInterrupt:
            self.ctx.warn("^C cancelled")
            return 130
        except EOFError:
            self.ctx.warn("cancelled")
            return 1
        finally:
            self.refresh_names()
            if self.status is not None:
                self.status.poke()


def run_repl(ctx: Context, pt_input: Any = None, pt_output: Any = None, history: Any = None) -> int:
    return Repl(ctx, pt_input, pt_output, history).run()
