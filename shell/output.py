"""Rendering: aligned tables, JSON, sizes, status marks. Colours only on a terminal without
NO_COLOR; plain text otherwise (no escape codes in pipes, files or scripts)."""

from __future__ import annotations

import json
import os
import unicodedata
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, TextIO

_CODES = {
    "green": "32",
    "yellow": "33",
    "red": "31",
    "blue": "34",
    "cyan": "36",
    "dim": "2",
    "bold": "1",
}


def isatty(stream: Any) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def color_allowed(stream: Any) -> bool:
    return isatty(stream) and "NO_COLOR" not in os.environ and os.environ.get("TERM", "") != "dumb"


def paint(text: str, color: str, stream: TextIO | None) -> str:
    if stream is None or not color_allowed(stream):
        return text
    return f"\x1b[{_CODES[color]}m{text}\x1b[0m"


def dim(text: str, stream: TextIO | None) -> str:
    return paint(text, "dim", stream)


STATUS_MARKS = {
    "running": ("●", "green"),
    "partial": ("◐", "yellow"),
    "stopped": ("○", "dim"),
    "missing": ("✗", "red"),
    "incomplete": ("…", "yellow"),
    "unreachable": ("⊘", "red"),  # its host's engine did not answer
}


def status_mark(status: str, stream: TextIO | None = None) -> str:
    mark, color = STATUS_MARKS.get(status, ("?", "dim"))
    if stream is not None and not _can_encode(stream, mark):
        mark = {"running": "+", "partial": "~", "stopped": "-", "missing": "x"}.get(status, "?")
    return paint(mark, color, stream)


def _can_encode(stream: TextIO, text: str) -> bool:
    encoding = getattr(stream, "encoding", None) or "utf-8"
    try:
        text.encode(encoding)
    except (UnicodeEncodeError, LookupError):
        return False
    return True


def human_bytes(value: int | None) -> str:
    if value is None:
        return "-"
    size = float(value)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{value} B"  # pragma: no cover


def percent(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}%"


def _width(text: str) -> int:
    """Display width, ignoring colour codes; wide characters count twice."""
    plain = _strip_codes(text)
    return sum(2 if unicodedata.east_asian_width(ch) in "WF" else 1 for ch in plain)


def _strip_codes(text: str) -> str:
    out = []
    i = 0
    while i < len(text):
        if text[i] == "\x1b":
            end = text.find("m", i)
            i = end + 1 if end != -1 else len(text)
            continue
        out.append(text[i])
        i += 1
    return "".join(out)


def table(
    headers: Sequence[str],
    rows: Iterable[Sequence[Any]],
    stream: TextIO | None = None,
    right: Iterable[int] = (),
) -> str:
    """Columns padded to their widest cell; ``right`` names columns aligned right."""
    cells = [[str(c) for c in headers]] + [["" if c is None else str(c) for c in r] for r in rows]
    widths = [max(_width(row[i]) for row in cells) for i in range(len(headers))]
    right = set(right)
    lines = []
    for n, row in enumerate(cells):
        parts = []
        for i, cell in enumerate(row):
            pad = " " * (widths[i] - _width(cell))
            parts.append(pad + cell if i in right else cell + pad)
        line = "  ".join(parts).rstrip()
        lines.append(paint(line, "bold", stream) if n == 0 else line)
    return "\n".join(lines)


def to_data(value: Any) -> Any:
    """attrs records, paths and tuples to plain JSON-ready values."""
    import attrs

    if attrs.has(type(value)):
        return {k: to_data(v) for k, v in attrs.asdict(value, recurse=False).items()}
    if isinstance(value, dict):
        return {str(k): to_data(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [to_data(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value


def dumps(value: Any) -> str:
    return json.dumps(to_data(value), indent=2, sort_keys=False, default=str)
