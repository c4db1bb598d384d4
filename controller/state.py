"""The desired state in state.json: attrs classes, a cattrs converter and a schema version.

Every change goes through ``StateStore.transaction()``: an exclusive lock across processes, a fresh
read, the change, and an atomic replace. A file that cannot be read or parsed stops every command
and is never overwritten.
"""

import contextlib
import json
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import attrs
import cattrs

from controller.errors import StateError
from controller.fsutil import atomic_write, ensure_dir, file_lock

SCHEMA_VERSION = 1

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


@attrs.define
class State:
    schema: int = SCHEMA_VERSION
    instances: dict[str, InstanceRecord] = attrs.field(factory=dict)
    templates: dict[str, TemplateRecord] = attrs.field(factory=dict)

    def used_ports(self, exclude: str | None = None) -> set[int]:
        return {
            port
            for name, record in self.instances.items()
            if name != exclude
            for port in record.ports.values()
        }


converter = cattrs.Converter(forbid_extra_keys=False)


def loads(text: str, path: Path) -> State:
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as exc:
        raise StateError(
            f"state file {path} is corrupt (invalid JSON at line {exc.lineno}); "
            "fix or move it away, it will not be overwritten"
        ) from None
    if not isinstance(raw, dict) or "schema" not in raw:
        raise StateError(
            f"state file {path} is corrupt (no schema version); "
            "fix or move it away, it will not be overwritten"
        )
    if raw["schema"] != SCHEMA_VERSION:
        raise StateError(
            f"state file {path} has schema version {raw['schema']!r}, "
            f"this program reads version {SCHEMA_VERSION}"
        )
    try:
        return converter.structure(raw, State)
    except (cattrs.errors.BaseValidationError, TypeError, ValueError):
        raise StateError(
            f"state file {path} is corrupt (unexpected structure); "
            "fix or move it away, it will not be overwritten"
        ) from None


def dumps(state: State) -> str:
    return json.dumps(converter.unstructure(state), indent=2, sort_keys=True) + "\n"


class StateStore:
    """Reads and changes state.json under ROOT."""

    def __init__(self, path: Path, lock_path: Path) -> None:
        self.path = Path(path)
        self.lock_path = Path(lock_path)

    def read(self) -> State:
        """The current state (a snapshot; use transaction() to change it)."""
        try:
            text = self.path.read_text()
        except FileNotFoundError:
            return State()
        except OSError as exc:
            raise StateError(f"state file {self.path} cannot be read: {exc.strerror}") from None
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
