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

import contextlib
import hashlib
import os
import shlex
import shutil
import socket
import stat
import subprocess
import time
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import attrs

from controller.errors import OperationError
from controller.fsutil import atomic_write, ensure_dir
from controller.state import HostRecord

ALIAS_PREFIX = "sbm-"
CONNECT_TIMEOUT = 10
CONTROL_PERSIST = 60
# A unix socket path holds at most 107 bytes; "/cm-" and ssh's %C take 44, and the master first
# binds a temporary name 17 bytes longer (".XXXXXXXXXXXXXXXX").
_MAX_CONTROL_DIR = 46


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
        message = f"host {host}: no answer over ssh within {timeout:g} s"
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
    forward = Forward.of(config, alias(host))
    with contextlib.suppress(subprocess.TimeoutExpired):  # a hung master: its files go anyway
        subprocess.run(
            [ssh_binary(), "-F", str(config), "-O", "exit", alias(host)],
            capture_output=True,
            stdin=subprocess.DEVNULL,
            timeout=10,
        )
    if forward is not None:  # its forward ended with it
        with contextlib.suppress(OSError):
            forward.local.unlink(missing_ok=True)
            forward.remote.unlink(missing_ok=True)


@attrs.frozen
class OldBlock:
    """A host's master and forward files as its block of the config has them, read before
    `host remove` rewrites the config, to be ended after (no new master can then start on
    the old block behind the ending)."""

    host: str
    control: str | None  # the master's socket (``ssh -G``: its tokens expanded)
    forward: Forward | None

    @classmethod
    def of(cls, files: SshFiles, host: str) -> OldBlock:
        control = None
        if files.config.is_file():
            with contextlib.suppress(OSError, subprocess.SubprocessError):
                out = subprocess.run(
                    [ssh_binary(), "-F", str(files.config), "-G", alias(host)],
                    capture_output=True,
                    stdin=subprocess.DEVNULL,
                    timeout=10,
                ).stdout.decode(errors="replace")
                for line in out.splitlines():
                    word, _, value = line.partition(" ")
                    if word.lower() == "controlpath" and value.strip() not in ("", "none"):
                        control = value.strip()
        return cls(host, control, Forward.of(files.config, alias(host)))

    def end(self) -> None:
        """End the master (``ssh -S <socket> -O exit``) and remove the forward's files (its
        socket, .lock, .no, .to): the host added again starts afresh."""
        if self.control:
            with contextlib.suppress(OSError, subprocess.SubprocessError):
                subprocess.run(
                    [ssh_binary(), "-F", os.devnull, "-S", self.control, "-O", "exit", "x"],
                    capture_output=True,
                    stdin=subprocess.DEVNULL,
                    timeout=10,
                )
        if self.forward is not None:
            local = self.forward.local
            for path in local.parent.glob(local.name + "*"):
                with contextlib.suppress(OSError):
                    path.unlink()


def dial_stdio_argv(files: SshFiles, host: str) -> list[str]:
    """ssh running ``docker system dial-stdio`` there: a byte stream to the host's engine."""
    return ssh_argv(files, host, ["docker", "system", "dial-stdio"])


# --- the engine's socket, forwarded through the master ----------------------------------------

# A forward that sshd refuses to serve (a fresh forwarded connection breaks twice, the forward
# made again between, while dial-stdio answers), or whose engine is not on a unix socket, is not
# tried again for this long: the engine is reached through `docker system dial-stdio` meanwhile.
FORWARD_RETRY = 60

# Where the worker's docker CLI would connect: DOCKER_HOST, else the current context's endpoint
# (the docker CLI is started only when a context other than the default is set), else the
# default socket. On stdin, like every script here.
_DOCKER_HOST = r"""h="${DOCKER_HOST:-}"
if [ -z "$h" ]; then
  c="${DOCKER_CONTEXT:-}"
  if [ -z "$c" ] && grep -q '"currentContext"' "${DOCKER_CONFIG:-$HOME/.docker}/config.json" \
      2>/dev/null; then c=current; fi
  if [ -n "$c" ] && [ "$c" != default ]; then
    h=$(docker context inspect --format '{{.Endpoints.docker.Host}}' 2>/dev/null)
  fi
fi
echo "sbm-docker-host ${h:-unix:///var/run/docker.sock}"
"""


@attrs.frozen
class Forward:
    """The worker's Docker socket forwarded to a socket here through the host's ssh master
    (OpenSSH streamlocal forwarding, added with ``ssh -O forward``): each Engine connection is
    then a channel of the running master, not an ssh process here and a `docker system
    dial-stdio` process there (about 30 ms each), and channels are not sessions, which sshd's
    MaxSessions caps per connection.

    The socket lies in the control folder beside the master's (0700, ours alone; ssh makes it
    0600); its name hashes the host's block of the config, so another address, port or user
    for the host is another forward. A stale socket (its master ended: ControlPersist) refuses
    connections and is made again."""

    config: Path
    target: str  # the Host alias
    local: Path  # the forwarded socket here

    @classmethod
    def of(cls, config: Path, target: str) -> Forward | None:
        """The forward of ``target`` in ``config``; None when the host has no master
        (ControlPath none) or the config cannot be read."""
        try:
            text = Path(config).read_text()
        except (OSError, UnicodeDecodeError):
            return None
        block = _block(text, target)
        control = next(
            (line.split(None, 1)[1:] for line in block if line.startswith("ControlPath ")), None
        )
        if not control or control[0] == "none":
            return None
        folder = Path(control[0].strip('"')).parent
        digest = hashlib.sha256("\n".join(block).encode()).hexdigest()[:16]
        return cls(Path(config), target, folder / f"dk-{digest}")

    @property
    def marker(self) -> Path:
        """Written when the forward cannot be had: its reason, for FORWARD_RETRY seconds."""
        return self.local.with_name(self.local.name + ".no")

    @property
    def remote(self) -> Path:
        """The worker's socket the forward leads to (``ssh -O cancel`` must name it)."""
        return self.local.with_name(self.local.name + ".to")

    def connect(self, timeout: float) -> socket.socket | None:
        """A connection to the worker's engine through the forward; None when no forward is
        there (never made, or its master is gone: nothing listens). Other errors are raised:
        a forward that is there is never taken for a missing one."""
        deadline = time.monotonic() + timeout
        while True:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.settimeout(timeout)
            try:
                sock.connect(str(self.local))
            except (FileNotFoundError, ConnectionRefusedError):
                sock.close()
                return None
            except BlockingIOError:  # the master's listen queue is full: it is there
                sock.close()
                if time.monotonic() >= deadline:
                    raise
                time.sleep(0.01)
                continue
            except OSError:
                sock.close()
                raise
            return sock

    @property
    def lock(self) -> Path:
        """The flock under which the forward is made, given up or cancelled."""
        return self.local.with_name(self.local.name + ".lock")

    def refused(self) -> str:
        """Why the forward is not to be tried (a marker written less than FORWARD_RETRY
        seconds ago: the time is in the file, ``<epoch seconds> <why>``), else ""."""
        try:
            stamp, _, why = self.marker.read_text().partition(" ")
            if abs(time.time() - float(stamp)) < FORWARD_RETRY:
                return why.strip() or "refused"
        except (OSError, ValueError, UnicodeDecodeError):
            pass
        return ""

    def open(self, timeout: float) -> str:
        """Make the forward (starting the master when none runs); "" when it is there, else
        why it cannot be (dial-stdio is then the way). SshError when the host cannot be
        reached at all."""
        if why := self.refused():
            return why
        folder = self.local.parent
        try:
            info = folder.lstat()
        except OSError:
            return f"{folder} is missing"
        if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid() or info.st_mode & 0o077:
            return f"{folder} is not a private folder of ours"
        try:
            return self._open(timeout)
        except OSError as exc:  # the lock, the socket's or the .to file: dial-stdio meanwhile
            return f"the forward's files in {folder}: {exc}"

    def _open(self, timeout: float) -> str:
        with _waiting_lock(self.lock, timeout) as held:
            if not held:
                return "another process is making the forward"
            if why := self.refused():  # given up meanwhile by another process
                return why
            probe = self.connect(timeout)
            if probe is not None:  # made meanwhile by another thread or process
                probe.close()
                return ""
            out = self._run(["-T", self.target, "--", "sh -s"], _DOCKER_HOST.encode(), timeout)
            found = [
                line.split(None, 1)[1]
                for line in out.splitlines()
                if line.startswith("sbm-docker-host ")
            ]
            where = found[0].strip() if found else ""
            if not where.startswith("unix://"):
                why = f"the engine there is not on a unix socket ({where[:80] or '?'})"
                self._mark(why)
                self._cancel()
                return why
            self.local.unlink(missing_ok=True)
            spec = f"{self.local}:{where[len('unix://') :]}"
            atomic_write(self.remote, spec, mode=0o600)
            try:
                self._run(["-O", "forward", "-L", spec, self.target], b"", timeout)
                if not self.local.exists():
                    # The master still had this forward, its socket gone: it answers OK and
                    # listens nowhere. Cancelled and made again.
                    self._run(["-O", "cancel", "-L", spec, self.target], b"", timeout)
                    self._run(["-O", "forward", "-L", spec, self.target], b"", timeout)
            except SshError as exc:
                # Not marked: a master that does not answer (or a passing failure) must not
                # turn the forward off for every process; this client takes dial-stdio.
                self.local.unlink(missing_ok=True)
                self.remote.unlink(missing_ok=True)
                return f"ssh -O forward failed: {exc}"
        return ""

    def refuse(self, why: str) -> str:
        """Give the forward up for FORWARD_RETRY seconds (marked, cancelled, its socket
        removed), under the lock open() makes it under; returns ``why``. OSError when the
        marker cannot be written."""
        with _waiting_lock(self.lock, 10) as held:
            if held:
                self._mark(why)
                self._cancel()
        return why

    def close(self) -> None:
        """Cancel the forward on its master (if one runs) and remove its socket."""
        with contextlib.suppress(OSError), _waiting_lock(self.lock, 10) as held:
            if held:
                self._cancel()

    def _mark(self, why: str) -> None:
        atomic_write(self.marker, f"{time.time():.3f} {why}\n", mode=0o600)

    def _cancel(self) -> None:
        with contextlib.suppress(OSError, subprocess.SubprocessError, SshError):
            spec = self.remote.read_text().strip()
            self._run(["-O", "cancel", "-L", spec, self.target], b"", 10)
        with contextlib.suppress(OSError):
            self.local.unlink(missing_ok=True)
            self.remote.unlink(missing_ok=True)

    def _run(self, words: list[str], stdin: bytes, timeout: float) -> str:
        # The config turns all forwarding off (nothing of a user's own); this one is ours.
        argv = [ssh_binary(), "-F", str(self.config), "-o", "ClearAllForwardings=no", *words]
        try:
            proc = subprocess.run(argv, input=stdin, capture_output=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            host = self.target.removeprefix(ALIAS_PREFIX)
            raise SshError(
                f"host {host}: no answer over ssh within {timeout:g} s", "unreachable"
            ) from None
        if proc.returncode != 0:
            raise failure(
                self.target.removeprefix(ALIAS_PREFIX),
                proc.stderr.decode(errors="replace"),
                proc.returncode,
            )
        return proc.stdout.decode(errors="replace")


@contextlib.contextmanager
def _waiting_lock(path: Path, timeout: float) -> Iterator[bool]:
    """An flock on ``path`` waited for at most ``timeout`` seconds: whether it is held (another
    process making the same forward may be stuck on a host that does not answer)."""
    import fcntl

    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    yield False
                    return
                time.sleep(0.02)
                continue
            yield True
            return
    finally:
        os.close(fd)


def _block(text: str, target: str) -> list[str]:
    """The stripped lines of ``Host target``'s block in a config we wrote."""
    block: list[str] = []
    inside = False
    for raw in text.splitlines():
        line = raw.strip()
        if line.startswith("Host "):
            inside = line.split()[1:] == [target]
            if inside:
                block.append(line)
            continue
        if inside and line:
            block.append(line)
    return block
