"""`clone SRC NEW` on the real engine, real restic and the Postgres stand-in holding real rows,
through the real CLI: NEW has SRC's rows and shares no secret, port, container or route with it.
(Supabase's service images are stand-ins: tests/world/standin.py.)
"""

from __future__ import annotations

import json
import os
import subprocess

import pytest

from controller.envpolicy import is_secret
from tests.test_rotate import World
from tests.world.caddy import CaddyProcess
from tests.world.dockerworld import DockerSandbox
from tests.world.standin import write_standin_overlay
from tests.world.templates import fixtures_dir

pytestmark = pytest.mark.docker

SRC, NEW = "orig", "twin"


def psql(name: str, sql: str) -> str:
    proc = subprocess.run(
        ["docker", "exec", f"{name}-db", "psql", "-X", "-U", "postgres", "-tAc", sql],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip()


def logs_in(name: str, role: str, password: str) -> bool:
    proc = subprocess.run(
        [
            *("docker", "exec", "-e", "PGPASSWORD", f"{name}-db", "psql", "-X"),
            *("-h", "127.0.0.1", "-U", role, "-d", "postgres", "-tAc", "select 1"),
        ],
        capture_output=True,
        text=True,
        env={**os.environ, "PGPASSWORD": password},
    )
    return proc.returncode == 0


def values(world, name: str) -> dict[str, str]:
    out = {}
    for line in (world.root / "instances" / name / ".env").read_text().splitlines():
        if "=" in line and not line.startswith("#"):
            key, _, value = line.partition("=")
            out[key] = value
    return out


@pytest.fixture(scope="module")
def world(tmp_path_factory, docker_client):
    base = tmp_path_factory.mktemp("clone")
    root = base / "root"
    root.mkdir()
    with DockerSandbox(docker_client).session():
        caddy = CaddyProcess(root, base / "caddy-run")
        caddy.start()
        try:
            w = World(root, caddy)
            w.run("template", "import", str(fixtures_dir() / "v0.8.2"), "--name", "v0.8.2")
            overlay = write_standin_overlay(
                [root / "templates" / "v0.8.2" / "docker-compose.yml"], base / "standin.yml"
            )
            w.run("create", SRC, "--template", "v0.8.2", "--extra-compose", str(overlay))
            psql(SRC, "create table public.pets (id int primary key, name text)")
            psql(
                SRC, "insert into public.pets select g, 'pet ' || g from generate_series(1, 300) g"
            )
            yield w
        finally:
            caddy.stop()


def engine_objects(docker_client, project: str) -> dict[str, set[str]]:
    """The engine's containers, networks and volumes of compose project ``project``, and the
    volumes its containers mount."""
    label = {"label": f"com.docker.compose.project={project}"}
    found = docker_client.containers.list(all=True, filters=label)
    return {
        "containers": {c.name for c in found},
        "networks": {n.name for n in docker_client.networks.list(filters=label)},
        "volumes": {v.name for v in docker_client.volumes.list(filters=label)},
        "mounted": {
            m["Name"] for c in found for m in c.attrs.get("Mounts", []) if m.get("Type") == "volume"
        },
    }


def test_clone_shares_rows_but_no_secret(world, docker_client):
    proc = world.run("--json", "clone", SRC, NEW)
    result = json.loads(proc.stdout)
    assert result["instance"] == NEW and "POSTGRES_PASSWORD" in result["rotated"]
    rows = "select count(*) || md5(string_agg(name, ',' order by id)) from public.pets"
    assert psql(NEW, rows) == psql(SRC, rows)
    src, new = values(world, SRC), values(world, NEW)
    shared = [k for k, v in src.items() if v and is_secret(k) and new.get(k) == v]
    assert shared == []
    for text in (proc.stdout, proc.stderr):
        assert src["POSTGRES_PASSWORD"] not in text and new["POSTGRES_PASSWORD"] not in text
    # The database roles follow: each instance takes only its own password.
    assert logs_in(NEW, "authenticator", new["POSTGRES_PASSWORD"])
    assert not logs_in(NEW, "authenticator", src["POSTGRES_PASSWORD"])
    assert logs_in(SRC, "authenticator", src["POSTGRES_PASSWORD"])
    state = json.loads((world.root / "state.json").read_text())["instances"]
    assert set(state[NEW]["ports"].values()).isdisjoint(state[SRC]["ports"].values())
    # No container, network or volume in common, and NEW mounts none of SRC's volumes.
    mine, theirs = engine_objects(docker_client, NEW), engine_objects(docker_client, SRC)
    assert mine["containers"] and mine["networks"] and mine["volumes"]
    for kind in ("containers", "networks", "volumes"):
        assert mine[kind].isdisjoint(theirs[kind]), kind
    assert mine["mounted"] <= mine["volumes"] and mine["mounted"].isdisjoint(theirs["volumes"])
    # Its own routes: the new API host answers through Caddy with the new instance's gateway.
    api = world.caddy.get(f"{NEW}.sbm.test", "/rest/v1/")
    assert api.status_code == 200 and f"of {NEW}" in api.text
    user = new["DASHBOARD_USERNAME"]
    studio = f"{NEW}-studio.sbm.test"
    assert world.caddy.get(studio, auth=(user, new["DASHBOARD_PASSWORD"])).status_code == 200
    assert world.caddy.get(studio, auth=(user, src["DASHBOARD_PASSWORD"])).status_code == 401
