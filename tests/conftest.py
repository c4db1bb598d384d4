"""Shared fixtures: the real test world (Docker engine, Caddy, throw-away data roots).

Nothing here skips: when Docker or Caddy is missing the tests that need them FAIL with a message
naming scripts/provision, which sets the machine up (scripts/test runs it).

- docker_client (session): docker SDK client on the real engine (stand-in images checked too).
- docker_sandbox: snapshots containers/networks/volumes and force-removes every new one at
  teardown, also when the test failed. Use it in every test that creates Docker objects.
- data_root: an empty folder to pass as --root (the path is not exported anywhere).
- caddy: a running Caddy 2.11.7 (tests.world.caddy.CaddyProcess) whose Caddyfile imports
  data_root/caddy/*.conf; stopped at teardown.
- worker (session), worker_sandbox: a second Docker host over SSH in a network namespace
  (tests/world/worker.py); worker_sandbox removes what a test made on it.
- shared_world (session): one instance with real rows and files on the worker, for the modules
  that leave it as they found it (tests/world/remote.py).
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import docker
import pytest

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from tests.world.caddy import CaddyProcess  # noqa: E402
from tests.world.dockerworld import DockerSandbox, DockerUnavailableError, connect  # noqa: E402
from tests.world.remote import shared_world  # noqa: E402, F401
from tests.world.worker import worker, worker_sandbox  # noqa: E402, F401


@pytest.fixture(autouse=True)
def _no_claims_left(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Every instance created holds a claim volume on the real engine (controller/ownership.py),
    which would refuse the same name to the next test's ROOT: this session's are removed after
    each test (by the ROOT folder they name, so another pytest run's stay)."""
    yield
    from controller.engine import Engine, EngineAddress
    from controller.errors import OperationError
    from controller.ownership import CLAIM_LABEL, ROOT_PATH_LABEL

    under = f"{tmp_path_factory.getbasetemp()}/"
    try:
        with Engine(EngineAddress.from_env()) as engine:
            for volume in engine.volumes([CLAIM_LABEL]):
                if volume.labels.get(ROOT_PATH_LABEL, "").partition(":")[2].startswith(under):
                    engine.remove_volume(volume.name)
    except OperationError:
        pass  # no engine: no claim either


@pytest.fixture(scope="session")
def docker_client() -> Iterator[docker.DockerClient]:
    """Docker SDK client on the real engine; fails (never skips) when it is unavailable."""
    try:
        client = connect()
    except DockerUnavailableError as exc:
        pytest.fail(str(exc), pytrace=False)
    yield client
    client.close()


@pytest.fixture
def docker_sandbox(docker_client: docker.DockerClient) -> Iterator[DockerSandbox]:
    """Everything Docker-side that the test creates is force-removed afterwards."""
    with DockerSandbox(docker_client).session() as sandbox:
        yield sandbox


@pytest.fixture
def data_root(tmp_path: Path) -> Path:
    """An empty data folder for --root."""
    root = tmp_path / "root"
    root.mkdir()
    return root


@pytest.fixture
def caddy(data_root: Path, tmp_path: Path) -> Iterator[CaddyProcess]:
    """A real Caddy on loopback: admin_url, http_port, caddyfile, snippet_dir, start/stop/
    restart/reload, url(path), get(host, path), request(method, host, path), admin(method, path),
    config(), routes()."""
    process = CaddyProcess(data_root, tmp_path / "caddy-run")
    try:
        process.start()
    except FileNotFoundError as exc:
        pytest.fail(f"{exc}: run scripts/test (or scripts/provision)", pytrace=False)
    try:
        yield process
    finally:
        process.stop()
