"""The Engine API client (controller/engine.py) and DockerAPI on top of it, without an engine.

httpx.MockTransport stands in for the engine: these tests pin what the client sends (paths,
filters, methods) and how it reads answers and errors. The socket transport's HTTP/1.1 reading is
tested against a real socket pair with canned answers; tests/test_engine_docker.py runs both
transports against the real engine.
"""

from __future__ import annotations

import json
import socket
import threading

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
