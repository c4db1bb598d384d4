"""Bad input and faults that need neither Docker nor Caddy, through the real CLI: every refusal is
one line with exit 2 and leaves ROOT exactly as it was (checked by a snapshot of every file).

Caddy's admin address points at a closed port here, so a `create --no-start` does all it can and
then exits 1 with one line saying its routes are pending (pending()); Docker is pointed at a
socket that does not exist where a test says so.
"""

import json
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from controller.config import load_settings
from controller.errors import OperationError
from controller.manager import Manager
from tests.world.templates import fixtures_dir

REPO = Path(__file__).resolve().parent.parent
CLI = [sys.executable, "-m", "shell"]
NO_DOCKER = "unix:///nonexistent/docker.sock"


def _env(root: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SUPABASE_MANAGER_")}
    env.update(
        {
            "SUPABASE_MANAGER_ROOT": str(root),
            "SUPABASE_MANAGER_DOMAIN": "sbm.test",
            "SUPABASE_MANAGER_CADDY_ADMIN": "http://127.0.0.1:9",  # nothing listens
            "PYTHONPATH": str(REPO),
            "NO_COLOR": "1",
        }
    )
    env.update(extra)
    return env


def run(root: Path, *args: str | bytes, env: dict | None = None, prefix=()):
    return subprocess.run(
        [*prefix, *CLI, *args],
        env=env or _env(root),
        capture_output=True,
        timeout=120,
        cwd=REPO,
    )


def pending(proc: subprocess.CompletedProcess, done: str) -> None:
    """The command did ``done`` but could not reach Caddy: exit 1, one line naming both."""
    err = proc.stderr.decode()
    lines = [line for line in err.splitlines() if not line.startswith("… ")]
    assert proc.returncode == 1 and len(lines) == 1, err
    assert lines[0].startswith(f"supabase-manager: {done}, but Caddy's admin API at "), err
    assert "routes are pending; run `caddy sync` once Caddy is back" in lines[0], err


def snapshot(root: Path) -> dict[str, tuple]:
    """Every path under ROOT with its mode and content (folders: mode only)."""
    out = {}
    for path in sorted(root.rglob("*")):
        info = path.lstat()
        body = path.read_bytes() if stat.S_ISREG(info.st_mode) else None
        out[str(path.relative_to(root))] = (stat.S_IMODE(info.st_mode), body)
    return out


@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> Path:
    """A ROOT with template v0.8.2 and instance `a` (created with --no-start)."""
    root = tmp_path_factory.mktemp("hardening") / "root"
    root.mkdir()
    fixture = fixtures_dir() / "v0.8.2"
    proc = run(root, "template", "import", str(fixture), "--name", "v0.8.2", "--json")
    assert proc.returncode == 0, proc.stderr.decode()
    pending(run(root, "create", "a", "--no-start"), "a was created")
    return root


@pytest.fixture
def root(prepared, tmp_path) -> Path:
    """A fresh copy of the prepared ROOT for each test."""
    copy = tmp_path / "root"
    shutil.copytree(prepared, copy, symlinks=True)
    return copy


def _assert_refused(proc, status: int = 2) -> str:
    err = proc.stderr.decode(errors="replace")
    assert proc.returncode == status, err
    first, *rest = err.splitlines()
    assert first.startswith("supabase-manager: ") and "Traceback" not in err, err
    assert all(line.startswith("usage:") for line in rest), err
    assert "internal error" not in err
    return first


BAD_ARGS = [
    (["create", "b", "--template", "nosuch"], "no template named 'nosuch'"),
    (["create", "b", "--template", "../instances/a"], "no template named '../instances/a'"),
    (["create", "b", "--port", "api-gw=22"], "outside the port range"),
    (["create", "b", "--port", "api-gw=\u0662\u0660\u0660\u0660\u0661"], "invalid --port"),
    (["create", "b", "--port", "api-gw=70000"], "1-65535"),
    (["create", "b", "--memory", "99999999999999999999999g"], "more than Docker can take"),
    (["create", "b", "--cpus", "1e-300"], "invalid CPU limit"),
    (["create", "b", "--cpus", "0.001"], "invalid CPU limit"),
    (["env", "a", "set", "POSTGRES_DB="], "POSTGRES_DB: must not be empty"),
    (["env", "a", "set", "DASHBOARD_USERNAME="], "DASHBOARD_USERNAME: must not be empty"),
    (["env", "a", "set", "DASHBOARD_USERNAME=ad min"], "DASHBOARD_USERNAME"),
    (["env", "a", "set", "COMPOSE_PROFILES=x"], "COMPOSE_PROFILES is refused"),
    (["env", "a", "set", "COMPOSE_PATH_SEPARATOR=;"], "COMPOSE_PATH_SEPARATOR is refused"),
    (["env", "a", "set", "DOCKER_HOST=tcp://10.0.0.1:2375"], "DOCKER_HOST is refused"),
    (["env", "a", "set", b"SITE_URL=http://x/\xff"], "not valid UTF-8"),
    (["env", "a", "unset", "COMPOSE_FILE"], "managed by supabase-manager"),
]


@pytest.mark.parametrize(("args", "says"), BAD_ARGS, ids=[str(a[:4]) for a, _ in BAD_ARGS])
def test_bad_input_is_refused_and_changes_nothing(root, args, says):
    before = snapshot(root)
    extra = ["--no-start"] if args[0] == "create" else []
    first = _assert_refused(run(root, *args, *extra))
    assert says in first
    assert snapshot(root) == before  # no record, no lock file, no audit line, .env unchanged
    assert not (root / "locks" / "b.lock").exists()


@pytest.mark.parametrize(
    ("config", "says"),
    [
        (b"domain = 5\n", "invalid domain 5"),
        (b"public_port = 0\n", "invalid public port 0"),
        (b'domain = "-bad.example"\n', "invalid domain"),
        ('domain = "b\u00fccher.example"\n'.encode(), "xn--"),
        (b"\x89PNG\r\n\x1a\n\x00\x00\xff\xfe binary", "not UTF-8"),
    ],
)
def test_bad_config_is_refused_before_anything(root, config, says):
    (root / "config.toml").write_bytes(config)
    env = _env(root)
    env.pop("SUPABASE_MANAGER_DOMAIN")  # the file's domain counts
    before = snapshot(root)
    for args in (["list"], ["create", "b", "--no-start"]):
        first = _assert_refused(run(root, *args, env=env))
        assert says in first
    assert snapshot(root) == before


def test_unicode_domain_from_the_environment_is_refused(root):
    before = snapshot(root)
    env = _env(root, SUPABASE_MANAGER_DOMAIN="b\u00fccher.example")
    _assert_refused(run(root, "create", "b", "--no-start", env=env))
    assert snapshot(root) == before


def test_empty_root_never_falls_back(tmp_path):
    env = _env(tmp_path)
    env.pop("SUPABASE_MANAGER_ROOT")
    first = _assert_refused(run(tmp_path, "--root", "", "list", env=env))
    assert "--root is empty" in first
    first = _assert_refused(run(tmp_path, "list", env=_env(tmp_path, SUPABASE_MANAGER_ROOT="")))
    assert "SUPABASE_MANAGER_ROOT" in first


def test_read_only_root_is_one_line_and_untouched(root):
    before = snapshot(root)
    # A read-only bind mount of ROOT over itself, in a mount namespace of its own.
    prefix = [
        "unshare",
        "-m",
        "sh",
        "-c",
        f'mount --bind -o ro "{root}" "{root}" && exec "$@"',
        "-",
    ]
    for args in (
        ["create", "b", "--no-start"],
        ["env", "a", "set", "JWT_EXPIRY=60"],
        ["delete", "a", "--yes"],
        ["start", "a"],
        ["stop", "a"],
        ["caddy", "sync"],
    ):
        first = _assert_refused(run(root, *args, prefix=prefix))
        assert "read-only" in first, first
    assert snapshot(root) == before


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("[" * 100_000 + "]" * 100_000, "nested too deeply"),
        (json.dumps({"schema": 99, "instances": {}, "templates": {}}), "schema version 99"),
        (b"\xff\xfe{}", "not UTF-8"),
    ],
    ids=["deep", "schema-99", "binary"],
)
def test_unreadable_state_stops_every_command(root, text, says):
    state = root / "state.json"
    if isinstance(text, str):
        text = text.encode()
    state.write_bytes(text)
    before = snapshot(root)
    for args in (["list"], ["create", "b", "--no-start"], ["delete", "a", "--yes"]):
        first = _assert_refused(run(root, *args), status=2)
        assert str(state) in first and says in first, first
    assert snapshot(root) == before


def _state(root: Path) -> dict:
    return json.loads((root / "state.json").read_text())


def test_resuming_a_create_accepts_the_same_port_only(root):
    free = 20000 + os.getpid() % 5000
    pending(run(root, "create", "b", "--no-start", "--port", f"api-gw={free}"), "b was created")
    # As if the process had been killed after committing the record.
    data = _state(root)
    data["instances"]["b"]["phase"] = "creating"
    (root / "state.json").write_text(json.dumps(data))
    refused = run(root, "create", "b", "--no-start", "--port", f"api-gw={free + 1}")
    assert "--port" in _assert_refused(refused)
    pending(run(root, "create", "b", "--no-start", "--port", f"api-gw={free}"), "b was created")
    assert _state(root)["instances"]["b"]["phase"] == "ready"
    assert _state(root)["instances"]["b"]["ports"]["api-gw:8000"] == free


def test_delete_of_a_never_started_instance_needs_no_docker_nor_caddy(root):
    env = _env(root, DOCKER_HOST=NO_DOCKER)
    assert (root / "caddy" / "a.conf").is_file()
    pending(run(root, "delete", "a", "--purge", "--yes", env=env), "a was deleted")
    assert "a" not in _state(root)["instances"]
    assert not (root / "instances" / "a").exists()
    assert not (root / "caddy" / "a.conf").exists()


def test_delete_of_a_started_instance_with_docker_down_changes_nothing(root):
    data = _state(root)
    data["instances"]["a"]["started"] = True  # it ran once: it may have containers
    (root / "state.json").write_text(json.dumps(data))
    before = snapshot(root)
    proc = run(root, "delete", "a", "--purge", "--yes", env=_env(root, DOCKER_HOST=NO_DOCKER))
    err = proc.stderr.decode()
    assert proc.returncode == 1 and len(err.splitlines()) == 1, err
    assert "Docker" in err
    after = snapshot(root)
    # Only the audit log gained its "failed" line; the record, folder and snippet are kept.
    audit = after.pop("audit.log")[1].decode().splitlines()
    before.pop("audit.log")
    assert after == before
    assert json.loads(audit[-1])["outcome"] == "failed"


def test_audit_records_the_real_user_and_sudo_user(root):
    import pwd

    env = _env(root, LOGNAME="mallory", USER="mallory", SUDO_USER="alice")
    proc = run(root, "env", "a", "set", "JWT_EXPIRY=120", env=env)
    assert proc.returncode == 0, proc.stderr.decode()
    last = json.loads((root / "audit.log").read_text().splitlines()[-1])
    assert last["user"] == pwd.getpwuid(os.getuid()).pw_name
    assert last["sudo_user"] == "alice"
    assert last["command"] == "env set JWT_EXPIRY"


def test_env_edit_refuses_to_save_over_a_change_made_meanwhile(root):
    manager = Manager(load_settings(root=root, env=_env(root)))
    original = manager.env_text("a")
    edited = original.replace("JWT_EXPIRY=3600", "JWT_EXPIRY=900")
    assert edited != original
    manager.env_set("a", {"SITE_URL": "http://meanwhile.test"})
    current = (root / "instances" / "a" / ".env").read_text()
    with pytest.raises(OperationError, match="changed while it was being edited"):
        manager.env_replace("a", edited, original)
    assert (root / "instances" / "a" / ".env").read_text() == current
    # Started from the current text, the same edit is saved.
    change = manager.env_replace("a", current.replace("JWT_EXPIRY=3600", "JWT_EXPIRY=900"), current)
    assert change.changed == ["JWT_EXPIRY"]
    assert "JWT_EXPIRY=900" in (root / "instances" / "a" / ".env").read_text().splitlines()


def test_a_tar_import_without_extraction_filters_is_refused(tmp_path, monkeypatch):
    # Debian 12's Python 3.11.2 has no tarfile.data_filter (PEP 706 came with 3.11.4): the
    # program installs there, and a tar import says what it needs instead of unpacking unsafely.
    import tarfile

    from controller.config import Settings
    from controller.errors import OperationError
    from controller.templates import import_template

    archive = tmp_path / "t.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(fixtures_dir() / "v0.8.2", arcname="docker")
    monkeypatch.delattr(tarfile, "data_filter")
    root = tmp_path / "root"
    with pytest.raises(OperationError, match=r"needs Python 3\.11\.4 or newer"):
        import_template(Settings(root=root), archive, "t")
    assert not (root / "templates" / "t").exists()
