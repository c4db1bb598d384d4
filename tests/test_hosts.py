"""Instances on other Docker hosts over SSH (issue 15).

The first part checks the pieces without a second engine: the generated ssh config, how ssh's
failures become one line, the `host add` input rules, the ssh engine address, the docker CLI's
environment, and that ports bind to a host's address and Caddy dials it.

The second part (marked docker) runs against the `worker` fixture (tests/world/worker.py): a
second Docker engine behind a real sshd in a network namespace, its files in a mount namespace
of its own.
"""

from __future__ import annotations

import json
import os
import re
import stat
import subprocess
from pathlib import Path

import pytest

from controller import ssh
from controller.compose import client_call
from controller.engine import EngineAddress
from controller.errors import UsageError
from controller.ops import hosts as host_ops
from controller.render import render_instance
from controller.state import HostRecord, InstanceRecord
from controller.templatefiles import TemplateFiles, needed_ports
from tests.world.remote import close_masters
from tests.world.templates import fixtures_dir

TEMPLATE = TemplateFiles(fixtures_dir() / "v0.8.2")


# --- the ssh config ---------------------------------------------------------------------------


def _host(name: str = "w2", **kw) -> HostRecord:
    return HostRecord(name=name, user="ops", address="10.9.0.2", port=2222, **kw)


def test_the_ssh_config_checks_host_keys_and_is_private(tmp_path):
    files = ssh.SshFiles.of(tmp_path / "root")
    path = ssh.write_config(files, [_host("w2"), _host("w3")], Path("/keys/id_ed25519"), ["w3"])
    text = path.read_text()
    blocks = {b.split("\n", 1)[0]: b for b in text.split("\nHost ")[1:]}
    assert set(blocks) == {"sbm-w2", "sbm-w3"}
    # Unknown keys are refused, except for the host being added with --accept-new-key.
    assert "StrictHostKeyChecking yes" in blocks["sbm-w2"]
    assert "StrictHostKeyChecking accept-new" in blocks["sbm-w3"]
    for block in blocks.values():
        assert f"UserKnownHostsFile {files.known_hosts}" in block
        assert "GlobalKnownHostsFile /dev/null" in block
        assert "BatchMode yes" in block and "IdentityFile /keys/id_ed25519" in block
        assert "HostName 10.9.0.2" in block and "Port 2222" in block and "User ops" in block
        assert f"ControlPath {files.control_dir()}/cm-%C" in block and "ControlMaster auto" in block
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(files.folder.stat().st_mode) == 0o700
    assert stat.S_IMODE(files.known_hosts.stat().st_mode) == 0o600
    # Without identity_file: the agent and ssh's default keys.
    assert "IdentityFile" not in ssh.config_text(files, [_host()])
    # host add's probe checks the key on a connection of its own, never a master's session.
    probe = ssh.config_text(files, [_host()], multiplex=False)
    assert "ControlPath none" in probe and "ControlMaster no" in probe
    # The wrapper the docker CLI finds first on PATH runs ssh with this config.
    wrapper = files.wrapper.read_text()
    assert f"-F {files.config}" in wrapper and os.access(files.wrapper, os.X_OK)
    env = ssh.docker_env(files, "w2")
    assert env["DOCKER_HOST"] == "ssh://sbm-w2"
    assert env["PATH"].split(os.pathsep)[0] == str(files.bin_dir)


def test_hosts_settings_name_the_key_and_declared_host_keys(tmp_path):
    from controller.config import load_settings

    config = tmp_path / "config.toml"
    config.write_text('[hosts]\nidentity_file = "/k/id"\nknown_hosts = "/etc/sbm/known_hosts"\n')
    settings = load_settings(root=tmp_path / "r", config=config, env={})
    assert settings.ssh_identity == Path("/k/id")
    assert settings.ssh_known_hosts == Path("/etc/sbm/known_hosts")
    env = {"SUPABASE_MANAGER_SSH_IDENTITY_FILE": "/cred/key"}
    assert load_settings(root=tmp_path / "r", config=config, env=env).ssh_identity == Path(
        "/cred/key"
    )
    assert load_settings(root=tmp_path / "r", env={}).ssh_identity is None
    config.write_text('[hosts]\nidentity_file = "relative/key"\n')
    with pytest.raises(UsageError, match="absolute"):
        load_settings(root=tmp_path / "r", config=config, env={})
    # Declared keys are trusted beside the recorded ones; ssh records new ones in the first.
    files = ssh.SshFiles.of(tmp_path / "r")
    text = ssh.config_text(files, [_host()], known_hosts=Path("/etc/sbm/known_hosts"))
    assert f"UserKnownHostsFile {files.known_hosts} /etc/sbm/known_hosts" in text


def test_a_long_data_folder_keeps_its_control_sockets_short(tmp_path):
    files = ssh.SshFiles(tmp_path / ("x" * 80) / "ssh")
    folder = files.control_dir()
    assert folder is not None and len(str(folder / ("cm-" + "0" * 40))) < 100
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700


@pytest.mark.parametrize(
    ("stderr", "code", "kind", "words"),
    [
        ("ssh: connect to host 10.9.0.2 port 22: Connection refused", 255, "unreachable", "unre"),
        ("ssh: connect to host 10.9.0.2 port 22: No route to host", 255, "unreachable", "unre"),
        ("ops@10.9.0.2: Permission denied (publickey).", 255, "auth", "key was refused"),
        ("No ED25519 host key is known for [10.9.0.2]:22 and you have requested strict "
         "checking.\nHost key verification failed.", 255, "unknown-key", "not known"),
        ("@@@ WARNING: REMOTE HOST IDENTIFICATION HAS CHANGED! @@@\nHost key verification "
         "failed.", 255, "changed-key", "CHANGED"),
        ("sh: 1: docker: not found", 127, "remote", "remote command failed"),
    ],
)  # fmt: skip
def test_ssh_failures_are_one_line_naming_the_cause(stderr, code, kind, words):
    error = ssh.failure("w2", stderr, code)
    assert error.kind == kind and words in str(error) and "\n" not in str(error)
    assert str(error).startswith("host w2")


# --- host add: input rules ----------------------------------------------------------------------


def test_host_urls_and_addresses_are_checked():
    assert host_ops.parse_url("ssh://ops@10.9.0.2") == ("ops", "10.9.0.2", 22)
    assert host_ops.parse_url("ssh://ops@w2.example.net:2222") == ("ops", "w2.example.net", 2222)
    assert host_ops.parse_url("ssh://ops@[fd00::2]:22") == ("ops", "fd00::2", 22)
    for bad in (
        "ops@10.9.0.2",
        "http://ops@10.9.0.2",
        "ssh://10.9.0.2",
        "ssh://ops:secret@10.9.0.2",
        "ssh://ops@10.9.0.2/path",
        "ssh://ops@10.9.0.2:99999",
        "ssh://o;p@10.9.0.2",
        "ssh://ops@bad_host!",
    ):
        with pytest.raises(UsageError):
            host_ops.parse_url(bad)
    assert host_ops.check_bind("10.9.0.2") == "10.9.0.2"
    for bad in ("0.0.0.0", "::", "10.9.0", "w2.example.net", "224.0.0.1"):
        with pytest.raises(UsageError):
            host_ops.check_bind(bad)
    for bad in ("local", "Bad", "-x", "a" * 40, ""):
        with pytest.raises(UsageError):
            host_ops.validate_host_name(bad)
    with pytest.raises(UsageError):
        host_ops.check_data_root("relative/dir")
    assert host_ops.check_data_root("/srv/sbm/") == "/srv/sbm"


def test_an_ssh_engine_address_dials_docker_over_ssh():
    address = EngineAddress.parse("ssh://ops@10.9.0.2:2222")
    assert (address.scheme, address.user, address.host, address.port) == (
        "ssh",
        "ops",
        "10.9.0.2",
        2222,
    )
    assert not address.local and str(address) == "ssh://ops@10.9.0.2:2222"
    argv = address.dial_argv()
    assert argv[-2:] == ["10.9.0.2", "docker system dial-stdio"]
    assert argv[argv.index("-l") : argv.index("-l") + 2] == ["-l", "ops"]
    configured = EngineAddress("ssh", host="sbm-w2", ssh_config="/r/ssh/config")
    assert configured.dial_argv()[1:4] == ["-T", "-F", "/r/ssh/config"]


def test_the_docker_cli_gets_the_place_environment_through_env():
    assert client_call({}) == ["docker"]
    call = client_call({"DOCKER_HOST": "ssh://sbm-w2", "DOCKER_CONTEXT": "", "PATH": "/p"})
    # env(1) takes every -u before the first NAME=VALUE.
    assert call == ["env", "-u", "DOCKER_CONTEXT", "DOCKER_HOST=ssh://sbm-w2", "PATH=/p", "docker"]


# --- ports on the host's address, Caddy dialling it ---------------------------------------------


def _record(host: str = "local") -> InstanceRecord:
    keys = needed_ports(TEMPLATE, [])
    return InstanceRecord(
        name="c1",
        template="v0.8.2",
        ports={key: 24000 + i for i, key in enumerate(keys)},
        host=host,
    )


def _published(folder: Path) -> list[str]:
    """The port specs of the override, as written (``- ADDRESS:HOST:CONTAINER/PROTO`` lines)."""
    text = (folder / "docker-compose.override.yml").read_text()
    found = re.findall(r"^\s+- '?([^\s']+:\d+:\d+/(?:tcp|udp))'?$", text, re.MULTILINE)
    assert found, text
    return found


def test_ports_of_a_remote_instance_bind_to_its_host_address(tmp_path):
    from controller.config import Settings

    settings = Settings(root=tmp_path / "root", domain="d.test")
    folder = render_instance(settings, _record(), TEMPLATE, bind="10.9.0.2")
    assert all(p.startswith("10.9.0.2:") for p in _published(folder))
    folder = render_instance(settings, _record(), TEMPLATE)  # local: loopback as before
    assert all(p.startswith("127.0.0.1:") for p in _published(folder))


def test_caddy_dials_a_remote_instance_on_its_host_address(tmp_path):
    from controller.config import Settings
    from controller.sites import site_spec

    settings = Settings(root=tmp_path / "root", domain="d.test")
    env = {"DASHBOARD_USERNAME": "admin", "DASHBOARD_PASSWORD": "Pw-123"}
    record = _record("w2")
    spec = site_spec(settings, record, TEMPLATE, env, upstream_host="10.9.0.2")
    assert spec.api_upstream == f"10.9.0.2:{record.ports['api-gw:8000']}"
    assert site_spec(settings, record, TEMPLATE, env, upstream_host="fd00::2").api_upstream == (
        f"[fd00::2]:{record.ports['api-gw:8000']}"
    )


# --- end to end: a second Docker host behind sshd (tests/world/worker.py) ------------------------


@pytest.fixture
def two_hosts(data_root, caddy, docker_sandbox, worker, worker_sandbox):
    """A ROOT that reaches the worker with its key; its ssh masters are ended afterwards."""
    from tests.world.cli import CliRoot

    root = CliRoot(data_root, caddy, SUPABASE_MANAGER_SSH_IDENTITY_FILE=str(worker.identity_file))
    root.run("template", "import", str(fixtures_dir() / "v0.8.2"), "--name", "v0.8.2")
    try:
        yield root
    finally:
        close_masters(data_root)  # of every config (identity variant), and checked gone


def _state(root) -> dict:
    path = root.root / "state.json"
    return json.loads(path.read_text()) if path.is_file() else {}


@pytest.mark.docker
def test_an_unknown_host_key_is_refused_unless_accepted(two_hosts, worker):
    known = two_hosts.root / "ssh" / "known_hosts"
    refused = two_hosts.run("host", "add", "w2", worker.ssh_url, check=False)
    assert refused.returncode == 2, refused.stderr
    assert "host key is not known" in refused.stderr and "--accept-new-key" in refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1
    assert not _state(two_hosts).get("hosts") and worker.host_public_key not in known.read_text()

    # What the worker lacks is named in one line (exit 1), and nothing is recorded.
    plugins = "/usr/local/lib/docker/cli-plugins"
    worker.run(f"mkdir -p /tmp/sbm-empty && mount --bind /tmp/sbm-empty {plugins}")
    try:
        lacking = two_hosts.run(
            "host", "add", "w2", worker.ssh_url, "--accept-new-key", check=False
        )
    finally:
        worker.run(f"umount {plugins}")
    assert lacking.returncode == 1 and "compose v2 plugin is missing there" in lacking.stderr
    worker.stop_engine()
    try:
        down = two_hosts.run("host", "add", "w2", worker.ssh_url, "--accept-new-key", check=False)
    finally:
        worker.start_engine()
    assert down.returncode == 1 and "Docker daemon there does not answer" in down.stderr
    assert not _state(two_hosts).get("hosts") and worker.host_public_key not in known.read_text()

    two_hosts.run("host", "add", "w2", worker.ssh_url, "--accept-new-key")
    assert worker.host_public_key in known.read_text()
    recorded = _state(two_hosts)["hosts"]["w2"]
    assert (recorded["address"], recorded["user"], recorded["bind"]) == (
        worker.address,
        "root",
        worker.bind_address,
    )
    rows = {row["name"]: row for row in two_hosts.json("host", "list")}
    assert rows["w2"]["reachable"] is True and rows["w2"]["instances"] == 0

    # A key that differs from the recorded one is refused, --accept-new-key or not.
    other = subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(two_hosts.root / "k")],
        capture_output=True,
    )
    assert other.returncode == 0
    forged = " ".join((two_hosts.root / "k.pub").read_text().split()[:2])
    known.write_text(f"{worker.address} {forged}\n")
    changed = two_hosts.run("host", "add", "w3", worker.ssh_url, "--accept-new-key", check=False)
    assert changed.returncode == 2 and "CHANGED" in changed.stderr, changed.stderr
    assert set(_state(two_hosts)["hosts"]) == {"w2"}


def _instance_containers(worker_client, name: str) -> list:
    label = {"label": f"io.supabase-manager.instance={name}"}
    return worker_client.containers.list(all=True, filters=label)


@pytest.mark.docker
def test_an_instance_on_the_worker_runs_there_behind_caddy(
    two_hosts, worker, docker_sandbox, caddy
):
    from tests.world.net import port_open
    from tests.world.standin import write_standin_overlay

    root = two_hosts.root
    two_hosts.run("host", "add", "w2", worker.ssh_url, "--accept-new-key")
    template = root / "templates" / "v0.8.2"
    standin = write_standin_overlay([template / "docker-compose.yml"], root.parent / "s.yml")
    two_hosts.run(
        "create", "c1", "--host", "w2", "--template", "v0.8.2", "--extra-compose", str(standin)
    )

    # Its containers run on the worker's engine, and none on the local one.
    client = worker.client()
    try:
        containers = _instance_containers(client, "c1")
        assert containers and all(c.status == "running" for c in containers)
        assert docker_sandbox.new_containers() == []
        # Every published port is on the worker's address only.
        bindings = [
            b
            for c in containers
            for spec in (c.attrs["HostConfig"]["PortBindings"] or {}).values()
            for b in spec or []
        ]
        assert bindings and {b["HostIp"] for b in bindings} == {worker.bind_address}
    finally:
        client.close()
    gateway = _state(two_hosts)["instances"]["c1"]["ports"]["api-gw:8000"]
    assert port_open(gateway, worker.address) and not port_open(gateway, "127.0.0.1")

    # Caddy (here) reaches its gateway there.
    answer = caddy.get("c1.sbm.test", "/rest/v1/")
    assert answer.status_code == 200 and "of c1" in answer.text, answer.text

    # Its folder is on the worker, a copy of its own (the worker's mount namespace), .env 0600;
    # the database wrote its files there, not here.
    folder = root / "instances" / "c1"
    assert worker.run(["stat", "-c", "%a", str(folder / ".env")]).stdout.strip() == "600"
    theirs = worker.data_store / folder.relative_to(worker.data_dir)
    assert (theirs / ".env").read_bytes() == (folder / ".env").read_bytes()
    assert os.stat(theirs / ".env").st_ino != os.stat(folder / ".env").st_ino
    assert any((theirs / "volumes" / "db" / "data").iterdir())
    mine = folder / "volumes" / "db" / "data"
    assert not mine.exists() or not any(mine.iterdir())

    # show and list say where it runs.
    shown = two_hosts.json("show", "c1")
    assert (shown["host"], shown["bind"], shown["status"]) == ("w2", worker.bind_address, "running")
    listed = {row["name"]: row for row in two_hosts.json("list")}
    assert listed["c1"]["host"] == "w2" and listed["c1"]["status"] == "running"
    assert "host      w2" in two_hosts.run("show", "c1").stdout

    # The host cannot go while it runs an instance.
    refused = two_hosts.run("host", "remove", "w2", check=False)
    assert refused.returncode == 2 and "still runs 1 instance" in refused.stderr

    # stop and start act on the worker's engine.
    two_hosts.run("stop", "c1")
    client = worker.client()
    try:
        assert not [c for c in _instance_containers(client, "c1") if c.status == "running"]
        two_hosts.run("start", "c1")
        assert all(c.status == "running" for c in _instance_containers(client, "c1"))
    finally:
        client.close()

    # delete --purge removes it all there: containers, volumes, network, folder, route.
    two_hosts.run("delete", "c1", "--purge", "--yes")
    client = worker.client()
    try:
        project = {"label": "com.docker.compose.project=c1"}
        assert _instance_containers(client, "c1") == []
        assert client.volumes.list(filters=project) == []
        assert client.networks.list(filters=project) == []
    finally:
        client.close()
    assert worker.run(["test", "-e", str(folder)], check=False).returncode == 1
    assert not folder.exists()
    assert "of c1" not in caddy.get("c1.sbm.test", "/rest/v1/").text
    two_hosts.run("host", "remove", "w2")
    assert not _state(two_hosts)["hosts"]


def test_placement_takes_a_host_that_answers(tmp_path):
    """Without --host: the host with the most free memory among those that answer; a host whose
    sshd refuses (a closed loopback port here) is passed over, and local alone asks nothing."""
    from controller.config import Settings
    from controller.ops.base import Context
    from controller.state import State

    ctx = Context.of(Settings(root=tmp_path / "root"))
    assert host_ops.choose(ctx, State()) == "local"
    state = State(hosts={"w9": HostRecord("w9", "ops", "127.0.0.1", port=1, bind="127.0.0.1")})
    assert host_ops.choose(ctx, state) == "local"
    with pytest.raises(ssh.SshError, match="host w9 is unreachable over ssh"):
        host_ops.free_memory(ctx, state, "w9")
    assert host_ops.free_memory(ctx, state, "local") > 0
