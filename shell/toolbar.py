"""The REPL's bottom toolbar: instance counts by status and whether Docker and Caddy answer.

A daemon thread gathers them every few seconds (and soon after each command) with a Manager of
its own; drawing the toolbar only reads the last answer, so the prompt never waits for Docker.
"""

from __future__ import annotations

import contextlib
import threading
from collections import Counter
from typing import Any

from shell.context import Context

TOOLBAR_REFRESH = 5.0  # seconds between two refreshes

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
        self._manager: Any = None

    def start(self) -> None:
        threading.Thread(target=self._run, name="toolbar", daemon=True).start()

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
