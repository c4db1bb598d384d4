"""The interactive shell: a prompt_toolkit PromptSession over the same command table.

Completion comes from shell.completion, history from shell.history (secret values removed), and a
bottom toolbar shows the instance count by status and whether Docker and Caddy answer; those are
gathered by a background thread so that typing never waits for them. Ctrl-C at the prompt clears
the line; Ctrl-C while a command runs cancels it and returns to the prompt; Ctrl-D leaves.
"""

from __future__ import annotations

import contextlib
import threading
from collections import Counter
from typing import Any

from shell.commands import LeaveShell
from shell.context import REPL, Context
from shell.parse import split_line
from shell.run import execute

PROMPT = "supabase> "
TOOLBAR_REFRESH = 5.0  # seconds between two toolbar refreshes

_ORDER = ("running", "partial", "stopped", "missing", "incomplete")


class StatusCache:
    """Instance counts and health, refreshed in a daemon thread; reading never blocks."""

    def __init__(self, ctx: Context, interval: float = TOOLBAR_REFRESH) -> None:
        self.ctx = ctx
        self.interval = interval
        self.counts: Counter | None = None
        self.health: dict[str, bool] | None = None
        self.error: str | None = None
        self.on_change: Any = None
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._manager: Any = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="toolbar", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()

    def poke(self) -> None:
        """Refresh soon (after a command that may have changed things)."""
        self._wake.set()

    def _run(self) -> None:
        while not self._stop.is_set():
            self.refresh()
            self._wake.wait(self.interval)
            self._wake.clear()

    def refresh(self) -> None:
        try:
            if self._manager is None:
                # A Manager of its own: the thread never shares clients with the running command.
                self._manager = self.ctx.new_manager()
            m = self._manager
            try:
                self.health = dict(m.health())
            except Exception:
                self.health = None
            try:
                self.counts = Counter(r.status for r in m.list(resources=False))
                self.error = None
            except Exception as exc:
                self.counts = None
                self.error = str(exc).splitlines()[0][:60] if str(exc) else type(exc).__name__
        except Exception as exc:
            self.error = type(exc).__name__
        if self.on_change is not None:
            with contextlib.suppress(Exception):
                self.on_change()

    def text(self) -> str:
        if self.counts is None and self.health is None:
            return " checking…" if self.error is None else f" status unavailable: {self.error}"
        parts = []
        if self.counts is not None:
            total = sum(self.counts.values())
            order = [*_ORDER, *sorted(s for s in self.counts if s not in _ORDER)]
            detail = ", ".join(f"{self.counts[s]} {s}" for s in order if self.counts.get(s))
            noun = "instance" if total == 1 else "instances"
            parts.append(f"{total} {noun}" + (f": {detail}" if detail else ""))
        elif self.error:
            parts.append(f"instances: {self.error}")
        if self.health is not None:
            for name in ("docker", "caddy"):
                if name in self.health:
                    parts.append(f"{name} {'up' if self.health[name] else 'DOWN'}")
        return " " + " │ ".join(parts)


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

        from shell.completion import Completer, prompt_toolkit_completer
        from shell.history import make_history

        self.ctx = ctx
        ctx.mode = REPL
        ctx.interactive = True
        ctx.pt_input = pt_input
        ctx.pt_output = pt_output
        ctx.repl = self
        self.completer = Completer(ctx)
        self.status = StatusCache(ctx) if toolbar else None
        if history is None:
            try:
                history = make_history()
            except OSError:
                from prompt_toolkit.history import InMemoryHistory

                history = InMemoryHistory()
        self.session: PromptSession = PromptSession(
            PROMPT,
            completer=prompt_toolkit_completer(self.completer),
            complete_while_typing=True,
            history=history,
            auto_suggest=AutoSuggestFromHistory(),
            bottom_toolbar=self._toolbar if toolbar else None,
            key_bindings=self._bindings(),
            input=pt_input,
            output=pt_output,
        )

    def _bindings(self):
        """Tab completes right away from the table (no race with complete-while-typing): one
        candidate is inserted, several insert their common part and open the menu."""
        from prompt_toolkit.key_binding import KeyBindings

        bindings = KeyBindings()

        @bindings.add("tab")
        def _tab(event) -> None:
            buffer = event.current_buffer
            if buffer.complete_state:
                buffer.complete_next()
                return
            insert_completion(buffer, self.completer.complete(buffer.document.text_before_cursor))

        return bindings

    def _toolbar(self) -> str:
        return self.status.text() if self.status is not None else ""

    def _invalidate(self) -> None:
        app = self.session.app
        if app.is_running:
            app.invalidate()

    def run(self) -> int:
        from shell.completion import warm_up

        threading.Thread(
            target=warm_up, args=(self.completer.sources,), name="warm-up", daemon=True
        ).start()
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
            if self.status is not None:
                self.status.poke()


def run_repl(ctx: Context, pt_input: Any = None, pt_output: Any = None, history: Any = None) -> int:
    return Repl(ctx, pt_input, pt_output, history).run()


def insert_completion(buffer: Any, candidates: list) -> None:
    """Put a unique candidate in place of the word being typed (with a space after it, unless it
    ends in '/' or '='); with several, insert their common part and open the menu."""
    import os

    if not candidates:
        return
    first = candidates[0]
    typed = buffer.document.text_before_cursor[
        len(buffer.document.text_before_cursor) + first.start :
    ]
    if len(candidates) == 1:
        buffer.delete_before_cursor(-first.start)
        buffer.insert_text(first.text + ("" if first.text.endswith(("/", "=")) else " "))
        return
    common = os.path.commonprefix([c.text for c in candidates])  # noqa: RUF071 - characters
    if len(common) > len(typed) and common.startswith(typed):
        buffer.delete_before_cursor(-first.start)
        buffer.insert_text(common)
    buffer.start_completion(select_first=False)
