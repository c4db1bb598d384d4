"""An instance's .env: parse and render keeping every line, comment and the order; value checks.

The format is the one docker compose reads (``KEY=value``, optional ``export``, single- or
double-quoted values, ``#`` comments). A commented-out ``# KEY=value`` stays a comment.
"""

import json
import re
import urllib.parse
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import attrs
import jwt
import yaml

from controller import secrets

KEY_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
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
        if not KEY_RE.match(key):
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


# --- validation -------------------------------------------------------------------------------

_BOOL_WORDS = {"true", "false"}
_INT_SUFFIXES = ("_SIZE", "_CONN", "_EXPIRY", "_MAX_ROWS", "_LENGTH", "_EXP")


def _is_bool_key(key: str) -> bool:
    return key.startswith(("ENABLE_", "DISABLE_")) or key.endswith(
        ("_ENABLED", "_DISABLED", "_AUTOCONFIRM", "_VERIFY_JWT")
    )


def _url_problem(key: str, value: str) -> str | None:
    parsed = urllib.parse.urlsplit(value)
    if any(word in key for word in ("DB", "DATABASE", "POSTGRES")):
        if not parsed.scheme or not parsed.netloc:
            return "is not a URL (scheme://host...)"
        return None
    if parsed.scheme not in ("http", "https") or not parsed.hostname:
        return "is not an http(s) URL"
    try:
        parsed.port  # noqa: B018  (raises on a bad port)
    except ValueError:
        return "has an invalid port"
    return None


def validate(key: str, value: str) -> str | None:
    """What is wrong with setting ``key`` to ``value``, or None. Never quotes a secret value."""
    if not KEY_RE.match(key):
        return "is not a valid variable name (letters, digits and _, not starting with a digit)"
    if any(char in value for char in "\n\r\0"):
        return "contains a newline, carriage return or NUL character"
    problem = secrets.check_secret(key, value)
    if problem:
        return problem
    shown = "" if secrets.is_secret(key) else f" ({value!r})"
    if key.endswith("_PORT"):
        if not value.isdigit() or not 1 <= int(value) <= 65535:
            return f"is not a port number 1-65535{shown}"
    elif key.endswith("_URL"):
        problem = _url_problem(key, value)
        if problem:
            return problem + shown
    elif key.endswith("_URLS") and value:
        for part in value.split(","):
            problem = _url_problem(key, part.strip()) if "*" not in part else None
            if problem:
                return f"holds an entry that {problem}"
    elif _is_bool_key(key):
        if value.lower() not in _BOOL_WORDS:
            return f"must be true or false{shown}"
    elif key.endswith(_INT_SUFFIXES) and not key.endswith("_KEY"):
        if not value.isdigit():
            return f"must be a whole number{shown}"
    elif key == "COMPOSE_PROJECT_NAME" and not re.match(r"^[a-z0-9][a-z0-9_-]*$", value):
        return "must be lowercase letters, digits, '-' and '_'"
    return None


def _cross_checks(values: dict[str, str]) -> list[tuple[str, str]]:
    """Problems between keys: the legacy API keys must be signed with JWT_SECRET."""
    problems: list[tuple[str, str]] = []
    secret = values.get("JWT_SECRET")
    if not secret:
        return problems
    for key, role in (("ANON_KEY", "anon"), ("SERVICE_ROLE_KEY", "service_role")):
        token = values.get(key)
        if not token:
            continue
        try:
            claims = jwt.decode(token, secret, algorithms=["HS256"], options={"verify_aud": False})
        except jwt.PyJWTError:
            problems.append((key, "is not a JWT signed with JWT_SECRET"))
            continue
        if claims.get("role") != role:
            problems.append((key, f"does not carry role {role!r}"))
    jwks = values.get("JWT_JWKS")
    if jwks:
        try:
            parsed = json.loads(jwks)
            keys = parsed["keys"] if isinstance(parsed, dict) else None
            if not isinstance(keys, list):
                raise ValueError
        except (ValueError, KeyError, TypeError):
            keys = None
        if keys is not None:
            for key, role in (
                ("ANON_KEY_ASYMMETRIC", "anon"),
                ("SERVICE_ROLE_KEY_ASYMMETRIC", "service_role"),
            ):
                token = values.get(key)
                if token and not secrets.verify_with_jwks(token, jwks, role):
                    problems.append((key, "does not verify against JWT_JWKS"))
    return problems


def check_text(text: str) -> list[str]:
    """Problems in a whole .env text, one per line with its line number (empty: fine)."""
    problems: list[str] = []
    seen: dict[str, int] = {}
    values: dict[str, str] = {}
    where: dict[str, int] = {}
    if "\0" in text:
        return ["the text contains a NUL character"]
    body = text[:-1] if text.endswith("\n") else text
    for number, line in enumerate(body.split("\n") if body else [], start=1):
        line = line.removesuffix("\r")
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        match = _ASSIGN.match(line)
        if not match:
            problems.append(f"line {number}: not KEY=VALUE")
            continue
        key = match["key"]
        try:
            value = _unquote(match["raw"])
        except EnvSyntaxError as exc:
            problems.append(f"line {number}: {key}: {exc}")
            continue
        if key in seen:
            problems.append(f"line {number}: {key} is already set on line {seen[key]}")
        seen.setdefault(key, number)
        problem = validate(key, value)
        if problem:
            problems.append(f"line {number}: {key} {problem}")
        values[key] = value
        where[key] = number
    for key, problem in _cross_checks(values):
        problems.append(f"line {where[key]}: {key} {problem}")
    return problems


# --- which services read a variable -------------------------------------------------------------


def referenced_variables(text: str) -> set[str]:
    """Names of the variables ``text`` interpolates (``$X``, ``${X}``, ``${X:-...}``, nested)."""
    cleaned = text.replace("$$", "")
    return set(re.findall(r"\$\{?([A-Za-z_][A-Za-z0-9_]*)", cleaned))


def _strings(node: object) -> Iterator[str]:
    if isinstance(node, str):
        yield node
    elif isinstance(node, dict):
        for key, value in node.items():
            if isinstance(key, str):
                yield key
            yield from _strings(value)
    elif isinstance(node, list | tuple):
        for item in node:
            yield from _strings(item)
    elif hasattr(node, "value"):  # !override / !reset wrappers
        yield from _strings(node.value)


def services_using(keys: Iterable[str], compose_paths: Sequence[Path]) -> list[str]:
    """Services whose definition in ``compose_paths`` interpolates any of ``keys``, sorted."""
    from controller.templatefiles import load_yaml  # late import: templatefiles imports us

    wanted = set(keys)
    found: set[str] = set()
    for path in compose_paths:
        try:
            data = load_yaml(Path(path).read_text())
        except (OSError, yaml.YAMLError):
            continue
        services = data.get("services") if isinstance(data, dict) else None
        if not isinstance(services, dict):
            continue
        for name, body in services.items():
            if any(referenced_variables(text) & wanted for text in _strings(body)):
                found.add(str(name))
    return sorted(found)
