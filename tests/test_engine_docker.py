"""The Engine API client against the real Docker engine: the default socket transport and httpx's
transport on the same socket must see the same engine the same way."""

from __future__ import annotations

import socket
import uuid

import pytest

from controller.engine import Engine, EngineAddress, NotFound
from controller.errors import DockerUnavailable
from tests.world.dockerworld import BUSYBOX_IMAGE

pytestmark = pytest.mark.docker

TEST_LABEL = "io.supabase-manager.test"
ADDRESS = EngineAddress.from_env()


@pytest.fixture(params=["socket", "httpx"])
def engine(request):
    transport = None if request.param == "socket" else ADDRESS.httpx_transport()
    with Engine(ADDRESS, transport=transport) as client:
        yield client


@pytest.fixture
def labelled(docker_client, docker_sandbox):
    """Eight labelled busybox containers (one running): a listing large enough that the engine
    sends it chunked."""
    tag = f"engine-{uuid.uuid4().hex[:8]}"
    labels = {TEST_LABEL: tag, "io.example.padding": "x" * 400}
    ids = [
        docker_client.containers.create(BUSYBOX_IMAGE, ["sleep", "600"], labels=labels).id
        for _ in range(7)
    ]
    running = docker_client.containers.run(
        BUSYBOX_IMAGE, ["sleep", "600"], labels=labels, detach=True
    )
    return tag, [*ids, running.id], running.id


def _raw_headers(path: str) -> bytes:
    with socket.socket(socket.AF_UNIX) as sock:
        sock.connect(ADDRESS.path)
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
        data = b""
        while b"\r\n\r\n" not in data:
            data += sock.recv(4096)
    return data.split(b"\r\n\r\n", 1)[0].lower()


def test_lists_what_the_engine_holds(engine, labelled):
    tag, ids, running = labelled
    listing = f"/containers/json?all=1&filters=%7B%22label%22%3A%5B%22{TEST_LABEL}%3D{tag}%22%5D%7D"
    assert b"transfer-encoding: chunked" in _raw_headers(listing), "listing too small to chunk"
    found = engine.containers([f"{TEST_LABEL}={tag}"])
    assert sorted(c.id for c in found) == sorted(ids)
    assert {c.state for c in found} == {"created", "running"}
    assert all(c.labels[TEST_LABEL] == tag for c in found)
    assert [c.id for c in engine.containers([f"{TEST_LABEL}={tag}"], all=False)] == [running]
    assert engine.containers([f"{TEST_LABEL}=nothing-{tag}"]) == []


def test_inspect_stats_and_remove(engine, labelled):
    tag, ids, running = labelled
    details = engine.inspect(running)
    assert details.pid and details.pid > 1 and details.restart_count == 0
    assert engine.container_pid(ids[0]) is None  # created, never started
    sample = engine.stats(running)
    assert sample.memory_usage > 0 and sample.cpu_total_ns > 0 and sample.online_cpus >= 1
    assert engine.remove_container(running) is True
    assert engine.remove_container(running) is False  # gone already: no error
    with pytest.raises(NotFound):
        engine.inspect(running)
    assert running not in [c.id for c in engine.containers([f"{TEST_LABEL}={tag}"])]


def test_networks_and_volumes_by_label(engine, docker_client, docker_sandbox):
    tag = f"engine-{uuid.uuid4().hex[:8]}"
    network = docker_client.networks.create(f"sbm-{tag}", labels={TEST_LABEL: tag})
    docker_client.volumes.create(f"sbm-{tag}", labels={TEST_LABEL: tag})
    (found_net,) = engine.networks([f"{TEST_LABEL}={tag}"])
    assert (found_net.id, found_net.name) == (network.id, f"sbm-{tag}")
    (found_vol,) = engine.volumes([f"{TEST_LABEL}={tag}"])
    assert found_vol.name == f"sbm-{tag}" and found_vol.labels[TEST_LABEL] == tag
    assert engine.remove_network(found_net.id) and engine.remove_volume(found_vol.name)
    assert engine.networks([f"{TEST_LABEL}={tag}"]) == []
    assert engine.volumes([f"{TEST_LABEL}={tag}"]) == []
    engine.remove_volume(found_vol.name)  # gone already: no error (forced removal)


@pytest.mark.parametrize("kind", ["socket", "httpx"])
def test_no_engine_at_the_address(tmp_path, kind):
    address = EngineAddress.parse(f"unix://{tmp_path}/docker.sock")
    transport = None if kind == "socket" else address.httpx_transport()
    with (
        Engine(address, transport=transport, timeout=2) as engine,
        pytest.raises(DockerUnavailable) as err,
    ):
        engine.ping()
    assert str(err.value) == (
        f"cannot reach the Docker daemon at unix://{tmp_path}/docker.sock: is dockerd running?"
    )
