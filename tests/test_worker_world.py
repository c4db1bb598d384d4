"""The second Docker host of the test world (tests/world/worker.py): a real sshd and a second
engine in a network namespace, reached the way the manager reaches a worker.

Nothing is mocked: ssh is OpenSSH, the engines are real dockerd processes, the images are the
stand-ins. The figures (fixture start, image load, ssh round trips) are printed (`pytest -s`).
"""

from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import tempfile
import time
import uuid
from contextlib import closing
from pathlib import Path

import docker
import httpx
import pytest

from tests.world.dockerworld import BUSYBOX_IMAGE
from tests.world.worker import PREFIX, RUN_BASE, STATE_BASE, Worker, remove_leftovers

pytestmark = pytest.mark.docker


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def run(argv: list[str], **kwargs: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False, **kwargs)  # type: ignore[call-overload]


def write_ssh_config(
    worker: Worker, folder: Path, control: Path, alias: str = "sbm-w"
) -> tuple[Path, dict]:
    """What the manager generates: one Host block with key, known_hosts, strict checking and
    multiplexing, plus an `ssh` wrapper on PATH for the docker CLI (which cannot be given -F)."""
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    config = folder / "config"
    config.write_text(
        f"Host {alias}\n"
        f"  HostName {worker.address}\n"
        f"  Port {worker.port}\n"
        f"  User {worker.user}\n"
        f"  IdentityFile {worker.identity_file}\n"
        "  IdentitiesOnly yes\n"
        f"  UserKnownHostsFile {worker.known_hosts_file}\n"
        "  StrictHostKeyChecking yes\n"
        "  BatchMode yes\n"
        "  ConnectTimeout 5\n"
        "  ServerAliveInterval 5\n"
        "  ControlMaster auto\n"
        f"  ControlPath {control}/%C\n"
        "  ControlPersist 60\n"
    )
    config.chmod(0o600)
    bindir = folder / "bin"
    bindir.mkdir(exist_ok=True)
    wrapper = bindir / "ssh"
    wrapper.write_text(f'#!/bin/sh\nexec /usr/bin/ssh -F {config} "$@"\n')
    wrapper.chmod(0o755)
    env = {**os.environ, "PATH": f"{bindir}:{os.environ['PATH']}"}
    env.pop("DOCKER_HOST", None)
    return config, env


def test_fixture_figures(worker: Worker) -> None:
    print(
        f"\nworker {worker.address}: fixture start {worker.timings['start_s']:.2f} s "
        f"(engine {worker.timings['engine_start_s']:.2f} s, "
        f"image load {worker.timings['image_load_s']:.2f} s, in parallel with sshd)"
    )
    with closing(worker.client()) as client:
        tags = {tag for image in client.images.list() for tag in image.tags}
    assert BUSYBOX_IMAGE in tags


def test_key_login_works_and_strange_keys_are_refused(worker: Worker, tmp_path: Path) -> None:
    ok = run(worker.ssh_argv("ip", "-4", "-o", "addr", "show", "dev", "eth0"))
    assert ok.returncode == 0, ok.stderr
    assert f"{worker.address}/24" in ok.stdout  # the session runs on the worker

    empty = tmp_path / "known_hosts"
    empty.write_text("")
    argv = worker.ssh_argv("true")  # StrictHostKeyChecking=yes, against an empty file
    argv[argv.index(f"UserKnownHostsFile={worker.known_hosts_file}")] = (
        f"UserKnownHostsFile={empty}"
    )
    refused = run(argv)
    assert refused.returncode == 255
    assert "Host key verification failed" in refused.stderr
    assert empty.read_text() == ""  # nothing learnt

    other = tmp_path / "other_key"
    run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(other)])
    argv = worker.ssh_argv("true")
    argv[argv.index(str(worker.identity_file))] = str(other)
    denied = run(argv)
    assert denied.returncode == 255
    assert "Permission denied (publickey)" in denied.stderr  # no password fallback offered


def test_worker_sessions_use_the_worker_engine(worker: Worker, docker_client) -> None:
    # The docker CLI's and the docker SDK's ssh transport: an HTTP exchange over dial-stdio.
    ping = run(
        worker.ssh_argv("docker", "system", "dial-stdio"),
        input="GET /_ping HTTP/1.0\r\nHost: docker\r\n\r\n",
    )
    assert ping.returncode == 0, ping.stderr
    assert ping.stdout.startswith("HTTP/1.0 200") and ping.stdout.endswith("OK")

    remote = run(worker.ssh_argv("docker info --format '{{.ID}} {{.DockerRootDir}}'"))
    assert remote.returncode == 0, remote.stderr
    engine_id, root_dir = remote.stdout.split()
    local = docker_client.info()
    assert engine_id != local["ID"] and root_dir != local["DockerRootDir"]
    with closing(worker.client()) as client:
        assert client.info()["ID"] == engine_id  # engine_socket is that same engine

    compose = run(worker.ssh_argv("docker", "compose", "version", "--short"))
    assert compose.returncode == 0, compose.stderr
    assert compose.stdout.strip().startswith("2.")


def test_docker_over_ssh_config_sees_only_worker_containers(
    worker: Worker, worker_sandbox, docker_client, tmp_path: Path
) -> None:
    remote_name = unique("on-worker")
    with closing(worker.client()) as client:
        client.containers.create(BUSYBOX_IMAGE, ["sleep", "60"], name=remote_name)
        worker_id = client.info()["ID"]
        on_worker = {c.name for c in client.containers.list(all=True)}

    # A short control folder: a unix socket path holds at most 107 bytes, tmp_path is too deep.
    control = Path(tempfile.mkdtemp(prefix="sbmcm-"))
    config, env = write_ssh_config(worker, tmp_path / "ssh", control)
    try:
        whose = run(["docker", "-H", "ssh://sbm-w", "info", "--format", "{{.ID}}"], env=env)
        assert whose.returncode == 0, whose.stderr
        assert whose.stdout.strip() == worker_id != docker_client.info()["ID"]
        on_manager = {c.name for c in docker_client.containers.list(all=True)}
        listed = run(["docker", "-H", "ssh://sbm-w", "ps", "-a", "--format", "{{.Names}}"], env=env)
        assert listed.returncode == 0, listed.stderr
        names = set(listed.stdout.split())
        assert remote_name in names and names == on_worker
        assert not names & (on_manager - on_worker)
        # compose (a CLI plugin) goes through the same ssh: what the manager runs remotely.
        projects = run(["docker", "-H", "ssh://sbm-w", "compose", "ls", "-a", "-q"], env=env)
        assert projects.returncode == 0, projects.stderr
        _ssh_figures(config, env)
    finally:
        run(["ssh", "-F", str(config), "-O", "exit", "sbm-w"])
        shutil.rmtree(control, ignore_errors=True)


def _ssh_figures(config: Path, env: dict) -> None:
    # ControlMaster: the docker CLI's ssh left a master behind that later commands reuse.
    check = run(["ssh", "-F", str(config), "-O", "check", "sbm-w"])
    assert check.returncode == 0, check.stderr

    timings = {}
    for label, extra in (("ControlMaster", []), ("no ControlMaster", ["-o", "ControlPath=none"])):
        samples = []
        for _ in range(5):
            began = time.monotonic()
            done = run(["ssh", "-F", str(config), *extra, "sbm-w", "true"])
            samples.append(time.monotonic() - began)
            assert done.returncode == 0, done.stderr
        timings[label] = statistics.median(samples)
    began = time.monotonic()
    assert run(["docker", "-H", "ssh://sbm-w", "ps", "-q"], env=env).returncode == 0
    docker_ps = time.monotonic() - began
    print(
        f"\nssh round trip (median of 5): {timings['ControlMaster'] * 1000:.0f} ms with "
        f"ControlMaster, {timings['no ControlMaster'] * 1000:.0f} ms without; "
        f"docker -H ssh:// ps: {docker_ps * 1000:.0f} ms"
    )


def test_published_port_answers_on_the_bind_address(
    worker: Worker, worker_sandbox, docker_client
) -> None:
    name = unique("web")
    with closing(worker.client()) as client:
        container = client.containers.run(
            BUSYBOX_IMAGE,
            ["standin-http", f"standin {name}", "8000"],
            name=name,
            detach=True,
            ports={"8000/tcp": (worker.bind_address, None)},
        )
        container.reload()
        binding = container.ports["8000/tcp"][0]
    assert binding["HostIp"] == worker.bind_address
    url = f"http://{worker.bind_address}:{binding['HostPort']}/x"
    deadline = time.monotonic() + 20
    while True:
        try:
            answer = httpx.get(url, timeout=2)
            break
        except httpx.HTTPError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)
    assert answer.status_code == 200 and answer.text.strip() == f"standin {name}"
    with pytest.raises(docker.errors.NotFound):
        docker_client.containers.get(name)  # the local engine knows nothing of it


def test_worker_data_dir_is_not_the_managers(worker: Worker, worker_sandbox, tmp_path) -> None:
    folder = tmp_path / "instance"  # every tmp_path lies under worker.data_dir
    assert tmp_path.is_relative_to(worker.data_dir)
    folder.mkdir()
    (folder / "manager.txt").write_text("manager")

    wrote = run(
        worker.ssh_argv(f"mkdir -p {folder} && echo worker > {folder}/worker.txt && ls -A {folder}")
    )
    assert wrote.returncode == 0, wrote.stderr
    assert wrote.stdout.split() == ["worker.txt"]  # the manager's file is not there
    assert not (folder / "worker.txt").exists()  # and the worker's is not here
    assert worker.run(["cat", f"{folder}/worker.txt"]).stdout == "worker\n"

    # compose run here with the worker's engine turns ./ into the manager's absolute path, and
    # the worker's engine mounts that path from its own file system: the worker's file, not ours.
    (folder / "compose.yml").write_text(
        f"services:\n  probe:\n    image: {BUSYBOX_IMAGE}\n    volumes: ['./:/data']\n"
    )
    control = Path(tempfile.mkdtemp(prefix="sbmcm-"))
    config, env = write_ssh_config(worker, tmp_path / "ssh", control)
    try:
        compose = ["docker", "-H", "ssh://sbm-w", "compose", "-f", str(folder / "compose.yml")]
        seen = run(
            [*compose, "-p", "sbmw-probe", "run", "--rm", "probe", "ls", "-A", "/data"], env=env
        )
        assert seen.returncode == 0, seen.stderr
        assert seen.stdout.split() == ["worker.txt"]
    finally:
        run(["ssh", "-F", str(config), "-O", "exit", "sbm-w"])
        shutil.rmtree(control, ignore_errors=True)


def test_engine_and_host_can_go_away_and_come_back(worker: Worker, worker_sandbox) -> None:
    info = worker.ssh_argv("docker", "info", "--format", "{{.ServerVersion}}")
    assert run(info).returncode == 0

    worker.stop_engine()
    down = run(info)
    assert down.returncode != 0 and "Cannot connect to the Docker daemon" in down.stderr
    assert run(worker.ssh_argv("true")).returncode == 0  # the machine still answers
    worker.start_engine()
    assert run(info).returncode == 0, run(info).stderr

    worker.stop_ssh()
    refused = run(worker.ssh_argv("true"))
    assert refused.returncode == 255 and "Connection refused" in refused.stderr
    worker.start_ssh()

    worker.disconnect()
    began = time.monotonic()
    gone = run(worker.ssh_argv("true"))
    assert gone.returncode == 255
    assert "No route to host" in gone.stderr or "timed out" in gone.stderr, gone.stderr
    assert time.monotonic() - began < 12
    worker.reconnect()
    back = run(info)
    assert back.returncode == 0, back.stderr


def test_leftovers_of_a_killed_run_are_removed(tmp_path: Path) -> None:
    dead = subprocess.Popen(["true"])
    dead.wait()
    tag = f"{dead.pid}-99"
    netns, veth = f"{PREFIX}-{tag}", f"sbw{dead.pid}x99"
    run_dir, state_dir = RUN_BASE / netns, STATE_BASE / netns
    assert run(["ip", "netns", "add", netns]).returncode == 0
    holder = None
    try:
        made = run(
            ["ip", "link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", netns]
        )
        assert made.returncode == 0, made.stderr
        for folder in (run_dir, state_dir):
            folder.mkdir()
        (run_dir / "owner").write_text(f"{dead.pid} 1\n")
        holder = subprocess.Popen(
            ["nsenter", f"--net=/run/netns/{netns}", "sleep", "300"], start_new_session=True
        )
        time.sleep(0.2)

        assert tag in remove_leftovers()
        assert holder.wait(10) is not None  # the namespace's processes were stopped
        assert netns not in run(["ip", "netns", "list"]).stdout
        assert run(["ip", "link", "show", veth]).returncode != 0
        assert not run_dir.exists() and not state_dir.exists()
    finally:
        if holder is not None and holder.poll() is None:
            holder.kill()
            holder.wait()
        run(["ip", "netns", "del", netns])
