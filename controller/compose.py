"""The docker compose CLI, through python-on-whales, for one instance's project."""

import contextlib
import functools
import re
import shutil
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path, PurePosixPath

from controller.errors import DockerUnavailable, OperationError

# Docker Engine's refusal to remove a network that still holds (perhaps stale) endpoints.
_STALE_NETWORK = re.compile(r"network (\S+) id \w+ has active endpoints")


def _one_line(exc: Exception) -> str:
    """The most telling line of a compose failure: its last non-empty stderr line."""
    text = getattr(exc, "stderr", None) or str(exc)
    lines = [line.strip() for line in str(text).splitlines() if line.strip()]
    return lines[-1] if lines else type(exc).__name__


@functools.cache
def check_cli() -> None:
    """Fail with one clear line when the docker CLI or its compose v2 plugin is missing."""
    if shutil.which("docker") is None:
        raise DockerUnavailable("the docker command is not installed (needed for docker compose)")
    from python_on_whales import DockerClient
    from python_on_whales.exceptions import DockerException

    try:
        DockerClient().compose.version()
    except DockerException:
        raise DockerUnavailable(
            "the docker compose v2 plugin is missing: `docker compose version` fails"
        ) from None


class ConfigError(OperationError):
    """compose-go refused the files (bad YAML, a bad merge, a missing required variable)."""


def config_json(
    files: Sequence[Path],
    project_dir: Path,
    env_files: Sequence[Path] = (),
    project: str = "sbm-model",
) -> dict:
    """What compose-go makes of ``files``: `docker compose config --format json`, parsed.

    compose-go merges the files (``!override``/``!reset``, ``extends``, ``include``, profiles)
    and interpolates them with ``env_files``; we never re-implement those rules.
    """
    from python_on_whales import DockerClient
    from python_on_whales.exceptions import DockerException

    check_cli()
    client = DockerClient(
        compose_files=list(files),
        compose_project_name=project,
        compose_project_directory=Path(project_dir),
        compose_env_files=list(env_files),
    )
    try:
        return client.compose.config(return_json=True)
    except DockerException as exc:
        raise ConfigError(f"docker compose config failed: {_one_line(exc)}") from None


def client_call(env: Mapping[str, str]) -> list[str]:
    """The docker CLI's argv prefix with ``env`` applied (an empty value unsets the variable):
    python-on-whales gives its processes this process's environment and nothing else."""
    if not env:
        return ["docker"]
    unset = [word for key, value in sorted(env.items()) if value == "" for word in ("-u", key)]
    assign = [f"{key}={value}" for key, value in sorted(env.items()) if value != ""]
    return ["env", *unset, *assign, "docker"]  # env takes every -u before the first NAME=VALUE


class Compose:
    """One compose project: an instance's folder, its files and its project name.

    ``env`` points the docker CLI at the engine that runs it (``Place.docker_env()``; empty for
    the local engine) and ``project_directory`` is the folder's path on that engine's machine:
    compose reads ``files`` and the folder's .env here, and resolves relative bind mounts against
    ``project_directory``, handing those paths to the engine as they are.
    """

    def __init__(
        self,
        project: str,
        directory: Path,
        files: Sequence[Path],
        env: Mapping[str, str] | None = None,
        project_directory: PurePosixPath | None = None,
    ) -> None:
        from python_on_whales import DockerClient

        self.project = project
        self.directory = Path(directory)
        self.env = dict(env or {})
        self.project_directory = Path(project_directory or self.directory)
        self._docker = DockerClient(
            compose_files=list(files),
            compose_project_name=project,
            compose_project_directory=self.project_directory,
            compose_env_files=[self.directory / ".env"],
            client_call=client_call(self.env),
        )

    def _run(self, what: str, call, *args, **kwargs):
        from python_on_whales.exceptions import DockerException

        check_cli()
        try:
            return call(*args, **kwargs)
        except DockerException as exc:
            message = f"compose {what} of {self.project} failed: {_one_line(exc)}"
            raise OperationError(message) from None

    def up(self, services: Sequence[str] | None = None) -> None:
        """Create and start containers (detached); waiting for health is the caller's job."""
        self._run(
            "up",
            self._docker.compose.up,
            list(services) or None if services else None,
            detach=True,
            quiet=True,
        )

    def stop(self, services: Sequence[str] | None = None) -> None:
        self._run("stop", self._docker.compose.stop, list(services) if services else None)

    def restart(self, services: Sequence[str] | None = None) -> None:
        self._run("restart", self._docker.compose.restart, list(services) if services else None)

    def down(self, volumes: bool = False) -> None:
        """Remove the containers and the network; with ``volumes`` the named volumes too.

        Docker Engine 20.10 at times keeps the endpoint of a removed container, and then refuses
        to remove the network ("has active endpoints") with no container attached: those stale
        endpoints (named as the project's containers) are force-disconnected and down is run
        once more."""
        try:
            self._down(volumes)
        except OperationError as exc:
            stale = _STALE_NETWORK.search(str(exc))
            if stale is None:
                raise
            self._drop_endpoints(stale.group(1))
            self._down(volumes)

    def _down(self, volumes: bool) -> None:
        self._run(
            "down", self._docker.compose.down, remove_orphans=True, volumes=volumes, quiet=True
        )

    def _drop_endpoints(self, network: str) -> None:
        """Force-disconnect from ``network`` every endpoint a container of this project may
        have left (the engine drops an endpoint by its container's name even when no such
        container exists)."""
        from python_on_whales.exceptions import DockerException

        for name in self._container_names():
            with contextlib.suppress(DockerException):  # no such endpoint: nothing to drop
                self._docker.network.disconnect(network, name, force=True)

    def _container_names(self) -> list[str]:
        """The project's container names as compose-go gives them; compose's own
        PROJECT-SERVICE-1 where a service sets none."""
        from python_on_whales.exceptions import DockerException

        try:
            services = self._docker.compose.config(return_json=True).get("services") or {}
        except DockerException:
            return []
        return [
            service.get("container_name") or f"{self.project}-{name}-1"
            for name, service in services.items()
        ]

    def logs(
        self, services: Sequence[str] = (), tail: int | None = None, follow: bool = False
    ) -> Iterator[str]:
        """Log lines as compose prints them ("service  | text")."""
        from python_on_whales.exceptions import DockerException

        check_cli()
        stream = self._docker.compose.logs(
            list(services),
            tail=None if tail is None else str(tail),
            follow=follow,
            stream=True,
        )
        pending = b""
        try:
            for _source, chunk in stream:
                pending += chunk
                *lines, pending = pending.split(b"\n")
                for line in lines:
                    yield line.decode(errors="replace")
        except DockerException as exc:
            message = f"compose logs of {self.project} failed: {_one_line(exc)}"
            raise OperationError(message) from None
        if pending:
            yield pending.decode(errors="replace")
