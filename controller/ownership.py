"""This ROOT's identity on a Docker engine that other ROOTs (or hand-run stacks) may share.

Project names, container names and volume names are engine-wide. Every object an instance creates
carries ROOT_LABEL with this ROOT's id (ROOT/root-id, made once), and supabase-manager only lists,
changes or removes objects with that label.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import TYPE_CHECKING

import attrs

from controller.errors import OperationError, UsageError

if TYPE_CHECKING:
    from controller.engine import Engine

PROJECT_LABEL = "com.docker.compose.project"

ROOT_ID_FILE = "root-id"


def root_id(root: Path) -> str:
    """This ROOT's id: made on first use, then the same for the ROOT's whole life."""
    path = Path(root) / ROOT_ID_FILE
    with contextlib.suppress(FileNotFoundError):
        return _check(path, path.read_text().strip())
    Path(root).mkdir(parents=True, exist_ok=True)
    new = os.urandom(8).hex()  # as secrets.token_hex, without its hmac/hashlib imports
    tmp = path.with_name(f".{ROOT_ID_FILE}.{os.getpid()}.tmp")
    tmp.write_text(new + "\n")
    os.chmod(tmp, 0o644)
    try:
        os.link(tmp, path)  # two first commands at once: the first link wins, both read it
    except FileExistsError:
        pass
    finally:
        tmp.unlink()
    return _check(path, path.read_text().strip())


def _check(path: Path, value: str) -> str:
    if not value or not value.isalnum() or len(value) > 64:
        raise OperationError(f"{path} is corrupt: delete it only if no instance exists yet")
    return value


def existing_root_id(root: Path) -> str | None:
    """This ROOT's id when one was made (a read never makes one: no id, no object of ours)."""
    try:
        return _check(Path(root) / ROOT_ID_FILE, (Path(root) / ROOT_ID_FILE).read_text().strip())
    except FileNotFoundError:
        return None


# --- the engine -----------------------------------------------------------------------------------


@attrs.frozen
class EngineNames:
    """The engine-wide names an instance's objects get."""

    project: str
    containers: tuple[str, ...]
    networks: tuple[str, ...]
    volumes: tuple[str, ...]


def foreign_objects(engine: Engine, root: str, names: EngineNames) -> list[str]:
    """Objects on the engine an instance with ``names`` would share but that are not this ROOT's
    (another ROOT's, or a hand-run stack's), described for a message; [] when none."""
    from controller.labels import ROOT_LABEL

    found: list[str] = []
    containers = engine.containers()
    wanted = set(names.containers)
    for container in containers:
        if container.labels.get(ROOT_LABEL) == root:
            continue
        if container.labels.get(PROJECT_LABEL) == names.project:
            found.append(f"compose project {names.project} (container {container.name})")
        elif container.name in wanted:
            found.append(f"container {container.name}")
    for kind, listing, wanted_names in (
        ("volume", engine.volumes(), set(names.volumes)),
        ("network", engine.networks(), set(names.networks)),
    ):
        for item in listing:
            if item.name in wanted_names and item.labels.get(ROOT_LABEL) != root:
                found.append(f"{kind} {item.name}")
    return found


def refuse_foreign(engine: Engine, root: str, names: EngineNames) -> None:
    """UsageError (exit 2) naming the first object of someone else the instance would take."""
    found = foreign_objects(engine, root, names)
    if found:
        more = f" (and {len(found) - 1} more)" if len(found) > 1 else ""
        raise UsageError(
            f"{found[0]}{more} already exists on the Docker engine and is not this ROOT's "
            f"({root}): choose another instance name"
        )


def engine_ports(engine: Engine) -> set[int]:
    """Host ports held by supabase-manager containers of any ROOT on the engine, stopped ones too
    (a running container's ports are also seen by trying to bind them)."""
    from controller.labels import PORTS_LABEL

    ports: set[int] = set()
    for container in engine.containers([PORTS_LABEL]):
        for text in container.labels.get(PORTS_LABEL, "").split(","):
            if text.strip().isdigit():
                ports.add(int(text))
    return ports
