"""Template upgrades on the real engine, real compose, real restic (the backup taken first) and
the Postgres stand-in holding real rows, through the real CLI.

The new template is a copy of v0.8.2 with bumped image tags, one new variable and one new
service. Supabase's images cannot run here: the instance layers the stand-in overlay of the old
template (tests/world/standin.py); the new service runs a local image in the template itself, and
a "broken" copy of the new template makes it exit, which forces the health failure.
The Postgres major-version refusal (2025-07-15 -> v0.8.2) needs no container.

Killed upgrades: the CLI process is SIGKILLed once it reaches a risky step,
seen from outside (the folder re-rendered, the new template's containers made, the rollback's
restore writing the data back or waiting for health); then one plain `start` must leave the
instance healthy on the old template with the rows written before the upgrade.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.test_rotate import World
from tests.world.caddy import CaddyProcess
from tests.world.cli import CLI
from tests.world.dockerworld import DockerSandbox
from tests.world.standin import write_standin_overlay
from tests.world.templates import copy_template, fixtures_dir

pytestmark = pytest.mark.docker

NAME = "upgr"
# The new service runs a local image (no registry here); the broken template's copy exits at once.
NEW_SERVICE = """
  greeter:
    container_name: supabase-greeter
    image: sbm-standin/busybox:1
    pull_policy: never
    entrypoint: [ENTRYPOINT]
    environment:
      GREETING: ${GREETER_GREETING}
    healthcheck:
      test: ["CMD", "wget", "-q", "-O", "/dev/null", "http://127.0.0.1:7070/"]
      interval: 1s
      retries: 30
    restart: "no"
    depends_on:
      db:
        condition: service_healthy
"""


def bumped_template(dest: Path, broken: bool = False) -> Path:
    folder = copy_template("v0.8.2", dest)
    compose = folder / "docker-compose.yml"
    text = compose.read_text()
    text = text.replace(
        "image: supabase/studio:2026.09.07-sha-7996410", "image: supabase/studio:2026.10.01"
    )
    text = text.replace("image: postgrest/postgrest:v14.17", "image: postgrest/postgrest:v14.18")
    entrypoint = '"false"' if broken else '"standin-http", "greeter says hi", "7070"'
    service = NEW_SERVICE.replace("[ENTRYPOINT]", f"[{entrypoint}]")
    text = text.replace("\nvolumes:\n", service + "\nvolumes:\n", 1)
    compose.write_text(text)
    env = folder / ".env.example"
    env.write_text(env.read_text() + "\nGREETER_GREETING=hello\n")
    return folder


def psql(sql: str) -> str:
    import subprocess

    proc = subprocess.run(
        ["docker", "exec", f"{NAME}-db", "psql", "-X", "-U", "postgres", "-tAc", sql],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip()


def containers(docker_client) -> dict[str, str]:
    found = docker_client.containers.list(
        all=True, filters={"label": f"com.docker.compose.project={NAME}"}
    )
    return {c.labels["com.docker.compose.service"]: c.status for c in found}


@pytest.fixture(scope="module")
def world(tmp_path_factory, docker_client):
    base = tmp_path_factory.mktemp("upgrade")
    root = base / "root"
    root.mkdir()
    with DockerSandbox(docker_client).session():
        caddy = CaddyProcess(root, base / "caddy-run")
        caddy.start()
        try:
            w = World(root, caddy)
            w.run("template", "import", str(fixtures_dir() / "v0.8.2"), "--name", "base")
            w.run("template", "import", str(bumped_template(base / "bumped")), "--name", "bumped")
            broken = bumped_template(base / "broken", broken=True)
            w.run("template", "import", str(broken), "--name", "broken")
            overlay = write_standin_overlay(
                [root / "templates" / "base" / "docker-compose.yml"], base / "standin.yml"
            )
            w.run("create", NAME, "--template", "base", "--extra-compose", str(overlay))
            psql("create table public.notes (id int primary key, body text)")
            psql("insert into public.notes select g, md5(g::text) from generate_series(1, 500) g")
            w.expected = psql("select md5(string_agg(body, ',' order by id)) from public.notes")
            yield w
        finally:
            caddy.stop()


def state(world) -> dict:
    return json.loads((world.root / "state.json").read_text())["instances"][NAME]


def env_value(world, key: str) -> str | None:
    for line in (world.root / "instances" / NAME / ".env").read_text().splitlines():
        if line.startswith(key + "="):
            return line.partition("=")[2]
    return None


def test_dry_run_shows_the_difference_and_changes_nothing(world):
    proc = world.run("--json", "upgrade", NAME, "--template", "bumped", "--dry-run")
    diff = json.loads(proc.stdout)["diff"]
    assert diff["added"] == ["greeter"] and diff["removed"] == []
    images = {c["service"]: (c["old"], c["new"]) for c in diff["images"]}
    assert images["rest"] == ("postgrest/postgrest:v14.17", "postgrest/postgrest:v14.18")
    assert set(images) == {"rest", "studio"}
    assert diff["new_variables"] == ["GREETER_GREETING"]
    assert diff["major_change"] is False
    text = world.run("upgrade", NAME, "--template", "bumped", "--dry-run").stdout
    assert "services added: greeter" in text and "image rest:" in text
    assert state(world)["template"] == "base"
    # `list` flags the instance: templates were imported after its own ("broken" came last).
    listed = {r["name"]: r for r in world.json("list")}
    assert listed[NAME]["template"] == "base" and listed[NAME]["newer_template"] == "broken"
    assert f"'upgrade {NAME} --template broken --dry-run'" in world.run("list").stdout


def test_failed_health_rolls_back_to_the_backup(world, docker_client):
    secret = env_value(world, "JWT_SECRET")
    proc = world.run(
        "upgrade",
        NAME,
        "--template",
        "broken",
        check=False,
        env={"SUPABASE_MANAGER_WAIT_TIMEOUT": "40"},
    )
    assert proc.returncode == 1, proc.stderr
    assert "rolled back to base" in proc.stderr
    assert state(world)["template"] == "base"
    assert "greeter" not in containers(docker_client)
    assert env_value(world, "GREETER_GREETING") is None
    assert env_value(world, "JWT_SECRET") == secret
    assert psql("select md5(string_agg(body, ',' order by id)) from public.notes") == world.expected
    # The folder holds the old template's files again.
    assert "greeter" not in (world.root / "instances" / NAME / "docker-compose.yml").read_text()


# --- killed upgrades: the next plain `start` puts them back -------------------------------------
def checksum() -> str:
    return psql("select md5(string_agg(body, ',' order by id)) from public.notes")


def docker_cli_running(session: int) -> bool:
    """Whether a process of ``session`` other than its leader (the CLI itself: a docker or
    docker compose command it runs) is alive."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == session:
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[3]) == session and fields[0] != "Z":
            return True
    return False


def kill_when(
    world, reached: Callable[[], bool], what: str, *args: str, env=None, between=False
) -> None:
    """Run the CLI and SIGKILL its whole process group as soon as ``reached()``; with
    ``between``, only while no docker command of it runs: the engine, not the test, leaves a
    stale network endpoint behind when a `docker create` is cut off, and the sandbox cannot then
    remove the instance's network."""
    proc = subprocess.Popen(
        [*CLI, *args],
        env={**world.env, **(env or {})},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.monotonic() + 180
    try:
        while not (reached() and not (between and docker_cli_running(proc.pid))):
            assert proc.poll() is None, f"{args} ended before {what}: {proc.communicate()}"
            assert time.monotonic() < deadline, f"{args} did not reach {what}"
            time.sleep(0.02)
    finally:
        if proc.poll() is None:
            # The CLI process alone, as the OOM killer would. Killing its docker children too
            # (the whole group) cuts requests off inside the engine: Debian's dockerd 20.10
            # then keeps a stale endpoint on the instance's network, which nothing removes.
            os.kill(proc.pid, signal.SIGKILL)
        proc.communicate(timeout=30)
        settle = time.monotonic() + 120
        while docker_cli_running(proc.pid) and time.monotonic() < settle:
            time.sleep(0.1)  # what it had started runs to its end, or sees its pipe close
    assert proc.returncode == -9, f"{args} finished before it was killed ({what})"


def write_a_row(world, row: int) -> None:
    psql(f"insert into public.notes values ({row}, 'written before the upgrade')")
    world.expected = checksum()
    world.secrets = {k: env_value(world, k) for k in ("POSTGRES_PASSWORD", "JWT_SECRET")}


def assert_put_back(world, docker_client) -> None:
    """On base again, healthy, with the rows written before the killed upgrade (whose backup
    it was restored from), and nothing of the interrupted upgrade or restore left."""
    record = state(world)
    assert record["template"] == "base"
    assert record["phase"] == "ready"
    status = containers(docker_client)
    assert "greeter" not in status
    assert set(status.values()) == {"running"}, status
    assert checksum() == world.expected
    folder = world.root / "instances" / NAME
    assert "greeter" not in (folder / "docker-compose.yml").read_text()
    assert env_value(world, "GREETER_GREETING") is None
    assert {k: env_value(world, k) for k in world.secrets} == world.secrets
    assert not (world.root / "upgrade" / f"{NAME}.running").exists()
    assert not (world.root / "restore" / f"{NAME}.json").exists()
    assert not (world.root / "restore" / f"{NAME}.aside").exists()
    aside = docker_client.volumes.list(filters={"label": f"com.docker.compose.project={NAME}"})
    assert not [v.name for v in aside if v.name.endswith("-sbm-aside")]


@pytest.mark.parametrize(
    ("step", "then"),
    [("rendered", ("start", NAME)), ("recreated", ("start", "--all"))],
    ids=["rendered-start", "recreated-start-all"],
)
def test_killed_upgrade_is_put_back_by_start(world, docker_client, step, then):
    write_a_row(world, 1001 if step == "rendered" else 1002)
    compose_file = world.root / "instances" / NAME / "docker-compose.yml"
    reached = {
        # the folder holds the new template's files; compose has not (fully) run yet
        "rendered": lambda: "greeter:" in compose_file.read_text(),
        # the new template's containers are made (compose done), health is being waited for
        "recreated": lambda: "greeter" in containers(docker_client),
    }[step]
    kill_when(
        world, reached, step, *("upgrade", NAME, "--template", "bumped"), between=step != "rendered"
    )
    assert state(world)["template"] == "bumped"  # killed half-way: the record says "bumped"
    assert (world.root / "upgrade" / f"{NAME}.running").exists()
    world.run(*then)
    assert_put_back(world, docker_client)


def test_killed_rollback_of_a_failed_upgrade_is_finished_by_start(world, docker_client):
    """The health check fails and the rollback's restore is killed while it waits for the
    restored instance: `start` first rolls that restore back (the restored stack's containers
    run and must go), then restores the upgrade's backup. A restore killed earlier, while it
    writes the data back, is rolled back by the same `restore.recover`
    (tests/test_backup.py::test_killed_restore_is_rolled_back_by_start), and what `start` does
    after it here is the same."""
    write_a_row(world, 1004)
    marker = world.root / "restore" / f"{NAME}.json"

    def reached() -> bool:
        try:
            return json.loads(marker.read_text())["phase"] == "starting"
        except (OSError, ValueError):
            return False

    kill_when(
        world,
        reached,
        "the rollback's restore starting",
        *("upgrade", NAME, "--template", "broken"),
        env={"SUPABASE_MANAGER_WAIT_TIMEOUT": "40"},
        between=True,
    )
    assert marker.exists() and (world.root / "upgrade" / f"{NAME}.running").exists()
    world.run("start", NAME)
    assert_put_back(world, docker_client)


def test_upgrade_keeps_secrets_ports_and_data(world, docker_client):
    before = {k: env_value(world, k) for k in ("POSTGRES_PASSWORD", "JWT_SECRET", "ANON_KEY")}
    ports = state(world)["ports"]
    world.run("upgrade", NAME, "--template", "bumped")
    record = state(world)
    assert record["template"] == "bumped" and record["previous_template"] == "base"
    assert record["upgrade_backup"]
    assert {k: env_value(world, k) for k in before} == before
    assert env_value(world, "GREETER_GREETING") == "hello"
    assert record["ports"] == ports
    status = containers(docker_client)
    assert status["greeter"] == "running" and status["db"] == "running"
    assert psql("select md5(string_agg(body, ',' order by id)) from public.notes") == world.expected
    listing = json.loads(world.run("--json", "template", "list").stdout)
    assert {t["name"]: t["instances"] for t in listing}["bumped"] == [NAME]


def upgraded(world) -> None:
    """The instance on "bumped", as test_upgrade_keeps_secrets_ports_and_data leaves it (the
    tests after it use that; run alone, they upgrade it here)."""
    if state(world)["template"] != "bumped":
        world.run("upgrade", NAME, "--template", "bumped")


def test_a_kill_before_the_record_changed_leaves_nothing_to_put_back(world):
    """What a kill between writing the marker and committing the record leaves: `start` drops
    the marker and restores nothing (the backup named there does not even exist)."""
    upgraded(world)
    marker = world.root / "upgrade" / f"{NAME}.running"
    assert not marker.exists()  # the successful upgrade removed it
    marker.write_text(json.dumps({"backup": "never-made", "from": "bumped", "to": "base"}))
    dry = world.run("upgrade", NAME, "--template", "base", "--dry-run")
    assert "was interrupted" in dry.stderr
    world.run("start", NAME)
    assert not marker.exists()
    assert state(world)["template"] == "bumped"


def test_rollback_on_request_restores_the_previous_template(world, docker_client):
    upgraded(world)
    world.run("upgrade", NAME, "--rollback")
    assert state(world)["template"] == "base"
    assert "greeter" not in containers(docker_client)
    assert psql("select md5(string_agg(body, ',' order by id)) from public.notes") == world.expected


def test_postgres_major_change_is_refused_and_shown(world):
    world.run("template", "import", str(fixtures_dir() / "2025-07-15"), "--name", "old")
    world.run("create", "legacy", "--template", "old", "--no-start")
    text = world.run("upgrade", "legacy", "--template", "base", "--dry-run").stdout
    assert "postgres: 15 -> 17 (major)" in text
    assert "gateway: kong (kong) -> api-gw (envoy)" in text
    refused = world.run("upgrade", "legacy", "--template", "base", check=False)
    assert refused.returncode == 2 and "pg_upgrade or a dump and restore" in refused.stderr
    forced = world.run("upgrade", "legacy", "--template", "base", "--allow-major", check=False)
    assert forced.returncode == 2 and "does not do yet" in forced.stderr
    assert (
        json.loads((world.root / "state.json").read_text())["instances"]["legacy"]["template"]
        == "old"
    )
    shutil.rmtree(world.root / "instances" / "legacy", ignore_errors=True)
