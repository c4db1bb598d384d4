"""This ROOT's identity on a Docker engine that other ROOTs (or hand-run stacks) may share.

Project names, container names and volume names are engine-wide. Every object an instance creates
carries ROOT_LABEL with this ROOT's id (ROOT/root-id, made once), and supabase-manager only lists,
changes or removes objects with that label.

An instance that never started has no container on the engine, so each instance also holds a
*claim* there from its create on: a volume named after its compose project (``NAME_sbm-claim``)
whose labels carry this ROOT's id, where the ROOT lives and the instance's host ports. A volume,
not a network: it costs a folder on the engine, while every network takes a subnet from the
engine's small address pool; and a named volume's name is engine-wide, so two ROOTs creating the
same instance at once cannot both get it (the second one reads the first one's labels back).
"""

from __future__ import annotations

import contextlib
import os
import socket
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING

import attrs

from controller.errors import OperationError, UsageError

if TYPE_CHECKING:
    from controller.engine import Engine, Volume

PROJECT_LABEL = "com.docker.compose.project"
# On a claim volume: the instance (= compose project) claimed, and where its ROOT lives
# ("HOST:/path/to/ROOT"), which tells a claim left by a ROOT removed from this host.
CLAIM_LABEL = "io.supabase-manager.claim"
ROOT_PATH_LABEL = "io.supabase-manager.root-path"
CLAIM_SUFFIX = "_sbm-claim"

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
    (another ROOT's, its claim included, or a hand-run stack's), described for a message; [] when
    none."""
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
    volumes = engine.volumes()
    for claim in _claims(volumes):
        if claim.instance == names.project and claim.root != root and not claim.stale():
            found.append(f"compose project {names.project} (claimed by the ROOT at {claim.where})")
    for kind, listing, wanted_names in (
        ("volume", volumes, set(names.volumes)),
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
            f"{found[0]}{more} already exists on the Docker engine and is not this ROOT's"
            f"{'' if root == '-' else f' ({root})'}: choose another instance name"
        )


def engine_ports(engine: Engine) -> set[int]:
    """Host ports held on the engine by supabase-manager instances of any ROOT: by their
    containers, stopped ones too (a running container's ports are also seen by trying to bind
    them), and by their claims (instances never started)."""
    from controller.labels import PORTS_LABEL

    ports: set[int] = set()
    for container in engine.containers([PORTS_LABEL]):
        ports |= _ports(container.labels.get(PORTS_LABEL, ""))
    for claim in _claims(engine.volumes([CLAIM_LABEL])):
        if not claim.stale():
            ports |= claim.ports
    return ports


# --- claims ---------------------------------------------------------------------------------------


@attrs.frozen
class Claim:
    """An instance's claim volume, as its labels say."""

    volume: str
    instance: str
    root: str
    where: str  # "HOST:/path/to/ROOT"
    ports: frozenset[int]

    def stale(self) -> bool:
        """Whether the ROOT that made it is gone from this host: its folder no longer exists, or
        holds another id. A ROOT on another host, or one this user cannot read, counts as live."""
        host, _, path = self.where.partition(":")
        if host != _machine() or not path.startswith("/"):
            return False
        try:
            return Path(path, ROOT_ID_FILE).read_text().strip() != self.root
        except FileNotFoundError:
            return not Path(path).exists()  # an empty mount point is not a removed ROOT
        except OSError:
            return False


def claim_volume(project: str) -> str:
    """The name of the claim volume of compose project ``project``."""
    return f"{project}{CLAIM_SUFFIX}"


def _machine() -> str:
    """This machine, as claims name it: the host name and /etc/machine-id (two machines can
    share a host name, e.g. NixOS's default one, and share a worker's engine too)."""
    try:
        machine = Path("/etc/machine-id").read_text().strip()
    except OSError:
        machine = ""
    return f"{socket.gethostname()}/{machine}" if machine else socket.gethostname()


def where(root: Path) -> str:
    """This ROOT's place, as a claim records it."""
    return f"{_machine()}:{os.path.abspath(root)}"


def claim(engine: Engine, root: str, place: str, instance: str, ports: set[int]) -> None:
    """Make (or bring up to date) the instance's claim. UsageError (exit 2) when another ROOT's
    live claim, or a volume not ours, already has its name."""
    from controller.labels import PORTS_LABEL, ROOT_LABEL

    labels = {
        CLAIM_LABEL: instance,
        ROOT_LABEL: root,
        ROOT_PATH_LABEL: place,
        PORTS_LABEL: ",".join(str(port) for port in sorted(ports)),
    }
    name = claim_volume(instance)
    current = _volume(engine, name)
    if current is not None and dict(current.labels) != labels:
        found = _claim(current)
        if found is None or (found.root != root and not found.stale()):
            raise _taken(instance, current)
        engine.remove_volume(name)  # ours but out of date, or left by a ROOT that is gone
        current = None
    if current is None:
        _create_volume(engine, name, labels)
        current = _volume(engine, name)
        if current is None or current.labels.get(ROOT_LABEL) != root:
            # Another ROOT made it between our look and our create: its name, not ours.
            raise _taken(instance, current)


def release(engine: Engine, root: str, instance: str) -> None:
    """Remove the instance's claim when it is this ROOT's (gone already: nothing to do)."""
    from controller.labels import ROOT_LABEL

    current = _volume(engine, claim_volume(instance))
    if current is not None and current.labels.get(ROOT_LABEL) == root:
        engine.remove_volume(current.name)


def sweep(engine: Engine, root: str, instances: Callable[[], Iterable[str]]) -> list[str]:
    """Remove this ROOT's claims of instances it no longer has (a delete that could not reach the
    engine leaves its claim behind) and claims of ROOTs gone from this host; the names removed.
    ``instances()`` is read after the listing, so a create (or a restore making a new instance)
    committing meanwhile keeps its claim: each commits its record before it makes the claim."""
    found = _claims(engine.volumes([CLAIM_LABEL]))
    if not found:
        return []
    known = set(instances())
    removed = []
    for each in found:
        if (each.root == root and each.instance not in known) or each.stale():
            engine.remove_volume(each.volume)
            removed.append(each.volume)
    return removed


def _taken(instance: str, volume: Volume | None) -> UsageError:
    found = _claim(volume) if volume is not None else None
    if found is not None:
        what = f"compose project {instance} (claimed by the ROOT at {found.where})"
    else:
        what = f"volume {claim_volume(instance)}"
    return UsageError(
        f"{what} already exists on the Docker engine and is not this ROOT's: "
        "choose another instance name"
    )


def _volume(engine: Engine, name: str) -> Volume | None:
    for volume in engine.volumes([CLAIM_LABEL]):
        if volume.name == name:
            return volume
    return None


def _create_volume(engine: Engine, name: str, labels: dict[str, str]) -> None:
    """``docker volume create``: the Engine API client sends no request bodies, and the CLI
    honours DOCKER_HOST as it does. The engine hands back an existing volume of that name."""
    import shutil
    import subprocess

    from controller.errors import DockerUnavailable

    docker = shutil.which("docker")
    if docker is None:
        raise DockerUnavailable("the docker command is not installed")
    argv = [docker, "volume", "create"]
    for key, value in labels.items():
        argv += ["--label", f"{key}={value}"]
    # The engine of the current place (containerio.engine): another host's over ssh.
    from controller.containerio import process_env

    done = subprocess.run(
        [*argv, name], capture_output=True, text=True, timeout=60, env=process_env()
    )
    if done.returncode != 0:
        reason = (done.stderr.strip().splitlines() or ["failed"])[-1][:200]
        raise DockerUnavailable(f"cannot create the claim volume {name}: {reason}")


def _claims(volumes: Iterable[Volume]) -> list[Claim]:
    return [found for found in map(_claim, volumes) if found is not None]


def _claim(volume: Volume) -> Claim | None:
    from controller.labels import PORTS_LABEL, ROOT_LABEL

    labels = volume.labels
    if CLAIM_LABEL not in labels or volume.name != claim_volume(labels[CLAIM_LABEL]):
        return None  # a volume that only looks like one
    return Claim(
        volume=volume.name,
        instance=labels[CLAIM_LABEL],
        root=labels.get(ROOT_LABEL, ""),
        where=labels.get(ROOT_PATH_LABEL, ""),
        ports=frozenset(_ports(labels.get(PORTS_LABEL, ""))),
    )


def _ports(text: str) -> set[int]:
    return {int(part) for part in text.split(",") if part.strip().isdigit()}
