"""Scripts and plain commands, run as real processes of the installed `supabase-manager`."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.world.templates import fixtures_dir

REPO = Path(__file__).resolve().parent.parent
FIXTURE = fixtures_dir() / "v0.8.2"


def program() -> list[str]:
    installed = Path(sys.executable).parent / "supabase-manager"
    if installed.exists():
        return [str(installed)]
    return [sys.executable, "-m", "shell"]  # not installed: run the package from the tree


def sm(root, *args, stdin="", env=None):
    environ = {k: v for k, v in os.environ.items() if not k.startswith("SUPABASE_MANAGER_")}
    environ.update({"PYTHONPATH": str(REPO), "NO_COLOR": "1"}, **(env or {}))
    return subprocess.run(
        [*program(), "--root", str(root), *args],
        input=stdin,
        capture_output=True,
        text=True,
        env=environ,
        timeout=120,
        cwd=REPO,
    )


OK_LINES = "help list\ntemplate list\naudit\n"


def test_script_with_comments_and_blank_lines_succeeds(tmp_path):
    script = "# a comment\n\n   \nhelp list   # trailing comment\n  # indented comment\naudit\n"
    result = sm(tmp_path, stdin=script)
    assert result.returncode == 0, result.stderr
    assert "usage: list" in result.stdout
    assert "the audit log is empty" in result.stdout


def test_second_line_fails_stops_with_its_status(tmp_path):
    script = "help list\nshow nosuch\ntemplate list\n"
    result = sm(tmp_path, stdin=script)
    assert result.returncode == 1
    assert "usage: list" in result.stdout
    assert "no template yet" not in result.stdout  # line 3 never ran
    assert result.stderr.strip().splitlines() == [
        "supabase-manager: line 2: no instance named 'nosuch'"
    ]


def test_usage_error_line_stops_with_status_2(tmp_path):
    result = sm(tmp_path, stdin="# first\ncreate Bad_Name\ntemplate list\n")
    assert result.returncode == 2
    assert "line 2: invalid instance name 'Bad_Name'" in result.stderr
    assert "no template yet" not in result.stdout
    assert not (tmp_path / "state.json").exists()


def test_keep_going_runs_to_the_end_with_the_last_failure(tmp_path):
    script = "help list\nshow nosuch\ncreate Bad_Name\ntemplate list\n"
    result = sm(tmp_path, "--keep-going", stdin=script)
    assert result.returncode == 2  # the last failure's status
    assert "no template yet" in result.stdout  # line 4 ran
    assert "line 2: no instance named 'nosuch'" in result.stderr
    assert "line 3: invalid instance name" in result.stderr


def test_parse_error_line_reports_line_number_and_usage(tmp_path):
    result = sm(tmp_path, stdin="audit\nlogs\naudit\n")
    assert result.returncode == 2
    assert "supabase-manager: line 2: logs: missing NAME" in result.stderr
    assert "usage: logs NAME [SERVICE ...]" in result.stderr


def test_script_file_with_f(tmp_path):
    script = tmp_path / "script.sm"
    script.write_text("# from a file\naudit\nshow nosuch\naudit --json\n")
    result = sm(tmp_path, "-f", str(script))
    assert result.returncode == 1
    assert "line 3: no instance named 'nosuch'" in result.stderr  # comments count as lines
    assert "[]" not in result.stdout
    result = sm(tmp_path, "-f", str(script), "--keep-going")
    assert result.returncode == 1
    assert json.loads(result.stdout.split("the audit log is empty", 1)[1]) == []
    missing = sm(tmp_path, "-f", str(tmp_path / "nope"))
    assert missing.returncode == 2 and "cannot read" in missing.stderr


def test_delete_in_a_script_needs_yes(tmp_path):
    result = sm(tmp_path, stdin="delete alpha\n")
    assert result.returncode == 2
    assert "--yes" in result.stderr


def test_interactive_only_commands_refuse_in_scripts(tmp_path):
    assert sm(tmp_path, stdin="shell\n").returncode == 2
    assert sm(tmp_path, stdin="top\n").returncode == 2
    assert sm(tmp_path, stdin="create\n").returncode == 2


# --- plain commands ------------------------------------------------------------------------------
def test_argv_parse_error_exits_2_with_usage(tmp_path):
    result = sm(tmp_path, "show")
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        "supabase-manager: show: missing NAME",
        "usage: show NAME [--show-secrets]",
    ]
    result = sm(tmp_path, "frobnicate")
    assert result.returncode == 2 and "unknown command 'frobnicate'" in result.stderr


def test_manager_error_is_one_line_without_traceback(tmp_path):
    result = sm(tmp_path, "show", "nosuch")
    assert result.returncode == 1
    assert result.stderr == "supabase-manager: no instance named 'nosuch'\n"


def test_json_output_and_no_escape_codes(tmp_path):
    result = sm(tmp_path, "template", "list", "--json")
    assert result.returncode == 0 and json.loads(result.stdout) == []
    result = sm(tmp_path, "--json", "audit")
    assert json.loads(result.stdout) == []
    result = sm(tmp_path, "help", env={"NO_COLOR": ""})
    assert "\x1b" not in result.stdout


def test_version(tmp_path):
    result = sm(tmp_path, "--version")
    assert result.returncode == 0 and result.stdout.startswith("supabase-manager ")


@pytest.mark.docker
def test_cheap_commands_do_not_import_heavy_modules(tmp_path):
    """`list --json --no-stats` with instances in state asks the Docker engine (no container of
    theirs exists: both are `missing`), and loads none of the heavy libraries to do it."""
    from controller.config import load_settings
    from controller.state import READY, InstanceRecord, StateStore

    settings = load_settings(tmp_path)
    with StateStore(settings.state_path, settings.lock_path).transaction() as state:
        for name in ("cheap-one", "cheap-two"):
            state.instances[name] = InstanceRecord(name=name, template="v0.8.2", phase=READY)
    code = (
        "import sys, json; from shell.cli import main; rc = main(['--root', sys.argv[1], 'list', "
        "'--json', '--no-stats']); heavy = [m for m in ('prompt_toolkit', 'docker', "
        "'python_on_whales', 'httpx', 'yaml', 'jwt', 'cryptography') if m in sys.modules]; "
        "print(json.dumps(heavy)); sys.exit(rc)"
    )
    result = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path)],
        capture_output=True,
        text=True,
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert result.returncode == 0, result.stderr  # Docker answered
    listed, heavy = result.stdout.rsplit("\n", 2)[0], result.stdout.splitlines()[-1]
    rows = json.loads(listed)
    assert [(r["name"], r["status"]) for r in rows] == [
        ("cheap-one", "missing"),
        ("cheap-two", "missing"),
    ]
    assert json.loads(heavy) == []


# --- with Docker: a script that creates, lists and deletes instances ------------------------------
def _docker_answers() -> bool:
    if shutil.which("docker") is None:
        return False
    return subprocess.run(["docker", "info"], capture_output=True, timeout=30).returncode == 0


@pytest.mark.docker
@pytest.mark.skipif(not FIXTURE.is_dir(), reason="upstream template fixture missing")
def test_script_creates_lists_and_deletes(data_root, caddy):
    tmp_path = data_root  # the ROOT whose snippets the Caddy imports
    if not _docker_answers():
        pytest.skip("Docker does not answer")
    script = f"""
# import the template, make two instances without starting them
template import {FIXTURE} --name v082
create batch-one --no-start
create batch-two --no-start   # a second one
list --json --no-stats
env batch-one get SITE_URL
delete batch-one --yes --purge
delete batch-two --yes --purge
list --json --no-stats
"""
    result = sm(tmp_path, stdin=script, env={"SUPABASE_MANAGER_CADDY_ADMIN": caddy.admin_url})
    assert result.returncode == 0, result.stderr
    decoder = json.JSONDecoder()
    text = result.stdout
    start = text.index("[")
    listed, _ = decoder.raw_decode(text[start:])
    assert sorted(row["name"] for row in listed) == ["batch-one", "batch-two"]
    assert "https://batch-one.localhost" in text
    assert text.rstrip().endswith("[]")
    assert not (tmp_path / "instances" / "batch-one").exists()


def test_script_file_that_is_not_utf8_fails_cleanly(tmp_path):
    script = tmp_path / "latin1.sbm"
    script.write_bytes(b"# caf\xe9\ntemplate list\naudit caf\xe9\n")
    proc = sm(tmp_path, "-f", str(script))
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr and "line 3" in proc.stderr


# --- a real instance folder (rendered by `create --no-start`): env set from stdin, env edit -------
@pytest.fixture(scope="module")
def instance_root(tmp_path_factory):
    if not _docker_answers():
        pytest.fail("Docker does not answer: run scripts/provision", pytrace=False)
    root = tmp_path_factory.mktemp("env-root")
    script = f"template import {FIXTURE} --name v082\ncreate envy --no-start\n"
    result = sm(root, stdin=script, env={"SUPABASE_MANAGER_CADDY_ADMIN": "http://127.0.0.1:9"})
    # No Caddy here: the instance is made, then exit 1 says its routes are pending.
    assert result.returncode == 1 and "routes are pending" in result.stderr, result.stderr
    return root


def _env_file(root) -> Path:
    return root / "instances" / "envy" / ".env"


def _value(root, key):
    lines = _env_file(root).read_text().splitlines()
    return next(line.split("=", 1)[1] for line in lines if line.startswith(f"{key}="))


@pytest.mark.docker
def test_env_set_with_a_key_alone_reads_the_value_from_stdin(instance_root):
    result = sm(instance_root, "env", "envy", "set", "SMTP_PASS", stdin="from-stdin-9x\n")
    assert result.returncode == 0, result.stderr
    assert _value(instance_root, "SMTP_PASS") == "from-stdin-9x"  # the newline is not kept
    assert "from-stdin-9x" not in result.stdout + result.stderr
    assert "from-stdin-9x" not in (instance_root / "audit.log").read_text()
    # in a script read from stdin there is no stdin left to read it from: refused, unchanged
    before = _env_file(instance_root).read_bytes()
    result = sm(instance_root, stdin="env envy set SMTP_PASS\nenvy-next-line\n")
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        "supabase-manager: line 1: no value: stdin holds this script; give KEY=VALUE, or run "
        "the command alone with the value on its stdin"
    ]
    assert _env_file(instance_root).read_bytes() == before


EDIT_SCRIPT = """
sed -i -e 's|^SITE_URL=.*|SITE_URL=http://edited.example:3000|' "$1"
[ -n "$BREAK_IT" ] && echo 'NOT A VALID LINE' >> "$1"
exit 0
"""


@pytest.mark.docker
def test_env_edit_end_to_end(instance_root, tmp_path):
    editor = tmp_path / "editor.sh"
    editor.write_text(EDIT_SCRIPT)
    env = {"EDITOR": f"sh {editor}", "VISUAL": ""}
    before = _env_file(instance_root).read_text()
    # a broken edit: the problem is named, nobody can answer "edit again?", .env is unchanged
    broken = sm(instance_root, "env", "envy", "edit", env={**env, "BREAK_IT": "1"})
    assert broken.returncode == 2
    lines = broken.stderr.splitlines()
    assert lines[0] == "the edited .env of envy has problems:"
    assert lines[1].startswith(f"  line {len(before.splitlines()) + 1}: ")  # the added line
    assert lines[2:] == ["supabase-manager: change dropped: .env of envy is unchanged"]
    assert _env_file(instance_root).read_text() == before
    # a good edit is saved: the one line changed, every other line kept, mode still 0600
    result = sm(instance_root, "env", "envy", "edit", env=env)
    assert result.returncode == 0, result.stderr
    after = _env_file(instance_root).read_text()
    assert len(after.splitlines()) == len(before.splitlines())
    pairs = zip(before.splitlines(), after.splitlines(), strict=True)
    changed = [(a, b) for a, b in pairs if a != b]
    assert [b for _, b in changed] == ["SITE_URL=http://edited.example:3000"]
    assert _env_file(instance_root).stat().st_mode & 0o777 == 0o600
    assert result.stdout.splitlines()[0] == "changed: SITE_URL"
    assert "run: supabase-manager restart envy " in result.stdout
    got = sm(instance_root, "env", "envy", "get", "SITE_URL")
    assert got.stdout == "http://edited.example:3000\n"
