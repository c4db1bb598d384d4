"""A second Docker host on this machine, reached through a real sshd (the `worker` fixture).

Layout (TAG is ``<pid>-<n>``: the owning process and a counter):
- network namespace ``sbmw-TAG`` with a veth pair: ``sbw<pid>x<n>`` on the manager's side holds
  10.201.N.1/24, ``eth0`` inside holds 10.201.N.2/24 (N is the first /24 of 10.201.0.0/16 that no
  interface or route here uses, chosen under a machine-wide lock). No default route inside: the
  worker reaches nothing but the manager's end of the veth.
- one private mount namespace inside it, held by a ``sleep`` process. In it:
  ``data_dir`` (a path that exists on the manager's side too) is covered by a bind mount of a disk
  folder of its own, so the worker sees an empty folder there and files it writes never show on
  the manager's side (disk, not tmpfs: the issue's `move` figure copies 1 GB); /etc/docker is
  covered by an empty folder (its own engine ID and no host daemon.json); so is root's home (no
  manager's ~/.docker, ~/.ssh or ~/.bashrc: this machine's pyenv setup alone adds 120 ms to every
  ssh command, which a real worker does not have); and the worker engine's socket is
  bind-mounted over /run/docker.sock, so every process there, ssh sessions included, reaches the
  worker engine with docker's defaults (no DOCKER_HOST that a login shell or `sudo` could drop).
  A restarted dockerd makes a new socket file, so start_engine() binds it again.
- a second dockerd (own data root in /var/tmp/sbmw-TAG, exec root, socket and pidfile in
  /run/sbmw-TAG, docker0 bridge inside the namespace, cgroup parent /sbmw-TAG so its containers'
  cgroups are not under the local engine's /docker) holding the stand-in images.
- Debian's sshd on 10.201.N.2:22 with a host key made for the run, key-only login for root with a
  fresh ed25519 client key (AuthorizedKeysFile in the run folder: /root/.ssh is never touched).

Leftovers of a killed run (its owner process is gone) are removed when the next worker starts.
Test traffic goes only to 10.201.N.2, an address of a namespace this module creates.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import docker
import pytest

from .dockerworld import STANDIN_IMAGES, DockerSandbox
from .net import port_open, wait_until

PREFIX = "sbmw"
SUBNET_PREFIX = "10.201"
SSH_PORT = 22
RUN_BASE = Path("/run")  # sockets and pidfiles (short paths: a unix socket holds 107 bytes)
STATE_BASE = Path("/var/tmp")  # data root, keys, configs, logs, the worker's data folder
LOCK_FILE = Path("/run/sbmw.lock")
LOCAL_SOCKET = Path("/run/docker.sock")
SSHD = Path("/usr/sbin/sshd")
PROVISION_HINT = "run scripts/provision (scripts/provision.d/worker.sh installs openssh-server)"

_TAG_RE = re.compile(rf"^{PREFIX}-(\d+)-(\d+)$")
_VETH_RE = re.compile(r"^sbw(\d+)x(\d+)$")
_counter = 0
_counter_lock = threading.Lock()


class WorkerError(RuntimeError):
    pass


# -- small helpers --------------------------------------------------------------------------------
def _sh(*argv: str, check: bool = True, **kwargs: object) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(argv, capture_output=True, text=True, check=False, **kwargs)  # type: ignore[call-overload]
    if check and result.returncode != 0:
        raise WorkerError(f"{' '.join(argv)} failed ({result.returncode}): {result.stderr.strip()}")
    return result


def _start_time(pid: int) -> str | None:
    """The start time of pid (clock ticks since boot), None when no such process exists."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]


@contextlib.contextmanager
def _machine_lock() -> Iterator[None]:
    """Held while leftovers are removed and a subnet is chosen, so two runs never take one /24."""
    with LOCK_FILE.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _used_subnets() -> set[int]:
    text = _sh("ip", "-4", "-o", "addr", "show").stdout + _sh("ip", "-4", "route", "show").stdout
    return {int(m) for m in re.findall(rf"\b{re.escape(SUBNET_PREFIX)}\.(\d+)\.", text)}


def _cgroup_dirs(tag: str) -> list[Path]:
    """The worker engine's cgroup parent in every hierarchy (v1 controllers, or the v2 root)."""
    root = Path("/sys/fs/cgroup")
    found = [root / f"{PREFIX}-{tag}"]
    if root.is_dir():
        found += [d / f"{PREFIX}-{tag}" for d in root.iterdir() if d.is_dir()]
    return [d for d in found if d.is_dir()]


def _kill_cgroups(tag: str) -> None:
    """Kill what still runs in the worker's containers (orphans of a killed dockerd), then drop
    the cgroup folders, deepest first."""
    for top in _cgroup_dirs(tag):
        for procs in top.rglob("cgroup.procs"):
            with contextlib.suppress(OSError):
                for pid in procs.read_text().split():
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(int(pid), signal.SIGKILL)
    for top in _cgroup_dirs(tag):
        dirs = sorted((d for d in top.rglob("*") if d.is_dir()), key=lambda p: -len(p.parts))
        for folder in [*dirs, top]:
            # A cgroup refuses rmdir until its killed processes are reaped: retry briefly.
            for _ in range(50):
                try:
                    folder.rmdir()
                    break
                except FileNotFoundError:
                    break
                except OSError:
                    time.sleep(0.1)


def _netns_pids(netns: str) -> list[int]:
    result = _sh("ip", "netns", "pids", netns, check=False)
    return [int(p) for p in result.stdout.split()] if result.returncode == 0 else []


# -- the worker's paths and processes -------------------------------------------------------------
class WorkerHost:
    """Builds, drives and removes one worker; the fixture hands tests a frozen ``Worker`` view."""

    def __init__(self, data_dir: Path, tag: str | None = None, name: str = "worker") -> None:
        global _counter
        if tag is None:
            with _counter_lock:
                _counter += 1
                tag = f"{os.getpid()}-{_counter}"
        self.tag = tag
        self.name = name
        self.netns = f"{PREFIX}-{tag}"
        pid, n = tag.split("-")
        self.veth = f"sbw{pid}x{n}"
        self.run_dir = RUN_BASE / self.netns
        self.state_dir = STATE_BASE / self.netns
        self.data_dir = Path(data_dir)
        self.data_store = self.state_dir / "data"  # what the worker sees at data_dir
        self.engine_socket = self.run_dir / "docker.sock"
        self.engine_pidfile = self.run_dir / "docker.pid"
        self.key_dir = self.state_dir / "client"
        self.identity_file = self.key_dir / "id_ed25519"
        self.host_key = self.state_dir / "ssh_host_ed25519_key"
        self.known_hosts_file = self.key_dir / "known_hosts"
        self.sshd_config = self.state_dir / "sshd_config"
        self.subnet = -1
        self.timings: dict[str, float] = {}
        self._holder: subprocess.Popen[bytes] | None = None
        self._dockerd: subprocess.Popen[bytes] | None = None
        self._sshd: subprocess.Popen[bytes] | None = None
        self.sshd_options: list[str] = []  # extra sshd_config lines (configure_ssh)

    # -- addresses ---------------------------------------------------------------------------
    @property
    def address(self) -> str:
        return f"{SUBNET_PREFIX}.{self.subnet}.2"

    @property
    def host_side_address(self) -> str:
        return f"{SUBNET_PREFIX}.{self.subnet}.1"

    def _enter(self) -> list[str]:
        """argv prefix: run in the worker's network and mount namespaces."""
        assert self._holder is not None, "worker not started"
        return [
            "nsenter",
            f"--net=/run/netns/{self.netns}",
            f"--mount=/proc/{self._holder.pid}/ns/mnt",
            "--",
        ]

    def run(
        self,
        cmd: str | Sequence[str],
        *,
        check: bool = True,
        input: str | None = None,
        timeout: float = 120,
    ) -> subprocess.CompletedProcess[str]:
        """Run cmd (a shell line, or argv) inside the worker's namespaces, as the worker's root."""
        argv = ["sh", "-c", cmd] if isinstance(cmd, str) else list(cmd)
        env = {k: v for k, v in os.environ.items() if k not in ("DOCKER_HOST", "DOCKER_CONTEXT")}
        result = subprocess.run(
            [*self._enter(), *argv],
            input=input,
            capture_output=True,
            text=True,
            timeout=timeout,
            env=env,
            check=False,
        )
        if check and result.returncode != 0:
            raise WorkerError(f"worker: {argv} failed ({result.returncode}): {result.stderr}")
        return result

    # -- life cycle ----------------------------------------------------------------------------
    def start(self) -> None:
        for tool in ("ip", "nsenter", "unshare", "dockerd", "ssh", "ssh-keygen", str(SSHD)):
            if shutil.which(tool) is None:
                raise WorkerError(f"{tool} not found: {PROVISION_HINT}")
        if not LOCAL_SOCKET.exists():
            raise WorkerError(
                f"{LOCAL_SOCKET} missing: the local engine must run ({PROVISION_HINT})"
            )
        began = time.monotonic()
        try:
            with _machine_lock():
                remove_leftovers()
                self._make_folders()
                self._make_network()
            self._start_holder()
            self._write_ssh_files()
            self.start_engine()
            loader = _Loader(self.engine_socket)
            loader.start()
            self.start_ssh()
            loader.join()
            self.timings["image_load_s"] = loader.seconds
        except BaseException:
            self.stop()
            raise
        self.timings["start_s"] = time.monotonic() - began

    def _make_folders(self) -> None:
        for folder in (self.run_dir, self.state_dir, self.data_store, self.key_dir):
            folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        (self.run_dir / "owner").write_text(f"{os.getpid()} {_start_time(os.getpid())}\n")
        (self.state_dir / "etc-docker").mkdir(mode=0o700, exist_ok=True)
        (self.state_dir / "root-home").mkdir(mode=0o700, exist_ok=True)
        (self.state_dir / "daemon.json").write_text("{}\n")
        self.data_dir.mkdir(parents=True, exist_ok=True)

    def _make_network(self) -> None:
        free = sorted(set(range(0, 255)) - _used_subnets())
        if not free:
            raise WorkerError(f"no free /24 left in {SUBNET_PREFIX}.0.0/16")
        self.subnet = free[0]
        ns = self.netns
        _sh("ip", "netns", "add", ns)
        _sh("ip", "link", "add", self.veth, "type", "veth", "peer", "name", "eth0", "netns", ns)
        _sh("ip", "addr", "add", f"{self.host_side_address}/24", "dev", self.veth)
        _sh("ip", "link", "set", self.veth, "up")
        _sh("ip", "-n", ns, "addr", "add", f"{self.address}/24", "dev", "eth0")
        _sh("ip", "-n", ns, "link", "set", "eth0", "up")
        _sh("ip", "-n", ns, "link", "set", "lo", "up")

    def _start_holder(self) -> None:
        """The process that keeps the worker's private mount namespace alive."""
        script = (
            'mount --bind "$1" "$2" && '
            '{ [ ! -d /etc/docker ] || mount --bind "$3" /etc/docker; } && '
            'mount --bind "$4" "$(getent passwd root | cut -d: -f6)" && '
            "echo ready && exec sleep infinity"
        )
        self._holder = subprocess.Popen(
            [
                "nsenter",
                f"--net=/run/netns/{self.netns}",
                "--",
                "unshare",
                "--mount",
                "--propagation",
                "private",
                "--",
                "sh",
                "-c",
                script,
                "sh",
                str(self.data_store),
                str(self.data_dir),
                str(self.state_dir / "etc-docker"),
                str(self.state_dir / "root-home"),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        assert self._holder.stdout is not None
        line = self._holder.stdout.readline()
        if line.strip() != b"ready":
            err = self._holder.stderr.read().decode() if self._holder.stderr else ""
            raise WorkerError(f"worker mount namespace failed: {err.strip() or line!r}")

    def _write_ssh_files(self) -> None:
        for key, comment in ((self.host_key, "worker-host"), (self.identity_file, "worker-client")):
            if not key.exists():
                _sh("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(key))
        (self.state_dir / "authorized_keys").write_text(self.public_key + "\n")
        self.known_hosts_file.write_text(self.known_hosts_line + "\n")
        # Only key login for root; every path is ours, so /root/.ssh and /etc/ssh stay untouched.
        # StrictModes off: the run folders' owners and modes are not sshd's business here.
        self.sshd_config.write_text(
            "\n".join(
                [
                    f"ListenAddress {self.address}:{SSH_PORT}",
                    f"HostKey {self.host_key}",
                    f"PidFile {self.run_dir / 'sshd.pid'}",
                    f"AuthorizedKeysFile {self.state_dir / 'authorized_keys'}",
                    "PermitRootLogin prohibit-password",
                    "PubkeyAuthentication yes",
                    "PasswordAuthentication no",
                    "KbdInteractiveAuthentication no",
                    "UsePAM no",
                    "StrictModes no",
                    "AllowUsers root",
                    "X11Forwarding no",
                    "PrintMotd no",
                    "UseDNS no",
                    # Concurrent gathers and multiplexed sessions must not be dropped.
                    "MaxStartups 64",
                    "MaxSessions 64",
                    "Subsystem sftp internal-sftp",
                    *self.sshd_options,
                    "",
                ]
            )
        )

    @property
    def public_key(self) -> str:
        return Path(f"{self.identity_file}.pub").read_text().strip()

    @property
    def host_public_key(self) -> str:
        """``ssh-ed25519 AAAA...`` (without the comment)."""
        return " ".join(Path(f"{self.host_key}.pub").read_text().split()[:2])

    @property
    def known_hosts_line(self) -> str:
        host = self.address if SSH_PORT == 22 else f"[{self.address}]:{SSH_PORT}"
        return f"{host} {self.host_public_key}"

    # -- the engine ------------------------------------------------------------------------------
    def start_engine(self) -> None:
        if self._dockerd is not None and self._dockerd.poll() is None:
            return
        log = (self.state_dir / "dockerd.log").open("ab")
        argv = [
            "dockerd",
            "--config-file",
            str(self.state_dir / "daemon.json"),
            "--data-root",
            str(self.state_dir / "docker"),
            "--exec-root",
            str(self.run_dir / "exec"),
            "--host",
            f"unix://{self.engine_socket}",
            "--pidfile",
            str(self.engine_pidfile),
            "--exec-opt",
            "native.cgroupdriver=cgroupfs",
            "--cgroup-parent",
            f"/{self.netns}",
            "--log-level",
            "warn",
        ]
        self._dockerd = subprocess.Popen(
            [*self._enter(), *argv],
            stdout=log,
            stderr=log,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        log.close()

        def answers() -> bool:
            if self._dockerd is not None and self._dockerd.poll() is not None:
                tail = (self.state_dir / "dockerd.log").read_text()[-2000:]
                raise WorkerError(f"worker dockerd exited: {tail}")
            client = docker.DockerClient(base_url=f"unix://{self.engine_socket}", timeout=5)
            try:
                return bool(client.ping())
            finally:
                client.close()

        began = time.monotonic()
        wait_until(answers, 60, "worker dockerd")
        self.timings.setdefault("engine_start_s", time.monotonic() - began)
        # The socket is a new file each start: bind it over /run/docker.sock again.
        self.run(
            f"umount {LOCAL_SOCKET} 2>/dev/null; mount --bind {self.engine_socket} {LOCAL_SOCKET}"
        )

    def stop_engine(self) -> None:
        """Stop the worker's dockerd (its containers stop with it); sshd keeps answering."""
        proc, self._dockerd = self._dockerd, None
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)

    def engine_running(self) -> bool:
        return self._dockerd is not None and self._dockerd.poll() is None

    # -- sshd ------------------------------------------------------------------------------------
    def start_ssh(self) -> None:
        if self._sshd is not None and self._sshd.poll() is None:
            return
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # sshd's privilege separation folder
        log = self.state_dir / "sshd.log"
        test = self.run([str(SSHD), "-t", "-f", str(self.sshd_config)], check=False)
        if test.returncode != 0:
            raise WorkerError(f"sshd -t: {test.stderr.strip()}")
        self._sshd = subprocess.Popen(
            [*self._enter(), str(SSHD), "-D", "-f", str(self.sshd_config), "-E", str(log)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        wait_until(lambda: port_open(SSH_PORT, self.address), 20, f"sshd on {self.address}")

    def configure_ssh(self, options: Sequence[str]) -> None:
        """Restart sshd with these extra sshd_config lines (none: as it was made). Connections
        open before (an ssh master's) keep the old settings."""
        self.sshd_options = list(options)
        self._write_ssh_files()
        self.stop_ssh()
        self.start_ssh()

    def stop_ssh(self) -> None:
        """Stop sshd: new connections are refused at once (open sessions keep running)."""
        proc, self._sshd = self._sshd, None
        if proc is not None and proc.poll() is None:
            proc.terminate()
            proc.wait(10)

    @contextlib.contextmanager
    def hang_ssh(self) -> Iterator[None]:
        """sshd stopped with SIGSTOP: connections are accepted by the kernel but never greeted,
        as on a machine that hangs; it goes on when the block ends."""
        assert self._sshd is not None and self._sshd.poll() is None, "sshd not running"
        pid = self._sshd.pid
        os.kill(pid, signal.SIGSTOP)
        try:
            yield
        finally:
            os.kill(pid, signal.SIGCONT)

    # -- what the worker's machine reports -------------------------------------------------------
    @contextlib.contextmanager
    def fake_meminfo(self, available_kib: int) -> Iterator[None]:
        """Inside the worker's mount namespace (ssh sessions too) /proc/meminfo says
        ``MemAvailable: available_kib kB``, the rest as here; undone when the block ends."""
        real = Path("/proc/meminfo").read_text()
        text, found = re.subn(
            r"^MemAvailable:\s+\d+ kB$", f"MemAvailable: {available_kib:>8} kB", real, flags=re.M
        )
        assert found == 1, "no MemAvailable line in /proc/meminfo"
        fake = self.state_dir / f"meminfo-{available_kib}"
        fake.write_text(text)
        self.run(["mount", "--bind", str(fake), "/proc/meminfo"])
        try:
            yield
        finally:
            self.run(["umount", "/proc/meminfo"])
            fake.unlink(missing_ok=True)

    # -- reachability ----------------------------------------------------------------------------
    def disconnect(self) -> None:
        """The worker's link goes down: connections to it fail with "No route to host" (after
        about 3 s of ARP), as for a machine that went away; open connections hang, so the
        caller's ssh needs ServerAliveInterval/ConnectTimeout."""
        _sh("ip", "-n", self.netns, "link", "set", "eth0", "down")

    def reconnect(self) -> None:
        _sh("ip", "-n", self.netns, "link", "set", "eth0", "up")
        if self._sshd is not None and self._sshd.poll() is None:
            wait_until(lambda: port_open(SSH_PORT, self.address), 20, f"sshd on {self.address}")

    # -- teardown ----------------------------------------------------------------------------
    def stop(self) -> None:
        """Remove everything: containers, processes, namespaces, veth, folders."""
        teardown(self.tag)
        for proc in (self._sshd, self._dockerd, self._holder):
            if proc is not None:
                with contextlib.suppress(Exception):
                    proc.wait(5)
        self._sshd = self._dockerd = self._holder = None


class _Loader(threading.Thread):
    """`docker save` on the local engine piped into `docker load` on the worker's."""

    def __init__(self, socket: Path) -> None:
        super().__init__(daemon=True)
        self.socket = socket
        self.seconds = 0.0
        self.error: str | None = None

    def run(self) -> None:
        began = time.monotonic()
        save = subprocess.Popen(
            ["docker", "-H", f"unix://{LOCAL_SOCKET}", "image", "save", *STANDIN_IMAGES],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        load = subprocess.run(
            ["docker", "-H", f"unix://{self.socket}", "image", "load", "-q"],
            stdin=save.stdout,
            capture_output=True,
            text=True,
            check=False,
        )
        assert save.stdout is not None
        save.stdout.close()
        save_err = save.stderr.read().decode() if save.stderr else ""
        if save.wait() != 0 or load.returncode != 0:
            self.error = f"image save/load failed: {save_err.strip()} {load.stderr.strip()}"
        self.seconds = time.monotonic() - began

    def join(self, timeout: float | None = None) -> None:
        super().join(timeout)
        if self.error:
            raise WorkerError(f"{self.error}: {PROVISION_HINT}")


def teardown(tag: str) -> None:
    """Remove worker TAG (a live one or a killed run's leftovers); safe to call twice."""
    netns = f"{PREFIX}-{tag}"
    run_dir, state_dir = RUN_BASE / netns, STATE_BASE / netns
    socket = run_dir / "docker.sock"
    if socket.exists():
        # Removing the containers first: a killed dockerd would leave them running.
        with contextlib.suppress(Exception):
            client = docker.DockerClient(base_url=f"unix://{socket}", timeout=20)
            try:
                for container in client.containers.list(all=True):
                    container.remove(force=True)
            finally:
                client.close()
    pids = _netns_pids(netns)
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 20
    while pids and time.monotonic() < deadline:
        pids = [p for p in pids if _start_time(p) is not None and _zombie(p) is False]
        time.sleep(0.1)
    for pid in _netns_pids(netns):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    _kill_cgroups(tag)
    _sh("ip", "netns", "del", netns, check=False)
    pid, n = tag.split("-")
    veth = f"sbw{pid}x{n}"
    if _sh("ip", "link", "show", veth, check=False).returncode == 0:
        _sh("ip", "link", "del", veth, check=False)
    for folder in (run_dir, state_dir):
        shutil.rmtree(folder, ignore_errors=True)


def _zombie(pid: int) -> bool | None:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return None


def _owner_alive(tag: str) -> bool:
    pid = int(tag.split("-")[0])
    owner = RUN_BASE / f"{PREFIX}-{tag}" / "owner"
    started = _start_time(pid)
    if started is None:
        return False
    try:
        recorded = owner.read_text().split()
    except OSError:
        return True  # no record (yet): a live process of that pid may be setting it up
    return recorded == [str(pid), started]


def remove_leftovers() -> list[str]:
    """Tear down every worker whose owner process is gone; returns their tags."""
    tags: set[str] = set()
    for line in _sh("ip", "netns", "list", check=False).stdout.splitlines():
        match = _TAG_RE.match(line.split()[0]) if line.strip() else None
        if match:
            tags.add(f"{match[1]}-{match[2]}")
    for base in (RUN_BASE, STATE_BASE):
        for folder in base.glob(f"{PREFIX}-*"):
            match = _TAG_RE.match(folder.name)
            if match:
                tags.add(f"{match[1]}-{match[2]}")
    for line in _sh("ip", "-o", "link", "show", check=False).stdout.splitlines():
        name = line.split(":")[1].strip().split("@")[0] if ":" in line else ""
        match = _VETH_RE.match(name)
        if match:
            tags.add(f"{match[1]}-{match[2]}")
    gone = sorted(t for t in tags if not _owner_alive(t))
    for tag in gone:
        teardown(tag)
    return gone


# -- what tests get -------------------------------------------------------------------------------
@dataclass(frozen=True)
class Worker:
    """A second Docker host reached over SSH. Attributes are plain values; methods drive it."""

    name: str  # a host name for tests ("worker")
    ssh_url: str  # ssh://root@10.201.N.2 (the `host add` argument)
    user: str  # root
    address: str  # 10.201.N.2: sshd and the engine's published ports
    port: int  # 22
    bind_address: str  # the `--bind` address: 10.201.N.2
    host_side_address: str  # 10.201.N.1: the manager's end of the veth
    identity_file: Path  # client private key (ed25519, no passphrase); .pub beside it
    public_key: str  # the client's public key line
    host_public_key: str  # "ssh-ed25519 AAAA..." of the worker's sshd
    known_hosts_line: str  # "10.201.N.2 ssh-ed25519 AAAA..."
    known_hosts_file: Path  # a file holding just that line
    engine_socket: Path  # the worker engine's unix socket, usable from the manager's side
    engine_url: str  # unix:///run/sbmw-TAG/docker.sock
    data_dir: Path  # same path on both sides; the worker's copy is its own (empty at start)
    data_store: Path  # where the worker's data_dir lives on disk (to inspect, never to use)
    netns: str  # the network namespace's name
    timings: dict[str, float]  # start_s, engine_start_s, image_load_s of the session
    _host: WorkerHost = field(repr=False, compare=False)

    def run(
        self,
        cmd: str | Sequence[str],
        *,
        check: bool = True,
        input: str | None = None,
        timeout: float = 120,
    ) -> subprocess.CompletedProcess[str]:
        """Run a shell line (or argv) on the worker, inside its namespaces (not over ssh)."""
        return self._host.run(cmd, check=check, input=input, timeout=timeout)

    def ssh_argv(self, *remote: str) -> list[str]:
        """Plain ssh to the worker with the test key, its host key checked strictly. ssh joins
        the remote words into one shell line for the worker's shell: quote them yourself."""
        return [
            "ssh",
            "-F",
            "/dev/null",
            "-i",
            str(self.identity_file),
            "-o",
            "IdentitiesOnly=yes",
            "-o",
            f"UserKnownHostsFile={self.known_hosts_file}",
            "-o",
            "StrictHostKeyChecking=yes",
            "-o",
            "BatchMode=yes",
            "-o",
            "ConnectTimeout=10",
            "-p",
            str(self.port),
            f"{self.user}@{self.address}",
            *remote,
        ]

    def client(self) -> docker.DockerClient:
        """A docker SDK client on the worker engine's socket (the caller closes it)."""
        return docker.DockerClient(base_url=self.engine_url, timeout=120)

    def stop_engine(self) -> None:
        self._host.stop_engine()

    def start_engine(self) -> None:
        self._host.start_engine()

    def stop_ssh(self) -> None:
        self._host.stop_ssh()

    def start_ssh(self) -> None:
        self._host.start_ssh()

    def configure_ssh(self, *options: str) -> None:
        self._host.configure_ssh(options)

    def hang_ssh(self) -> contextlib.AbstractContextManager[None]:
        return self._host.hang_ssh()

    def fake_meminfo(self, available_kib: int) -> contextlib.AbstractContextManager[None]:
        return self._host.fake_meminfo(available_kib)

    def disconnect(self) -> None:
        self._host.disconnect()

    def reconnect(self) -> None:
        self._host.reconnect()

    def engine_running(self) -> bool:
        return self._host.engine_running()


def view(host: WorkerHost) -> Worker:
    return Worker(
        name=host.name,
        ssh_url=f"ssh://root@{host.address}" + ("" if SSH_PORT == 22 else f":{SSH_PORT}"),
        user="root",
        address=host.address,
        port=SSH_PORT,
        bind_address=host.address,
        host_side_address=host.host_side_address,
        identity_file=host.identity_file,
        public_key=host.public_key,
        host_public_key=host.host_public_key,
        known_hosts_line=host.known_hosts_line,
        known_hosts_file=host.known_hosts_file,
        engine_socket=host.engine_socket,
        engine_url=f"unix://{host.engine_socket}",
        data_dir=host.data_dir,
        data_store=host.data_store,
        netns=host.netns,
        timings=dict(host.timings),
        _host=host,
    )


@contextlib.contextmanager
def running_worker(data_dir: Path, name: str = "worker") -> Iterator[Worker]:
    """A started worker for scripts (bench/); removed on exit."""
    host = WorkerHost(data_dir, name=name)
    host.start()
    try:
        yield view(host)
    finally:
        host.stop()


# -- fixtures (imported into tests/conftest.py) ---------------------------------------------------
@pytest.fixture(scope="session")
def worker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Worker]:
    """A second Docker host over SSH for the session. Its data_dir is the session's pytest base
    temp folder: every tmp_path lies under it, and the worker sees that folder empty and its own.
    Fails (never skips) when the machine lacks a part."""
    host = WorkerHost(tmp_path_factory.getbasetemp())
    try:
        host.start()
    except WorkerError as exc:
        pytest.fail(f"worker host: {exc}", pytrace=False)
    try:
        yield view(host)
    finally:
        host.stop()


@pytest.fixture
def worker_sandbox(worker: Worker) -> Iterator[DockerSandbox]:
    """Removes every container, network and volume a test made on the worker engine (no machine
    lock: the worker engine is this session's own). Restarts a stopped engine or sshd and brings
    a disconnected link back first."""
    worker.reconnect()
    worker.start_ssh()
    worker.start_engine()
    client = docker.DockerClient(base_url=worker.engine_url, timeout=120)
    sandbox = DockerSandbox(client)
    sandbox.snapshot()
    try:
        yield sandbox
    finally:
        worker.reconnect()
        worker.start_ssh()
        worker.start_engine()
        try:
            sandbox.cleanup()
        finally:
            client.close()
