"""The Engine API client (controller/engine.py) and DockerAPI on top of it, without an engine.

httpx.MockTransport stands in for the engine: these tests pin what the client sends (paths,
filters, methods) and how it reads answers and errors. The socket transport's HTTP/1.1 reading is
tested against a real socket pair with canned answers; tests/test_engine_docker.py runs both
transports against the real engine.

An engine over ssh: the choice between the forwarded socket (controller/ssh.py ``Forward``) and
dial-stdio is logic, tested here with a unix socket server playing the master's listener, a
process playing `docker system dial-stdio`, and a shell script playing the ssh client (its
calls recorded). tests/test_gather_hosts.py runs both ways against a real sshd.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import threading
import time

import httpx
import pytest

from controller.dockerapi import INSTANCE_LABEL, DockerAPI
from controller.engine import (
    BadResponse,
    Engine,
    EngineAddress,
    EngineError,
    NotFound,
    TLSFiles,
    _Connection,
)
from controller.errors import DockerUnavailable
from controller.state import READY, InstanceRecord
from controller.status import gather

LOCAL = EngineAddress.parse("unix:///var/run/docker.sock")


def _row(cid: str, instance: str, service: str, state: str, status: str) -> dict:
    return {
        "Id": cid,
        "Names": [f"/{instance}-{service}"],
        "State": state,
        "Status": status,
        "Labels": {INSTANCE_LABEL: instance, "com.docker.compose.service": service},
    }


class FakeEngine:
    """Answers like the engine from canned containers, networks and volumes; records requests."""

    def __init__(self, containers=(), networks=(), volumes=()) -> None:
        self.containers = list(containers)
        self.networks = list(networks)
        self.volumes = list(volumes)
        self.requests: list[httpx.Request] = []

    def handler(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        path, method = request.url.path, request.method
        labels = json.loads(request.url.params.get("filters", "{}")).get("label", [])
        if path == "/_ping":
            return httpx.Response(200, text="OK")
        if path == "/containers/json":
            rows = [r for r in self.containers if _matches(r["Labels"], labels)]
            if request.url.params.get("all") != "1":
                rows = [r for r in rows if r["State"] == "running"]
            return httpx.Response(200, json=rows)
        if path == "/networks":
            return httpx.Response(200, json=[n for n in self.networks if _matches(n, labels)])
        if path == "/volumes":
            vols = [v for v in self.volumes if _matches(v, labels)]
            return httpx.Response(200, json={"Volumes": vols, "Warnings": None})
        if method == "DELETE":
            kind, _, ident = path.strip("/").partition("/")
            pool = {"containers": self.containers, "networks": self.networks}.get(kind)
            pool = self.volumes if kind == "volumes" else pool
            key = "Name" if kind == "volumes" else "Id"
            before = len(pool)
            pool[:] = [o for o in pool if o[key] != ident]
            if len(pool) == before:
                return httpx.Response(404, json={"message": f"No such {kind[:-1]}: {ident}"})
            return httpx.Response(204)
        return httpx.Response(404, json={"message": "page not found"})

    def engine(self) -> Engine:
        return Engine(LOCAL, transport=httpx.MockTransport(self.handler))


def _matches(labels: dict, wanted: list[str]) -> bool:
    labels = labels.get("Labels", labels) or {}
    for item in wanted:
        key, sep, value = item.partition("=")
        if key not in labels or (sep and labels[key] != value):
            return False
    return True


def test_containers_sends_one_listing_with_label_filters_and_reads_rows():
    fake = FakeEngine([_row("c1", "a", "db", "running", "Up 2 minutes (healthy)")])
    engine = fake.engine()
    (container,) = engine.containers([f"{INSTANCE_LABEL}=a"])
    assert (container.id, container.name, container.state) == ("c1", "a-db", "running")
    assert container.labels[INSTANCE_LABEL] == "a"
    (request,) = fake.requests
    assert request.method == "GET" and request.url.path == "/containers/json"
    assert request.url.params["all"] == "1"
    assert json.loads(request.url.params["filters"]) == {"label": [f"{INSTANCE_LABEL}=a"]}
    assert engine.containers([f"{INSTANCE_LABEL}=b"]) == []


def test_dockerapi_reads_state_health_and_exit_code_per_instance():
    fake = FakeEngine(
        [
            _row("c1", "a", "db", "running", "Up 2 minutes (healthy)"),
            _row("c2", "a", "auth", "running", "Up 5 seconds (health: starting)"),
            _row("c3", "a", "migrate", "exited", "Exited (0) 3 minutes ago"),
            _row("c4", "b", "db", "exited", "Exited (137) 1 second ago"),
            _row("c5", "b", "rest", "running", "Up 1 hour (unhealthy)"),
        ]
    )
    api = DockerAPI(engine=fake.engine())
    grouped = api.by_instance()
    assert sorted(grouped) == ["a", "b"]
    a = {c.service: c for c in grouped["a"]}
    assert a["db"].health == "healthy" and a["auth"].health == "starting"
    assert a["migrate"].state == "exited" and a["migrate"].exit_code == 0
    b = {c.service: c for c in grouped["b"]}
    assert b["db"].exit_code == 137 and b["rest"].health == "unhealthy"
    assert [c.id for c in api.containers("b")] == ["c4", "c5"]
    assert len(fake.requests) == 2  # one listing per question, whatever the number of instances


def test_gather_gives_every_instance_its_status_from_one_listing(tmp_path):
    fake = FakeEngine(
        [
            _row("c1", "up", "db", "running", "Up 2 minutes (healthy)"),
            _row("c2", "up", "migrate", "exited", "Exited (0) 3 minutes ago"),
            _row("c3", "half", "db", "running", "Up 2 minutes"),
            _row("c4", "half", "auth", "exited", "Exited (1) 2 minutes ago"),
            _row("c5", "down", "db", "exited", "Exited (0) 1 minute ago"),
        ]
    )
    records = {
        name: InstanceRecord(name=name, template="t", phase=READY)
        for name in ("up", "half", "down", "gone")
    }
    asked = []

    def one_shot(record):
        asked.append(record.name)
        return {"migrate"}

    found = gather(records, DockerAPI(engine=fake.engine()), one_shot)
    assert {n: s.status for n, s in found.items()} == {
        "up": "running",
        "half": "partial",
        "down": "stopped",
        "gone": "missing",
    }
    assert (found["up"].running, found["up"].total) == (1, 2)
    assert found["up"].cpu_percent is None and found["up"].disk_bytes is None
    assert len(asked) == 1  # the template is read once per template, not per instance
    assert len(fake.requests) == 1


def test_remove_instance_leftovers_removes_only_the_instances_objects():
    proj = "com.docker.compose.project"
    fake = FakeEngine(
        containers=[
            _row("c1", "a", "db", "running", "Up"),
            _row("c2", "ab", "db", "running", "Up"),
        ],
        networks=[
            {"Id": "n1", "Name": "a_default", "Labels": {proj: "a"}},
            {"Id": "n2", "Name": "other", "Labels": {proj: "a"}},  # same label, not a_*
            {"Id": "n3", "Name": "ab_default", "Labels": {proj: "ab"}},
        ],
        volumes=[
            {"Name": "a_db-data", "Labels": {proj: "a"}},
            {"Name": "ab_db-data", "Labels": {proj: "ab"}},
        ],
    )
    api = DockerAPI(engine=fake.engine())
    api.remove_instance_leftovers("a", volumes=False)
    assert [c["Id"] for c in fake.containers] == ["c2"]
    assert [n["Id"] for n in fake.networks] == ["n2", "n3"]
    assert len(fake.volumes) == 2  # kept without --purge
    api.remove_instance_leftovers("a", volumes=True)
    assert [v["Name"] for v in fake.volumes] == ["ab_db-data"]
    deletes = [r for r in fake.requests if r.method == "DELETE"]
    container_delete = next(r for r in deletes if r.url.path == "/containers/c1")
    assert container_delete.url.params["force"] == "1"
    # Gone already (a second cleanup): not an error.
    api.remove_instance_leftovers("a", volumes=True)


def test_errors_carry_the_engines_message_and_status():
    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/containers/x/json":
            return httpx.Response(404, json={"message": "No such container: x"})
        if request.method == "DELETE":
            return httpx.Response(409, json={"message": "volume is in use - [abc]"})
        return httpx.Response(500, text="boom\nsecond line")

    engine = Engine(LOCAL, transport=httpx.MockTransport(handler))
    with pytest.raises(NotFound) as missing:
        engine.inspect("x")
    assert missing.value.status == 404 and "No such container: x" in str(missing.value)
    with pytest.raises(EngineError) as conflict:
        engine.remove_volume("v")
    assert (
        conflict.value.status == 409 and str(conflict.value) == "Docker: volume is in use - [abc]"
    )
    with pytest.raises(EngineError) as broken:
        engine.containers()
    assert str(broken.value) == "Docker: boom"  # one line


def test_unreachable_engine_is_one_clear_line():
    def handler(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("[Errno 2] No such file or directory")

    engine = Engine(EngineAddress.parse("unix:///run/none.sock"), httpx.MockTransport(handler))
    with pytest.raises(DockerUnavailable) as err:
        engine.ping()
    assert str(err.value) == (
        "cannot reach the Docker daemon at unix:///run/none.sock: is dockerd running?"
    )
    api = DockerAPI(engine=engine)
    with pytest.raises(DockerUnavailable):
        api.by_instance()


def test_stats_reads_cgroup_v1_and_v2_memory_and_cpu_counters():
    answers = {
        "v1": {
            "cpu_stats": {
                "cpu_usage": {"total_usage": 500, "percpu_usage": [1, 2, 3, 4]},
                "system_cpu_usage": 9000,
            },
            "memory_stats": {"usage": 1000, "stats": {"total_inactive_file": 300}},
        },
        "v2": {
            "cpu_stats": {
                "cpu_usage": {"total_usage": 700},
                "system_cpu_usage": 9500,
                "online_cpus": 2,
            },
            "memory_stats": {"usage": 2000, "stats": {"inactive_file": 500}},
        },
    }

    def handler(request: httpx.Request) -> httpx.Response:
        cid = request.url.path.split("/")[2]
        assert request.url.params["stream"] == "false"
        assert request.url.params["one-shot"] == "true"
        return httpx.Response(200, json=answers[cid])

    engine = Engine(LOCAL, transport=httpx.MockTransport(handler))
    v1, v2 = engine.stats("v1"), engine.stats("v2")
    assert (v1.cpu_total_ns, v1.system_cpu_ns, v1.online_cpus) == (500, 9000, 4)
    assert (v1.memory_usage, v1.inactive_file) == (1000, 300)
    assert (v2.online_cpus, v2.memory_usage, v2.inactive_file) == (2, 2000, 500)


def test_usage_through_the_engine_for_a_remote_host():
    """A remote engine's containers have no cgroup here: figures come from two stats calls."""
    samples = iter([(1_000, 10_000), (1_500, 11_000)])

    def handler(request: httpx.Request) -> httpx.Response:
        total, system = next(samples)
        return httpx.Response(
            200,
            json={
                "cpu_stats": {
                    "cpu_usage": {"total_usage": total},
                    "system_cpu_usage": system,
                    "online_cpus": 2,
                },
                "memory_stats": {"usage": 5000, "stats": {"inactive_file": 1000}},
            },
        )

    remote = EngineAddress.parse("tcp://10.0.0.7:2375")
    assert not remote.local
    api = DockerAPI(engine=Engine(remote, transport=httpx.MockTransport(handler)))
    usage = api.usage(["c1"])
    assert usage["c1"].cpu_percent == 100.0  # 500 of 1000 ns across 2 CPUs: one full CPU
    assert usage["c1"].memory_bytes == 4000


@pytest.mark.parametrize(
    ("text", "scheme", "where", "local"),
    [
        ("unix:///var/run/docker.sock", "unix", "/var/run/docker.sock", True),
        ("unix://run/user.sock", "unix", "/run/user.sock", True),
        ("tcp://127.0.0.1:2375", "tcp", ("127.0.0.1", 2375), True),
        ("tcp://docker.example:2999", "tcp", ("docker.example", 2999), False),
        ("tcp://10.0.0.7", "tcp", ("10.0.0.7", 2375), False),
        ("tcp://[::1]:2375", "tcp", ("::1", 2375), True),
    ],
)
def test_addresses_in_docker_host_syntax(text, scheme, where, local):
    address = EngineAddress.parse(text)
    assert address.scheme == scheme
    assert (address.path if scheme == "unix" else (address.host, address.port)) == where
    assert address.local is local


def test_address_from_the_environment(tmp_path):
    assert EngineAddress.from_env({}) == EngineAddress("unix", path="/var/run/docker.sock")
    env = {"DOCKER_HOST": "tcp://h:3000"}
    assert EngineAddress.from_env(env).base_url == "http://h:3000"
    assert str(EngineAddress.from_env(env)) == "tcp://h:3000"  # as the user wrote it, in errors
    env = {"DOCKER_HOST": "tcp://h", "DOCKER_TLS_VERIFY": "1", "DOCKER_CERT_PATH": str(tmp_path)}
    tls = EngineAddress.from_env(env)
    assert tls.base_url == "https://h:2376"
    assert tls.tls == TLSFiles(tmp_path / "ca.pem", tmp_path / "cert.pem", tmp_path / "key.pem")


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("ssh://me@host/path", "expected ssh://[USER@]HOST[:PORT]"),
        ("ssh://me@host:notaport", "bad port"),
        ("npipe:////./pipe/docker_engine", "expected unix://PATH or tcp://HOST:PORT"),
        ("tcp://:2375", "no host name"),
        ("tcp://h:notaport", "bad port"),
        ("unix://", "no socket path"),
    ],
)
def test_bad_addresses_are_one_line_errors(text, words):
    with pytest.raises(DockerUnavailable) as err:
        EngineAddress.parse(text)
    assert words in str(err.value) and "\n" not in str(err.value)


# --- the socket transport's HTTP/1.1 reading, on a real socket pair ---------------------------
def _serve(answers: list[bytes]) -> tuple[_Connection, list[bytes], threading.Thread]:
    ours, theirs = socket.socketpair()
    seen: list[bytes] = []

    def server() -> None:
        with theirs:
            reader = theirs.makefile("rb")
            for answer in answers:
                request = b""
                while not request.endswith(b"\r\n\r\n"):
                    line = reader.readline()
                    if not line:
                        return
                    request += line
                seen.append(request)
                theirs.sendall(answer)

    thread = threading.Thread(target=server, daemon=True)
    thread.start()
    ours.settimeout(5)
    return _Connection(ours, "localhost"), seen, thread


def test_http1_content_length_chunked_and_keep_alive_on_one_connection():
    body = json.dumps([{"Id": "x" * 5000}]).encode()
    chunks = b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in (body[:3000], body[3000:]))
    conn, seen, thread = _serve(
        [
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nOK",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + chunks + b"0\r\n\r\n",
            b"HTTP/1.1 204 No Content\r\n\r\n",
            b"HTTP/1.1 404 Not Found\r\nConnection: close\r\nContent-Length: 4\r\n\r\nnope",
        ]
    )
    assert conn.exchange("GET", "/_ping") == (200, b"OK", True)
    assert conn.exchange("GET", "/containers/json?all=1") == (200, body, True)
    assert conn.exchange("DELETE", "/containers/x?force=1") == (204, b"", True)
    assert conn.exchange("GET", "/nope") == (404, b"nope", False)
    conn.close()
    thread.join(5)
    assert seen[1].startswith(b"GET /containers/json?all=1 HTTP/1.1\r\nHost: localhost\r\n")
    assert seen[2].startswith(b"DELETE /containers/x?force=1 HTTP/1.1\r\n")


def test_http1_body_until_close_and_broken_answers():
    conn, _, thread = _serve([b"HTTP/1.0 200 OK\r\n\r\n[1, 2]"])
    assert conn.exchange("GET", "/x") == (200, b"[1, 2]", False)
    conn.close()
    thread.join(5)
    for answer in (
        b"SSH-2.0-OpenSSH\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nno colon here\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
    ):
        conn, _, thread = _serve([answer])
        with pytest.raises(BadResponse):
            conn.exchange("GET", "/x")
        conn.close()
        thread.join(5)
    # The server hangs up after 5 of 10 bytes.
    conn, _, thread = _serve([b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort"])
    with pytest.raises(ConnectionResetError):
        conn.exchange("GET", "/x")
    conn.close()
    thread.join(5)


def test_socket_transport_retries_once_when_the_engine_dropped_an_idle_connection(tmp_path):
    """The server closes each connection after one answer without saying so: the next request
    finds the kept connection dead and is sent again on a new one."""
    path = tmp_path / "engine.sock"
    server = socket.socket(socket.AF_UNIX)
    server.bind(str(path))
    server.listen()
    accepted = []

    def serve() -> None:
        for i in range(3):
            conn, _ = server.accept()
            accepted.append(i)
            with conn:
                reader = conn.makefile("rb")
                while reader.readline() not in (b"\r\n", b""):
                    pass
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n[]")
                conn.shutdown(socket.SHUT_RDWR)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    with Engine(EngineAddress.parse(f"unix://{path}"), timeout=5) as engine:
        assert engine.containers() == []
        assert engine.containers() == []  # the kept connection is dead: sent again
        assert engine.containers() == []
    thread.join(5)
    server.close()
    assert accepted == [0, 1, 2]


def test_socket_transport_gives_up_on_a_fresh_connection_that_breaks(tmp_path):
    path = tmp_path / "engine.sock"
    server = socket.socket(socket.AF_UNIX)
    server.bind(str(path))
    server.listen()

    def serve() -> None:
        conn, _ = server.accept()
        with conn:
            conn.recv(4096)
            conn.sendall(b"garbage\r\n\r\n")

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    with (
        Engine(EngineAddress.parse(f"unix://{path}"), timeout=5) as engine,
        pytest.raises(DockerUnavailable, match="not an HTTP/1 status line"),
    ):
        engine.ping()
    thread.join(5)
    server.close()


# --- an engine over ssh: the forwarded socket first, dial-stdio where it cannot be had ----------

HOST_BLOCK = """Host sbm-w2
  HostName 10.9.0.2
  User ops
  Port 22
  ControlMaster auto
  ControlPath {folder}/cm-%C
  ControlPersist 60
"""
# `docker system dial-stdio` played by a process that answers one request on stdin/stdout (or
# fails like the docker CLI with no daemon); its last two words are where ssh puts the alias
# and the remote command.
DIAL = """import sys
if sys.argv[1] == "down":
    sys.stderr.write("Cannot connect to the Docker daemon at unix:///var/run/docker.sock\\n")
    sys.exit(1)
while sys.stdin.buffer.readline() not in (b"\\r\\n", b""):
    pass
head = b"HTTP/1.1 200 OK\\r\\nContent-Length: 5\\r\\nConnection: close\\r\\n\\r\\n"
sys.stdout.buffer.write(head + b"stdio")
sys.stdout.flush()
"""


def _ssh_world(tmp_path, monkeypatch, dial: str = "up"):
    """A config with host w2 (its control folder private), the engine address an Engine gets
    for it, and dial-stdio played by DIAL; returns (address, forward, dials made)."""
    import sys

    from controller import ssh

    folder = tmp_path / "ssh"
    folder.mkdir(mode=0o700)
    config = folder / "config"
    config.write_text(HOST_BLOCK.format(folder=folder))
    address = EngineAddress("ssh", host="sbm-w2", ssh_config=str(config))
    dials: list[int] = []

    def dial_argv(self) -> list[str]:
        dials.append(1)
        return [sys.executable, "-c", DIAL, dial, "sbm-w2", "docker system dial-stdio"]

    monkeypatch.setattr(EngineAddress, "dial_argv", dial_argv)
    forward = ssh.Forward.of(config, "sbm-w2")
    assert forward is not None
    return address, forward, dials


def _serve_forward(path, close_at_once: bool = False):
    """What the master's listener does with the forwarded socket: each connection reaches the
    engine (answers every request, keep-alive), or with ``close_at_once`` is closed without a
    word (sshd refused to open the channel)."""
    server = socket.socket(socket.AF_UNIX)
    server.bind(str(path))
    server.listen()
    accepted = []

    def one(conn: socket.socket) -> None:
        with conn:
            reader = conn.makefile("rb")
            while True:
                request = b""
                while not request.endswith(b"\r\n\r\n"):
                    line = reader.readline()
                    if not line:
                        return
                    request += line
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\nforwarded")

    def serve() -> None:
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            accepted.append(1)
            if close_at_once:
                conn.close()
                continue
            threading.Thread(target=one, args=(conn,), daemon=True).start()

    threading.Thread(target=serve, daemon=True).start()
    return server, accepted


def test_an_ssh_engine_goes_through_the_forwarded_socket_when_it_is_there(tmp_path, monkeypatch):
    address, forward, dials = _ssh_world(tmp_path, monkeypatch)
    server, accepted = _serve_forward(forward.local)
    try:
        with Engine(address, timeout=5) as engine:
            assert engine.sessions_limited  # nothing known before a connection
            assert engine._request("GET", "/_ping").body == b"forwarded"
            assert engine._request("GET", "/_ping").body == b"forwarded"  # the same connection
            assert not engine.sessions_limited  # channels, not sessions: no MaxSessions cap
    finally:
        server.close()
    assert accepted == [1] and dials == []


def test_the_forward_is_made_when_missing_or_stale(tmp_path, monkeypatch):
    from controller import ssh

    address, forward, dials = _ssh_world(tmp_path, monkeypatch)
    forward.local.write_text("")  # a stale socket file (its master ended): connect fails
    made = []

    def open_forward(self, timeout: float) -> str:
        made.append(self.local)
        self.local.unlink()
        made.append(_serve_forward(self.local)[0])
        return ""

    monkeypatch.setattr(ssh.Forward, "open", open_forward)
    try:
        with Engine(address, timeout=5) as engine:
            assert engine._request("GET", "/_ping").body == b"forwarded"
    finally:
        for server in made[1:]:
            server.close()
    assert made[0] == forward.local and dials == []


def test_dial_stdio_when_the_forward_cannot_be_made(tmp_path, monkeypatch):
    from controller import ssh

    address, _forward, dials = _ssh_world(tmp_path, monkeypatch)
    opened = []
    monkeypatch.setattr(
        ssh.Forward, "open", lambda self, timeout: opened.append(1) or "sshd says no"
    )
    with Engine(address, timeout=5) as engine:
        assert engine._request("GET", "/_ping").body == b"stdio"
        assert engine._request("GET", "/_ping").body == b"stdio"
        assert engine.sessions_limited
    assert opened == [1] and dials == [1, 1]  # given up for the rest of this client's life


def _remade(monkeypatch, close_at_once: bool, servers: list):
    """Forward.open played by a listener made again at the forward's socket (closing every
    connection at once, or answering)."""
    from controller import ssh

    def open_forward(self, timeout: float) -> str:
        if why := self.refused():
            return why
        self.local.unlink(missing_ok=True)
        servers.append(_serve_forward(self.local, close_at_once=close_at_once))
        self.remote.write_text(f"{self.local}:/var/run/docker.sock")
        return ""

    monkeypatch.setattr(ssh.Forward, "open", open_forward)


def test_a_forward_that_sshd_will_not_serve_is_given_up_for_dial_stdio(tmp_path, monkeypatch):
    """The listener here accepts, but the channel is refused there (AllowStreamLocalForwarding
    no) and the connection is closed at once: dial-stdio answers, the forward made again
    breaks the same way, so the forward is given up (marked, cancelled) and the next client
    goes straight to dial-stdio."""
    from controller import ssh

    address, forward, dials = _ssh_world(tmp_path, monkeypatch)
    server, accepted = _serve_forward(forward.local, close_at_once=True)
    cancelled = []
    monkeypatch.setattr(ssh.Forward, "_run", lambda self, words, *_: cancelled.append(words))
    forward.remote.write_text(f"{forward.local}:/var/run/docker.sock")
    servers: list = []
    _remade(monkeypatch, True, servers)
    try:
        with Engine(address, timeout=5) as engine:
            assert engine._request("GET", "/_ping").body == b"stdio"
            assert engine.sessions_limited
    finally:
        server.close()
        for other, _ in servers:
            other.close()
    assert accepted == [1] and [a for _, a in servers] == [[1]] and dials == [1]
    assert "dial-stdio does" in forward.refused()
    cancel = ["-O", "cancel", "-L", f"{forward.local}:/var/run/docker.sock", "sbm-w2"]
    assert cancelled == [cancel, cancel]  # before it was made again, and when given up
    assert not forward.local.exists() and not forward.remote.exists()
    stamp, why = forward.marker.read_text().split(" ", 1)  # the time is in the file
    assert abs(float(stamp) - time.time()) < 60 and "dial-stdio does" in why
    assert ssh.FORWARD_RETRY <= 120
    with Engine(address, timeout=5) as engine:
        assert engine._request("GET", "/_ping").body == b"stdio"
    assert dials == [1, 1]


def test_an_engine_down_behind_the_forward_is_its_own_reason_and_keeps_the_forward(
    tmp_path, monkeypatch
):
    address, forward, dials = _ssh_world(tmp_path, monkeypatch, dial="down")
    server, _accepted = _serve_forward(forward.local, close_at_once=True)
    try:
        with (
            Engine(address, timeout=5) as engine,
            pytest.raises(DockerUnavailable, match="Cannot connect to the Docker daemon"),
        ):
            engine.ping()
    finally:
        server.close()
    assert dials == [1] and forward.refused() == ""


def test_a_passing_failure_of_the_forward_does_not_give_it_up(tmp_path, monkeypatch):
    """The first forwarded connection breaks, dial-stdio answers, the forward made again
    answers: nothing is marked, and the client keeps the forward."""
    from controller import ssh

    address, forward, dials = _ssh_world(tmp_path, monkeypatch)
    server, _accepted = _serve_forward(forward.local, close_at_once=True)
    monkeypatch.setattr(ssh.Forward, "_run", lambda self, words, *_: None)
    servers: list = []
    _remade(monkeypatch, False, servers)
    try:
        with Engine(address, timeout=5) as engine:
            assert engine._request("GET", "/_ping").body == b"stdio"
            assert engine._request("GET", "/_ping").body == b"forwarded"
    finally:
        server.close()
        for other, _ in servers:
            other.close()
    assert dials == [1] and forward.refused() == "" and not forward.marker.exists()


@pytest.mark.parametrize("how", ["unreachable", "timeout"])
def test_a_forward_not_told_apart_from_a_host_that_does_not_answer_is_not_marked(
    tmp_path, monkeypatch, how
):
    """Making the forward again fails as a host that does not answer (an SshError of kind
    unreachable), or its connection times out: this client takes dial-stdio, nothing marked."""
    from controller import ssh

    address, forward, dials = _ssh_world(tmp_path, monkeypatch)
    server, _accepted = _serve_forward(forward.local, close_at_once=True)
    monkeypatch.setattr(ssh.Forward, "_run", lambda self, words, *_: None)
    silent: list = []
    if how == "unreachable":

        def open_forward(self, timeout: float) -> str:
            raise ssh.SshError("host w2 is unreachable over ssh: timed out", "unreachable")

    else:

        def open_forward(self, timeout: float) -> str:
            self.local.unlink(missing_ok=True)
            quiet = socket.socket(socket.AF_UNIX)  # accepts (the backlog), never answers
            quiet.bind(str(self.local))
            quiet.listen()
            silent.append(quiet)
            return ""

    monkeypatch.setattr(ssh.Forward, "open", open_forward)
    try:
        with Engine(address, timeout=0.5) as engine:
            assert engine._request("GET", "/_ping").body == b"stdio"
            assert engine._request("GET", "/_ping").body == b"stdio"
    finally:
        server.close()
        for quiet in silent:
            quiet.close()
    assert dials == [1, 1] and not forward.marker.exists()


def test_a_forward_given_up_elsewhere_is_not_connected_to(tmp_path, monkeypatch):
    address, forward, dials = _ssh_world(tmp_path, monkeypatch)
    server, accepted = _serve_forward(forward.local)
    forward.marker.write_text(f"{time.time():.0f} given up by another process\n")
    try:
        with Engine(address, timeout=5) as engine:
            assert engine._request("GET", "/_ping").body == b"stdio"
    finally:
        server.close()
    assert accepted == [] and dials == [1]


def test_giving_the_forward_up_waits_for_the_lock_it_is_made_under(tmp_path, monkeypatch):
    import fcntl

    from controller import ssh

    _address, forward, _dials = _ssh_world(tmp_path, monkeypatch)
    monkeypatch.setattr(ssh.Forward, "_run", lambda self, words, *_: None)
    fd = os.open(forward.lock, os.O_RDWR | os.O_CREAT, 0o600)
    fcntl.flock(fd, fcntl.LOCK_EX)  # another process making the forward
    done = threading.Thread(target=forward.refuse, args=("no",))
    try:
        done.start()
        time.sleep(0.3)
        assert not forward.marker.exists()
    finally:
        os.close(fd)
    done.join(5)
    assert forward.refused() == "no"


def test_errors_of_the_forwards_files_fall_back_to_dial_stdio(tmp_path, monkeypatch):
    """The marker cannot be written (refuse), the lock file cannot be opened (open): the
    request is answered through dial-stdio, whose connection is closed."""
    from controller import engine as engine_module
    from controller import ssh

    address, forward, dials = _ssh_world(tmp_path, monkeypatch)
    server, _accepted = _serve_forward(forward.local, close_at_once=True)
    monkeypatch.setattr(ssh.Forward, "_run", lambda self, words, *_: None)
    servers: list = []
    _remade(monkeypatch, True, servers)
    closed = []
    real_close = engine_module._SshConnection.close

    def close(self) -> None:
        closed.append(1)
        real_close(self)

    monkeypatch.setattr(engine_module._SshConnection, "close", close)

    def refuse(self, why: str) -> str:
        raise PermissionError(13, "Permission denied", str(self.marker))

    monkeypatch.setattr(ssh.Forward, "refuse", refuse)
    try:
        with Engine(address, timeout=5) as engine:
            assert engine._request("GET", "/_ping").body == b"stdio"
    finally:
        server.close()
        for other, _ in servers:
            other.close()
    assert dials == [1] and closed == [1]
    # The lock file cannot be opened: open() answers why, dial-stdio is taken.
    monkeypatch.undo()
    (tmp_path / "b").mkdir()
    address, forward, dials = _ssh_world(tmp_path / "b", monkeypatch)
    forward.lock.mkdir()
    assert "forward's files" in forward.open(5)
    with Engine(address, timeout=5) as engine:
        assert engine._request("GET", "/_ping").body == b"stdio"
    assert dials == [1]


# The ssh client: records its calls and stdin; `-O forward` makes the local socket's file (not
# when ssh.stale is there: the master had the forward already, its socket gone).
FAKE_SSH = """#!/bin/sh
printf '%s\\n' "$*" >> "$0.calls"
cat > "$0.stdin.$$"
for word; do [ "$prev" = -L ] && spec=$word; prev=$word; done
case "$*" in
  *" -O forward "*) [ -f "$0.refuse" ] && { echo "forwarding request failed" >&2; exit 255; }
                   if [ -f "$0.stale" ]; then rm "$0.stale"; else : > "${spec%%:*}"; fi
                   exit 0 ;;
  *" -O cancel "*) exit 0 ;;
  *" -G "*) echo "controlpath $(cat "$0.controlpath")" ;;
  *" sh -s") [ -f "$0.down" ] && {
               echo "ssh: connect to host 10.9.0.2 port 22: Connection refused" >&2; exit 255; }
             echo "sbm-docker-host $(cat "$0.host")" ;;
esac
"""


def _fake_ssh(tmp_path, monkeypatch, docker_host: str = "unix:///var/run/docker.sock"):
    from controller import ssh

    binary = tmp_path / "bin" / "ssh"
    binary.parent.mkdir()
    binary.write_text(FAKE_SSH)
    binary.chmod(0o755)
    (tmp_path / "bin" / "ssh.host").write_text(docker_host)
    monkeypatch.setattr(ssh, "ssh_binary", lambda: str(binary))

    def calls() -> list[str]:
        path = tmp_path / "bin" / "ssh.calls"
        return path.read_text().splitlines() if path.exists() else []

    return binary, calls


def test_making_the_forward_asks_where_the_engine_listens_and_forwards_that(tmp_path, monkeypatch):
    _address, forward, _dials = _ssh_world(tmp_path, monkeypatch)
    binary, calls = _fake_ssh(tmp_path, monkeypatch, "unix:///run/user/1000/docker.sock")
    assert forward.open(5) == ""
    config = forward.config
    ask, add = calls()
    # The script is on stdin (nothing on the remote argv); the forward is ours alone to allow.
    assert ask == f"-F {config} -o ClearAllForwardings=no -T sbm-w2 -- sh -s"
    assert add == (
        f"-F {config} -o ClearAllForwardings=no -O forward "
        f"-L {forward.local}:/run/user/1000/docker.sock sbm-w2"
    )
    script = next(p for p in binary.parent.glob("ssh.stdin.*") if p.read_text()).read_text()
    assert "DOCKER_HOST" in script and "docker context inspect" in script
    assert forward.local.parent.stat().st_mode & 0o077 == 0
    assert forward.remote.read_text() == f"{forward.local}:/run/user/1000/docker.sock"


def test_a_forward_the_master_still_had_without_its_socket_is_made_again(tmp_path, monkeypatch):
    _address, forward, _dials = _ssh_world(tmp_path, monkeypatch)
    binary, calls = _fake_ssh(tmp_path, monkeypatch)
    binary.with_name("ssh.stale").write_text("")
    assert forward.open(5) == "" and forward.local.exists()
    spec = f"{forward.local}:/var/run/docker.sock"
    assert [call.split(" -o ClearAllForwardings=no ")[1] for call in calls()[1:]] == [
        f"-O forward -L {spec} sbm-w2",
        f"-O cancel -L {spec} sbm-w2",
        f"-O forward -L {spec} sbm-w2",
    ]


@pytest.mark.parametrize(
    ("setup", "words"),
    [
        ("tcp", "not on a unix socket (tcp://10.0.0.1:2375)"),
        ("refuse", "ssh -O forward failed"),
    ],
)
def test_a_forward_that_cannot_be_made_is_not_tried_again_for_a_while(
    tmp_path, monkeypatch, setup, words
):
    from controller import ssh

    _address, forward, _dials = _ssh_world(tmp_path, monkeypatch)
    docker_host = "tcp://10.0.0.1:2375" if setup == "tcp" else "unix:///var/run/docker.sock"
    binary, calls = _fake_ssh(tmp_path, monkeypatch, docker_host)
    if setup == "refuse":
        binary.with_name("ssh.refuse").write_text("")
    assert words in forward.open(5)
    made = len(calls())
    if setup == "refuse":
        # An exit-255 failure of `ssh -O forward` (as a master that does not answer): not
        # marked, tried again by the next client.
        assert not forward.marker.exists()
        assert words in forward.open(5) and len(calls()) > made
        return
    assert words in forward.open(5) and len(calls()) == made  # the marker answers, no ssh
    os.utime(forward.marker, (0, 0))  # its time is in the file, not the mtime
    assert words in forward.open(5) and len(calls()) == made
    stamp, why = forward.marker.read_text().split(" ", 1)
    forward.marker.write_text(f"{float(stamp) - ssh.FORWARD_RETRY - 1:.3f} {why}")
    assert words in forward.open(5) and len(calls()) > made  # tried again after a while


def test_making_the_forward_of_a_host_that_does_not_answer_raises_and_marks_nothing(
    tmp_path, monkeypatch
):
    from controller import ssh

    address, forward, dials = _ssh_world(tmp_path, monkeypatch)
    binary, _calls = _fake_ssh(tmp_path, monkeypatch)
    binary.with_name("ssh.down").write_text("")
    with pytest.raises(ssh.SshError, match=r"host w2 is unreachable over ssh.*refused"):
        forward.open(5)
    assert forward.refused() == ""
    with Engine(address, timeout=5) as engine, pytest.raises(DockerUnavailable, match="refused"):
        engine.ping()
    assert dials == []  # the host is down: no dial-stdio tried behind it


def test_no_forward_into_a_folder_others_can_enter(tmp_path, monkeypatch):
    _address, forward, _dials = _ssh_world(tmp_path, monkeypatch)
    _binary, calls = _fake_ssh(tmp_path, monkeypatch)
    forward.local.parent.chmod(0o755)
    assert "not a private folder" in forward.open(5)
    assert calls() == []


def test_the_forward_follows_the_hosts_block_of_the_config(tmp_path):
    from controller import ssh
    from controller.state import HostRecord

    files = ssh.SshFiles(tmp_path / "ssh")
    files.folder.mkdir(mode=0o700)
    hosts = [HostRecord("w2", "ops", "10.9.0.2"), HostRecord("w3", "ops", "10.9.0.3")]
    files.config.write_text(ssh.config_text(files, hosts))
    w2, w3 = ssh.Forward.of(files.config, "sbm-w2"), ssh.Forward.of(files.config, "sbm-w3")
    assert w2 is not None and w3 is not None and w2.local != w3.local
    assert w2.local.parent == files.control_dir() and len(str(w2.local)) < 100
    # Another address for w2: another forward (a master to the old address is not reused).
    files.config.write_text(ssh.config_text(files, [HostRecord("w2", "ops", "10.9.0.9")]))
    moved = ssh.Forward.of(files.config, "sbm-w2")
    assert moved is not None and moved.local != w2.local
    # No master (the probe of `host add`), no config, no such host: no forward.
    files.config.write_text(ssh.config_text(files, hosts, multiplex=False))
    assert ssh.Forward.of(files.config, "sbm-w2") is None
    assert ssh.Forward.of(tmp_path / "missing", "sbm-w2") is None


def test_a_remote_hosts_figures_come_from_its_cgroup_files_read_over_ssh(monkeypatch):
    """One script over ssh for every container (controller/cgroups.py); the engine's stats
    only for a container the script did not find there."""
    from controller import cgroups
    from controller.metrics.probes import _resources

    address = EngineAddress("ssh", host="sbm-w2", ssh_config="/nonexistent/config")
    stats_asked: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        stats_asked.append(request.url.path.split("/")[2])
        return httpx.Response(
            200,
            json={
                "cpu_stats": {
                    "cpu_usage": {"total_usage": 10**9},
                    "system_cpu_usage": 10**12,
                    "online_cpus": 2,
                },
                "memory_stats": {"usage": 5000, "stats": {"inactive_file": 1000}},
            },
        )

    asked: list[tuple] = []

    def sample_remote(where, ids, interval=cgroups.INTERVAL, timeout=5.0):
        asked.append(("sample", where, tuple(ids)))
        return {"c1": cgroups.Reading(12.5, 300)}

    def counters_remote(where, ids, timeout=5.0):
        asked.append(("counters", where, tuple(ids)))
        return {"c1": (4.5, 300)}

    monkeypatch.setattr(cgroups, "sample_remote", sample_remote)
    monkeypatch.setattr(cgroups, "counters_remote", counters_remote)
    api = DockerAPI(engine=Engine(address, transport=httpx.MockTransport(handler)))
    usage = api.usage(["c1", "c2"])
    assert usage["c1"].cpu_percent == 12.5 and usage["c1"].memory_bytes == 300
    assert usage["c2"].memory_bytes == 4000  # not found there: the engine's stats
    assert asked == [("sample", address, ("c1", "c2"))] and set(stats_asked) == {"c2"}
    stats_asked.clear()
    assert _resources(api, ["c1", "c2"]) == {"c1": (4.5, 300), "c2": (1.0, 4000)}
    assert asked[-1] == ("counters", address, ("c1", "c2")) and stats_asked == ["c2"]


def test_ending_a_hosts_master_removes_its_forwards_socket(tmp_path, monkeypatch):
    from controller import ssh

    _address, forward, _dials = _ssh_world(tmp_path, monkeypatch)
    _binary, calls = _fake_ssh(tmp_path, monkeypatch)
    assert forward.open(5) == "" and forward.local.exists() and forward.remote.exists()
    files = ssh.SshFiles(forward.config.parent)
    ssh.close_master(files, "w2", config=forward.config)
    assert calls()[-1] == f"-F {forward.config} -O exit sbm-w2"
    assert not forward.local.exists() and not forward.remote.exists()


def test_ending_a_master_that_does_not_answer_still_removes_the_forwards_files(
    tmp_path, monkeypatch
):
    from controller import ssh

    _address, forward, _dials = _ssh_world(tmp_path, monkeypatch)
    forward.local.write_text("")
    forward.remote.write_text("x")

    def hung(argv, **kwargs):
        raise subprocess.TimeoutExpired(argv, kwargs.get("timeout", 10))

    monkeypatch.setattr(ssh.subprocess, "run", hung)
    ssh.close_master(ssh.SshFiles(forward.config.parent), "w2", config=forward.config)
    assert not forward.local.exists() and not forward.remote.exists()


def test_a_removed_hosts_master_and_forward_files_are_ended_after_the_config_is_rewritten(
    tmp_path, monkeypatch
):
    """`host remove`: the old block's master is ended by its socket (ssh -G read it before the
    rewrite), its forward's files all removed: the host added again inherits no marker."""
    from controller import ssh
    from controller.state import HostRecord

    binary, calls = _fake_ssh(tmp_path, monkeypatch)
    files = ssh.SshFiles(tmp_path / "ssh")
    files.folder.mkdir(mode=0o700)
    record = HostRecord("w2", "ops", "10.9.0.2")
    files.config.write_text(ssh.config_text(files, [record]))
    forward = ssh.Forward.of(files.config, "sbm-w2")
    assert forward is not None
    for path in (forward.local, forward.lock, forward.remote):
        path.write_text("")
    forward.refuse("no")
    binary.with_name("ssh.controlpath").write_text(str(forward.local.parent / "cm-abc"))
    old = ssh.OldBlock.of(files, "w2")
    assert old.control == str(forward.local.parent / "cm-abc")
    files.config.write_text(ssh.config_text(files, []))
    old.end()
    assert calls()[-1] == f"-F {os.devnull} -S {old.control} -O exit x"
    assert list(forward.local.parent.glob(forward.local.name + "*")) == []
    files.config.write_text(ssh.config_text(files, [record]))
    again = ssh.Forward.of(files.config, "sbm-w2")
    assert again == forward and again.refused() == ""
