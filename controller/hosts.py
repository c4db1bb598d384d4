"""Where an instance runs: this machine's engine (host "local") or a Docker engine on another
machine reached over SSH (`host add`).

Every adapter that touches an engine, or an instance's files on the machine that runs it, asks a
`Place` how to reach it, so that no use case assumes the engine or the files are local:

- `engine_address()`: the Engine API (controller/engine.py) for status, stats and cleanup;
- `docker_env()`: the environment of docker CLI processes (compose through python-on-whales,
  containerio's exec and cp streams), which points them at the engine;
- `instance_dir(name)`: the instance folder's absolute path on that machine. Compose resolves
  bind-mount paths on the client and hands them to the engine as they are, so the folder is
  rendered here and copied there at this path;
- `bind` (the address its ports are published on) and `upstream` (the address Caddy dials).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import PurePosixPath
from typing import TYPE_CHECKING

import attrs

from controller.errors import OperationError
from controller.state import LOCAL_HOST, HostRecord, InstanceRecord, State

if TYPE_CHECKING:
    from controller.config import Settings
    from controller.engine import EngineAddress
    from controller.ssh import SshFiles

LOOPBACK = "127.0.0.1"


@attrs.frozen
class Place:
    settings: Settings
    host: str = LOCAL_HOST
    record: HostRecord | None = None  # None for the local engine

    @property
    def local(self) -> bool:
        return self.record is None

    @property
    def bind(self) -> str:
        """The address instance ports are published on: loopback here, the host's private
        address there (never 0.0.0.0)."""
        if self.record is None:
            return LOOPBACK
        return self.record.bind or self.record.address

    @property
    def upstream(self) -> str:
        """The address Caddy dials for the instance's ports."""
        return self.bind

    def instance_dir(self, name: str) -> PurePosixPath:
        if self.record is None or not self.record.data_root:
            return PurePosixPath(self.settings.instance_dir(name))
        return PurePosixPath(self.record.data_root) / "instances" / name

    def ssh_files(self) -> SshFiles:
        from controller.ssh import SshFiles

        return SshFiles.of(self.settings.root, self.settings.ssh_identity)

    def engine_address(self) -> EngineAddress:
        """The Engine API: DOCKER_HOST (or the local socket) here; ``ssh://sbm-NAME`` through
        ROOT/ssh/config for a host (its byte stream is ``docker system dial-stdio`` there)."""
        from controller.engine import EngineAddress
        from controller.ssh import alias

        if self.record is None:
            return EngineAddress.from_env()
        files = self.ssh_files()
        if not files.config.is_file():
            raise OperationError(
                f"host {self.host!r}: {files.config} is missing; run `host list` to write it"
            )
        return EngineAddress("ssh", host=alias(self.host), ssh_config=str(files.config))

    def docker_env(self) -> Mapping[str, str]:
        """Environment for docker CLI processes: nothing for the local engine (DOCKER_HOST as
        the user set it applies); for a host, DOCKER_HOST=ssh://sbm-NAME and a PATH whose ssh
        reads ROOT/ssh/config."""
        if self.record is None:
            return {}
        from controller.ssh import docker_env

        return docker_env(self.ssh_files(), self.host)

    def run(self, command: list[str], stdin: bytes | None = None, timeout: float = 120) -> bytes:
        """Run ``command`` on the host's machine (over ssh); its stdout. Only for hosts."""
        from controller import ssh

        if self.record is None:
            raise OperationError("the local host needs no ssh")
        return ssh.run(self.ssh_files(), self.host, command, stdin, timeout)


def place(settings: Settings, state: State, host: str = LOCAL_HOST) -> Place:
    """The place called ``host``; OperationError when no such host is known. For a host, the
    ssh config is (re)written when it is missing or out of date (e.g. a new identity_file)."""
    if host == LOCAL_HOST:
        return Place(settings)
    found = state.hosts.get(host)
    if found is None:
        raise OperationError(f"no host named {host!r} (see `host list`)")
    write_ssh_config(settings, state)
    return Place(settings, host, found)


def write_ssh_config(settings: Settings, state: State) -> None:
    """ROOT/ssh/config from the hosts in ``state`` (written only when it differs)."""
    from controller.ssh import SshFiles, write_config

    write_config(
        SshFiles.of(settings.root, settings.ssh_identity),
        state.hosts.values(),
        settings.ssh_identity,
        known_hosts=settings.ssh_known_hosts,
    )


def all_places(settings: Settings, state: State) -> list[Place]:
    """Every place: local first, then the hosts by name."""
    return [place(settings, state)] + [place(settings, state, h) for h in sorted(state.hosts)]


def place_of(settings: Settings, state: State, instance: InstanceRecord) -> Place:
    return place(settings, state, instance.host)
