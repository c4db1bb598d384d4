"""Key bindings of the REPL's prompt."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from shell.completion import Candidate, Completer

# How long the first Tab may wait for the first snapshot of names (later ones never wait).
FIRST_NAMES_WAIT = 1.0


def shell_bindings(current: Callable[[], Completer], first_names: Callable[[float], Any]):
    """Tab completes right away from the table (no race with complete-while-typing): one
    candidate is inserted, several insert their common part and open the menu.

    ``current`` gives the Completer in use; ``first_names(timeout)`` waits for the first refresh
    when no names are known yet (a Tab typed in the shell's first moments)."""
    from prompt_toolkit.key_binding import KeyBindings

    bindings = KeyBindings()

    @bindings.add("tab")
    def _tab(event) -> None:
        buffer = event.current_buffer
        if buffer.complete_state:
            buffer.complete_next()
            return
        if current().snapshot is None:
            first_names(FIRST_NAMES_WAIT)
        insert_completion(buffer, current().complete(buffer.document.text_before_cursor))

    return bindings


def insert_completion(buffer: Any, candidates: list[Candidate]) -> None:
    """Put a unique candidate in place of the word being typed (with a space after it, unless it
    ends in '/' or '='); with several, insert their common part and open the menu."""
    if not candidates:
        return
    first = candidates[0]
    before = buffer.document.text_before_cursor
    typed = before[len(before) + first.start :]
    if len(candidates) == 1:
        buffer.delete_before_cursor(-first.start)
        buffer.insert_text(first.text + ("" if first.text.endswith(("/", "=")) else " "))
        return
    common = os.path.commonprefix([c.text for c in candidates])  # noqa: RUF071 - characters
    if len(common) > len(typed) and common.startswith(typed):
        buffer.delete_before_cursor(-first.start)
        buffer.insert_text(common)
    buffer.start_completion(select_first=False)
