"""pgcli's completion refresher: after each command a background thread asks the controller for
a fresh snapshot of names, builds a new Completer from it and hands it over; the prompt keeps
using the old one meanwhile, so typing never waits for state or the files under ROOT.

A refresh asked for while one runs makes that one start over once it ends (the command that
just finished may have changed what it read), never a second thread.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from controller.completion_data import CompletionSnapshot
from shell.completion import Completer


class CompletionRefresher:
    def __init__(self, load: Callable[[], CompletionSnapshot]) -> None:
        self._load = load
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._again = False
        self._idle = threading.Event()
        self._idle.set()
        self.error: str | None = None  # why the last refresh failed, if it did

    def refresh(self, on_ready: Callable[[Completer], None]) -> None:
        """Build a new Completer in the background and pass it to ``on_ready`` (in that thread)."""
        with self._lock:
            if self._thread is not None and self._thread.is_alive():
                self._again = True
                return
            self._idle.clear()
            self._thread = threading.Thread(
                target=self._run, args=(on_ready,), name="completion-refresher", daemon=True
            )
            self._thread.start()

    def _run(self, on_ready: Callable[[Completer], None]) -> None:
        while True:
            try:
                completer = Completer(self._load())
                self.error = None
            except Exception as exc:  # completion must never break the shell
                completer = None
                self.error = f"{type(exc).__name__}: {exc}"
            if completer is not None:
                on_ready(completer)
            with self._lock:
                if not self._again:
                    self._idle.set()
                    return
                self._again = False

    def is_refreshing(self) -> bool:
        return not self._idle.is_set()

    def wait(self, timeout: float | None = None) -> bool:
        """Until no refresh runs; False when ``timeout`` passed first."""
        return self._idle.wait(timeout)
