"""The desired state in state.json: attrs classes, a cattrs converter and a schema version.

Every change goes through ``StateStore.transaction()``: an exclusive lock across processes, a fresh
read, the change, and an atomic replace. A file that cannot be read or parsed stops every command
and is never overwritten.
"""

import contextlib
import json
import types
import typing
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

import attrs

from controller.errors import OperationError, StateError
from controller.fsutil import atomic_write, ensure_dir, file_lock

if TYPE_CHECKING:
    import cattrs

SCHEMA_VERSION = 2
# Older versions this program reads, and how each becomes the next one. Version 2 added hosts
# (instances on other Docker engines): a version 1 file has none, every instance runs on "local".
# A newer program's file is refused, never read: an older one would run remote instances here.
_UPGRADES = {1: lambda raw: {**raw, "schema": 2}}
LOCAL_HOST = "local"

# Instance phases. "creating" marks a create that has not finished: running `create` again finishes
# it and `delete` cleans it up.
CREATING = "creating"
READY = "ready"


def now_iso() -> str:
    return datetime.now(UTC).replace(microsecond=0).isoformat()


@attrs.define
class TemplateRecord:
    name: str
    source: str  # "github:self-hosted/v0.8.2", "import:/path", ...
    added_at: str = attrs.field(factory=now_iso)


@attrs.define
class MoveRecord:
    """How far a `move` got. Until ``phase`` is "switched", ``host`` above is still the old
    place and the copy on ``target`` is a draft a failed or killed move removes; once switched,
    ``host`` is the new place and what is left on ``source`` is removed by the next command."""

    source: str
    target: str
    phase: str = "copying"  # "copying", then "switched"
    backup: str = ""


@attrs.define
class InstanceRecord:
    name: str
    template: str
    created_at: str = attrs.field(factory=now_iso)
    phase: str = CREATING
    overlays: list[str] = attrs.field(factory=list)
    extra_compose: list[str] = attrs.field(factory=list)
    # Host ports by "SERVICE:CONTAINER_PORT", e.g. {"api-gw:8000": 20000}.
    ports: dict[str, int] = attrs.field(factory=dict)
    cpus: float | None = None
    memory: str | None = None
    # Whether the instance should be running; boot-time reconcile starts those marked so.
    autostart: bool = True
    # False while the instance was never started (created with --no-start): it has no Docker
    # objects, so delete needs no Docker and its status is "stopped", not "missing". Records
    # from before this field read as True, the safe side.
    started: bool = True
    # The last `upgrade`: the template it came from and the backup taken just before it, which
    # `upgrade NAME --rollback` restores.
    previous_template: str | None = None
    upgrade_backup: str | None = None
    # The host (State.hosts) whose engine runs the instance; "local" is this machine's engine.
    host: str = LOCAL_HOST
    # A `move` under way (controller/ops/move.py); None when there is none.
    move: MoveRecord | None = None


@attrs.define
class HostRecord:
    """A Docker engine on another machine, reached over SSH (`host add`)."""

    name: str
    user: str
    address: str  # as in the ssh URL: an IP address or a DNS name
    port: int = 22
    # The address instance ports are published on there (a private one, e.g. WireGuard's), and
    # that Caddy dials; never 0.0.0.0.
    bind: str = ""
    # The folder on the worker under which instance folders live; "" means the same absolute
    # path as here (compose hands bind-mount paths to the engine as the client resolved them).
    data_root: str = ""
    added_at: str = attrs.field(factory=now_iso)


@attrs.define
class State:
    schema: int = SCHEMA_VERSION
    instances: dict[str, InstanceRecord] = attrs.field(factory=dict)
    templates: dict[str, TemplateRecord] = attrs.field(factory=dict)
    hosts: dict[str, HostRecord] = attrs.field(factory=dict)

    def used_ports(self, exclude: str | None = None) -> set[int]:
        return {
            port
            for name, record in self.instances.items()
            if name != exclude
            for port in record.ports.values()
        }


_converter = None


def __getattr__(name: str) -> object:
    # `converter` is made on first use: importing cattrs and generating its structure code cost
    # ~12 ms, which a read-only command (list, show, completion) need not pay, see _plain
    if name == "converter":
        return get_converter()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def get_converter() -> "cattrs.Converter":
    """The one cattrs converter of the state format."""
    global _converter
    if _converter is None:
        import cattrs

        _converter = cattrs.Converter(forbid_extra_keys=False)
    return _converter


class _NotPlain(Exception):
    """Data the fast path does not take as it is: cattrs decides (converts or refuses)."""


def _plain(value: object, kind: object) -> object:
    """``value`` structured as ``kind`` when it already has exactly the JSON types state.json
    is written with, so the result is the one cattrs would build; anything else is _NotPlain."""
    reader = _READERS.get(kind)
    if reader is None:
        reader = _READERS[kind] = _reader(kind)
    return reader(value)


_READERS: dict = {}


def _reader(kind: object):  # -> Callable[[object], object], raising _NotPlain
    """A function that reads one ``kind`` from plain JSON data, made once per type."""
    if kind in (str, int, float, bool):

        def scalar(value: object) -> object:
            if type(value) is not kind:
                raise _NotPlain
            return value

        return scalar
    if isinstance(kind, type) and attrs.has(kind):
        fields = [(f.name, f.type, f.default is attrs.NOTHING) for f in attrs.fields(kind)]

        def record(value: object) -> object:
            if type(value) is not dict:
                raise _NotPlain
            kwargs = {}
            for name, field_kind, required in fields:
                if name in value:
                    kwargs[name] = _plain(value[name], field_kind)
                elif required:
                    raise _NotPlain
            return kind(**kwargs)

        return record
    origin, args = typing.get_origin(kind), typing.get_args(kind)
    if origin is types.UnionType and len(args) == 2 and type(None) in args:
        other = args[args[0] is type(None)]
        return lambda value: None if value is None else _plain(value, other)
    if origin is list and len(args) == 1:

        def sequence(value: object) -> object:
            if type(value) is not list:
                raise _NotPlain
            return [_plain(item, args[0]) for item in value]

        return sequence
    if origin is dict and len(args) == 2:

        def mapping(value: object) -> object:
            if type(value) is not dict:
                raise _NotPlain
            return {_plain(k, args[0]): _plain(v, args[1]) for k, v in value.items()}

        return mapping

    def other(value: object) -> object:
        raise _NotPlain

    return other


def loads(text: str, path: Path) -> State:
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as exc:
        raise StateError(
            f"state file {path} is corrupt (invalid JSON at line {exc.lineno}); "
            "fix or move it away, it will not be overwritten"
        ) from None
    except RecursionError:
        raise StateError(
            f"state file {path} is corrupt (nested too deeply); "
            "fix or move it away, it will not be overwritten"
        ) from None
    if not isinstance(raw, dict) or "schema" not in raw:
        raise StateError(
            f"state file {path} is corrupt (no schema version); "
            "fix or move it away, it will not be overwritten"
        )
    while raw["schema"] in _UPGRADES:
        raw = _UPGRADES[raw["schema"]](raw)
    if raw["schema"] != SCHEMA_VERSION:
        raise StateError(
            f"state file {path} has schema version {raw['schema']!r}, "
            f"this program reads version {SCHEMA_VERSION}"
        )
    try:
        return _plain(raw, State)
    except _NotPlain:
        pass
    from cattrs.errors import BaseValidationError

    try:
        return get_converter().structure(raw, State)
    except (BaseValidationError, TypeError, ValueError, RecursionError):
        raise StateError(
            f"state file {path} is corrupt (unexpected structure); "
            "fix or move it away, it will not be overwritten"
        ) from None


def dumps(state: State) -> str:
    return json.dumps(get_converter().unstructure(state), indent=2, sort_keys=True) + "\n"


class StateStore:
    """Reads and changes state.json under ROOT."""

    def __init__(self, path: Path, lock_path: Path) -> None:
        self.path = Path(path)
        self.lock_path = Path(lock_path)

    def read(self) -> State:
        """The current state (a snapshot; use transaction() to change it)."""
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return State()
        except UnicodeDecodeError:
            raise StateError(
                f"state file {self.path} is corrupt (not UTF-8 text); "
                "fix or move it away, it will not be overwritten"
            ) from None
        except OSError as exc:
            raise OperationError(f"state file {self.path} cannot be read: {exc.strerror}") from None
        return loads(text, self.path)

    @contextlib.contextmanager
    def transaction(self) -> Iterator[State]:
        """Lock, read, let the caller change the state, and write it back atomically.

        An exception inside the block leaves the file untouched.
        """
        ensure_dir(self.path.parent, 0o755)
        with file_lock(self.lock_path):
            state = self.read()
            before = dumps(state)
            yield state
            after = dumps(state)
            if after != before:
                atomic_write(self.path, after, mode=0o600)
