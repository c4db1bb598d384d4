"""Byte streams into and out of an instance's containers and volumes, through the docker CLI.

The CLI honours DOCKER_HOST and contexts, so the same code works for a remote engine; streams
flow process to process through OS pipes (``docker exec ... | restic backup --stdin``), never
through a plaintext file. Secrets (PGPASSWORD) reach ``docker`` through its environment and are
forwarded by name (``-e PGPASSWORD``), so they are never on an argv.

Which engine: the local one, unless a use case runs inside ``engine(place.docker_env())``
(controller/hosts.py): every docker process started in that block, in this thread or in a
thread started through ``in_context``, talks to that place's engine.
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import os
import shutil
import subprocess
from collections.abc import Callable, Iterator, Mapping, Sequence

from controller.errors import DockerUnavailable, OperationError

HELPER_LABEL = "io.supabase-manager.helper"


def _docker() -> str:
    path = shutil.which("docker")
    if path is None:
        raise DockerUnavailable("the docker command is not installed")
    return path


# The environment docker processes get on top of ours (DOCKER_HOST and what reaching it needs).
_ENGINE: contextvars.ContextVar[Mapping[str, str] | None] = contextvars.ContextVar(
    "engine", default=None
)


@contextlib.contextmanager
def engine(docker_env: Mapping[str, str]) -> Iterator[None]:
    """Docker processes started inside the block talk to the engine ``docker_env`` names
    (``Place.docker_env()``; empty: the local engine)."""
    token = _ENGINE.set(dict(docker_env))
    try:
        yield
    finally:
        _ENGINE.reset(token)


def in_context(call: Callable[[], object]) -> Callable[[], object]:
    """``call`` bound to the current engine, for a worker thread (threads start with none)."""
    context = contextvars.copy_context()
    return lambda: context.run(call)


def process_env(secret_env: Mapping[str, str] = ()) -> dict[str, str]:
    """The environment of a docker process: ours, the current engine's, then ``secret_env``."""
    env = dict(os.environ)
    env.update(_ENGINE.get() or {})
    env.update(dict(secret_env))
    return env


_env = process_env


def exec_argv(
    container: str, command: Sequence[str], secret_env: Mapping[str, str] = (), stdin: bool = False
) -> list[str]:
    argv = [_docker(), "exec"] + (["-i"] if stdin else [])
    for key in dict(secret_env):
        argv += ["-e", key]  # the value comes from docker's own environment
    return [*argv, container, *command]


def exec_out(
    container: str, command: Sequence[str], secret_env: Mapping[str, str] | None = None
) -> subprocess.Popen:
    """``docker exec CONTAINER COMMAND`` with its stdout as a pipe to read (or hand on)."""
    secret_env = dict(secret_env or {})
    return subprocess.Popen(
        exec_argv(container, command, secret_env),
        env=_env(secret_env),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


def exec_text(
    container: str,
    command: Sequence[str],
    secret_env: Mapping[str, str] | None = None,
    timeout: float = 600,
) -> str:
    """Run a command in a container; its stdout, or OperationError with its last stderr line."""
    secret_env = dict(secret_env or {})
    proc = subprocess.run(
        exec_argv(container, command, secret_env),
        env=_env(secret_env),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if proc.returncode != 0:
        raise OperationError(f"{command[0]} in {container} failed: {last_line(proc.stderr)}")
    return proc.stdout


def last_line(text: str) -> str:
    lines = [line.strip() for line in (text or "").splitlines() if line.strip()]
    return lines[-1][:200] if lines else "no message"


def helper_argv(
    image: str, mounts: Mapping[str, str], command: Sequence[str], read_only: bool, stdin: bool
) -> list[str]:
    """A throwaway container of ``image``, no network, removed when done, with each mount (a
    volume name or an absolute host path) at /sbm-data/SUBDIR (``.``: /sbm-data itself)."""
    argv = [_docker(), "run", "--rm", "--network", "none", "--label", f"{HELPER_LABEL}=1"]
    argv += ["-u", "0", "--entrypoint", command[0]]
    for subdir, mount in mounts.items():
        target = "/sbm-data" if subdir == "." else f"/sbm-data/{subdir}"
        argv += ["-v", f"{mount}:{target}" + (":ro" if read_only else "")]
    if stdin:
        argv.append("-i")
    return [*argv, image, *command[1:]]


def tar_out(image: str, mounts: Mapping[str, str]) -> subprocess.Popen:
    """One tar stream of the mounts' content (each under its SUBDIR/) on the process's stdout."""
    command = ["tar", "-C", "/sbm-data", "-cf", "-", *sorted(mounts)]
    return subprocess.Popen(
        helper_argv(image, mounts, command, True, False),
        env=_env({}),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


def tar_in(image: str, mounts: Mapping[str, str], stdin) -> subprocess.Popen:
    """Extract the tar stream read from ``stdin`` into the mounts, keeping the owners and modes
    it records."""
    command = ["tar", "--numeric-owner", "-xpf", "-", "-C", "/sbm-data"]
    argv = helper_argv(image, mounts, command, False, True)
    return subprocess.Popen(
        argv, env=_env({}), stdin=stdin, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )


def run_helper(image: str, mounts: Mapping[str, str], command: Sequence[str], what: str) -> None:
    """Run ``command`` in a helper container (as root, mounts read-write): files the
    instance's containers wrote belong to their users, and on another host there is no other
    way to reach them than through its engine."""
    proc = subprocess.run(
        helper_argv(image, mounts, command, False, False),
        env=_env({}),
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
    )
    if proc.returncode != 0:
        raise OperationError(f"{what} failed: {last_line(proc.stderr)}")


def finish(proc: subprocess.Popen, what: str, ok_codes: Sequence[int] = (0,)) -> str:
    """Wait for a stream's process; its stderr, or OperationError with its last line."""
    stderr = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
    code = proc.wait()
    if code not in ok_codes:
        # A verbose tool (pg_basebackup -v) prints progress there too: its error line counts.
        errors = [line for line in stderr.splitlines() if "error" in line.lower()]
        lines = errors or stderr.splitlines()
        detail = last_line("\n".join(lines)) if lines else f"exit status {code}"
        raise OperationError(f"{what} failed: {detail}")
    return stderr


def run_docker(args: Sequence[str], what: str, timeout: float = 300) -> str:
    proc = subprocess.run(
        [_docker(), *args],
        env=_env({}),
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )
    if proc.returncode != 0:
        raise OperationError(f"{what} failed: {last_line(proc.stderr)}")
    return proc.stdout


def image_env(image: str) -> dict[str, str]:
    """The ENV an image declares (e.g. PGDATA)."""
    try:
        out = run_docker(["image", "inspect", "-f", "{{json .Config.Env}}", image], "inspect")
    except OperationError:
        return {}
    values = {}
    for item in json.loads(out or "[]") or []:
        key, _, value = str(item).partition("=")
        values[key] = value
    return values


def volume_exists(name: str) -> bool:
    proc = subprocess.run(
        [_docker(), "volume", "inspect", name],
        env=_env({}),
        capture_output=True,
        stdin=subprocess.DEVNULL,
    )
    return proc.returncode == 0


def create_volume(name: str, labels: Mapping[str, str]) -> None:
    args = ["volume", "create"]
    for key, value in labels.items():
        args += ["--label", f"{key}={value}"]
    run_docker([*args, name], f"creating volume {name}")


def remove_volume(name: str) -> None:
    if volume_exists(name):
        run_docker(["volume", "rm", "-f", name], f"removing volume {name}")


def copy_volume(
    image: str, source: str, dest: str, labels: Mapping[str, str] | None = None
) -> None:
    """Copy a volume's content into a new volume ``dest`` (with ``labels``)."""
    remove_volume(dest)  # a copy left by a killed command must not be merged into
    create_volume(dest, labels or {HELPER_LABEL: "1"})
    argv = [_docker(), "run", "--rm", "--network", "none", "--label", f"{HELPER_LABEL}=1"]
    argv += ["-u", "0", "--entrypoint", "sh", "-v", f"{source}:/from:ro", "-v", f"{dest}:/to"]
    argv += [image, "-c", "cp -a /from/. /to/"]
    proc = subprocess.run(
        argv, env=_env({}), capture_output=True, text=True, stdin=subprocess.DEVNULL
    )
    if proc.returncode != 0:
        raise OperationError(f"copying volume {source} failed: {last_line(proc.stderr)}")
