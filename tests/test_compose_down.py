"""`Compose.down` and Docker Engine 20.10's stale endpoints: a network that holds no container
but still lists the endpoint of a removed one cannot be removed ("has active endpoints").

The engine's fault cannot be brought about on demand (it comes from a race in the engine), so
these tests stand in for python-on-whales' DockerClient with a recorder that fails `down` the
way that engine does; the real `docker network disconnect --force` by container name is what
drops such an endpoint.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from python_on_whales.exceptions import DockerException

from controller.compose import Compose
from controller.errors import OperationError

STALE = (
    "failed to remove network demo_default: Error response from daemon: error while removing "
    "network: network demo_default id 0f1e2d3c4b5a has active endpoints"
)


class FakeWhales:
    """compose.down fails ``failures`` times with ``stderr``, then works; records the rest."""

    def __init__(self, failures: int, stderr: str = STALE) -> None:
        self.failures = failures
        self.stderr = stderr
        self.calls: list[tuple] = []
        self.compose = SimpleNamespace(down=self._down, config=self._config)
        self.network = SimpleNamespace(disconnect=self._disconnect)

    def _down(self, **kwargs) -> None:
        self.calls.append(("down", kwargs["volumes"]))
        if self.failures:
            self.failures -= 1
            raise DockerException(["docker", "compose", "down"], 1, stderr=self.stderr.encode())

    def _config(self, return_json: bool) -> dict:
        return {"services": {"db": {"container_name": "demo-db"}, "rest": {}}}

    def _disconnect(self, network: str, container: str, force: bool) -> None:
        self.calls.append(("disconnect", network, container, force))
        if container == "demo-rest-1":
            raise DockerException(["docker", "network", "disconnect"], 1, stderr=b"not found")


def compose_with(fake: FakeWhales, tmp_path) -> Compose:
    compose = Compose("demo", tmp_path, [tmp_path / "docker-compose.yml"])
    compose._docker = fake
    return compose


@pytest.fixture(autouse=True)
def _cli_present(monkeypatch):
    monkeypatch.setattr("controller.compose.check_cli", lambda: None)


def test_stale_endpoints_are_dropped_by_container_name_and_down_runs_again(tmp_path):
    fake = FakeWhales(failures=1)
    compose_with(fake, tmp_path).down(volumes=True)
    assert fake.calls == [
        ("down", True),
        ("disconnect", "demo_default", "demo-db", True),
        ("disconnect", "demo_default", "demo-rest-1", True),
        ("down", True),
    ]


def test_a_network_that_stays_busy_fails_in_one_line(tmp_path):
    fake = FakeWhales(failures=2)
    with pytest.raises(OperationError) as caught:
        compose_with(fake, tmp_path).down()
    assert str(caught.value) == f"compose down of demo failed: {STALE}"
    assert [call[0] for call in fake.calls].count("down") == 2


def test_other_failures_are_not_retried(tmp_path):
    fake = FakeWhales(failures=1, stderr="Cannot connect to the Docker daemon")
    with pytest.raises(OperationError, match="Cannot connect to the Docker daemon"):
        compose_with(fake, tmp_path).down()
    assert fake.calls == [("down", False)]
