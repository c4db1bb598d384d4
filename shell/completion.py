"""Completion from the command table: command words, sub-commands, option names and, per
argument kind, instance names (fuzzy), services, env keys, templates, overlays and paths.

pgcli style: a ``Completer`` holds only metadata, a ``CompletionSnapshot`` the controller built
in one call (``Manager.completion_snapshot``). It never reads state or the files under ROOT
itself; shell.refresher builds a new Completer in the background after each command and the REPL
swaps it in. ``complete(text)`` is plain Python (measured by the benchmark, used by tests);
``prompt_toolkit_completer`` wraps it for prompt_toolkit.
"""

from __future__ import annotations

import os
import shlex
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from controller.completion_data import CompletionSnapshot
from shell.commands import table_for
from shell.context import REPL
from shell.parse import HELP_FLAGS, JSON_FLAG, Arg, Command, Lit, Opt


@dataclass(frozen=True)
class Candidate:
    text: str  # what replaces the word being typed
    start: int  # negative: how many characters before the cursor it replaces
    meta: str = ""
    display: str | None = None


# --- matching ------------------------------------------------------------------------------------
def fuzzy(word: str, names: Iterable[str]) -> list[str]:
    """Prefix matches first, then names containing ``word``, then names holding its letters in
    order (``prd`` finds ``prod-db``)."""
    if not word:
        return list(names)
    prefix, inner, loose = [], [], []
    for name in names:
        if name.startswith(word):
            prefix.append(name)
        elif word in name:
            inner.append(name)
        elif _subsequence(word, name):
            loose.append(name)
    return prefix + inner + loose


def _subsequence(word: str, name: str) -> bool:
    it = iter(name)
    return all(ch in it for ch in word)


def _split(text: str) -> tuple[list[str], str]:
    """Complete words before the cursor, and the word being typed (possibly empty)."""
    for suffix in ("", '"', "'"):
        try:
            lexer = shlex.shlex(text + suffix, posix=True, punctuation_chars=False)
            lexer.whitespace_split = True
            lexer.commenters = ""
            words = list(lexer)
            break
        except ValueError:
            continue
    else:
        words = text.split()
    if not text or text[-1].isspace():
        return words, ""
    return words[:-1], (words[-1] if words else "")


# --- the walk over the table -------------------------------------------------------------------
@dataclass
class _Expect:
    literals: list[str]
    args: list[tuple[Arg, dict]]
    opt_values: list[tuple[Opt, dict]]
    options: list[Opt]


def _walk(command: Command, words: list[str]) -> _Expect | None:
    """What may come next after ``words`` (those after the first word), or None if they do not
    fit this command."""
    values: dict = {}
    index = 1
    pending: Opt | None = None
    seen: set[str] = set()
    ended = False
    for word in words:
        if pending is not None:
            values[pending.dest] = word
            pending = None
            continue
        if not ended and word.startswith("-") and word != "-":
            if word == "--":
                ended = True
                continue
            flag = word.partition("=")[0]
            opt = command.find_opt(flag)
            if opt is not None:
                seen.add(opt.dest)
                if opt.takes_value and "=" not in word:
                    pending = opt
            continue
        element = command.pattern[index] if index < len(command.pattern) else None
        if element is None:
            return None
        if isinstance(element, Lit):
            if word != element.word:
                return None
            index += 1
        else:
            if element.repeats:
                values.setdefault(element.dest, []).append(word)
            else:
                values[element.dest] = word
                index += 1
    if pending is not None:
        return _Expect([], [], [(pending, values)], [])
    element = command.pattern[index] if index < len(command.pattern) else None
    literals: list[str] = []
    args: list[tuple[Arg, dict]] = []
    optional_now = True
    if isinstance(element, Lit):
        literals.append(element.word)
        optional_now = False
    elif isinstance(element, Arg):
        args.append((element, values))
        optional_now = element.nargs in ("?", "*") or bool(values.get(element.dest))
    options = [o for o in command.opts if o.repeat or o.dest not in seen]
    return _Expect(literals, args, [], options if optional_now else [])


class Completer:
    """The completion logic; ``complete(text)`` gives candidates for the text before the cursor.

    ``snapshot`` None: no names known yet (the first refresh has not finished)."""

    def __init__(
        self, snapshot: CompletionSnapshot | None = None, table: list[Command] | None = None
    ) -> None:
        self.snapshot = snapshot
        self.names = snapshot or CompletionSnapshot()
        self.table = table if table is not None else table_for(REPL)

    def complete(self, text: str) -> list[Candidate]:
        words, current = _split(text)
        start = -len(current)
        if not words:
            firsts = list(dict.fromkeys(c.first for c in self.table))
            return [
                Candidate(w, start, _summary(self.table, w))
                for w in firsts
                if w.startswith(current)
            ]
        head, rest = words[0], words[1:]
        if head == "help":
            return self._help(rest, current)
        literals: list[str] = []
        args: list[tuple[Arg, dict]] = []
        opt_values: list[tuple[Opt, dict]] = []
        options: list[Opt] = []
        for command in (c for c in self.table if c.first == head):
            expect = _walk(command, rest)
            if expect is None:
                continue
            literals += expect.literals
            args += expect.args
            opt_values += expect.opt_values
            options += expect.options
        out: list[Candidate] = []
        seen: set[str] = set()

        def add(candidates: Iterable[Candidate]) -> None:
            for candidate in candidates:
                if candidate.text not in seen:
                    seen.add(candidate.text)
                    out.append(candidate)

        for opt, values in opt_values:
            add(self._values(opt.complete, current, values, choices=opt.choices))
        if opt_values:
            return out
        if current.startswith("-"):
            flags = [f for o in options for f in o.flags if f.startswith("--")]
            flags += [JSON_FLAG, HELP_FLAGS[1]]
            add(
                Candidate(f, start, "option") for f in dict.fromkeys(flags) if f.startswith(current)
            )
            return out
        add(
            Candidate(w, start, "sub-command")
            for w in dict.fromkeys(literals)
            if w.startswith(current)
        )
        for arg, values in args:
            add(self._values(arg.complete, current, values))
        if not current and not out:
            flags = [o.flags[-1] for o in options]
            add(Candidate(f, start, "option") for f in dict.fromkeys(flags))
        return out

    def _help(self, rest: list[str], current: str) -> list[Candidate]:
        start = -len(current)
        if not rest:
            firsts = dict.fromkeys(c.first for c in self.table)
            return [Candidate(w, start, "command") for w in firsts if w.startswith(current)]
        subs = dict.fromkeys(
            c.words[1] for c in self.table if c.first == rest[0] and len(c.words) > 1
        )
        return [Candidate(w, start, "sub-command") for w in subs if w.startswith(current)]

    def _values(
        self, kind: str | None, current: str, values: dict, choices: Iterable[str] | None = None
    ) -> list[Candidate]:
        start = -len(current)
        if choices is not None and kind != "overlay":
            return [Candidate(c, start) for c in choices if c.startswith(current)]
        name = values.get("name")
        names = self.names
        if kind == "instance":
            return [
                Candidate(_q(n), start, "instance") for n in fuzzy(current, names.instance_names())
            ]
        if kind in ("host", "remote_host"):
            hosts = names.host_names(local=kind == "host")
            return [Candidate(h, start, "host") for h in hosts if h.startswith(current)]
        if kind == "template":
            return [
                Candidate(_q(t), start, "template")
                for t in names.template_names()
                if t.startswith(current)
            ]
        if kind == "overlay":
            overlays = names.overlays(values.get("template"))
            return [Candidate(o, start, "overlay") for o in overlays if o.startswith(current)]
        if kind == "service" and name:
            taken = set(values.get("services") or [])
            services = [s for s in names.services(name) if s not in taken]
            return [Candidate(_q(s), start, "service") for s in services if s.startswith(current)]
        if kind == "env_key" and name:
            keys = names.env_keys(name)
            return [Candidate(k, start, "key") for k in keys if k.startswith(current)]
        if kind == "env_assign" and name and "=" not in current:
            keys = names.env_keys(name)
            return [Candidate(k + "=", start, "key", k) for k in keys if k.startswith(current)]
        if kind == "port_assign":
            services = names.port_services(values.get("template"))
            return [Candidate(s + "=", start, "service") for s in services if s.startswith(current)]
        if kind == "path":
            return _paths(current)
        return []


def _q(word: str) -> str:
    return word if word and all(c.isalnum() or c in "-_.:/=@+" for c in word) else shlex.quote(word)


def _summary(table: list[Command], first: str) -> str:
    commands = [c for c in table if c.first == first]
    return commands[0].help if len(commands) == 1 else "…"


def _paths(current: str) -> list[Candidate]:
    folder, _, base = current.rpartition("/")
    where = os.path.expanduser(folder + "/" if folder or current.startswith("/") else ".")
    try:
        entries = sorted(os.scandir(where), key=lambda e: e.name)
    except OSError:
        return []
    out = []
    for entry in entries:
        if not entry.name.startswith(base) or (entry.name.startswith(".") and not base):
            continue
        prefix = folder + "/" if folder or current.startswith("/") else ""
        suffix = "/" if entry.is_dir() else ""
        out.append(Candidate(prefix + entry.name + suffix, -len(current), "", entry.name + suffix))
    return out


def prompt_toolkit_completer(current: Callable[[], Completer]):
    """The same completion as a prompt_toolkit Completer (imported only by the REPL).
    ``current`` gives the Completer in use, which the refresher replaces after each command."""
    from prompt_toolkit.completion import Completer as PTCompleter
    from prompt_toolkit.completion import Completion

    class _Wrapped(PTCompleter):
        def get_completions(self, document, complete_event):
            for c in current().complete(document.text_before_cursor):
                yield Completion(c.text, c.start, display=c.display, display_meta=c.meta)

    return _Wrapped()
