"""`metrics`, `metrics serve` and `check` against the real Docker engine and Caddy.

One module-scoped set of instances on the stand-in images (Supabase's own cannot be pulled here),
created side by side: `run` running, `off` started then stopped, `new` created with --no-start.
The exporter runs as the real `supabase-manager metrics serve` process; its answer is parsed with
prometheus_client's parser and compared with what `list` and `show` report.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator

import httpx
import jwt
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.test_lifecycle import CLI, World
from tests.world import CaddyProcess, DockerSandbox, free_port, wait_for_port, wait_until
from tests.world.caddy import route_id

pytestmark = pytest.mark.docker

P = "supabase_manager_"


@pytest.fixture(scope="module")
def world(tmp_path_factory, docker_client) -> Iterator[World]:
    base = tmp_path_factory.mktemp("metrics")
    root = base / "root"
    root.mkdir()
    caddy = CaddyProcess(root, base / "caddy-run")
    caddy.start()
    try:
        with DockerSandbox(docker_client).session():
            w = World(root, caddy)
            w.import_template("v0.8.2")
            _create_side_by_side(w, {"run": [], "off": [], "new": ["--no-start"]})
            w.run("stop", "off")
            yield w
    finally:
        caddy.stop()


def _create_side_by_side(world: World, names: dict[str, list[str]]) -> None:
    """One `create` process per instance (with its extra arguments), all at the same moment:
    their waits on the engine and the healthchecks overlap."""
    overlay = str(world.standin("v0.8.2"))
    procs = {
        name: subprocess.Popen(
            [*CLI, "create", name, "--template", "v0.8.2", "--extra-compose", overlay, *extra],
            env=world.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for name, extra in names.items()
    }
    failed = []
    for name, proc in procs.items():
        _, err = proc.communicate(timeout=300)
        if proc.returncode != 0:
            failed.append(f"create {name} exited {proc.returncode}: {err}")
    assert not failed, "\n".join(failed)


@contextlib.contextmanager
def exporter(world: World, **env: str) -> Iterator[str]:
    """A running `metrics serve` process; yields its URL; stops it with SIGTERM."""
    port = free_port()
    proc = subprocess.Popen(
        [*CLI, "metrics", "serve", "--listen", f"127.0.0.1:{port}"],
        env={**world.env, **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_for_port(port, timeout=20)
        yield f"http://127.0.0.1:{port}/metrics"
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=20)
    assert proc.returncode == 0, err
    assert f"serving metrics on http://127.0.0.1:{port}/metrics" in err


@pytest.fixture(scope="module")
def server(world) -> Iterator[str]:
    with exporter(world) as url:
        yield url


def parse(text: str) -> dict[str, dict[tuple, float]]:
    """Family name -> {sorted label items: value}, with prometheus_client's parser."""
    out: dict[str, dict[tuple, float]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out.setdefault(sample.name, {})[tuple(sorted(sample.labels.items()))] = sample.value
    return out


def scrape(url: str) -> tuple[dict[str, dict[tuple, float]], float]:
    started = time.monotonic()
    response = httpx.get(url, timeout=30)
    assert response.status_code == 200
    return parse(response.text), time.monotonic() - started


def value(metrics: dict, name: str, **labels: str) -> float | None:
    return metrics.get(P + name, {}).get(tuple(sorted(labels.items())))


def series(metrics: dict, name: str, **labels: str) -> dict[tuple, float]:
    """Samples of ``name`` whose labels include ``labels``."""
    wanted = set(labels.items())
    return {k: v for k, v in metrics.get(P + name, {}).items() if wanted <= set(k)}


def test_scrape_agrees_with_list_and_show(world, server):
    metrics, _ = scrape(server)
    listing = {row["name"]: row for row in world.json("list")}
    assert sorted(listing) == ["new", "off", "run"]
    assert value(metrics, "docker_up") == 1 and value(metrics, "caddy_up") == 1

    for name, row in listing.items():
        detail = world.json("show", name)
        assert value(metrics, "instance_status", instance=name, status=row["status"]) == 1
        assert sum(series(metrics, "instance_status", instance=name).values()) == 1
        assert value(metrics, "instance_up", instance=name) == (row["status"] == "running")
        counts = series(metrics, "instance_containers", instance=name)
        assert sum(counts.values()) == row["total"] == len(detail["containers"])
        assert (
            value(metrics, "instance_containers", instance=name, state="running")
            == (row["running"])
        )
        info = series(metrics, "instance_info", instance=name)
        assert len(info) == 1
        labels = dict(next(iter(info)))
        assert labels["api_host"] == f"{name}.sbm.test"
        assert labels["studio_host"] == f"{name}-studio.sbm.test"
        assert labels["template"] == row["template"] == "v0.8.2"
        assert value(metrics, "caddy_route_present", instance=name) == 1
        # Disk use: the same folder walked, a moment apart (Postgres keeps writing).
        disk = value(metrics, "instance_disk_bytes", instance=name)
        assert disk is not None and abs(disk - row["disk_bytes"]) <= 0.2 * row["disk_bytes"]
        for c in detail["containers"]:
            healthy = c["state"] == "running" and c["health"] in (None, "healthy")
            got = value(metrics, "container_healthy", instance=name, service=c["service"])
            assert got == healthy, (name, c)
        anon = world.run("env", name, "get", "ANON_KEY").stdout.strip()
        expiry = jwt.decode(anon, options={"verify_signature": False})["exp"]
        assert value(
            metrics, "api_key_expiry_timestamp_seconds", instance=name, key="ANON_KEY"
        ) == (expiry)

    assert [listing[n]["status"] for n in ("run", "off")] == ["running", "stopped"]
    assert value(metrics, "instance_should_run", instance="run") == 1
    assert value(metrics, "instance_should_run", instance="off") == 0
    # The probe goes through Caddy to the gateway: only the running instance answers.
    assert value(metrics, "instance_api_probe_success", instance="run") == 1
    assert value(metrics, "instance_api_probe_success", instance="off") == 0
    assert value(metrics, "instance_api_probe_success", instance="new") == 0
    assert 0 < value(metrics, "instance_api_probe_duration_seconds", instance="run") < 3

    # CPU and memory of the running containers only; the sum near what `list` reads.
    running = series(metrics, "container_cpu_seconds_total", instance="run")
    assert len(running) == listing["run"]["running"] and all(v > 0 for v in running.values())
    assert series(metrics, "container_cpu_seconds_total", instance="off") == {}
    memory = sum(series(metrics, "container_memory_bytes", instance="run").values())
    assert 0.5 <= memory / listing["run"]["memory_bytes"] <= 2
    restarts = series(metrics, "container_restarts_total", instance="run")
    assert len(restarts) == listing["run"]["total"] and set(restarts.values()) == {0}
    assert 0 < value(metrics, "scrape_duration_seconds") < 8

    # `metrics` prints the same families once.
    once = parse(world.run("metrics").stdout)
    assert set(once) == set(metrics)


def test_check_lists_what_the_probes_find(world, server, docker_client):
    proc = world.run("check", check=False)
    assert (proc.returncode, proc.stdout.strip()) == (0, "ok"), proc.stdout

    # The route of a running instance is gone: Caddy answers its host with an empty 200, which
    # is no answer from the gateway.
    world.caddy.admin("DELETE", f"/id/{route_id(world.root, 'run')}").raise_for_status()
    try:
        proc = world.run("check", check=False)
        assert proc.returncode == 1
        assert proc.stdout.strip().splitlines() == [
            "run: Caddy has no route for it (run `caddy sync run`)",
            "run: the API at run.sbm.test does not answer through Caddy "
            "(HTTP 200 with no body: no route)",
        ]
        metrics, _ = scrape(server)
        assert value(metrics, "caddy_route_present", instance="run") == 0
        assert value(metrics, "caddy_route_present", instance="off") == 1
        assert value(metrics, "instance_api_probe_success", instance="run") == 0
        assert value(metrics, "instance_up", instance="run") == 1
    finally:
        world.run("caddy", "sync")

    # The gateway container stops behind our back.
    gateway = next(
        k.split(":")[0] for k in world.state()["instances"]["run"]["ports"] if ":8000" in k
    )
    container = docker_client.containers.get(
        next(c["name"] for c in world.json("show", "run")["containers"] if c["service"] == gateway)
    )
    container.stop(timeout=1)
    try:
        proc = world.run("check", check=False)
        assert proc.returncode == 1
        assert proc.stdout.strip().splitlines() == [
            f"run: service {gateway} is exited",
            "run: the API at run.sbm.test does not answer through Caddy (HTTP 502)",
        ]
        metrics, _ = scrape(server)
        assert value(metrics, "instance_up", instance="run") == 0
        assert value(metrics, "instance_status", instance="run", status="partial") == 1
        assert value(metrics, "container_healthy", instance="run", service=gateway) == 0
        assert value(metrics, "instance_api_probe_success", instance="run") == 0
        assert value(metrics, "caddy_route_present", instance="run") == 1
    finally:
        container.start()
    wait_until(lambda: world.run("check", check=False).returncode == 0, 60, "check ok again")

    # A service crashes (its main process killed) and Docker's restart policy brings it back.
    crashing = next(
        c
        for c in docker_client.containers.list(filters={"label": "com.docker.compose.project=run"})
        if c.attrs["HostConfig"]["RestartPolicy"]["Name"] in ("always", "unless-stopped")
        and c.labels["com.docker.compose.service"] != gateway
    )
    service = crashing.labels["com.docker.compose.service"]
    os.kill(crashing.attrs["State"]["Pid"], signal.SIGKILL)
    wait_until(lambda: docker_client.containers.get(crashing.id).attrs["RestartCount"] == 1, 30)
    metrics = parse(world.run("metrics").stdout)
    assert value(metrics, "container_restarts_total", instance="run", service=service) == 1
    assert value(metrics, "container_restarts_total", instance="run", service=gateway) == 0
    wait_until(lambda: world.run("check", check=False).returncode == 0, 60, "check ok again")


def test_backup_age_and_size_come_from_the_backup_repository(world, tmp_path):
    metrics = parse(world.run("metrics").stdout)
    assert series(metrics, "backup_last_success_timestamp_seconds") == {}
    assert value(metrics, "backup_repository_up") == 1  # none set up yet: nothing wrong

    started = time.time()
    backup = json.loads(world.run("--json", "backup", "run").stdout)
    listed = {b["backup"]: b for b in world.json("backup", "list", "run")}
    metrics = parse(world.run("metrics").stdout)
    at = value(metrics, "backup_last_success_timestamp_seconds", instance="run")
    assert started - 1 <= at <= time.time()
    size = value(metrics, "backup_last_size_bytes", instance="run")
    assert size == listed[backup["backup"]]["size"] > 0
    assert series(metrics, "backup_last_success_timestamp_seconds", instance="off") == {}

    # A repository that cannot be read (here: a wrong password) is a problem `check` names.
    wrong = tmp_path / "wrong.key"
    wrong.write_text("not-the-password-4711\n")
    world.env["SUPABASE_MANAGER_BACKUP_PASSWORD_FILE"] = str(wrong)
    try:
        out = world.run("metrics").stdout
        assert value(parse(out), "backup_repository_up") == 0
        assert series(parse(out), "backup_last_success_timestamp_seconds") == {}
        proc = world.run("check", check=False)
        assert proc.returncode == 1
        assert [line for line in proc.stdout.splitlines() if line.startswith("backups: ")]
        assert "4711" not in proc.stdout + proc.stderr + out
    finally:
        del world.env["SUPABASE_MANAGER_BACKUP_PASSWORD_FILE"]


@contextlib.contextmanager
def silent_engine(path) -> Iterator[None]:
    """A unix socket that accepts connections and never answers: a hung Docker engine."""
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(path))
    listener.listen(64)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        listener.settimeout(0.2)
        while not stop.is_set():
            with contextlib.suppress(TimeoutError, OSError):
                held.append(listener.accept()[0])

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(5)
        for conn in held:
            conn.close()
        listener.close()
        os.unlink(path)


def test_scrape_survives_docker_and_caddy_down(world, server, tmp_path):
    world.caddy.stop()
    try:
        metrics, seconds = scrape(server)
        assert seconds < 10
        assert value(metrics, "caddy_up") == 0 and value(metrics, "docker_up") == 1
        assert series(metrics, "caddy_route_present") == {}  # unknown, not "missing"
        assert value(metrics, "instance_api_probe_success", instance="run") == 0
        assert value(metrics, "instance_up", instance="run") == 1  # Docker still answers
        proc = world.run("check", check=False)
        assert proc.returncode == 1
        assert f"Caddy admin API at {world.caddy.admin_url}" in proc.stdout.splitlines()[0]

        # Docker hung: the scrape still answers within its deadline, every instance unknown.
        with silent_engine(tmp_path / "hung.sock"):
            with exporter(world, DOCKER_HOST=f"unix://{tmp_path}/hung.sock") as url:
                metrics, seconds = scrape(url)
            assert seconds < 10
            assert value(metrics, "docker_up") == 0 and value(metrics, "caddy_up") == 0
            for name in ("run", "off", "new"):
                assert value(metrics, "instance_up", instance=name) == 0
                assert value(metrics, "instance_status", instance=name, status="unknown") == 1
                assert series(metrics, "instance_info", instance=name)
                assert series(metrics, "instance_disk_bytes", instance=name)
            assert series(metrics, "container_healthy") == {}

        # Docker gone (no socket): `metrics` and `check` still answer, `check` exits 1.
        world.env["DOCKER_HOST"] = f"unix://{tmp_path}/gone.sock"
        try:
            metrics = parse(world.run("metrics").stdout)
            assert value(metrics, "docker_up") == 0
            proc = world.run("check", check=False)
            assert proc.returncode == 1
            assert "Docker daemon" in proc.stdout.splitlines()[0]
        finally:
            del world.env["DOCKER_HOST"]
    finally:
        world.caddy.start()


def test_listen_address_is_checked(world):
    proc = world.run("metrics", "serve", "--listen", "nonsense", check=False)
    assert proc.returncode == 2
    assert proc.stderr.strip().endswith("expected HOST:PORT, e.g. 127.0.0.1:9464")
    world.env["SUPABASE_MANAGER_METRICS_LISTEN"] = "127.0.0.1:99999"
    try:
        proc = world.run("metrics", "serve", check=False)
        assert proc.returncode == 2 and "127.0.0.1:99999" in proc.stderr
    finally:
        del world.env["SUPABASE_MANAGER_METRICS_LISTEN"]


def test_dashboard_and_readme_use_only_exported_names():
    """Every supabase_manager_* name the dashboard and the README use is one we export."""
    import json
    import re
    from pathlib import Path

    from prometheus_client import CollectorRegistry, generate_latest

    from controller.metrics.collector import families
    from controller.metrics.probes import (
        BackupFacts,
        ContainerFacts,
        InstanceFacts,
        ProbeResult,
        Snapshot,
    )

    container = ContainerFacts("db", "x-db", "running", "healthy", True, 0, 1.5, 1024)
    instance = InstanceFacts(
        name="x",
        template="t",
        api_host="x.example",
        studio_host="x-studio.example",
        status="running",
        ready=True,
        should_run=True,
        containers=(container,),
        disk_bytes=1,
        probe=ProbeResult(True, 0.1, "HTTP 200"),
        route_present=True,
        key_expiry={"ANON_KEY": 2e9},
        backup=BackupFacts(1.7e9, 10),
    )
    snapshot = Snapshot((instance,), 0.5, backups_read=True)

    class Fixed:
        def collect(self):
            return families(snapshot)

    registry = CollectorRegistry()
    registry.register(Fixed())
    exported = set(parse(generate_latest(registry).decode()))
    repo = Path(__file__).resolve().parents[1]
    dashboard = json.loads((repo / "docs" / "grafana-dashboard.json").read_text())
    exprs = " ".join(t["expr"] for p in dashboard["panels"] for t in p["targets"])
    used = set(re.findall(r"supabase_manager_\w+", exprs))
    readme = (repo / "README.md").read_text()
    used |= set(re.findall(r"supabase_manager_\w+", readme)) - {"supabase_manager_"}
    section = readme.split("## Metrics and health", 1)[1].split("\n## ", 1)[0]
    names = section.split("Every name starts with", 1)[1].split("Requests are", 1)[0]
    listed = re.findall(r"`(\w+)(?:\{[^}]*\})?`", names)
    used |= {P + name for name in listed if not name.startswith("supabase_manager")}
    assert used and used <= exported, used - exported


def test_check_names_keys_that_expire_soon_or_did():
    from controller.config import Settings
    from controller.metrics.health import problems
    from controller.metrics.probes import InstanceFacts, Snapshot

    now = 1_800_000_000.0
    keys = {"ANON_KEY": now + 10 * 86400, "SERVICE_ROLE_KEY": now - 86400, "OTHER": now + 9e7}
    instance = InstanceFacts("k", "t", "k.x", "k-studio.x", "stopped", True, False, key_expiry=keys)
    assert problems(Snapshot((instance,), 0.1), Settings(), now=now) == [
        "k: ANON_KEY expires on 2027-01-25 (in 10 days)",
        "k: SERVICE_ROLE_KEY expired on 2027-01-14",
    ]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("127.0.0.1:9464", ("127.0.0.1", 9464)),
        ("[::1]:9100", ("::1", 9100)),
        (":9464", ("0.0.0.0", 9464)),
        ("localhost:1", ("localhost", 1)),
    ],
)
def test_listen_addresses(text, expected):
    from controller.metrics.server import parse_listen

    assert parse_listen(text) == expected


@pytest.mark.parametrize(
    "text", ["9464", "host:", "::1:9464", "[::1]", "h:0", "h:65536", "h:\uff19"]
)
def test_bad_listen_addresses_are_usage_errors(text):
    from controller.errors import UsageError
    from controller.metrics.server import parse_listen

    with pytest.raises(UsageError, match="expected HOST:PORT"):
        parse_listen(text)
