"""A small typed client of the Docker Engine API.

Only the endpoints supabase-manager needs: ping, container listing, a container's main process
and restart count, one-shot stats, and listing and removing containers, networks and volumes.

The engine is named by an address in DOCKER_HOST's syntax (``unix:///var/run/docker.sock``,
``tcp://host:2375``, TLS with DOCKER_TLS_VERIFY, ``ssh://host``) and spoken to through a transport:

- any httpx transport: ``httpx.MockTransport`` in unit tests, ``httpx.HTTPTransport`` for TLS;
- by default, on a unix socket or plain TCP, a minimal HTTP/1.1 exchange over the socket (see
  _Connection). A status query is one request; loading httpx for it (ssl, h11, httpcore and what
  its CLI imports: about 60 ms on this machine kind) would cost more than `docker compose ls`
  takes whole;
- for ssh, the same HTTP/1.1 exchange over the engine's socket forwarded through the host's ssh
  master (controller/ssh.py ``Forward``: a connection is a channel of the running master, under
  a millisecond), or where no forward can be had (sshd refuses streamlocal forwarding, the
  engine there is not on a unix socket, no ControlMaster) over ``ssh HOST docker system
  dial-stdio`` (an ssh process here and a docker CLI there per connection, about 30 ms).

Paths carry no API version: the engine answers in its own, which every engine from API 1.24 to
the current one accepts for these calls.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import threading
from collections.abc import Iterable, Mapping
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Protocol
from urllib.parse import quote, urlencode, urlsplit

import attrs

from controller.errors import DockerUnavailable, OperationError

if TYPE_CHECKING:
    import httpx

    from controller.ssh import Forward

DEFAULT_HOST = "unix:///var/run/docker.sock"
DEFAULT_TLS_PORT = 2376
DEFAULT_TCP_PORT = 2375
LOOPBACK = frozenset({"localhost", "127.0.0.1", "::1"})


class EngineError(OperationError):
    """The engine answered a request with an error status."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


class NotFound(EngineError):
    """The object named in the request does not exist (any more)."""


@attrs.frozen
class TLSFiles:
    """DOCKER_CERT_PATH's files: the CA that signed the engine's certificate, and ours."""

    ca: Path
    cert: Path
    key: Path

    @classmethod
    def in_folder(cls, folder: Path) -> TLSFiles:
        return cls(folder / "ca.pem", folder / "cert.pem", folder / "key.pem")


@attrs.frozen
class EngineAddress:
    """Where an engine listens: a unix socket on this host, or TCP (plain or TLS)."""

    scheme: str  # "unix", "tcp" or "ssh"
    path: str = ""  # the socket, for unix
    host: str = ""  # for tcp; for ssh the host (or a Host alias of ssh_config)
    port: int = 0  # for tcp; for ssh 0 means ssh's own default
    tls: TLSFiles | None = None
    user: str = ""  # for ssh
    ssh_config: str = ""  # for ssh: the config file ssh reads (-F), "" for ssh's own

    @classmethod
    def parse(cls, text: str, tls: TLSFiles | None = None) -> EngineAddress:
        """An address in DOCKER_HOST's syntax; ``tls`` makes a tcp address use TLS."""
        text = text.strip()
        url = urlsplit(text)
        if url.scheme == "unix":
            path = text[len("unix://") :]  # as the docker CLI reads it: all after the scheme
            if not path:
                raise DockerUnavailable(f"Docker host {text!r}: no socket path")
            return cls("unix", path=path if path.startswith("/") else "/" + path)
        if url.scheme in ("tcp", "http", "https"):
            try:
                port = url.port
            except ValueError:
                raise DockerUnavailable(f"Docker host {text!r}: bad port") from None
            if not url.hostname:
                raise DockerUnavailable(f"Docker host {text!r}: no host name")
            default = DEFAULT_TLS_PORT if tls else DEFAULT_TCP_PORT
            return cls("tcp", host=url.hostname, port=port or default, tls=tls)
        if url.scheme == "ssh":
            try:
                port = url.port or 0
            except ValueError:
                raise DockerUnavailable(f"Docker host {text!r}: bad port") from None
            if not url.hostname or url.path not in ("", "/"):
                raise DockerUnavailable(f"Docker host {text!r}: expected ssh://[USER@]HOST[:PORT]")
            return cls("ssh", host=url.hostname, port=port, user=url.username or "")
        raise DockerUnavailable(
            f"Docker host {text!r}: expected unix://PATH or tcp://HOST:PORT (or ssh://HOST)"
        )

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> EngineAddress:
        """DOCKER_HOST (default: the local socket), with TLS when DOCKER_TLS_VERIFY is set."""
        env = os.environ if env is None else env
        tls = None
        if env.get("DOCKER_TLS_VERIFY"):
            folder = env.get("DOCKER_CERT_PATH") or str(Path.home() / ".docker")
            tls = TLSFiles.in_folder(Path(folder))
        return cls.parse(env.get("DOCKER_HOST") or DEFAULT_HOST, tls)

    @property
    def local(self) -> bool:
        """Whether the engine runs on this host (its containers' cgroups are ours to read)."""
        return self.scheme == "unix" or (self.scheme == "tcp" and self.host in LOOPBACK)

    @property
    def base_url(self) -> str:
        if self.scheme in ("unix", "ssh"):
            return "http://docker"  # the host part is only a placeholder on a socket
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{'https' if self.tls else 'http'}://{host}:{self.port}"

    def __str__(self) -> str:
        if self.scheme == "unix":
            return f"unix://{self.path}"
        if self.scheme == "ssh":
            user = f"{self.user}@" if self.user else ""
            return f"ssh://{user}{self.host}" + (f":{self.port}" if self.port else "")
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"tcp://{host}:{self.port}"

    def httpx_transport(self) -> httpx.BaseTransport:
        """An httpx transport to this engine (the default one for TLS)."""
        import ssl

        import httpx

        if self.scheme == "ssh":
            raise DockerUnavailable(f"{self}: an ssh engine is reached through ssh, not httpx")
        if self.tls is None:
            # No TLS is spoken here: a context that trusts nothing spares loading the CA bundle.
            empty = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            uds = self.path if self.scheme == "unix" else None
            return httpx.HTTPTransport(uds=uds, verify=empty)
        context = ssl.create_default_context(cafile=str(self.tls.ca))
        context.load_cert_chain(str(self.tls.cert), str(self.tls.key))
        return httpx.HTTPTransport(verify=context)

    def dial_argv(self) -> list[str]:
        """For ssh: the command whose stdin and stdout are a byte stream to the engine (the
        docker CLI's own way: ``docker system dial-stdio`` on the engine's host)."""
        import shutil

        ssh = shutil.which("ssh")
        if ssh is None:
            raise DockerUnavailable("the ssh command is not installed (needed for ssh:// engines)")
        argv = [ssh, "-T"]
        if self.ssh_config:
            argv += ["-F", self.ssh_config]
        if self.user:
            argv += ["-l", self.user]
        if self.port:
            argv += ["-p", str(self.port)]
        return [*argv, "--", self.host, "docker system dial-stdio"]


@attrs.frozen
class Container:
    id: str
    name: str  # without the leading slash
    state: str  # created, running, paused, restarting, exited, removing, dead
    status: str  # the human text: "Up 3 minutes (healthy)", "Exited (0) 2 seconds ago"
    labels: Mapping[str, str] = attrs.field(converter=lambda d: MappingProxyType(dict(d)))


@attrs.frozen
class ContainerDetails:
    id: str
    pid: int | None  # of its main process on the engine's host; None when it does not run
    restart_count: int
    started_at: str  # RFC 3339, as the engine says it


@attrs.frozen
class Network:
    id: str
    name: str
    labels: Mapping[str, str] = attrs.field(converter=lambda d: MappingProxyType(dict(d)))


@attrs.frozen
class Volume:
    name: str
    labels: Mapping[str, str] = attrs.field(converter=lambda d: MappingProxyType(dict(d)))


@attrs.frozen
class StatsSample:
    """One reading of a container's counters, as `GET /containers/ID/stats` gives them."""

    cpu_total_ns: int
    system_cpu_ns: int
    online_cpus: int
    memory_usage: int
    inactive_file: int


class Raw(Protocol):
    """How the client sends one request: ``(method, path?query) -> (status, body)``; raises
    DockerUnavailable when the engine cannot be reached."""

    def send(self, method: str, target: str) -> tuple[int, bytes]: ...

    def close(self) -> None: ...


class Engine:
    """The Engine API at ``address``, through ``transport`` (an httpx transport; default: HTTP/1.1
    straight on the socket, or httpx's transport for TLS)."""

    def __init__(
        self,
        address: EngineAddress,
        transport: httpx.BaseTransport | None = None,
        timeout: float = 10.0,
    ) -> None:
        self.address = address
        raw: Raw
        if transport is not None:
            raw = _HttpxRaw(address, transport, timeout)
        elif address.tls is None:
            raw = _SocketRaw(address, timeout)
        else:
            raw = _HttpxRaw(address, address.httpx_transport(), timeout)
        self._raw = raw

    def close(self) -> None:
        self._raw.close()

    @property
    def sessions_limited(self) -> bool:
        """Whether each connection is an ssh session (dial-stdio), of which sshd allows only
        MaxSessions (10 by default) at once per master; a forwarded connection is a channel,
        not a session. Known once a connection was made; until then an ssh engine says yes."""
        if self.address.scheme != "ssh":
            return False
        return not (isinstance(self._raw, _SocketRaw) and self._raw.forwarded)

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def ping(self) -> None:
        self._request("GET", "/_ping")

    def containers(self, labels: Iterable[str] = (), all: bool = True) -> list[Container]:
        """Containers (stopped ones too unless ``all`` is false) carrying every label filter
        (``KEY`` or ``KEY=VALUE``)."""
        params = {"all": "1" if all else "0", **_filters(labels)}
        rows = self._request("GET", "/containers/json", params).json()
        return [
            Container(
                id=row["Id"],
                name=((row.get("Names") or ["/"])[0]).lstrip("/"),
                state=row.get("State") or "unknown",
                status=row.get("Status") or "",
                labels=row.get("Labels") or {},
            )
            for row in rows
        ]

    def published_ports(self) -> set[int]:
        """Host ports the engine's running containers publish (any address, TCP or UDP)."""
        rows = self._request("GET", "/containers/json", {"all": "0"}).json()
        return {
            int(port["PublicPort"])
            for row in rows
            for port in row.get("Ports") or []
            if port.get("PublicPort")
        }

    def inspect(self, container_id: str) -> ContainerDetails:
        """What the listing does not say about a container: its main process, restarts."""
        data = self._request("GET", f"/containers/{_segment(container_id)}/json").json()
        state = data.get("State") or {}
        return ContainerDetails(
            id=data.get("Id") or container_id,
            pid=state.get("Pid") or None,
            restart_count=data.get("RestartCount") or 0,
            started_at=state.get("StartedAt") or "",
        )

    def container_pid(self, container_id: str) -> int | None:
        """The host pid of the container's main process (None when it does not run)."""
        return self.inspect(container_id).pid

    def container_restarts(self, container_id: str) -> int:
        """How often the engine restarted the container (its restart policy at work)."""
        return self.inspect(container_id).restart_count

    def stats(self, container_id: str) -> StatsSample:
        """One reading of the container's counters. The engine answers at its stats
        collector's next tick (about a second), whatever the number of callers waiting."""
        params = {"stream": "false", "one-shot": "true"}
        data = self._request("GET", f"/containers/{_segment(container_id)}/stats", params).json()
        cpu = data.get("cpu_stats") or {}
        usage = cpu.get("cpu_usage") or {}
        memory = data.get("memory_stats") or {}
        stat = memory.get("stats") or {}
        return StatsSample(
            cpu_total_ns=usage.get("total_usage") or 0,
            system_cpu_ns=cpu.get("system_cpu_usage") or 0,
            online_cpus=cpu.get("online_cpus") or len(usage.get("percpu_usage") or [1]),
            memory_usage=memory.get("usage") or 0,
            # cgroup v2 says inactive_file, v1 total_inactive_file (with its children)
            inactive_file=stat.get("inactive_file", stat.get("total_inactive_file", 0)) or 0,
        )

    def remove_container(self, container_id: str, volumes: bool = False) -> bool:
        """Force-remove a container (and its anonymous volumes); False when it was gone."""
        params = {"force": "1", "v": "1" if volumes else "0"}
        return self._remove(f"/containers/{_segment(container_id)}", params)

    def networks(self, labels: Iterable[str] = ()) -> list[Network]:
        rows = self._request("GET", "/networks", _filters(labels)).json()
        return [Network(row["Id"], row["Name"], row.get("Labels") or {}) for row in rows]

    def remove_network(self, network_id: str) -> bool:
        return self._remove(f"/networks/{_segment(network_id)}")

    def volumes(self, labels: Iterable[str] = ()) -> list[Volume]:
        data = self._request("GET", "/volumes", _filters(labels)).json()
        return [Volume(row["Name"], row.get("Labels") or {}) for row in data.get("Volumes") or []]

    def remove_volume(self, name: str) -> bool:
        return self._remove(f"/volumes/{_segment(name)}", {"force": "1"})

    def _remove(self, path: str, params: Mapping[str, str] | None = None) -> bool:
        try:
            self._request("DELETE", path, params)
        except NotFound:
            return False
        return True

    def _request(self, method: str, path: str, params: Mapping[str, str] | None = None) -> Reply:
        target = f"{path}?{urlencode(params)}" if params else path
        status, body = self._raw.send(method, target)
        reply = Reply(status, body)
        if 200 <= status < 300:
            return reply
        error = NotFound if status == 404 else EngineError
        raise error(f"Docker: {_message(reply)}", status)


class Reply:
    """An answer: status and body (a plain class: one per request, nothing to generate)."""

    __slots__ = ("body", "status")

    def __init__(self, status: int, body: bytes) -> None:
        self.status = status
        self.body = body

    def json(self):
        return json.loads(self.body)


class _SocketRaw:
    """Requests over the engine's socket (unix or plain TCP). Connections are kept alive in a
    small idle pool: stats of many containers are fetched from a pool of threads, each taking a
    connection for one exchange at a time."""

    MAX_IDLE = 8

    def __init__(self, address: EngineAddress, timeout: float) -> None:
        self._address = address
        self._timeout = timeout
        self._idle: list[_Connection] = []
        self._lock = threading.Lock()
        # ssh: the forward of the engine's socket (controller/ssh.py), looked up on the first
        # connection; False once it cannot be had (dial-stdio then).
        self._forward: Forward | bool | None = None
        self.forwarded = False  # the last connection made went through the forward

    def send(self, method: str, target: str) -> tuple[int, bytes]:
        with self._lock:
            conn = self._idle.pop() if self._idle else None
        for attempt in (1, 2):
            reused = conn is not None
            try:
                if conn is None:
                    conn = self._connect()
                status, body, keep = conn.exchange(method, target)
            except (OSError, BadResponse) as exc:
                failed = conn
                if conn is not None:
                    conn.close()
                conn = None
                if reused and attempt == 1 and not isinstance(exc, TimeoutError):
                    continue  # the engine closed the idle connection: once more on a new one
                if isinstance(failed, _ForwardedConnection) and not isinstance(exc, TimeoutError):
                    return self._without_forward(method, target)
                raise DockerUnavailable(self._unreachable(exc, failed)) from None
            with self._lock:
                if keep and len(self._idle) < self.MAX_IDLE:
                    self._idle.append(conn)
                    conn = None
            if conn is not None:
                conn.close()
            return status, body
        raise AssertionError("not reached")

    def _connect(self) -> _Connection:
        address = self._address
        if address.scheme == "ssh":
            return self._ssh_connect()
        if address.scheme == "unix":
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            where: str | tuple[str, int] = address.path
        else:
            sock = socket.socket(socket.AF_INET6 if ":" in address.host else socket.AF_INET)
            where = (address.host, address.port)
        sock.settimeout(self._timeout)
        try:
            sock.connect(where)
        except OSError:
            sock.close()
            raise
        return _Connection(sock, "localhost" if address.scheme == "unix" else address.host)

    def _ssh_connect(self) -> _Connection:
        """Through the forward when one is there or can be made, else dial-stdio."""
        forward = self._ssh_forward()
        if forward is not None:
            # Given up (by another process) meanwhile: not connected to, even where it lingers.
            sock = None if forward.refused() else forward.connect(self._timeout)
            if sock is None:
                from controller.ssh import SshError

                try:
                    why = forward.open(self._timeout)
                except SshError as exc:  # the host cannot be reached at all
                    raise DockerUnavailable(str(exc)) from None
                sock = None if why else forward.connect(self._timeout)
            if sock is not None:
                self.forwarded = True
                return _ForwardedConnection(sock)
            self._forward = False
        self.forwarded = False
        return _SshConnection.open(self._address, self._timeout)

    def _ssh_forward(self) -> Forward | None:
        if self._forward is None:
            found = None
            if self._address.ssh_config:
                from controller.ssh import Forward

                found = Forward.of(Path(self._address.ssh_config), self._address.host)
            self._forward = found or False
        return self._forward or None

    def _without_forward(self, method: str, target: str) -> tuple[int, bytes]:
        """A fresh forwarded connection broke: ask through dial-stdio. When that answers, the
        forward is made again and tried once more; when that breaks too (not by a timeout),
        the forward is what fails (sshd refuses to open the channel, or the socket is
        elsewhere): it is given up for every process a while. When dial-stdio fails too, the
        engine or the host is down: its reason, and the forward is kept."""
        try:
            conn = _SshConnection.open(self._address, self._timeout)
        except OSError as exc:
            raise DockerUnavailable(self._unreachable(exc)) from None
        try:
            try:
                status, body, keep = conn.exchange(method, target)
            except (OSError, BadResponse) as exc:
                failed, conn = conn, None
                failed.close()  # its ssh's stderr is read once it has ended
                raise DockerUnavailable(self._unreachable(exc, failed)) from None
            forward = self._ssh_forward()
            works = None if forward is None else self._forward_works_again(forward)
            if forward is not None and works is False:
                with contextlib.suppress(OSError):  # no marker written: given up here only
                    forward.refuse(
                        "the forwarded socket does not reach the engine; dial-stdio does"
                    )
            if not works:  # kept where it answered again: a passing failure
                self._forward = False
            self.forwarded = False
            with self._lock:
                if keep and len(self._idle) < self.MAX_IDLE:
                    self._idle.append(conn)
                    conn = None
            return status, body
        finally:
            if conn is not None:
                conn.close()

    def _forward_works_again(self, forward: Forward) -> bool | None:
        """Whether a fresh connection through the forward, made again, answers a ping; None
        when that cannot tell (the host does not answer, a timeout, the files here fail, the
        forward is being made or was given up elsewhere): nothing is then to be marked."""
        from controller.ssh import SshError

        try:
            forward.close()
            if forward.open(self._timeout):
                return None
            sock = forward.connect(self._timeout)
        except (SshError, OSError):
            return None
        if sock is None:
            return None
        conn = _ForwardedConnection(sock)
        try:
            conn.exchange("GET", "/_ping")
        except TimeoutError:
            return None
        except (OSError, BadResponse):
            return False
        finally:
            conn.close()
        return True

    def _unreachable(self, exc: Exception, conn: _Connection | None = None) -> str:
        if isinstance(conn, _SshConnection):
            reason = conn.ssh_error()
            if reason:
                return reason
        if isinstance(exc, TimeoutError):
            reason = "it did not answer in time"
        elif isinstance(exc, FileNotFoundError | ConnectionRefusedError):
            reason = "is dockerd running?"
        else:
            reason = (str(exc).splitlines() or [""])[0][:200] or type(exc).__name__
        return f"cannot reach the Docker daemon at {self._address}: {reason}"

    def close(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()


class BadResponse(Exception):
    """What came back is not an HTTP/1.1 response this client understands."""


class _Connection:
    """One HTTP/1.1 exchange at a time on a connected socket.

    Deliberately small: the standard library's http.client would do, but importing it (with the
    email package and ssl) costs about a tenth of a fresh `list`. The engine is a Go net/http
    server; requests here carry no body, and responses come with Content-Length, chunked, or
    (HTTP/1.0 style) until the connection closes.
    """

    MAX_LINE = 65536

    def __init__(self, sock: socket.socket, host: str) -> None:
        self._sock = sock
        self._file = sock.makefile("rb")
        self._host = host

    def exchange(self, method: str, target: str) -> tuple[int, bytes, bool]:
        """(status, body, whether the connection stays usable)."""
        request = f"{method} {target} HTTP/1.1\r\nHost: {self._host}\r\nContent-Length: 0\r\n\r\n"
        self._sock.sendall(request.encode("ascii"))
        while True:
            version, status = self._status_line()
            headers = self._headers()
            if status >= 200 or status == 101:
                break  # an interim 1xx answer is followed by the real one
        keep = version == "HTTP/1.1" and headers.get("connection", "").lower() != "close"
        if method == "HEAD" or status in (204, 304):
            return status, b"", keep
        if "chunked" in headers.get("transfer-encoding", "").lower():
            return status, self._chunked(), keep
        length = headers.get("content-length")
        if length is not None:
            if not length.isdigit():
                raise BadResponse(f"bad Content-Length {length[:40]!r}")
            return status, self._exactly(int(length)), keep
        return status, self._file.read(), False

    def _line(self) -> bytes:
        line = self._file.readline(self.MAX_LINE + 1)
        if not line:
            raise ConnectionResetError("the engine closed the connection")
        if len(line) > self.MAX_LINE or not line.endswith(b"\n"):
            raise BadResponse("response line too long or cut short")
        return line.rstrip(b"\r\n")

    def _status_line(self) -> tuple[str, int]:
        parts = self._line().decode("latin-1").split(" ", 2)
        if len(parts) < 2 or not parts[0].startswith("HTTP/1.") or not parts[1].isdigit():
            raise BadResponse(f"not an HTTP/1 status line: {' '.join(parts)[:60]!r}")
        return parts[0], int(parts[1])

    def _headers(self) -> dict[str, str]:
        headers: dict[str, str] = {}
        for _ in range(200):
            line = self._line()
            if not line:
                return headers
            name, sep, value = line.decode("latin-1").partition(":")
            if not sep:
                raise BadResponse(f"bad header line {line[:60]!r}")
            headers[name.strip().lower()] = value.strip()
        raise BadResponse("too many header lines")

    def _exactly(self, size: int) -> bytes:
        data = self._file.read(size)
        if len(data) != size:
            raise ConnectionResetError("the engine closed the connection mid-answer")
        return data

    def _chunked(self) -> bytes:
        parts = []
        while True:
            size_text = self._line().split(b";", 1)[0].strip()
            try:
                size = int(size_text, 16)
            except ValueError:
                raise BadResponse(f"bad chunk size {size_text[:20]!r}") from None
            if size == 0:
                while self._line():  # trailer lines, up to the blank one
                    pass
                return b"".join(parts)
            parts.append(self._exactly(size))
            if self._line():
                raise BadResponse("chunk not followed by CRLF")

    def close(self) -> None:
        self._file.close()
        self._sock.close()


class _SshConnection(_Connection):
    """HTTP/1.1 over ``ssh HOST docker system dial-stdio``: one end of a socket pair is the ssh
    process's stdin and stdout, the other is ours, so _Connection's exchange runs unchanged."""

    def __init__(self, sock: socket.socket, proc, stderr) -> None:
        super().__init__(sock, "docker")
        self._proc = proc
        self._stderr = stderr
        self._code: int | None = None
        self._text = ""

    @classmethod
    def open(cls, address: EngineAddress, timeout: float) -> _SshConnection:
        import subprocess
        import tempfile

        ours, theirs = socket.socketpair()
        stderr = tempfile.TemporaryFile()  # noqa: SIM115 (closed in close())
        try:
            proc = subprocess.Popen(
                address.dial_argv(),
                stdin=theirs,
                stdout=theirs,
                stderr=stderr,
                start_new_session=True,  # a Ctrl-C at the prompt is ours to handle, not ssh's
            )
        except OSError:
            ours.close()
            stderr.close()
            raise
        finally:
            theirs.close()
        ours.settimeout(timeout)
        return cls(ours, proc, stderr)

    def ssh_error(self) -> str:
        """ssh's own one-line reason when it ended with an error (after close()), else ""."""
        if self._code in (None, 0):
            return ""
        from controller.ssh import ALIAS_PREFIX, failure

        host = str(self._proc.args[-2]).removeprefix(ALIAS_PREFIX)
        return str(failure(host, self._text, self._code))

    def close(self) -> None:
        import subprocess

        super().close()
        try:
            self._code = self._proc.wait(timeout=2)  # our end closed: ssh sees EOF and ends
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()
        self._stderr.seek(0)
        self._text = self._stderr.read(65536).decode(errors="replace")
        self._stderr.close()


class _ForwardedConnection(_Connection):
    """HTTP/1.1 on the engine's socket forwarded through the host's ssh master."""

    def __init__(self, sock: socket.socket) -> None:
        super().__init__(sock, "docker")


class _HttpxRaw:
    """Requests through an httpx transport."""

    def __init__(self, address: EngineAddress, transport: httpx.BaseTransport, timeout: float):
        import httpx

        self._address = address
        self._httpx = httpx
        self._client = httpx.Client(
            base_url=address.base_url,
            transport=transport,
            timeout=timeout,
            trust_env=False,  # proxies from the environment must not see the engine's traffic
        )

    def send(self, method: str, target: str) -> tuple[int, bytes]:
        try:
            response = self._client.request(method, target)
        except self._httpx.TransportError as exc:
            if isinstance(exc, self._httpx.TimeoutException):
                reason = "it did not answer in time"
            elif "No such file" in str(exc) or "Connection refused" in str(exc):
                reason = "is dockerd running?"
            else:
                reason = (str(exc).splitlines() or [""])[0][:200] or type(exc).__name__
            message = f"cannot reach the Docker daemon at {self._address}: {reason}"
            raise DockerUnavailable(message) from None
        return response.status_code, response.content

    def close(self) -> None:
        self._client.close()


def _filters(labels: Iterable[str]) -> dict[str, str]:
    labels = list(labels)
    return {"filters": json.dumps({"label": labels})} if labels else {}


def _segment(text: str) -> str:
    return quote(text, safe="")


def _message(reply: Reply) -> str:
    try:
        data = reply.json()
        message = data.get("message") if isinstance(data, dict) else None
    except ValueError:
        message = None
    text = message or reply.body.decode("utf-8", "replace")
    return (text.strip().splitlines() or [""])[0][:200] or f"HTTP {reply.status}"
