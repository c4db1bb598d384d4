"""The grammar of a command line, shared by the argv CLI, the REPL, batch scripts and completion.

A command is declared by a *pattern* string: lowercase words are literal words, CAPITALS are
arguments. ``[NAME]`` is optional, ``SERVICE...`` is one or more, ``[SERVICE...]`` any number
(an argument that repeats comes last). Options are declared separately as ``Opt`` records.

Only the standard library is imported here: this module is on the path of every fresh process.
"""

from __future__ import annotations

import shlex
from collections.abc import Callable
from dataclasses import dataclass, field

from controller.errors import UsageError

HELP_FLAGS = ("-h", "--help")
JSON_FLAG = "--json"


class ParseError(UsageError):
    """A command line that does not fit the table; carries the usage lines to show."""

    def __init__(self, message: str, usage: list[str] | None = None) -> None:
        super().__init__(message)
        self.usage = usage or []


@dataclass(frozen=True)
class Lit:
    word: str


@dataclass(frozen=True)
class Arg:
    metavar: str  # NAME, SERVICE, ...
    dest: str  # key in the parsed values
    nargs: str = "1"  # "1", "?", "*", "+"
    complete: str | None = None  # completer kind, see shell.completion

    @property
    def repeats(self) -> bool:
        return self.nargs in ("*", "+")

    def usage(self) -> str:
        return {
            "1": self.metavar,
            "?": f"[{self.metavar}]",
            "*": f"[{self.metavar} ...]",
            "+": f"{self.metavar} ...",
        }[self.nargs]


@dataclass(frozen=True)
class Opt:
    flags: tuple[str, ...]  # ("--tail",) or ("-y", "--yes")
    dest: str
    help: str = ""
    metavar: str | None = None  # None: a flag without a value
    repeat: bool = False  # may be given more than once; values collect in a list
    type: Callable[[str], object] | None = None
    choices: tuple[str, ...] | None = None
    complete: str | None = None  # completer kind for the value
    required: bool = False

    @property
    def takes_value(self) -> bool:
        return self.metavar is not None

    def usage(self) -> str:
        text = self.flags[-1] + (f" {self.metavar}" if self.metavar else "")
        if self.repeat:
            text += " ..."
        return text if self.required else f"[{text}]"


@dataclass(frozen=True)
class Command:
    pattern: tuple[Lit | Arg, ...]
    help: str
    handler: Callable
    opts: tuple[Opt, ...] = ()
    repl_only: bool = False
    prints_data: bool = True  # --json means something for it
    details: str = ""  # extra paragraphs for `help COMMAND`
    secret_words: bool = False  # its words may hold a secret: errors never repeat them
    name: str = field(default="")  # the literal words, e.g. "env set"

    @property
    def words(self) -> tuple[str, ...]:
        return tuple(e.word for e in self.pattern if isinstance(e, Lit))

    @property
    def first(self) -> str:
        return self.pattern[0].word  # type: ignore[union-attr]

    def usage(self) -> str:
        parts = [e.word if isinstance(e, Lit) else e.usage() for e in self.pattern]
        parts += [o.usage() for o in self.opts]
        return " ".join(parts)

    def find_opt(self, token: str) -> Opt | None:
        for opt in self.opts:
            if token in opt.flags:
                return opt
        return None


_ARG_COMPLETERS = {
    "NAME": "instance",
    "SERVICE": "service",
    "KEY": "env_key",
    "ASSIGNMENT": "env_assign",
    "PATH": "path",
    "COMMAND": "command",
}


def pattern(text: str, **completers: str) -> tuple[Lit | Arg, ...]:
    """Turn ``"start NAME [SERVICE...]"`` into pattern elements."""
    elements: list[Lit | Arg] = []
    for raw in text.split():
        optional = raw.startswith("[") and raw.endswith("]")
        word = raw[1:-1] if optional else raw
        repeats = word.endswith("...")
        word = word.removesuffix("...")
        if word.islower():
            elements.append(Lit(word))
            continue
        nargs = ("*" if repeats else "?") if optional else ("+" if repeats else "1")
        dest = word.lower() + ("s" if repeats else "")
        complete = completers.get(word, _ARG_COMPLETERS.get(word))
        elements.append(Arg(word, dest, nargs, complete))
    return tuple(elements)


def split_line(line: str) -> list[str]:
    """Split a REPL or script line like a POSIX shell; ``#`` starts a comment."""
    try:
        return shlex.split(line, comments=True)
    except ValueError as exc:
        raise UsageError(f"cannot split the line: {exc}") from None


@dataclass
class Parsed:
    command: Command | None
    values: dict
    json: bool = False
    help: bool = False  # -h/--help was given: show help instead of running
    help_for: list[Command] = field(default_factory=list)


class _Mismatch(Exception):
    def __init__(
        self,
        message: str,
        literals: int,
        at_literal: bool = False,
        quiet: str | None = None,
        bad_value: bool = False,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.quiet = quiet or message  # the message without any word of the line
        self.literals = literals  # how many literal words matched before failing
        self.at_literal = at_literal
        self.bad_value = bad_value  # the line fits the command, one value does not


def _split_options(cmd: Command, tokens: list[str]) -> tuple[dict, list[str], bool, bool]:
    values: dict = {}
    positionals: list[str] = []
    json = help_ = False
    ended = False
    i = 0
    while i < len(tokens):
        token = tokens[i]
        i += 1
        if ended or not token.startswith("-") or token == "-" or _is_number(token):
            positionals.append(token)
            continue
        if token == "--":
            ended = True
            continue
        if token in HELP_FLAGS:
            help_ = True
            continue
        if token == JSON_FLAG:
            json = True
            continue
        flag, eq, inline = token.partition("=")
        opt = cmd.find_opt(flag)
        if opt is None:
            raise _Mismatch(f"unknown option {flag}", 0, quiet="unknown option")
        if not opt.takes_value:
            if eq:
                raise _Mismatch(
                    f"option {flag} takes no value", 0, quiet="an option takes no value"
                )
            values[opt.dest] = True
            continue
        if eq:
            raw = inline
        elif i < len(tokens):
            raw = tokens[i]
            i += 1
        else:
            raise _Mismatch(f"option {flag} needs a value ({opt.metavar})", 0)
        value = _convert(opt, flag, raw)
        if opt.repeat:
            values.setdefault(opt.dest, []).append(value)
        else:
            values[opt.dest] = value
    return values, positionals, json, help_


def _is_number(token: str) -> bool:
    try:
        float(token)
    except ValueError:
        return False
    return True


def _convert(opt: Opt, flag: str, raw: str) -> object:
    if opt.choices is not None and raw not in opt.choices:
        message = f"option {flag}: {raw!r} is not one of {', '.join(opt.choices)}"
        quiet = f"option {flag}: not one of {', '.join(opt.choices)}"
        raise _Mismatch(message, 0, quiet=quiet, bad_value=True)
    if opt.type is None:
        return raw
    try:
        return opt.type(raw)
    except (ValueError, UsageError) as exc:
        detail = str(exc) if isinstance(exc, UsageError) else f"invalid value {raw!r}"
        message, quiet = f"option {flag}: {detail}", f"option {flag}: invalid value"
        raise _Mismatch(message, 0, quiet=quiet, bad_value=True) from None


def _match(cmd: Command, tokens: list[str]) -> Parsed:
    values, positionals, json, help_ = _split_options(cmd, tokens)
    literals = 0
    j = 0
    for element in cmd.pattern[1:]:
        if isinstance(element, Lit):
            if j >= len(positionals) or positionals[j] != element.word:
                got = repr(positionals[j]) if j < len(positionals) else "nothing"
                message = f"expected {element.word!r}, got {got}"
                raise _Mismatch(message, literals, True, quiet=f"expected {element.word!r}")
            literals += 1
            j += 1
        elif element.nargs == "1":
            if j >= len(positionals):
                if help_:
                    break
                raise _Mismatch(f"missing {element.metavar}", literals + 1)
            values[element.dest] = positionals[j]
            j += 1
        elif element.nargs == "?":
            values[element.dest] = positionals[j] if j < len(positionals) else None
            j += 1 if j < len(positionals) else 0
        else:
            rest = positionals[j:]
            if element.nargs == "+" and not rest and not help_:
                raise _Mismatch(f"missing {element.metavar}", literals + 1)
            values[element.dest] = rest
            j = len(positionals)
    if j < len(positionals) and not help_:
        message = f"unexpected argument {positionals[j]!r}"
        raise _Mismatch(message, literals + 1, quiet="unexpected argument")
    for opt in cmd.opts:
        if opt.required and opt.dest not in values and not help_:
            raise _Mismatch(f"missing option {opt.flags[-1]}", literals + 1)
        values.setdefault(opt.dest, [] if opt.repeat else (False if not opt.takes_value else None))
    return Parsed(cmd, values, json=json, help=help_)


def parse(table: list[Command], tokens: list[str]) -> Parsed:
    """Find the command of ``tokens`` and its values, or raise ParseError with usage lines."""
    if not tokens:
        raise ParseError("no command given; try 'help'")
    head = tokens[0]
    if head in HELP_FLAGS:
        return Parsed(None, {}, help=True)
    candidates = [c for c in table if c.first == head]
    if not candidates:
        raise ParseError(f"unknown command {head!r}; try 'help'")
    # Most specific first (more literal words), so "start --all" is tried before "start NAME".
    ordered = sorted(candidates, key=lambda c: -len(c.words))
    failures: list[tuple[Command, _Mismatch]] = []
    for cmd in ordered:
        try:
            parsed = _match(cmd, tokens[1:])
        except _Mismatch as exc:
            failures.append((cmd, exc))
            continue
        if parsed.help:
            parsed.help_for = related(table, tokens)
        return parsed
    if any(t in HELP_FLAGS for t in tokens[1:]):
        return Parsed(None, {}, help=True, help_for=related(table, tokens))
    usage = [c.usage() for c in related(table, tokens)]
    # A line meant for a command whose words may be secrets (`env NAME set K=V`): no error
    # message repeats a word of it.
    quiet = any(c.secret_words and set(c.words[1:]) <= set(tokens[1:]) for c in candidates)
    if all(f.at_literal and f.literals == 0 for _, f in failures) and len(candidates) > 1:
        subs = sorted({c.words[1] for c in candidates if len(c.words) > 1})
        given = _first_positional(tokens[1:])
        what = f"unknown sub-command {given!r}" if given else "missing sub-command"
        if quiet:
            what = "unknown sub-command"
        raise ParseError(f"{head}: {what} (one of: {', '.join(subs)})", usage)
    # Report the failure of the candidate that got furthest.
    best_cmd, best = max(failures, key=lambda f: (f[1].literals, -ordered.index(f[0])))
    if best.at_literal:
        best = next((f for _, f in failures if not f.at_literal), best)
    given = set(tokens[1:])
    prefix = " ".join([head] + [w for w in best_cmd.words[1:] if w in given])
    # A bad value is one line, like any other bad input; the usage is for a line that does not
    # fit the command.
    message = f"{prefix}: {best.quiet if quiet else best.message}"
    raise ParseError(message, [] if best.bad_value else usage)


def _first_positional(tokens: list[str]) -> str | None:
    return next((t for t in tokens if not t.startswith("-")), None)


def related(table: list[Command], tokens: list[str]) -> list[Command]:
    """The commands a (possibly wrong) line is about: same first word, and the same second
    literal word when the line has one."""
    group = [c for c in table if c.first == tokens[0]]
    rest = [t for t in tokens[1:] if not t.startswith("-")]
    narrowed = [c for c in group if len(c.words) > 1 and any(t == c.words[1] for t in rest[:2])]
    return narrowed or group


def quote(word: str) -> str:
    return shlex.quote(word)
