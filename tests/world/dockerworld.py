"""The real Docker engine in tests: client, stand-in image names, and the sandbox that removes
every container, network and volume a test created."""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

import docker
import docker.errors

BUSYBOX_IMAGE = "sbm-standin/busybox:1"
POSTGRES_IMAGE = "sbm-standin/postgres:15"
STANDIN_IMAGES = (BUSYBOX_IMAGE, POSTGRES_IMAGE)

# Sandboxed tests of every pytest run on this machine take turns (see DockerSandbox).
LOCK_FILE = Path(os.environ.get("SBM_DOCKER_LOCK", "/tmp/supabase-manager-tests.docker.lock"))

_PREDEFINED_NETWORKS = {"bridge", "host", "none"}


class DockerUnavailableError(RuntimeError):
    pass


def connect() -> docker.DockerClient:
    """A docker SDK client on the real engine; raises DockerUnavailableError with a clear hint."""
    hint = "run scripts/provision (as root) to install and start Docker and build the images"
    try:
        client = docker.from_env(timeout=120)
        client.ping()
    except Exception as exc:
        raise DockerUnavailableError(f"Docker engine not reachable ({exc}): {hint}") from exc
    missing = []
    for image in STANDIN_IMAGES:
        try:
            client.images.get(image)
        except docker.errors.ImageNotFound:
            missing.append(image)
    if missing:
        raise DockerUnavailableError(f"stand-in images missing: {', '.join(missing)}: {hint}")
    return client


@contextmanager
def _exclusive(lock_file: Path) -> Iterator[None]:
    with lock_file.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def drop_endpoints(client: docker.DockerClient, network: str, containers: Iterable[str]) -> None:
    """Force-disconnect from ``network`` the endpoints named as ``containers`` (the engine drops
    an endpoint by its container's name even when no such container exists)."""
    for name in containers:
        with contextlib.suppress(docker.errors.APIError):
            client.api.disconnect_container_from_network(name, network, force=True)


def _remove_network(client: docker.DockerClient, network, containers: list[str]) -> None:
    """Remove ``network``. Docker Engine 20.10 at times keeps the endpoint of a removed
    container and then refuses ("has active endpoints") with nothing attached: the endpoints
    named as ``containers`` or listed by the network are force-disconnected and the removal
    tried once more."""
    try:
        network.remove()
    except docker.errors.APIError as exc:
        if "active endpoints" not in str(exc):
            raise
        with contextlib.suppress(docker.errors.APIError):
            network.reload()
        listed = [e.get("Name", "") for e in (network.attrs.get("Containers") or {}).values()]
        drop_endpoints(client, network.id, {*containers, *filter(None, listed)})
        network.remove()


class DockerSandbox:
    """Remembers the engine's containers, networks and volumes, and removes every new one.

    While a sandbox is open it holds a machine-wide lock, so sandboxed tests of two pytest runs on
    the same engine never overlap and never remove each other's objects.
    """

    def __init__(self, client: docker.DockerClient) -> None:
        self.client = client
        self._containers: set[str] = set()
        self._networks: set[str] = set()
        self._volumes: set[str] = set()

    def snapshot(self) -> None:
        self._containers = {
            c.id for c in self.client.containers.list(all=True, ignore_removed=True)
        }
        self._networks = {n.id for n in self.client.networks.list()}
        self._volumes = {v.name for v in self.client.volumes.list()}

    def new_containers(self) -> list:
        """Containers created since the snapshot."""
        return [
            c
            for c in self.client.containers.list(all=True, ignore_removed=True)
            if c.id not in self._containers
        ]

    def new_networks(self) -> list:
        return [
            n
            for n in self.client.networks.list()
            if n.id not in self._networks and n.name not in _PREDEFINED_NETWORKS
        ]

    def new_volumes(self) -> list:
        return [v for v in self.client.volumes.list() if v.name not in self._volumes]

    def cleanup(self) -> list[str]:
        """Force-remove everything new; returns what was removed, raises if something stays."""
        removed: list[str] = []
        errors: list[str] = []
        for container in self.new_containers():
            try:
                container.remove(force=True, v=True)
                removed.append(f"container {container.name}")
            except docker.errors.NotFound:
                pass
            except docker.errors.APIError as exc:
                errors.append(f"container {container.name}: {exc}")
        gone = [c.name for c in self.new_containers()] + [
            r.removeprefix("container ") for r in removed
        ]
        for network in self.new_networks():
            try:
                _remove_network(self.client, network, gone)
                removed.append(f"network {network.name}")
            except docker.errors.NotFound:
                pass
            except docker.errors.APIError as exc:
                errors.append(f"network {network.name}: {exc}")
        for volume in self.new_volumes():
            try:
                volume.remove(force=True)
                removed.append(f"volume {volume.name}")
            except docker.errors.NotFound:
                pass
            except docker.errors.APIError as exc:
                errors.append(f"volume {volume.name}: {exc}")
        if errors:
            raise RuntimeError("docker sandbox could not remove: " + "; ".join(errors))
        return removed

    @contextmanager
    def session(self) -> Iterator[DockerSandbox]:
        """Lock, snapshot, yield, clean up (also when the body raised)."""
        with _exclusive(LOCK_FILE):
            self.snapshot()
            try:
                yield self
            finally:
                self.cleanup()
