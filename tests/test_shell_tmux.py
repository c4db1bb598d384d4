"""The shell in a real terminal: run under tmux, typed at with send-keys, read with capture-pane.

Instances are written straight into state.json, so completion needs no Docker; `list` and `top`
ask the Manager (Docker's answer for instances that have no container is "missing").
"""

import os
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from controller.config import load_settings
from controller.state import READY, InstanceRecord, StateStore
from tests.world.templates import fixtures_dir

REPO = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed")


def program() -> str:
    installed = Path(sys.executable).parent / "supabase-manager"
    if installed.exists():
        return str(installed)
    return f"{sys.executable} -m shell"


class Tmux:
    def __init__(self, tmp_path: Path) -> None:
        self.socket = f"sm-test-{uuid.uuid4().hex[:8]}"
        self.tmp = tmp_path

    def tmux(self, *args: str) -> str:
        result = subprocess.run(
            ["tmux", "-L", self.socket, *args], capture_output=True, text=True, timeout=20
        )
        return result.stdout

    def start(self, command: str, env: dict) -> None:
        exports = " ".join(f"{k}={v}" for k, v in env.items())
        self.tmux(
            "new-session", "-d", "-s", "sm", "-x", "150", "-y", "40", f"env {exports} {command}"
        )

    def keys(self, *keys: str) -> None:
        self.tmux("send-keys", "-t", "sm", *keys)

    def screen(self) -> str:
        return self.tmux("capture-pane", "-p", "-t", "sm")

    def wait(self, predicate, timeout: float = 15.0) -> str:
        deadline = time.monotonic() + timeout
        screen = ""
        while time.monotonic() < deadline:
            screen = self.screen()
            if predicate(screen):
                return screen
            time.sleep(0.1)
        raise AssertionError(f"timed out; the screen was:\n{screen}")

    def kill(self) -> None:
        subprocess.run(["tmux", "-L", self.socket, "kill-server"], capture_output=True, timeout=20)
        folder = Path(os.environ.get("TMUX_TMPDIR", "/tmp")) / f"tmux-{os.getuid()}"
        (folder / self.socket).unlink(missing_ok=True)


@pytest.fixture
def term(tmp_path):
    root = tmp_path / "root"
    settings = load_settings(root)
    store = StateStore(settings.state_path, settings.lock_path)
    with store.transaction() as state:
        for name in ("zulu-one", "alpha", "bravo"):
            state.instances[name] = InstanceRecord(name=name, template="v0.8.2", phase=READY)
    tmux = Tmux(tmp_path)
    env = {
        "PYTHONPATH": str(REPO),
        "XDG_STATE_HOME": str(tmp_path / "state"),
        "HOME": str(tmp_path),
        "TERM": "xterm-256color",
        "SUPABASE_MANAGER_CADDY_ADMIN": "http://127.0.0.1:9",
    }
    tmux.start(f"{program()} --root {root}", env)
    tmux.wait(lambda s: "supabase>" in s)
    yield tmux
    tmux.kill()


def prompt_line(screen: str) -> str:
    return next(line for line in reversed(screen.splitlines()) if "supabase>" in line)


def test_tab_completes_commands_and_names(term):
    term.keys("cr", "Tab")
    term.wait(lambda s: "supabase> create" in prompt_line(s))
    term.keys("C-u")
    term.wait(lambda s: prompt_line(s).strip() == "supabase>")
    term.keys("show zu", "Tab")
    term.wait(lambda s: "supabase> show zulu-one" in prompt_line(s))
    term.keys("C-u")
    term.keys("logs alpha --fo", "Tab")
    term.wait(lambda s: "supabase> logs alpha --follow" in prompt_line(s))
    term.keys("C-u", "C-d")


def test_list_shows_the_instances_and_top_draws_and_q_leaves(term):
    term.keys("list --no-stats", "Enter")
    screen = term.wait(lambda s: "zulu-one" in s and "bravo" in s and "API URL" in s, 30)
    assert "https://alpha.localhost" in screen
    term.keys("top", "Enter")
    screen = term.wait(lambda s: "supabase-manager top" in s and "zulu-one" in s, 30)
    assert "q leaves" in screen
    term.keys("q")
    term.wait(lambda s: "supabase-manager top" not in s and "supabase>" in s)
    term.keys("C-d")


def test_toolbar_shows_counts_and_health(term):
    screen = term.wait(lambda s: "3 instances" in s and "docker" in s, 30)
    assert "caddy DOWN" in screen


def test_history_is_written_without_secret_values(term, tmp_path):
    """Typed in a real terminal: a mistyped command and a malformed line are stored too, and
    without their secret values."""
    term.keys("sett alpha JWT_SECRET=hunter2hunter2 SITE_URL=http://x", "Enter")
    term.wait(lambda s: "unknown command 'sett'" in s)
    term.keys("env alpha set SMTP_PASS= 'hunter3'hunter3", "Enter")
    term.wait(lambda s: "single KEY alone" in s)  # refused: not asked for a "key" hunter3..
    term.keys("C-d")
    history = tmp_path / "state" / "supabase-manager" / "history"
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and "SMTP_PASS" not in _read(history):
        time.sleep(0.1)
    text = history.read_text()
    assert "hunter2" not in text and "hunter3" not in text
    stored = [line[1:] for line in text.splitlines() if line.startswith("+")]
    assert stored == ["sett alpha JWT_SECRET= SITE_URL=http://x", "env alpha set SMTP_PASS="]
    assert oct(os.stat(history).st_mode & 0o777) == "0o600"


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except FileNotFoundError:
        return ""


def test_shell_as_a_plain_command_starts_the_same_shell(tmp_path):
    tmux = Tmux(tmp_path)
    env = {"PYTHONPATH": str(REPO), "XDG_STATE_HOME": str(tmp_path / "state"), "TERM": "xterm"}
    env["SUPABASE_MANAGER_CADDY_ADMIN"] = "http://127.0.0.1:9"
    try:
        tmux.start(f"{program()} --root {tmp_path / 'root'} shell", env)
        tmux.wait(lambda s: "supabase>" in s)
        tmux.keys("shell", "Enter")
        tmux.wait(lambda s: "already in the shell" in s)
        tmux.keys("C-d")
    finally:
        tmux.kill()


@pytest.mark.docker
def test_env_set_with_a_key_alone_asks_without_echo_on_a_terminal(tmp_path):
    """A plain command on a real terminal: the value typed at the prompt never shows on screen."""
    fixture = fixtures_dir() / "v0.8.2"
    root = tmp_path / "root"
    env = {
        "PYTHONPATH": str(REPO),
        "XDG_STATE_HOME": str(tmp_path / "state"),
        "TERM": "xterm",
        "SUPABASE_MANAGER_CADDY_ADMIN": "http://127.0.0.1:9",
    }
    script = f"template import {fixture} --name v082\ncreate tty --no-start\n"
    made = subprocess.run(
        [*program().split(), "--root", str(root)],
        input=script,
        capture_output=True,
        text=True,
        env={**os.environ, **env},
        timeout=120,
    )
    # No Caddy here: the instance is made, then exit 1 says its routes are pending.
    assert made.returncode == 1 and "routes are pending" in made.stderr, made.stderr
    tmux = Tmux(tmp_path)
    try:
        tmux.start(f"sh -c '{program()} --root {root} env tty set SMTP_PASS; sleep 30'", env)
        tmux.wait(lambda s: "value (not shown):" in s)
        tmux.keys("tty-typed-s3cret", "Enter")
        screen = tmux.wait(lambda s: "changed: SMTP_PASS" in s, 30)
        assert "tty-typed-s3cret" not in screen
    finally:
        tmux.kill()
    env_text = (root / "instances" / "tty" / ".env").read_text()
    assert "SMTP_PASS=tty-typed-s3cret" in env_text.splitlines()
