"""The NixOS module's hosts: `services.supabase-manager.hosts` and `sshKeyFile` (issue 15).

nix/module.nix goes through nixpkgs' real module system (lib.evalModules of
../shared/vendor/nixpkgs-lib), next to the NixOS option declarations and stand-in packages of
nix/tests/ (as in tests/test_nix.py), in configurations written here. Beyond the values:
- the known_hosts file the module writes is used by the real OpenSSH client against a real sshd
  on a loopback port (the declared key lets it in, another key is refused);
- the script of supabase-manager-hosts runs with a stand-in for the program that records its
  arguments and answers with chosen exit statuses, and with the real program (through the
  module's command wrapper, in the unit's environment) against that sshd, whose `docker` is this
  machine's engine: `host add` only asks it for versions, no container is made.
"""

import json
import os
import re
import shutil
import subprocess
import textwrap
import tomllib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from controller.config import load_settings
from tests.world.net import free_port, port_open, wait_until

REPO = Path(__file__).resolve().parent.parent
NIXPKGS_LIB = Path(
    os.environ.get("SUPABASE_MANAGER_NIXPKGS_LIB", REPO.parent / "shared/vendor/nixpkgs-lib/lib")
)
KEY_FILE = "/run/secrets/supabase-manager-ssh-key"
UNITS_WITH_EVERYTHING = {
    "supabase-manager-hosts",
    "supabase-manager-start",
    "supabase-manager-sync",
    "supabase-manager-maintenance",
    "supabase-manager-backup",
    "supabase-manager-metrics",
}

# Evaluates each module of `modules` ({ NAME = PATH; }) and prints what the tests look at.
DRIVER = """
{ libPath, repo, modules }:
let
  lib = import libPath;
  sm = import (repo + "/nix/lib.nix");
  pkgs = import (repo + "/nix/tests/stub-pkgs.nix") { inherit lib; };
  evaluate = module: lib.evalModules {
    modules = [
      (repo + "/nix/tests/nixos-options.nix")
      (repo + "/nix/module.nix")
      module
      { _module.args.pkgs = pkgs; }
    ];
  };
  summary = result:
    let
      c = result.config;
      cfg = c.services.supabase-manager;
      etc = c.environment.etc;
      ours = name: _: lib.hasPrefix "supabase-manager" name;
      services = lib.filterAttrs ours c.systemd.services;
      exec = value: if lib.isDerivation value then { path = value.outPath; text = value.text; }
        else value;
    in {
      failedAssertions = map (a: a.message) (builtins.filter (a: !a.assertion) c.assertions);
      inherit (c) warnings;
      services = lib.mapAttrs (_: s: {
        inherit (s) description wantedBy wants after requires environment path restartIfChanged;
        serviceConfig = lib.mapAttrs (_: exec) s.serviceConfig;
      }) services;
      command = let p = builtins.head c.environment.systemPackages; in {
        path = "${p.outPath}/bin/supabase-manager";
        inherit (p) text;
      };
      configFile = if etc ? "supabase-manager/config.toml"
        then etc."supabase-manager/config.toml".source.value else null;
      knownHosts = if etc ? "supabase-manager/known_hosts"
        then etc."supabase-manager/known_hosts".text else null;
      urls = lib.mapAttrs (_: host: sm.parseSshUrl host.url) cfg.hosts;
    };
in
lib.mapAttrs (_: path: summary (evaluate (import path))) modules
"""


# --- evaluation ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def nix(tmp_path_factory):
    """nix-instantiate --eval of the driver with a private state folder and no store."""
    exe = shutil.which("nix-instantiate")
    if exe is None:
        pytest.fail("nix-instantiate is missing: run scripts/provision.d/nix.sh")
    if not (NIXPKGS_LIB / "default.nix").is_file():
        pytest.fail(f"nixpkgs' lib is not at {NIXPKGS_LIB}; set SUPABASE_MANAGER_NIXPKGS_LIB")
    home = tmp_path_factory.mktemp("nix")
    driver = home / "driver.nix"
    driver.write_text(DRIVER)
    env = dict(os.environ, HOME=str(home), NIX_STATE_DIR=str(home / "state"))
    env.update(NIX_LOG_DIR=str(home / "log"), NIX_CONF_DIR=str(home / "conf"))
    env.pop("NIX_PATH", None)
    env.pop("NIX_REMOTE", None)
    counter = iter(range(1_000_000))

    def evaluate(configs: dict[str, str]) -> subprocess.CompletedProcess:
        paths = {}
        for name, text in configs.items():
            path = home / f"{name}-{next(counter)}.nix"
            path.write_text(text)
            paths[name] = path
        modules = "{ " + " ".join(f'"{name}" = {path};' for name, path in paths.items()) + " }"
        args = ["--arg", "libPath", str(NIXPKGS_LIB), "--arg", "repo", str(REPO)]
        return subprocess.run(
            [
                exe,
                "--store",
                "dummy://",
                "--eval",
                "--strict",
                "--json",
                str(driver),
                *args,
                "--arg",
                "modules",
                modules,
            ],
            cwd=REPO,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )

    return evaluate


def module(body: str) -> str:
    """A NixOS module setting services.supabase-manager (enabled) to `body`'s attributes."""
    return "{ services.supabase-manager = { enable = true;\n" + body + "\n}; }\n"


@pytest.fixture(scope="module")
def keys(tmp_path_factory) -> dict[str, Path]:
    """Real OpenSSH keys: two workers' host keys and the manager's client key."""
    folder = tmp_path_factory.mktemp("keys")
    found = {}
    for name, kind in (("worker1", "ed25519"), ("worker2", "ecdsa"), ("client", "ed25519")):
        path = folder / name
        subprocess.run(
            ["ssh-keygen", "-q", "-t", kind, "-N", "", "-C", f"root@{name}", "-f", str(path)],
            check=True,
        )
        found[name] = path
    return found


def pub(path: Path) -> str:
    return path.with_suffix(".pub").read_text().strip()


@pytest.fixture(scope="module")
def sshd_port() -> int:
    return free_port()


@pytest.fixture(scope="module")
def evaluated(nix, keys, sshd_port) -> dict:
    """The good configurations, in one nix-instantiate call."""
    hosts = f"""
      hosts.worker1 = {{
        url = "ssh://root@127.0.0.1:{sshd_port}";
        bind = "10.100.0.2";
        hostKey = "{pub(keys["worker1"])}";
      }};
      hosts.worker2 = {{
        url = "ssh://deploy@[fd00::3]";
        dataRoot = "/srv/sbm";
        hostKey = "{pub(keys["worker2"])}";
      }};
    """
    configs = {
        "defaults": module(""),
        "hosts": module(
            hosts
            + f"""
            sshKeyFile = "{keys["client"]}";
            backup = {{ enable = true; passwordFile = "/run/secrets/backup-password"; }};
            metrics.enable = true;
            """
        ),
        "hosts-no-key": module(hosts),
        "key-only": module(f'sshKeyFile = "{KEY_FILE}";'),
        "dns-host": module(
            'hosts.w = { url = "ssh://deploy@worker.example.test:2200"; bind = "10.0.0.9";'
            f' hostKey = "{pub(keys["worker1"])}"; }};'
        ),
        "dns-host-unrestricted": module(
            "ipAddressAllow = null;"
            'hosts.w = { url = "ssh://deploy@worker.example.test"; bind = "10.0.0.9";'
            f' hostKey = "{pub(keys["worker1"])}"; }};'
        ),
        "dns-no-bind": module(
            'hosts.w = { url = "ssh://deploy@worker.example.test";'
            f' hostKey = "{pub(keys["worker1"])}"; }};'
        ),
        "data-root-dotdot": module(
            'hosts.w = { url = "ssh://root@10.0.0.2"; dataRoot = "/srv/../etc";'
            f' hostKey = "{pub(keys["worker1"])}"; }};'
        ),
        "readme": readme_example(),
        "local-worker": module(
            f'hosts.worker1 = {{ url = "ssh://root@127.0.0.1:{sshd_port}"; bind = "127.0.0.1";'
            f' hostKey = "{pub(keys["worker1"])}"; }}; sshKeyFile = "{KEY_FILE}";'
        ),
    }
    key = pub(keys["worker1"])
    for name, bind in (("bind-any", "0.0.0.0"), ("bind-any6", "::"), ("bind-zeros", "0:0::0")):
        configs[name] = module(
            f'hosts.w1 = {{ url = "ssh://root@10.0.0.2"; bind = "{bind}"; hostKey = "{key}"; }};'
        )
    configs["url-port"] = module(
        f'hosts.w1 = {{ url = "ssh://root@10.0.0.2:70000"; hostKey = "{key}"; }};'
    )
    configs["name-local"] = module(
        f'hosts.local = {{ url = "ssh://root@10.0.0.2"; hostKey = "{key}"; }};'
    )
    configs["name-upper"] = module(
        f'hosts.Worker_1 = {{ url = "ssh://root@10.0.0.2"; hostKey = "{key}"; }};'
    )
    configs["settings-override"] = module(
        f'sshKeyFile = "{KEY_FILE}"; settings.hosts.identity_file = "/root/.ssh/id_ed25519";'
    )
    proc = nix(configs)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def readme_example() -> str:
    """The README's hosts example (the ```nix block that sets sshKeyFile)."""
    text = (REPO / "README.md").read_text()
    blocks = [b.split("```", 1)[0] for b in text.split("```nix\n")[1:]]
    [block] = [b for b in blocks if "sshKeyFile" in b]
    return block


# --- the config file and known_hosts ---------------------------------------------------------


def test_config_file_names_the_key_and_the_declared_host_keys(evaluated, keys, tmp_path):
    out = evaluated["hosts"]
    assert out["failedAssertions"] == []
    assert out["configFile"]["hosts"] == {
        "identity_file": str(keys["client"]),
        "known_hosts": "/etc/supabase-manager/known_hosts",
    }
    # The program reads the file the module writes.
    path = tmp_path / "config.toml"
    path.write_text(toml(out["configFile"]))
    assert tomllib.loads(path.read_text()) == out["configFile"]
    assert load_settings(env={"SUPABASE_MANAGER_CONFIG": str(path)}).ssh_known_hosts == Path(
        "/etc/supabase-manager/known_hosts"
    )
    env = {"SUPABASE_MANAGER_CONFIG": str(path), "SUPABASE_MANAGER_ROOT": "/x"}
    assert load_settings(env=env).ssh_identity == keys["client"]
    # In a unit, the credential's path (%d: /run/credentials/UNIT) wins over the file's.
    for name, unit in out["services"].items():
        unit_env = {
            k: v.replace("%d", f"/run/credentials/{name}.service")
            for k, v in unit["environment"].items()
        }
        settings = load_settings(env=unit_env | env)
        assert settings.ssh_identity == Path(f"/run/credentials/{name}.service/ssh-key"), name

    assert evaluated["key-only"]["configFile"]["hosts"] == {"identity_file": KEY_FILE}
    assert evaluated["key-only"]["knownHosts"] is None
    assert evaluated["hosts-no-key"]["configFile"]["hosts"] == {
        "known_hosts": "/etc/supabase-manager/known_hosts"
    }
    assert "hosts" not in evaluated["defaults"]["configFile"]
    assert evaluated["defaults"]["knownHosts"] is None


def test_settings_may_not_set_the_hosts_keys(evaluated):
    [message] = evaluated["settings-override"]["failedAssertions"]
    assert "hosts.identity_file" in message


def test_known_hosts_lines(evaluated, keys, sshd_port, tmp_path):
    text = evaluated["hosts"]["knownHosts"]
    lines = text.splitlines()
    # The key's comment is left out; another port than 22 goes in [ADDRESS]:PORT.
    worker1 = pub(keys["worker1"]).rsplit(" ", 1)[0]
    worker2 = pub(keys["worker2"]).rsplit(" ", 1)[0]
    assert lines == [f"[127.0.0.1]:{sshd_port} {worker1}", f"fd00::3 {worker2}"]
    assert evaluated["dns-host"]["knownHosts"].startswith("[worker.example.test]:2200 ssh-ed25519 ")
    # OpenSSH finds each key under the name it looks up, with the same fingerprint. (The exact
    # form matters: `host add --accept-new-key` records [ADDRESS]:PORT lines, `host remove` drops
    # them by that name; ssh itself also takes a bare ADDRESS line for another port.)
    path = tmp_path / "known_hosts"
    path.write_text(text)
    for name, lookup in (("worker1", f"[127.0.0.1]:{sshd_port}"), ("worker2", "fd00::3")):
        found = subprocess.run(
            ["ssh-keygen", "-F", lookup, "-f", str(path), "-l"],
            capture_output=True,
            text=True,
        )
        assert found.returncode == 0, (lookup, found.stderr)
        expected = subprocess.run(
            ["ssh-keygen", "-l", "-f", str(keys[name].with_suffix(".pub"))],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.split()[1]
        assert expected in found.stdout, (lookup, found.stdout)


@pytest.fixture(scope="module")
def sshd(keys, sshd_port, tmp_path_factory):
    """A real sshd on 127.0.0.1 with worker1's host key, letting the client key in as root."""
    exe = Path("/usr/sbin/sshd")
    if not exe.exists():
        pytest.fail("sshd is missing: apt-get install openssh-server")
    folder = tmp_path_factory.mktemp("sshd")
    authorized = folder / "authorized_keys"
    authorized.write_text(pub(keys["client"]) + "\n")
    config = folder / "sshd_config"
    config.write_text(
        textwrap.dedent(f"""\
        ListenAddress 127.0.0.1:{sshd_port}
        HostKey {keys["worker1"]}
        AuthorizedKeysFile {authorized}
        PermitRootLogin prohibit-password
        PasswordAuthentication no
        KbdInteractiveAuthentication no
        UsePAM no
        StrictModes no
        PidFile none
        """)
    )
    Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)
    proc = subprocess.Popen(
        [str(exe), "-D", "-e", "-f", str(config)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        wait_until(lambda: port_open(sshd_port) or proc.poll() is not None, 10, "sshd")
        if proc.poll() is not None:
            pytest.fail(f"sshd did not start: {proc.stderr.read().decode()}")
        yield
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def ssh_with(out: dict, known_hosts: str, folder: Path) -> subprocess.CompletedProcess:
    """The real ssh client to worker1 with the module's URL, known_hosts and key file only."""
    path = folder / "known_hosts"
    path.write_text(known_hosts)
    url = out["urls"]["worker1"]
    return subprocess.run(
        [
            *("ssh", "-F", "none", "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=yes"),
            *("-o", f"UserKnownHostsFile={path}", "-o", "GlobalKnownHostsFile=/dev/null"),
            *("-o", "IdentitiesOnly=yes", "-i", out["configFile"]["hosts"]["identity_file"]),
            *("-p", str(url["port"]), f"{url['user']}@{url['address']}", "echo", "reached"),
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )


def test_real_ssh_trusts_the_declared_key_and_nothing_else(evaluated, sshd, keys, tmp_path):
    out = evaluated["hosts"]
    proc = ssh_with(out, out["knownHosts"], tmp_path)
    assert (proc.returncode, proc.stdout) == (0, "reached\n"), proc.stderr
    # worker2's key declared for worker1's address: refused, not trusted on first use.
    wrong = out["knownHosts"].replace(
        pub(keys["worker1"]).split()[1], pub(keys["worker2"]).split()[1]
    )
    wrong = wrong.replace("ssh-ed25519", "ecdsa-sha2-nistp256", 1)
    proc = ssh_with(out, wrong, tmp_path)
    assert proc.returncode == 255
    assert "Host key verification failed" in proc.stderr
    assert "reached" not in proc.stdout


# --- units -----------------------------------------------------------------------------------


def test_every_unit_gets_the_key_as_a_credential_and_ssh(evaluated, keys):
    out = evaluated["hosts"]
    units = out["services"]
    assert set(units) == UNITS_WITH_EVERYTHING
    for name, unit in units.items():
        config = unit["serviceConfig"]
        assert f"ssh-key:{keys['client']}" in config["LoadCredential"], name
        assert unit["environment"]["SUPABASE_MANAGER_SSH_IDENTITY_FILE"] == "%d/ssh-key", name
        assert any(p.endswith("-openssh") for p in unit["path"]), name
        # The workers' IP addresses (SSH and bind) are reachable, nothing else is added.
        if "IPAddressAllow" in config:
            assert config["IPAddressAllow"] == ["localhost", "127.0.0.1", "10.100.0.2", "fd00::3"]
    # The backup password stays a credential beside the key.
    assert units["supabase-manager-backup"]["serviceConfig"]["LoadCredential"] == [
        "backup-password:/run/secrets/backup-password",
        f"ssh-key:{keys['client']}",
    ]
    assert "IPAddressAllow" in units["supabase-manager-start"]["serviceConfig"]

    # Without a key file: no credential, ssh is still there (hosts added by hand, agents).
    for name, unit in evaluated["defaults"]["services"].items():
        assert "SUPABASE_MANAGER_SSH_IDENTITY_FILE" not in unit["environment"], name
        assert not unit["serviceConfig"].get("LoadCredential"), name
        assert any(p.endswith("-openssh") for p in unit["path"]), name
        assert unit["serviceConfig"]["IPAddressAllow"] == ["localhost"], name
    assert "supabase-manager-hosts" not in evaluated["defaults"]["services"]
    assert "supabase-manager-hosts" not in evaluated["key-only"]["services"]


def test_hosts_unit(evaluated):
    out = evaluated["hosts"]
    units = out["services"]
    unit = units["supabase-manager-hosts"]
    config = unit["serviceConfig"]
    assert unit["wantedBy"] == ["multi-user.target"]
    assert unit["wants"] == ["network-online.target"]
    assert unit["after"] == ["network-online.target"]
    assert (config["Type"], config["RemainAfterExit"]) == ("oneshot", True)
    # A worker down at boot is retried with backoff; a refused host is not.
    assert (config["Restart"], config["RestartPreventExitStatus"]) == ("on-failure", 2)
    assert config["RestartMaxDelaySec"] == "5min"
    # Hardened as the other units, with no capability at all.
    assert config["ProtectSystem"] == "strict" and config["ProtectHome"] == "tmpfs"
    assert config["NoNewPrivileges"] is True and config["CapabilityBoundingSet"] == ""
    assert config["IPAddressDeny"] == "any"
    # Instances on the hosts start once the hosts are there.
    start = units["supabase-manager-start"]
    assert "supabase-manager-hosts.service" in start["wants"]
    assert "supabase-manager-hosts.service" in start["after"]
    assert {"network-online.target", "docker.service"} <= set(start["after"])


def run_add_hosts(out: dict, tmp_path: Path, statuses: dict[str, int]) -> tuple[int, list]:
    """Runs supabase-manager-hosts' script with the program replaced by a stand-in that logs its
    arguments and exits with statuses[host name] (0 when not given)."""
    script = out["services"]["supabase-manager-hosts"]["serviceConfig"]["ExecStart"]["text"]
    log = tmp_path / "calls.jsonl"
    log.unlink(missing_ok=True)
    standin = tmp_path / "program"
    standin.write_text(
        "#!/usr/bin/env python3\nimport json, sys\n"
        f"open({str(log)!r}, 'a').write(json.dumps(sys.argv[1:]) + '\\n')\n"
        f"sys.exit({statuses!r}.get(sys.argv[3], 0))\n"
    )
    standin.chmod(0o755)
    assert out["command"]["path"] in script
    runner = tmp_path / "add-hosts"
    runner.write_text("#!/bin/bash\n" + script.replace(out["command"]["path"], str(standin)))
    runner.chmod(0o755)
    proc = subprocess.run([str(runner)], capture_output=True, text=True, timeout=30)
    calls = [json.loads(line) for line in log.read_text().splitlines()]
    return proc.returncode, calls


def test_hosts_script_adds_every_declared_host(evaluated, sshd_port, tmp_path):
    out = evaluated["hosts"]
    status, calls = run_add_hosts(out, tmp_path, {})
    assert status == 0
    assert calls == [
        ["host", "add", "worker1", f"ssh://root@127.0.0.1:{sshd_port}", "--bind", "10.100.0.2"],
        ["host", "add", "worker2", "ssh://deploy@[fd00::3]", "--data-root", "/srv/sbm"],
    ]
    # One unreachable worker does not keep the next from being added; the unit fails and retries.
    status, calls = run_add_hosts(out, tmp_path, {"worker1": 1})
    assert status == 1 and len(calls) == 2
    # A host refused as bad input (another host of that name exists): exit 2, no retry.
    assert run_add_hosts(out, tmp_path, {"worker2": 2})[0] == 2
    # Both: retried, for the one that can come back.
    assert run_add_hosts(out, tmp_path, {"worker1": 2, "worker2": 1})[0] == 1


# --- the unit's script with the real program, against the real sshd ----------------------------


@pytest.fixture
def unit_runner(evaluated, keys, tmp_path):
    """Runs supabase-manager-hosts' script as systemd would for the `local-worker` configuration:
    the module's command wrapper around the real program, the unit's environment with %d a
    folder holding the key (LoadCredential), the module's config file and known_hosts (their
    /etc paths moved under tmp_path), a fresh data folder."""
    out = evaluated["local-worker"]
    [unit] = [out["services"]["supabase-manager-hosts"]]
    credentials = tmp_path / "credentials"
    credentials.mkdir()
    shutil.copy(keys["client"], credentials / "ssh-key")
    (credentials / "ssh-key").chmod(0o400)
    known_hosts = tmp_path / "known_hosts"
    known_hosts.write_text(out["knownHosts"])
    config = tmp_path / "config.toml"
    config.write_text(
        toml(out["configFile"]).replace("/etc/supabase-manager/known_hosts", str(known_hosts))
    )
    program = REPO / ".venv" / "bin" / "supabase-manager"
    command = out["command"]["text"]
    package = re.search(r'exec (\S+) "\$@"', command).group(1)
    wrapper = tmp_path / "supabase-manager"
    wrapper.write_text("#!/bin/bash\n" + command.replace(package, str(program)))
    wrapper.chmod(0o755)
    script = unit["serviceConfig"]["ExecStart"]["text"]
    runner = tmp_path / "add-hosts"
    runner.write_text("#!/bin/bash\n" + script.replace(out["command"]["path"], str(wrapper)))
    runner.chmod(0o755)
    env = {k: v.replace("%d", str(credentials)) for k, v in unit["environment"].items()}
    env.update(
        SUPABASE_MANAGER_ROOT=str(tmp_path / "root"),
        SUPABASE_MANAGER_CONFIG=str(config),
        PATH=os.environ["PATH"],
        HOME=str(tmp_path),
    )

    def run() -> subprocess.CompletedProcess:
        return subprocess.run([str(runner)], env=env, capture_output=True, text=True, timeout=120)

    run.state = tmp_path / "root" / "state.json"
    return run


@pytest.mark.docker
def test_declared_host_is_added_without_trusting_a_new_key(unit_runner, sshd, sshd_port):
    """`host add` over the real sshd (whose `docker` is this machine's) with the declared key and
    no --accept-new-key."""
    proc = unit_runner()
    assert proc.returncode == 0, proc.stderr
    hosts = json.loads(unit_runner.state.read_text())["hosts"]
    assert set(hosts) == {"worker1"}
    record = hosts["worker1"]
    assert (record["user"], record["address"], record["port"]) == ("root", "127.0.0.1", sshd_port)
    assert record["bind"] == "127.0.0.1"
    # Nothing was recorded on first use: the declared file was enough.
    known = unit_runner.state.parent / "ssh" / "known_hosts"
    assert not known.exists() or known.read_text().strip() == ""


@pytest.mark.docker
def test_an_undeclared_key_is_refused(unit_runner, sshd, keys, tmp_path):
    # worker2's key declared for the address where sshd presents worker1's.
    known_hosts = tmp_path / "known_hosts"
    name = known_hosts.read_text().split()[0]
    known_hosts.write_text(" ".join([name, *pub(keys["worker2"]).split()[:2]]) + "\n")
    proc = unit_runner()
    assert proc.returncode == 2, proc.stderr
    # ssh sees a key for that address that does not match: refused, never recorded.
    assert "its SSH host key has CHANGED" in proc.stderr
    assert not unit_runner.state.exists() or "worker1" not in unit_runner.state.read_text()


@pytest.mark.docker
def test_rerunning_the_unit_changes_nothing(unit_runner, sshd):
    first = unit_runner()
    assert first.returncode == 0, first.stderr
    before = unit_runner.state.read_text()
    # The next boot, or a switch that changed another host.
    again = unit_runner()
    assert again.returncode == 0, again.stderr
    assert unit_runner.state.read_text() == before


# --- what is refused -------------------------------------------------------------------------


def test_unsafe_binds_names_and_ports_are_refused(evaluated):
    for name, bind in (("bind-any", "0.0.0.0"), ("bind-any6", "::"), ("bind-zeros", "0:0::0")):
        [message] = evaluated[name]["failedAssertions"]
        assert message.startswith("services.supabase-manager.hosts.w1.bind: " + bind), message
        assert "every interface" in message
    [message] = evaluated["url-port"]["failedAssertions"]
    assert "hosts.w1.url: port 70000" in message
    [message] = evaluated["name-local"]["failedAssertions"]
    assert "hosts.local" in message and "reserved" in message
    [message] = evaluated["name-upper"]["failedAssertions"]
    assert "hosts.Worker_1" in message
    # `host add` would refuse these at boot: the evaluation says it first.
    [message] = evaluated["dns-no-bind"]["failedAssertions"]
    assert "hosts.w.bind: worker.example.test is a DNS name" in message
    [message] = evaluated["data-root-dotdot"]["failedAssertions"]
    assert "hosts.w.dataRoot: /srv/../etc has a .. component" in message
    for name in ("hosts", "hosts-no-key", "key-only", "dns-host", "readme"):
        assert evaluated[name]["failedAssertions"] == [], name


def test_hosts_named_by_dns_need_a_wider_ip_allow_list(evaluated):
    [warning] = evaluated["dns-host"]["warnings"]
    assert "hosts: w named by DNS" in warning and "ipAddressAllow" in warning
    assert evaluated["dns-host-unrestricted"]["warnings"] == []
    assert evaluated["hosts"]["warnings"] == []


BAD = {
    "url-not-ssh": (
        'hosts.w1 = { url = "http://root@10.0.0.2"; hostKey = "ssh-ed25519 AAAA"; };',
        "services.supabase-manager.hosts.w1.url",
        "ssh://USER@ADDRESS[:PORT]",
    ),
    "url-no-user": (
        'hosts.w1 = { url = "ssh://10.0.0.2"; hostKey = "ssh-ed25519 AAAA"; };',
        "services.supabase-manager.hosts.w1.url",
        "ssh://USER@ADDRESS[:PORT]",
    ),
    "key-in-store": (
        'sshKeyFile = "/nix/store/00000000000000000000000000000000-id_ed25519";',
        "services.supabase-manager.sshKeyFile",
        "outside the Nix store",
    ),
    "key-path-literal": (
        "sshKeyFile = /root/.ssh/id_ed25519;",
        "services.supabase-manager.sshKeyFile",
        "outside the Nix store",
    ),
    "bind-dns-name": (
        'hosts.w1 = { url = "ssh://root@10.0.0.2"; bind = "w1.lan"; hostKey = "ssh-ed25519 A"; };',
        "services.supabase-manager.hosts.w1.bind",
        "IP address",
    ),
    "host-key-missing": (
        'hosts.w1 = { url = "ssh://root@10.0.0.2"; };',
        "services.supabase-manager.hosts.w1.hostKey",
        "has no value defined",
    ),
    "host-key-not-a-key": (
        'hosts.w1 = { url = "ssh://root@10.0.0.2"; hostKey = "AAAAC3NzaC1lZDI1NTE5"; };',
        "services.supabase-manager.hosts.w1.hostKey",
        "SSH public host key",
    ),
    "data-root-relative": (
        'hosts.w1 = { url = "ssh://root@10.0.0.2"; dataRoot = "srv"; hostKey = "ssh-ed25519 A"; };',
        "services.supabase-manager.hosts.w1.dataRoot",
        "absolute path",
    ),
}


def test_wrong_values_fail_evaluation_with_a_clear_message(nix):
    def attempt(item):
        name, (body, option, why) = item
        return name, option, why, nix({name: module(body)})

    with ThreadPoolExecutor(max_workers=2) as pool:
        results = list(pool.map(attempt, BAD.items()))
    for name, option, why, proc in results:
        assert proc.returncode != 0, (name, proc.stdout)
        assert option in proc.stderr, (name, proc.stderr)
        assert why in proc.stderr, (name, proc.stderr)


def toml(data: dict, prefix: str = "") -> str:
    """Enough of a TOML writer for the config file: scalars first, then tables."""
    lines, tables = [], []
    for key, value in data.items():
        if isinstance(value, dict):
            tables.append((key, value))
        else:
            lines.append(f"{key} = {json.dumps(value)}")
    text = "\n".join(lines) + ("\n" if lines else "")
    for key, value in tables:
        text += f"\n[{prefix}{key}]\n" + toml(value, f"{prefix}{key}.")
    return text
