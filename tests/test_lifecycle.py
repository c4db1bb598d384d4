"""Whole instances on the real Docker engine, through the real CLI.

Supabase's own images cannot be pulled here: every instance layers the stand-in overlay
(tests/world/standin.py) through --extra-compose, which swaps each service's image for a local
busybox HTTP stand-in (or the real PostgreSQL for db) and keeps ports, names, networks and volumes.
"""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from controller.templatefiles import MAIL_COMPOSE
from tests.world.caddy import CaddyProcess
from tests.world.dockerworld import DockerSandbox
from tests.world.standin import write_standin_overlay
from tests.world.templates import fixtures_dir

FIXTURES = fixtures_dir()
CLI = [sys.executable, "-m", "shell"]

pytestmark = pytest.mark.docker


class World:
    """A data root with templates imported and their stand-in overlays written."""

    def __init__(self, root: Path, caddy) -> None:
        self.root = root
        self.caddy = caddy
        self.env = dict(os.environ)
        self.env.update(
            {
                "SUPABASE_MANAGER_ROOT": str(root),
                "SUPABASE_MANAGER_DOMAIN": "sbm.test",
                "SUPABASE_MANAGER_SCHEME": "http",
                "SUPABASE_MANAGER_PUBLIC_PORT": str(caddy.http_port),
                "SUPABASE_MANAGER_CADDY_ADMIN": caddy.admin_url,
                "SUPABASE_MANAGER_WAIT_TIMEOUT": "120",
                "NO_COLOR": "1",
            }
        )
        self.overlays: dict[tuple[str, tuple[str, ...]], Path] = {}

    def run(self, *args: str, check: bool = True, timeout: float = 300):
        proc = subprocess.run(
            [*CLI, *args], env=self.env, capture_output=True, text=True, timeout=timeout
        )
        if check and proc.returncode != 0:
            raise AssertionError(f"{args} exited {proc.returncode}: {proc.stderr}")
        return proc

    def json(self, *args: str):
        return json.loads(self.run("--json", *args).stdout)

    def import_template(self, version: str) -> None:
        self.run("template", "import", str(FIXTURES / version), "--name", version)

    def standin(self, version: str, overlays: tuple[str, ...] = ()) -> Path:
        key = (version, overlays)
        if key not in self.overlays:
            template = self.root / "templates" / version
            files = [template / "docker-compose.yml"]
            files += [template / f"docker-compose.{o}.yml" for o in overlays if o != "mail"]
            if "mail" in overlays:  # our own mail catcher needs a stand-in too
                mail = self.root.parent / "mail-overlay.yml"
                mail.write_text(MAIL_COMPOSE)
                files.append(mail)
            dest = self.root.parent / f"standin-{version}-{'-'.join(overlays) or 'base'}.yml"
            self.overlays[key] = write_standin_overlay(files, dest)
        return self.overlays[key]

    def create(self, name: str, version: str, *extra: str, overlays: tuple[str, ...] = ()):
        overlay = str(self.standin(version, overlays))
        args = ["create", name, "--template", version, "--extra-compose", overlay]
        for overlay in overlays:
            args += ["--overlay", overlay]
        return self.run(*args, *extra)

    def create_at_once(
        self,
        names: list[str],
        version: str | list[str],
        *extra: str,
        overlays: dict[str, tuple[str, ...]] | None = None,
    ) -> list[tuple[int, str]]:
        """Start one `create` process per name at the same moment (``version`` is one template
        for all or one per name, ``overlays`` per name as in create); (exit status, stderr)
        each."""
        versions = [version] * len(names) if isinstance(version, str) else version
        procs = []
        for name, v in zip(names, versions, strict=True):
            chosen = (overlays or {}).get(name, ())
            args = ["create", name, "--template", v, "--extra-compose", self.standin(v, chosen)]
            for overlay in chosen:
                args += ["--overlay", overlay]
            procs.append(
                subprocess.Popen(
                    [*CLI, *args, *extra],
                    env=self.env,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE,
                    text=True,
                )
            )
        results = []
        for proc in procs:
            _, err = proc.communicate(timeout=300)
            results.append((proc.returncode, err))
        return results

    def state(self) -> dict:
        return json.loads((self.root / "state.json").read_text())

    def gateway_port(self, name: str) -> int:
        ports = self.state()["instances"][name]["ports"]
        gateway = [port for key, port in ports.items() if key.endswith(":8000")]
        assert gateway, ports
        return gateway[0]


# One instance, started once, serves every test below that needs a running instance and leaves
# it running: bringing a stack up costs ~10 s on the engine, the tests only seconds.
SHARED = "shared"


def _of_shared(labels: dict | None, name: str) -> bool:
    labels = labels or {}
    return labels.get("com.docker.compose.project") == SHARED or name.startswith(
        (f"{SHARED}-", f"{SHARED}_")
    )


class _TestSandbox(DockerSandbox):
    """A test's sandbox inside the module's turn: removes what the test made, never the shared
    instance's objects (a test may recreate one of its containers or its claim)."""

    def new_containers(self) -> list:
        return [c for c in super().new_containers() if not _of_shared(c.labels, c.name)]

    def new_networks(self) -> list:
        return [n for n in super().new_networks() if not _of_shared(n.attrs.get("Labels"), n.name)]

    def new_volumes(self) -> list:
        return [v for v in super().new_volumes() if not _of_shared(v.attrs.get("Labels"), v.name)]


@pytest.fixture(scope="module")
def engine_turn(docker_client):
    """This module's turn on the engine (the machine-wide lock of tests/world/dockerworld.py),
    held to the module's end so the shared instance outlives each test; everything the module
    made, the shared instance too, is removed then."""
    with DockerSandbox(docker_client).session() as sandbox:
        yield sandbox


@pytest.fixture
def docker_sandbox(engine_turn, docker_client):
    """conftest's docker_sandbox, under the module's turn (taking the lock again would wait on
    ourselves)."""
    sandbox = _TestSandbox(docker_client)
    sandbox.snapshot()
    try:
        yield sandbox
    finally:
        sandbox.cleanup()


@pytest.fixture(scope="module")
def lab(engine_turn, tmp_path_factory):
    """The module's ROOT and Caddy, with v0.8.2 imported and SHARED created and started."""
    base = tmp_path_factory.mktemp("lifecycle")
    root = base / "root"
    root.mkdir()
    caddy = CaddyProcess(root, base / "caddy-run")
    caddy.start()
    try:
        world = World(root, caddy)
        world.import_template("v0.8.2")
        world.create(SHARED, "v0.8.2")
        yield root, caddy
    finally:
        caddy.stop()


@pytest.fixture
def shared(lab, docker_sandbox):
    """A World (its own env) on the module's ROOT, where SHARED runs (checked here). Tests
    change it only in ways they undo, and leave it running and nothing else of theirs behind."""
    world = World(*lab)
    assert _statuses(world)[SHARED] == "running"
    return world


@pytest.fixture
def world(data_root, caddy, docker_sandbox):
    return World(data_root, caddy)


def _body(port: int) -> str:
    return httpx.get(f"http://127.0.0.1:{port}/rest/v1/", timeout=5).text


def _docker_names(client, kind: str, project: str) -> list[str]:
    label = {"label": f"com.docker.compose.project={project}"}
    if kind == "containers":
        return [
            c.name for c in client.containers.list(all=True, filters=label, ignore_removed=True)
        ]
    if kind == "networks":
        return [n.name for n in client.networks.list(filters=label)]
    return [v.name for v in client.volumes.list(filters=label)]


def test_instances_from_two_templates_run_side_by_side(shared, docker_client):
    world, alpha = shared, SHARED  # a running v0.8.2 instance
    world.import_template("2025-07-15")
    for status, err in world.create_at_once(["beta", "gamma"], ["v0.8.2", "2025-07-15"]):
        assert status == 0, err

    for name in (alpha, "beta", "gamma"):
        assert f"of {name}" in _body(world.gateway_port(name))
    listing = {row["name"]: row for row in world.json("list")}
    assert {n: r["status"] for n, r in listing.items()} == {
        alpha: "running",
        "beta": "running",
        "gamma": "running",
    }
    assert all(r["memory_bytes"] and r["memory_bytes"] > 0 for r in listing.values())
    alpha_containers = _docker_names(docker_client, "containers", alpha)
    assert f"{alpha}-db" in alpha_containers and f"{alpha}-realtime" in alpha_containers

    world.run("stop", "beta")
    assert {r["name"]: r["status"] for r in world.json("list")}["beta"] == "stopped"
    for name in (alpha, "gamma"):
        assert f"of {name}" in _body(world.gateway_port(name))
    with pytest.raises(httpx.TransportError):
        _body(world.gateway_port("beta"))

    detail = world.json("show", alpha)
    assert detail["status"] == "running"
    assert {c["service"] for c in detail["containers"]} >= {"db", "api-gw", "studio", "auth"}
    env = (world.root / "instances" / alpha / ".env").read_text()
    anon = next(line.split("=", 1)[1] for line in env.splitlines() if line.startswith("ANON_KEY="))
    assert anon not in json.dumps(detail), "show must mask keys without --show-secrets"
    assert anon in world.run("show", alpha, "--show-secrets").stdout

    for name in ("beta", "gamma"):  # a stopped one and a running one
        world.run("delete", name, "--purge", "--yes")
        for kind in ("containers", "networks", "volumes"):
            assert _docker_names(docker_client, kind, name) == [], (name, kind)
        assert not (world.root / "instances" / name).exists()
    assert list(world.state()["instances"]) == [alpha]
    assert f"of {alpha}" in _body(world.gateway_port(alpha))


def test_delete_without_purge_keeps_the_data(world, docker_client):
    world.import_template("v0.8.2")
    world.create("keep", "v0.8.2", "--no-start")
    world.run("delete", "keep", "--yes")
    assert (world.root / "instances" / "keep" / ".env").is_file()
    assert "keep" not in world.state()["instances"]


def test_killed_create_is_marked_incomplete_then_finished_or_cleaned(world, docker_client):
    world.import_template("v0.8.2")
    args = ["create", "half", "--template", "v0.8.2"]
    args += ["--extra-compose", str(world.standin("v0.8.2"))]
    proc = subprocess.Popen(
        [*CLI, *args], env=world.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    deadline = time.monotonic() + 60
    # Kill it once its containers exist: half-way through waiting for health.
    while time.monotonic() < deadline:
        if _docker_names(docker_client, "containers", "half"):
            break
        time.sleep(0.1)
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)
    assert world.state()["instances"]["half"]["phase"] == "creating"
    assert {r["name"]: r["status"] for r in world.json("list")}["half"] == "incomplete"

    world.run("create", "half")  # finishes it
    assert world.state()["instances"]["half"]["phase"] == "ready"
    assert "of half" in _body(world.gateway_port("half"))

    # A second killed create is cleaned up by delete.
    proc = subprocess.Popen(
        [
            *CLI,
            "create",
            "half2",
            "--template",
            "v0.8.2",
            "--extra-compose",
            str(world.standin("v0.8.2")),
        ],
        env=world.env,
    )
    while time.monotonic() < deadline + 60:
        if _docker_names(docker_client, "containers", "half2"):
            break
        time.sleep(0.1)
    proc.kill()
    proc.wait(10)
    world.run("delete", "half2", "--purge", "--yes")
    assert _docker_names(docker_client, "containers", "half2") == []
    assert "half2" not in world.state()["instances"]


def test_concurrent_creates_get_disjoint_ports(world):
    world.import_template("v0.8.2")
    for status, err in world.create_at_once([f"c{i}" for i in range(6)], "v0.8.2", "--no-start"):
        assert status == 0, err
    instances = world.state()["instances"]
    assert sorted(instances) == [f"c{i}" for i in range(6)]
    ports = [p for record in instances.values() for p in record["ports"].values()]
    assert len(ports) == len(set(ports))


def test_docker_down_is_one_line_and_changes_nothing(world):
    world.import_template("v0.8.2")
    world.env["DOCKER_HOST"] = f"unix://{world.root}/no-docker.sock"
    proc = world.run("create", "nodock", "--template", "v0.8.2", check=False)
    assert proc.returncode == 1
    assert len(proc.stderr.strip().splitlines()) == 1
    assert "Docker" in proc.stderr and "no-docker.sock" in proc.stderr
    assert "nodock" not in json.dumps(world.state() if (world.root / "state.json").exists() else {})
    assert not (world.root / "locks" / "nodock.lock").exists()
    assert not (world.root / "instances" / "nodock").exists()


def test_bad_input_exits_2_and_writes_nothing(world):
    world.import_template("v0.8.2")
    before = sorted(p.name for p in world.root.iterdir())
    for args in (
        ["create", "Bad_Name"],
        ["create", "ok", "--overlay", "nosuch"],
        ["create", "ok", "--memory", "lots"],
        ["create", "ok", "--port", "api-gw=notaport"],
    ):
        proc = world.run(*args, "--no-start", check=False)
        assert proc.returncode == 2, (args, proc.stderr)
        first, *rest = proc.stderr.splitlines()
        assert first.startswith("supabase-manager: ") and "Traceback" not in proc.stderr
        assert all(line.startswith("usage:") for line in rest), proc.stderr
    assert not (world.root / "instances" / "ok").exists()
    assert sorted(p.name for p in world.root.iterdir()) == before


def test_env_changes_are_validated_audited_and_name_services(world):
    world.import_template("v0.8.2")
    world.create("envy", "v0.8.2", "--no-start")
    assert world.run("env", "envy", "get", "JWT_EXPIRY").stdout.strip() == "3600"
    change = world.json("env", "envy", "set", "JWT_EXPIRY=7200")
    # GOTRUE_JWT_EXP, PGRST_APP_SETTINGS_JWT_EXP and db's JWT_EXP read it: those must restart.
    assert change["changed"] == ["JWT_EXPIRY"] and change["services"] == ["auth", "db", "rest"]
    assert world.run("env", "envy", "get", "JWT_EXPIRY").stdout.strip() == "7200"
    env_before = (world.root / "instances" / "envy" / ".env").read_text()
    bad = world.run("env", "envy", "set", "JWT_SECRET=short", check=False)
    assert bad.returncode == 2 and "JWT_SECRET" in bad.stderr
    assert (world.root / "instances" / "envy" / ".env").read_text() == env_before
    secret = "s" * 40
    world.run("env", "envy", "set", f"JWT_SECRET={secret}")
    listing = world.run("env", "envy").stdout
    assert secret not in listing and "JWT_SECRET" in listing
    audit = (world.root / "audit.log").read_text()
    assert secret not in audit and "env set JWT_SECRET" in audit
    assert oct(os.stat(world.root / "audit.log").st_mode & 0o777) == "0o600"
    lines = [json.loads(line) for line in audit.splitlines()]
    assert {"time", "user", "command", "instance", "outcome"} <= set(lines[-1])


def test_services_logs_and_restart(shared):
    world = shared
    tail = world.run("logs", SHARED, "db", "--tail", "5").stdout.splitlines()
    assert 0 < len(tail) <= 5 and all("db" in line for line in tail)
    # A failed login makes the real PostgreSQL log a FATAL line.
    subprocess.run(
        [
            "docker",
            "exec",
            "-e",
            "PGPASSWORD=wrong",
            f"{SHARED}-db",
            "psql",
            "-h",
            "127.0.0.1",
            "-U",
            "postgres",
            "-c",
            "select 1",
        ],
        capture_output=True,
    )
    everything = world.run("logs", SHARED).stdout
    assert "ready to accept connections" in everything
    errors = world.run("logs", SHARED, "--errors").stdout.splitlines()
    assert any("password authentication failed" in line for line in errors), errors
    assert not any("ready to accept connections" in line for line in errors)

    world.run("stop", SHARED, "auth")
    detail = world.json("show", SHARED)
    states = {c["service"]: c["state"] for c in detail["containers"]}
    assert states["auth"] == "exited" and states["db"] == "running"
    assert detail["status"] == "partial"
    world.run("start", SHARED, "auth")
    assert world.json("show", SHARED)["status"] == "running"
    world.run("restart", SHARED, "api-gw")
    assert f"of {SHARED}" in _body(world.gateway_port(SHARED))
    bad = world.run("stop", SHARED, "nosuch", check=False)
    assert bad.returncode == 2 and "nosuch" in bad.stderr


def test_corrupt_state_stops_every_command(world):
    world.import_template("v0.8.2")
    world.create("solid", "v0.8.2", "--no-start")
    state_file = world.root / "state.json"
    state_file.write_text('{"schema": 1, "instances": ')
    for args in (["list"], ["create", "other", "--no-start"], ["delete", "solid", "--yes"]):
        proc = world.run(*args, check=False)
        assert proc.returncode == 2, (args, proc.stderr)
        assert str(state_file) in proc.stderr and len(proc.stderr.splitlines()) == 1
    assert state_file.read_text() == '{"schema": 1, "instances": '
    assert not (world.root / "instances" / "other").exists()


def test_missing_compose_plugin_is_one_line(world, tmp_path):
    world.import_template("v0.8.2")
    # A docker CLI without the compose plugin: everything else goes to the real one.
    fake = tmp_path / "bin"
    fake.mkdir()
    real = subprocess.run(["which", "docker"], capture_output=True, text=True).stdout.strip()
    (fake / "docker").write_text(
        "#!/bin/sh\n"
        'for a in "$@"; do [ "$a" = compose ] && '
        "{ echo \"docker: 'compose' is not a docker command.\" >&2; exit 1; }; done\n"
        f'exec {real} "$@"\n'
    )
    (fake / "docker").chmod(0o755)
    world.env["PATH"] = f"{fake}:{world.env['PATH']}"
    proc = world.run("create", "plugless", check=False)
    assert proc.returncode == 1
    assert proc.stderr == (
        "supabase-manager: the docker compose v2 plugin is missing: "
        "`docker compose version` fails\n"
    )
    assert not (world.root / "instances" / "plugless").exists()


def test_env_refuses_what_would_break_or_leak(world):
    world.import_template("v0.8.2")
    world.create("guard", "v0.8.2", "--no-start")
    env_file = world.root / "instances" / "guard" / ".env"
    audit_file = world.root / "audit.log"
    env_before, audit_before = env_file.read_text(), audit_file.read_text()
    secret = "x" * 40
    for args in (
        ["env", "guard", "unset", "DASHBOARD_PASSWORD"],  # would open Studio to anyone
        ["env", "guard", "unset", "JWT_SECRET"],
        ["env", "guard", "unset", f"JWT_SECRET={secret}"],  # a slip: KEY=value given to unset
        ["env", "guard", "get", f"JWT_SECRET={secret}"],
        ["env", "guard", "set", "COMPOSE_PROJECT_NAME=other"],
        ["env", "guard", "set", "SITE_URL=line\nbreak"],
    ):
        proc = world.run(*args, check=False)
        assert proc.returncode == 2, (args, proc.stderr)
        assert secret not in proc.stderr
    assert env_file.read_text() == env_before
    assert audit_file.read_text() == audit_before


def test_bad_extra_compose_file_writes_nothing(world, tmp_path):
    world.import_template("v0.8.2")
    bad = tmp_path / "bad.yml"
    bad.write_text("services:\n  x: [unclosed\n")
    proc = world.run("create", "broken", "--no-start", "--extra-compose", str(bad), check=False)
    assert proc.returncode == 2 and len(proc.stderr.splitlines()) == 1, proc.stderr
    assert "broken" not in world.state()["instances"]
    assert not (world.root / "instances" / "broken").exists()


def test_one_command_at_a_time_per_instance(world):
    import fcntl

    world.import_template("v0.8.2")
    world.create("solo", "v0.8.2", "--no-start")
    lock = world.root / "locks" / "solo.lock"
    with lock.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)  # as another running command would
        for args in (
            ["start", "solo"],
            ["env", "solo", "set", "JWT_EXPIRY=60"],
            ["delete", "solo"],
        ):
            proc = world.run(*args, "--yes" if args[0] == "delete" else "--json", check=False)
            assert proc.returncode == 1, (args, proc.stderr)
            busy = "solo is busy: another supabase-manager command is working on it"
            assert proc.stderr == f"supabase-manager: {busy}\n"
    assert "solo" in world.state()["instances"]
    world.run("env", "solo", "set", "JWT_EXPIRY=60")  # free again


def test_a_service_that_never_gets_healthy_is_named(world, tmp_path):
    world.import_template("v0.8.2")
    sick = tmp_path / "sick-auth.yml"
    sick.write_text(
        "services:\n  auth:\n    healthcheck: !override\n"
        '      test: ["CMD", "false"]\n      interval: 1s\n      retries: 1\n'
    )
    # A wait far longer than the run may take: an unhealthy service fails create at once, as
    # compose's `up --wait` does, instead of when the wait runs out.
    world.env["SUPABASE_MANAGER_WAIT_TIMEOUT"] = "600"
    overlay = str(world.standin("v0.8.2"))
    proc = world.run(
        "create",
        "sick",
        "--template",
        "v0.8.2",
        "--extra-compose",
        overlay,
        "--extra-compose",
        str(sick),
        check=False,
        timeout=120,
    )
    assert proc.returncode == 1
    assert "service auth (unhealthy) did not become healthy" in proc.stderr.splitlines()[-1]
    assert world.state()["instances"]["sick"]["phase"] == "creating"


def test_logs_follow_streams_until_interrupted(shared):
    world = shared
    proc = subprocess.Popen(
        [*CLI, "logs", SHARED, "db", "--follow"],
        env=world.env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    first = proc.stdout.readline()
    assert f"{SHARED}-db" in first
    time.sleep(1)
    assert proc.poll() is None  # still following
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=20)
    assert proc.returncode == 130 and "Traceback" not in err


def _dotenv(world, name: str) -> dict[str, str]:
    from controller.envfile import EnvFile

    return EnvFile.parse((world.root / "instances" / name / ".env").read_text()).as_dict()


def _statuses(world) -> dict[str, str]:
    return {row["name"]: row["status"] for row in world.json("list")}


def test_start_all_brings_back_what_should_run_and_show_connects(shared, docker_client):
    world, busy = shared, SHARED  # busy runs
    world.create("idle", "v0.8.2", "--no-start")
    # Never started is "stopped" (nothing is missing), running is "running".
    assert _statuses(world) == {"idle": "stopped", busy: "running"}

    # A reboot: every container stopped behind our back.
    project = {"label": f"com.docker.compose.project={busy}"}
    for container in docker_client.containers.list(filters=project):
        container.stop(timeout=5)
    assert _statuses(world)[busy] == "stopped"
    down = world.run("check", check=False)
    assert down.returncode == 1
    assert any(line.startswith(f"{busy}: ") for line in down.stdout.splitlines()), down.stdout
    assert not any(line.startswith("idle: ") for line in down.stdout.splitlines()), down.stdout

    assert world.run("start", "--all").stdout == f"started {busy}\n"  # idle was never asked to run
    assert _statuses(world) == {"idle": "stopped", busy: "running"}
    assert f"of {busy}" in _body(world.gateway_port(busy))
    assert _docker_names(docker_client, "containers", "idle") == []
    up = world.run("check", check=False)
    assert not any(line.startswith(f"{busy}: ") for line in up.stdout.splitlines()), up.stdout

    # show: the connection strings a user copies, with the real password only when asked.
    values = _dotenv(world, busy)
    password, tenant, db = values["POSTGRES_PASSWORD"], values["POOLER_TENANT_ID"], "postgres"
    ports = world.state()["instances"][busy]["ports"]
    shown = world.json("show", busy, "--show-secrets")["connections"]
    assert shown == {
        "direct": f"postgres://postgres:{password}@db:5432/{db} (inside the instance network)",
        "pooler (session)": (
            f"postgres://postgres.{tenant}:{password}@127.0.0.1:{ports['supavisor:5432']}/{db}"
        ),
        "pooler (transaction)": (
            f"postgres://postgres.{tenant}:{password}@127.0.0.1:{ports['supavisor:6543']}/{db}"
        ),
    }
    masked = world.json("show", busy)["connections"]
    assert masked["direct"] == shown["direct"].replace(password, "********")
    assert password not in json.dumps(masked)
    # The direct string works: the real PostgreSQL answers with it inside the network.
    url = shown["direct"].split(" ", 1)[0]
    answer = subprocess.run(
        ["docker", "exec", f"{busy}-db", "psql", url, "-tAc", "select current_user"],
        capture_output=True,
        text=True,
    )
    assert answer.returncode == 0 and answer.stdout.strip() == "postgres", answer.stderr

    world.run("delete", "idle", "--purge", "--yes")
    assert _statuses(world) == {busy: "running"}
