"""An instance's .env: parse and render keeping every line, comment and the order.

The format is the one docker compose reads (``KEY=value``, optional ``export``, single- or
double-quoted values, ``#`` comments). A commented-out ``# KEY=value`` stays a comment.
Which keys and values are allowed is controller.envpolicy's business; this module only knows
the syntax.
"""

import re
from collections.abc import Iterator

import attrs

# A variable name; use fullmatch (``$`` would also match before a trailing newline).
KEY_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_ASSIGN = re.compile(
    r"^(?P<lead>\s*)(?P<export>export\s+)?(?P<key>[A-Za-z_][A-Za-z0-9_]*)\s*=(?P<raw>.*)$"
)
# Characters that may stand unquoted in a value without compose reading them differently.
_PLAIN = re.compile(r"^[A-Za-z0-9_./:,@%+=~^*!?\[\]-]*$")


class EnvSyntaxError(ValueError):
    """A line that docker compose would not read as intended."""


def _unquote(raw: str) -> str:
    """The value of the text after ``=``, the way compose reads it (without interpolation)."""
    text = raw.strip()
    if not text:
        return ""
    if text[0] in "'\"":
        quote = text[0]
        out: list[str] = []
        i = 1
        while i < len(text):
            char = text[i]
            if quote == '"' and text.startswith("$$", i):
                out.append("$")
                i += 2
                continue
            if quote == '"' and char == "\\" and i + 1 < len(text):
                nxt = text[i + 1]
                out.append({"n": "\n", "t": "\t", "r": "\r"}.get(nxt, nxt))
                i += 2
                continue
            if char == quote:
                rest = text[i + 1 :].strip()
                if rest and not rest.startswith("#"):
                    raise EnvSyntaxError("text after the closing quote")
                return "".join(out)
            out.append(char)
            i += 1
        raise EnvSyntaxError("unterminated quoted value")
    # Unquoted: an inline comment starts at " #".
    match = re.search(r"\s#", text)
    if match:
        text = text[: match.start()]
    return text.strip()


def quote_value(value: str) -> str:
    """``value`` written so that compose reads it back unchanged (no interpolation either)."""
    if _PLAIN.match(value):
        return value
    if "'" not in value:
        return f"'{value}'"
    escaped = value.replace("\\", "\\\\").replace('"', '\\"').replace("$", "$$")
    return f'"{escaped}"'


def assignment(line: str) -> tuple[str, str] | None:
    """(key, value) of one line, None when it is no assignment; EnvSyntaxError for bad quoting."""
    match = _ASSIGN.match(line.removesuffix("\r"))
    if not match:
        return None
    try:
        return match["key"], _unquote(match["raw"])
    except EnvSyntaxError as exc:
        raise EnvSyntaxError(f"{match['key']}: {exc}") from None


def referenced_variables(text: str) -> set[str]:
    """Names of the variables ``text`` interpolates (``$X``, ``${X}``, ``${X:-...}``, nested)."""
    cleaned = text.replace("$$", "")
    return set(re.findall(r"\$\{?([A-Za-z_][A-Za-z0-9_]*)", cleaned))


@attrs.define
class _Line:
    text: str
    key: str | None = None
    value: str | None = None


@attrs.define
class EnvFile:
    """The lines of a .env file; assignments can be read and changed, the rest stays as it was."""

    lines: list[_Line] = attrs.field(factory=list)
    trailing_newline: bool = True

    @classmethod
    def parse(cls, text: str, strict: bool = False) -> "EnvFile":
        """Parse ``text``. Unreadable lines are kept as they are (``strict`` raises instead)."""
        env = cls(trailing_newline=text.endswith("\n") or not text)
        body = text[:-1] if text.endswith("\n") else text
        for number, line in enumerate(body.split("\n") if body else [], start=1):
            line = line.removesuffix("\r")
            match = _ASSIGN.match(line)
            if not match:
                if strict and line.strip() and not line.lstrip().startswith("#"):
                    raise EnvSyntaxError(f"line {number}: not KEY=VALUE")
                env.lines.append(_Line(line))
                continue
            try:
                value = _unquote(match["raw"])
            except EnvSyntaxError as exc:
                if strict:
                    raise EnvSyntaxError(f"line {number}: {exc}") from None
                env.lines.append(_Line(line))
                continue
            env.lines.append(_Line(line, match["key"], value))
        return env

    def keys(self) -> list[str]:
        seen: dict[str, None] = {}
        for line in self.lines:
            if line.key is not None:
                seen.setdefault(line.key, None)
        return list(seen)

    def items(self) -> list[tuple[str, str]]:
        return [(key, self.get(key) or "") for key in self.keys()]

    def __contains__(self, key: object) -> bool:
        return any(line.key == key for line in self.lines)

    def __iter__(self) -> Iterator[str]:
        return iter(self.keys())

    def get(self, key: str, default: str | None = None) -> str | None:
        """The value compose would use (the last assignment wins)."""
        value = default
        for line in self.lines:
            if line.key == key:
                value = line.value
        return value

    def as_dict(self) -> dict[str, str]:
        return dict(self.items())

    def set(self, key: str, value: str) -> None:
        """Change ``key`` in place (every assignment of it), or append it at the end."""
        if not KEY_RE.fullmatch(key):
            raise ValueError(f"invalid variable name {key!r}")
        text = f"{key}={quote_value(value)}"
        found = False
        for line in self.lines:
            if line.key == key:
                line.text, line.value, found = text, value, True
        if not found:
            self.lines.append(_Line(text, key, value))

    def insert_after(self, previous: str | None, key: str, value: str) -> None:
        """Add ``key`` right after the last assignment of ``previous`` (at the start if None)."""
        if key in self:
            self.set(key, value)
            return
        new = _Line(f"{key}={quote_value(value)}", key, value)
        index = 0
        if previous is not None:
            positions = [i for i, line in enumerate(self.lines) if line.key == previous]
            if not positions:
                self.lines.append(new)
                return
            index = positions[-1] + 1
        self.lines.insert(index, new)

    def unset(self, key: str) -> bool:
        """Remove every assignment of ``key``; whether there was one."""
        before = len(self.lines)
        self.lines = [line for line in self.lines if line.key != key]
        return len(self.lines) != before

    def render(self) -> str:
        text = "\n".join(line.text for line in self.lines)
        return text + "\n" if self.trailing_newline and self.lines else text
