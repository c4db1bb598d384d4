"""SSH to the machines whose Docker engines run instances (`host add`): the OpenSSH client, driven
through one generated config per ROOT.

- ROOT/ssh/config (0600, folder 0700): one ``Host sbm-NAME`` block per host with its address,
  user, port, key (``[hosts] identity_file`` in config.toml, else the user's agent and default
  keys), ROOT/ssh/known_hosts as the only known-hosts file, StrictHostKeyChecking yes
  (``accept-new`` only while `host add --accept-new-key` runs), BatchMode (never a password
  prompt) and ControlMaster multiplexing, so that the many short connections of one command
  share one handshake.
- ROOT/ssh/bin/ssh: a wrapper that runs ssh with that config. The docker CLI (compose, exec, cp)
  reaches an engine at ``DOCKER_HOST=ssh://sbm-NAME`` by running ``ssh`` from PATH, which cannot be
  given a config file otherwise (ssh reads ~/.ssh/config from the passwd entry, not from $HOME).
- Remote commands are one shell line of quoted words; data (file contents, scripts) go on stdin,
  so no secret is ever on a remote command line (the remote ``ps`` shows it to every user there).
- Failures become one line naming the cause: unreachable, key refused, unknown or changed host
  key, no Docker or no compose plugin on the worker.
"""

from __future__ import annotations

import hashlib
import os
import shlex
import shutil
import subprocess
from collections.abc import Iterable, Sequence
from pathlib import Path

import attrs

from controller.errors import OperationError
from controller.fsutil import atomic_write, ensure_dir
from controller.state import HostRecord

ALIAS_PREFIX = "sbm-"
CONNECT_TIMEOUT = 10
CONTROL_PERSIST = 60
# A unix socket path holds at most 107 bytes; ssh's %C is 40 hex digits.
_MAX_CONTROL_DIR = 60


class SshError(OperationError):
    """ssh failed; ``kind`` says why: unreachable, auth, unknown-key, changed-key, no-docker,
    no-daemon, no-compose, remote (the remote command failed)."""

    def __init__(self, message: str, kind: str) -> None:
        super().__init__(message)
        self.kind = kind


class UnknownHostKey(SshError):
    """The host's key is not in ROOT/ssh/known_hosts (or differs from the one recorded)."""


def alias(host: str) -> str:
    """The ``Host`` name of a host in the generated config."""
    return ALIAS_PREFIX + host


@attrs.frozen
class SshFiles:
    """The SSH files of one ROOT."""

    folder: Path  # ROOT/ssh
    # Processes with another key file (each NixOS unit gets its own credential path) read and
    # write their own config and wrapper, so none rewrites the file another one is using.
    variant: str = ""

    @classmethod
    def of(cls, root: Path, identity: Path | None = None) -> SshFiles:
        variant = hashlib.sha256(str(identity).encode()).hexdigest()[:10] if identity else ""
        return cls(Path(root) / "ssh", variant)

    @property
    def _suffix(self) -> str:
        return f"-{self.variant}" if self.variant else ""

    @property
    def config(self) -> Path:
        return self.folder / f"config{self._suffix}"

    @property
    def known_hosts(self) -> Path:
        return self.folder / "known_hosts"

    @property
    def bin_dir(self) -> Path:
        return self.folder / f"bin{self._suffix}"

    @property
    def wrapper(self) -> Path:
        return self.bin_dir / "ssh"

    def control_dir(self) -> Path | None:
        """Where the multiplexing sockets live: beside the config, or (a long ROOT path) a
        private folder under /tmp; None when no safe one can be had (no multiplexing then)."""
        if len(str(self.folder)) <= _MAX_CONTROL_DIR:
            return self.folder
        digest = hashlib.sha256(str(self.folder).encode()).hexdigest()[:12]
        folder = Path("/tmp") / f"sbm-ssh-{os.getuid()}-{digest}"
        try:
            folder.mkdir(mode=0o700, exist_ok=True)
            info = folder.lstat()
        except OSError:
            return None
        # Someone else's folder (or a symlink) planted there must not get our sockets.
        if not folder.is_dir() or folder.is_symlink() or info.st_uid != os.getuid():
            return None
        if info.st_mode & 0o077:
            return None
        return folder


def ssh_binary() -> str:
    path = shutil.which("ssh")
    if path is None:
        raise OperationError("the ssh command is not installed (Debian: openssh-client)")
    return path


def _quote(value: str) -> str:
    """A value in ssh_config syntax (double quotes keep spaces)."""
    if any(c in value for c in '"\n\r'):
        raise OperationError(f"{value!r} cannot be written into an ssh config")
    return f'"{value}"' if any(c.isspace() for c in value) else value


def config_text(
    files: SshFiles,
    hosts: Iterable[HostRecord],
    identity_file: Path | None = None,
    accept_new: Iterable[str] = (),
    known_hosts: Path | None = None,
    multiplex: bool = True,
) -> str:
    """The config: one block per host. ``accept_new`` names hosts whose unknown key ssh may
    record (`host add --accept-new-key`); a changed key is refused all the same.
    ``known_hosts``: declared keys (`[hosts] known_hosts`), trusted too, never written.
    ``multiplex`` False (the probe of `host add`): a connection of its own, whose host key is
    checked, rather than a running master's session (a master checked its key once, when it
    connected, perhaps under another host name for the same address)."""
    known = _quote(str(files.known_hosts))
    if known_hosts is not None:
        known += " " + _quote(str(known_hosts))  # ssh writes new keys to the first only
    accept = set(accept_new)
    control = files.control_dir() if multiplex else None
    lines = [
        "# Written by supabase-manager (host add / host remove); rewritten on every change.",
        "",
    ]
    for host in sorted(hosts, key=lambda h: h.name):
        lines += [
            f"Host {alias(host.name)}",
            f"  HostName {_quote(host.address)}",
            f"  User {_quote(host.user)}",
            f"  Port {int(host.port)}",
        ]
        if identity_file is not None:
            lines += [f"  IdentityFile {_quote(str(identity_file))}", "  IdentitiesOnly yes"]
        lines += [
            f"  UserKnownHostsFile {known}",
            "  GlobalKnownHostsFile /dev/null",
            "  StrictHostKeyChecking " + ("accept-new" if host.name in accept else "yes"),
            "  HashKnownHosts no",
            "  CheckHostIP no",
            "  BatchMode yes",
            "  PasswordAuthentication no",
            "  KbdInteractiveAuthentication no",
            f"  ConnectTimeout {CONNECT_TIMEOUT}",
            "  ServerAliveInterval 15",
            "  ServerAliveCountMax 3",
            "  ForwardAgent no",
            "  ClearAllForwardings yes",
            "  LogLevel ERROR",
        ]
        if control is not None:
            lines += [
                "  ControlMaster auto",
                f"  ControlPath {_quote(str(control / 'cm-%C'))}",
                f"  ControlPersist {CONTROL_PERSIST}",
            ]
        else:
            lines += ["  ControlMaster no", "  ControlPath none"]
        lines.append("")
    return "\n".join(lines)


def write_config(
    files: SshFiles,
    hosts: Iterable[HostRecord],
    identity_file: Path | None = None,
    accept_new: Iterable[str] = (),
    config: Path | None = None,
    known_hosts: Path | None = None,
    multiplex: bool = True,
) -> Path:
    """Write the config (``config``: another path, e.g. for a probe before a host is recorded)
    when it differs, the known_hosts file and the ssh wrapper; returns the config's path."""
    ensure_dir(files.folder, 0o700)
    path = config or files.config
    text = config_text(files, hosts, identity_file, accept_new, known_hosts, multiplex)
    try:
        current = path.read_text()
    except (FileNotFoundError, UnicodeDecodeError):
        current = None
    if current != text:
        atomic_write(path, text, mode=0o600)
    if not files.known_hosts.exists():
        fd = os.open(files.known_hosts, os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW, 0o600)
        os.close(fd)
    _write_wrapper(files)
    return path


def _write_wrapper(files: SshFiles) -> None:
    script = (
        "#!/bin/sh\n"
        "# supabase-manager: ssh with this data folder's config (docker CLI over ssh://)\n"
        f'exec {shlex.quote(ssh_binary())} -F {shlex.quote(str(files.config))} "$@"\n'
    )
    ensure_dir(files.bin_dir, 0o700)
    try:
        if files.wrapper.read_text() == script:
            return
    except (FileNotFoundError, UnicodeDecodeError):
        pass
    atomic_write(files.wrapper, script, mode=0o700)


def docker_env(files: SshFiles, host: str) -> dict[str, str]:
    """The environment that points a docker CLI process at the host's engine."""
    path = os.environ.get("PATH") or os.defpath
    return {
        "DOCKER_HOST": f"ssh://{alias(host)}",
        "PATH": f"{files.bin_dir}{os.pathsep}{path}",
        # A context or TLS settings of the user's own would fight DOCKER_HOST.
        "DOCKER_CONTEXT": "",
        "DOCKER_TLS_VERIFY": "",
    }


def ssh_argv(
    files: SshFiles, host: str, command: Sequence[str], config: Path | None = None
) -> list[str]:
    """argv running ``command`` (words, quoted here for the remote shell) on ``host``."""
    return [
        ssh_binary(),
        "-F",
        str(config or files.config),
        "-T",
        alias(host),
        "--",
        shlex.join(command),
    ]


def run(
    files: SshFiles,
    host: str,
    command: Sequence[str],
    stdin: bytes | None = None,
    timeout: float = 120,
    config: Path | None = None,
) -> bytes:
    """Run ``command`` on ``host`` with ``stdin`` as its input; its stdout, or SshError with
    one line. The command's words must hold no secret (they are on the remote argv)."""
    argv = ssh_argv(files, host, command, config)
    try:
        proc = subprocess.run(
            argv,
            input=stdin if stdin is not None else b"",
            capture_output=True,
            timeout=timeout,
        )
    except subprocess.TimeoutExpired:
        message = f"host {host}: no answer over ssh within {timeout:.0f} s"
        raise SshError(message, "unreachable") from None
    if proc.returncode != 0:
        raise failure(host, proc.stderr.decode(errors="replace"), proc.returncode)
    return proc.stdout


def script(
    files: SshFiles, host: str, text: str, timeout: float = 120, config: Path | None = None
) -> bytes:
    """Run a POSIX shell script on ``host``: the script comes on stdin (``sh -s``), so nothing
    of it is on the remote argv."""
    return run(files, host, ["sh", "-s"], text.encode(), timeout, config)


_UNREACHABLE = (
    "connection refused",
    "connection timed out",
    "operation timed out",
    "no route to host",
    "network is unreachable",
    "could not resolve hostname",
    "name or service not known",
    "connection closed by",
    "connection reset",
    "kex_exchange_identification",
    "broken pipe",
)


def failure(host: str, stderr: str, code: int) -> SshError:
    """The one-line error for a failed ssh run."""
    text = stderr.lower()
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    last = lines[-1][:200] if lines else f"exit status {code}"
    if code == 255:
        if "remote host identification has changed" in text:
            return UnknownHostKey(
                f"host {host}: its SSH host key has CHANGED since it was recorded; if that is "
                "expected, `host remove` it and add it again",
                "changed-key",
            )
        if (
            "host key verification failed" in text
            or "no ed25519 host key is known" in text
            or ("host key is known" in text)
        ):
            return UnknownHostKey(
                f"host {host}: its SSH host key is not known; check its fingerprint and run "
                "`host add` with --accept-new-key to record it",
                "unknown-key",
            )
        if "permission denied" in text or "too many authentication failures" in text:
            return SshError(
                f"host {host}: the SSH key was refused (check [hosts] identity_file or the "
                "agent, and the worker's authorized_keys)",
                "auth",
            )
        if any(word in text for word in _UNREACHABLE):
            return SshError(f"host {host} is unreachable over ssh: {last}", "unreachable")
        return SshError(f"host {host}: ssh failed: {last}", "unreachable")
    return SshError(f"host {host}: remote command failed: {last}", "remote")


# --- what the worker has -----------------------------------------------------------------------


@attrs.frozen
class WorkerInfo:
    docker_version: str
    compose_version: str
    addresses: tuple[str, ...]  # the worker's own IP addresses ("ip -o addr"), () when unknown


_PROBE = r"""
command -v docker >/dev/null 2>&1 || { echo "sbm-probe no-docker"; exit 0; }
if ! v=$(docker version --format '{{.Server.Version}}' 2>&1); then
  echo "sbm-probe no-daemon $(printf %s "$v" | tail -n 1)"; exit 0
fi
if ! c=$(docker compose version --short 2>&1); then echo "sbm-probe no-compose"; exit 0; fi
echo "sbm-probe ok $v $c"
if command -v ip >/dev/null 2>&1; then
  ip -o addr show 2>/dev/null | awk '{print "sbm-addr", $4}'
fi
"""


def probe(files: SshFiles, host: str, config: Path | None = None) -> WorkerInfo:
    """Docker, its compose plugin and the addresses on ``host``; SshError with one line naming
    what is missing."""
    out = script(files, host, _PROBE, timeout=60, config=config).decode(errors="replace")
    status = ""
    addresses = []
    for line in out.splitlines():
        if line.startswith("sbm-probe "):
            status = line[len("sbm-probe ") :]
        elif line.startswith("sbm-addr "):
            addresses.append(line.split()[1].split("/", 1)[0])
    word, _, rest = status.partition(" ")
    if word == "no-docker":
        raise SshError(f"host {host}: Docker is not installed there (no docker command)", word)
    if word == "no-daemon":
        raise SshError(f"host {host}: the Docker daemon there does not answer: {rest}", word)
    if word == "no-compose":
        raise SshError(
            f"host {host}: the docker compose v2 plugin is missing there "
            "(`docker compose version` fails)",
            word,
        )
    if word != "ok":
        raise SshError(f"host {host}: unexpected answer to the Docker probe", "remote")
    docker_version, _, compose_version = rest.partition(" ")
    return WorkerInfo(docker_version, compose_version.strip(), tuple(addresses))


def forget_host_key(files: SshFiles, record: HostRecord) -> None:
    """Drop the host's key from ROOT/ssh/known_hosts (after `host remove`)."""
    if not files.known_hosts.is_file() or shutil.which("ssh-keygen") is None:
        return
    name = record.address if record.port == 22 else f"[{record.address}]:{record.port}"
    subprocess.run(
        ["ssh-keygen", "-R", name, "-f", str(files.known_hosts)],
        capture_output=True,
        stdin=subprocess.DEVNULL,
    )
    old = files.known_hosts.with_name(files.known_hosts.name + ".old")
    old.unlink(missing_ok=True)


def close_master(files: SshFiles, host: str, config: Path | None = None) -> None:
    """End the host's multiplexing master, if one runs."""
    config = config or files.config
    if not config.is_file():
        return
    subprocess.run(
        [ssh_binary(), "-F", str(config), "-O", "exit", alias(host)],
        capture_output=True,
        stdin=subprocess.DEVNULL,
        timeout=10,
    )


def dial_stdio_argv(files: SshFiles, host: str) -> list[str]:
    """ssh running ``docker system dial-stdio`` there: a byte stream to the host's engine."""
    return ssh_argv(files, host, ["docker", "system", "dial-stdio"])
