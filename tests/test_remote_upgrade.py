"""`upgrade` of an instance that runs on another Docker host (issue 15), through the real CLI,
real restic (the backup taken first), the real second engine behind sshd (tests/world/worker.py)
and a real Caddy. One instance on the worker serves the whole module.

The templates are those of tests/test_upgrade.py: v0.8.2 ("base"), a copy with bumped image tags,
one new variable and one new service ("bumped"), and a copy whose new service exits at once
("broken", which forces the health failure). Supabase's images cannot run here: the instance
layers the stand-in overlay of the old template (tests/world/standin.py); the new service runs a
local image that the worker's engine holds too.

What a user would check: the new template runs on the worker's engine and nothing of it on this
machine's; the rows written before are there; the gateway answers through Caddy; the worker's
copy of the folder holds the new files. A failed upgrade (rolled back by itself) and a killed
upgrade (put back by `start`) each leave the old template running on the worker with the rows
intact. Both restore the backup on the worker through the same rollback that `upgrade --rollback`
runs on request; tests/test_upgrade.py proves that command (locally), so it is not repeated here.
Each test starts from "base" and leaves it (the upgrade runs last), so each also runs alone.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from tests.test_upgrade import bumped_template
from tests.world.remote import HOST, RemoteRoot, psql, remote_world

pytestmark = pytest.mark.docker

NAME = "rupg"
# "bumped" publishes the new service's port: the upgrade hands it a host port the WORKER has free.
GREETER = "  greeter:\n    container_name: supabase-greeter\n"
PUBLISHED = "    ports:\n      - 7070:7070\n"
PORT_RANGE = (31700, 31799)
ROWS = "select count(*) || ':' || md5(string_agg(body, ',' order by id)) from public.notes"


class World(RemoteRoot):
    expected = ""

    @property
    def folder(self) -> Path:
        return self.root / "instances" / NAME

    def theirs(self, file: str) -> str:
        """A file of the instance's folder as the worker sees it (its own copy)."""
        return self.worker.run(["cat", str(self.folder / file)]).stdout

    def record(self) -> dict:
        return json.loads((self.root / "state.json").read_text())["instances"][NAME]

    def diagnose(self) -> str:
        """What the worker's engine says of the instance (for a failure's message)."""
        docker = ["docker", "-H", self.worker.engine_url]
        listing = subprocess.run(
            [*docker, "ps", "-a", "--filter", f"label=com.docker.compose.project={NAME}"],
            capture_output=True,
            text=True,
        )
        health = subprocess.run(
            [*docker, "inspect", "-f", "{{json .State}}", f"{NAME}-db"],
            capture_output=True,
            text=True,
        )
        logs = subprocess.run(
            [*docker, "logs", "--tail", "30", f"{NAME}-db"], capture_output=True, text=True
        )
        return "\n".join([listing.stdout, health.stdout, logs.stdout, logs.stderr])

    def psql(self, sql: str) -> str:
        """psql as the superuser in the db container on the worker's engine."""
        return psql(NAME, sql, self.worker.engine_url, timeout=60)


@pytest.fixture(scope="module")
def world(tmp_path_factory, docker_client, worker):
    base = tmp_path_factory.mktemp("rupg")
    with remote_world(
        base,
        docker_client,
        worker,
        world=World,
        env={"SUPABASE_MANAGER_PORT_RANGE": f"{PORT_RANGE[0]}-{PORT_RANGE[1]}"},
        template="base",
        instance=NAME,
    ) as w:
        bumped = bumped_template(base / "bumped")
        compose = bumped / "docker-compose.yml"
        compose.write_text(compose.read_text().replace(GREETER, GREETER + PUBLISHED))
        w.run("template", "import", str(bumped), "--name", "bumped")
        broken = bumped_template(base / "broken", broken=True)
        w.run("template", "import", str(broken), "--name", "broken")
        w.psql("create table public.notes (id int primary key, body text)")
        w.psql("insert into public.notes select g, md5(g::text) from generate_series(1, 500) g")
        w.expected = w.psql(ROWS)
        yield w


def services_on(client) -> dict[str, object]:
    """The instance's containers on an engine, by compose service."""
    label = {"label": f"com.docker.compose.project={NAME}"}
    found = client.containers.list(all=True, filters=label)
    return {c.labels["com.docker.compose.service"]: c for c in found}


def assert_on_the_worker(world, docker_client, template: str) -> None:
    """``template`` runs on the worker, healthy, with the rows; nothing of it runs here."""
    record = world.record()
    assert (record["host"], record["template"], record["phase"]) == (HOST, template, "ready")
    assert world.json("show", NAME)["template"] == template
    client = world.worker.client()
    try:
        there = services_on(client)
    finally:
        client.close()
    assert there and {c.status for c in there.values()} == {"running"}, there
    assert services_on(docker_client) == {}
    assert world.psql(ROWS) == world.expected
    api = world.caddy.get(f"{NAME}.sbm.test", "/rest/v1/")
    assert api.status_code == 200 and f"of {NAME}" in api.text, api.text
    has_greeter = template == "bumped"
    assert ("greeter" in there) is has_greeter
    assert ("greeter:" in world.theirs("docker-compose.yml")) is has_greeter
    assert ("GREETER_GREETING=" in world.theirs(".env")) is has_greeter
    mode = world.worker.run(["stat", "-c", "%a", str(world.folder / ".env")]).stdout.strip()
    assert mode == "600"


def test_failed_upgrade_is_rolled_back_on_the_worker(world, docker_client):
    proc = world.run(
        "upgrade",
        NAME,
        "--template",
        "broken",
        check=False,
        env={"SUPABASE_MANAGER_WAIT_TIMEOUT": "40"},
    )
    assert proc.returncode == 1, proc.stderr
    assert "rolled back to base" in proc.stderr, proc.stderr + world.diagnose()
    assert_on_the_worker(world, docker_client, "base")


def test_a_killed_upgrade_is_put_back_by_start(world, docker_client):
    world.psql("insert into public.notes values (1001, 'written before the upgrade')")
    world.expected = world.psql(ROWS)
    killed = world.run(
        *("upgrade", NAME, "--template", "bumped"),
        check=False,
        env={"SUPABASE_MANAGER_FAULT": "upgrade.recreated"},
    )
    assert killed.returncode == -9, killed.stderr
    assert world.record()["template"] == "bumped"  # killed half-way
    world.run("start", NAME)
    assert_on_the_worker(world, docker_client, "base")
    assert not (world.root / "upgrade" / f"{NAME}.running").exists()


def test_upgrade_runs_the_new_template_on_the_worker(world, docker_client):
    from tests.world.net import port_open

    # The lowest port no instance holds is free here but published by a container on the
    # worker: the new service must get another one (the worker's engine is asked, not this
    # machine's sockets).
    held = set(world.record()["ports"].values())
    taken = next(p for p in range(PORT_RANGE[0], PORT_RANGE[1]) if p not in held)
    client = world.worker.client()
    try:
        blocker = client.containers.run(
            "sbm-standin/busybox:1",
            ["sleep", "600"],
            ports={"7070/tcp": (world.worker.bind_address, taken)},
            detach=True,
            labels={"sbm-test": "port-blocker"},
        )
        try:
            world.run("upgrade", NAME, "--template", "bumped")
        finally:
            blocker.remove(force=True)
        assert world.record()["previous_template"] == "base"
        assert_on_the_worker(world, docker_client, "bumped")
        greeter = services_on(client)["greeter"]
        assert greeter.image.tags == ["sbm-standin/busybox:1"]
        assert "GREETING=hello" in greeter.attrs["Config"]["Env"]
    finally:
        client.close()
    port = world.record()["ports"]["greeter:7070"]
    assert port != taken and PORT_RANGE[0] <= port <= PORT_RANGE[1]
    assert port_open(port, world.worker.address) and not port_open(port, "127.0.0.1")
