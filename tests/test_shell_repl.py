"""The interactive shell through prompt_toolkit's pipe input and DummyOutput: the REPL loop, Ctrl-C
and Ctrl-D, the create wizard, the restart offer after an env change, a value asked for instead of
typed on the line, history redaction through the session, names refreshed in the background, and
`top` (its rates, its errors, leaving on `q`).

A stand-in Manager records what it is asked: it stands for the controller's facade, whose own
behaviour the controller's tests cover; the one `top` test that needs Docker uses the real one.
"""

import io
import json
import os
import signal
import time

import pytest
from prompt_toolkit.history import InMemoryHistory
from prompt_toolkit.input import create_pipe_input
from prompt_toolkit.output import DummyOutput

from controller.completion_data import CompletionSnapshot, InstanceNames, TemplateNames
from controller.config import load_settings
from controller.errors import UsageError
from controller.views import EnvChange, InstanceSummary
from shell.context import REPL, Context
from shell.repl import Repl
from shell.toolbar import StatusCache
from shell.top import Monitor, run_top, sparkline

ENTER = "\r"
CTRL_C = "\x03"
CTRL_D = "\x04"
BACKSPACE = "\x7f"
TAB = "\t"


class FakeManager:
    def __init__(self, root):
        self.settings = load_settings(root)
        self.instances = ["alpha", "beta"]
        self.calls = []
        self.log_closed = False

    def completion_snapshot(self):
        self.calls.append(("completion_snapshot",))
        instance = InstanceNames("v0.8.2", ("db", "kong", "studio"), ("JWT_SECRET", "SITE_URL"))
        template = TemplateNames(
            overlays=("kong", "logs", "mail", "s3"),
            port_services=("kong", "studio"),
            generated_secrets=("JWT_SECRET", "POSTGRES_PASSWORD"),
        )
        return CompletionSnapshot(
            {name: instance for name in self.instances},
            {"v0.8.2": template, "v0.7.0": TemplateNames()},
            default_template="v0.8.2",
        )

    def health(self):
        return {"docker": True, "caddy": False}

    def list(self, resources=True, problems=None):
        self.calls.append(("list", resources))
        return [
            InstanceSummary(
                "alpha", "running", "v0.8.2", "https://alpha.x", "t", 3, 3, 12.5, 2**20
            ),
            InstanceSummary("beta", "stopped", "v0.8.2", "https://beta.x", "t", 0, 3),
        ]

    def logs(self, name, services=None, follow=False, tail=None, errors_only=False):
        self.calls.append(("logs", name, follow, errors_only))
        try:
            yield "db | first line"
            if follow:
                # A real Ctrl-C: SIGINT to this process while the stream waits for more lines.
                os.kill(os.getpid(), signal.SIGINT)
                time.sleep(10)
                yield "db | never printed"
            if errors_only:
                yield "db | ERROR: something broke"
        finally:
            self.log_closed = True

    def create(self, **kwargs):
        self.calls.append(("create", kwargs))
        return []

    def env_set(self, name, assignments):
        self.calls.append(("env_set", name, assignments))
        return EnvChange(changed=sorted(assignments), services=["auth", "rest"])

    def restart(self, name, services=None, progress=None):
        self.calls.append(("restart", name, services))

    def env_text(self, name):
        return "# the env\nSITE_URL=http://old\n"

    def env_check(self, name, text, original=None):
        return ["line 3: 'BAD LINE' is not KEY=VALUE"] if "BAD" in text else []

    def env_replace(self, name, text, original=None):
        self.calls.append(("env_replace", name, text))
        return EnvChange(changed=["SITE_URL"], services=["auth"])

    def show(self, name, show_secrets=False):
        raise UsageError(f"no instance named {name!r}")


@pytest.fixture
def manager(tmp_path):
    return FakeManager(tmp_path)


def run_repl(manager, keys, history=None):
    out, err = io.StringIO(), io.StringIO()
    with create_pipe_input() as pipe:
        pipe.send_text(keys)
        ctx = Context(mode=REPL, out=out, err=err, manager=manager)
        repl = Repl(ctx, pipe, DummyOutput(), history or InMemoryHistory(), toolbar=False)
        status = repl.run()
    return status, out.getvalue(), err.getvalue()


def test_commands_run_and_ctrl_d_leaves(manager):
    status, out, err = run_repl(manager, "list" + ENTER + "show nosuch" + ENTER + CTRL_D)
    assert status == 0
    assert "alpha" in out and "https://alpha.x" in out and "12.5%" in out
    assert "supabase-manager: no instance named 'nosuch'" in err
    assert ("list", True) in manager.calls


def test_tab_completes_through_the_session(manager):
    keys = "he" + TAB + "li" + TAB + ENTER + "show al" + TAB + ENTER + CTRL_D
    _, out, err = run_repl(manager, keys)
    assert "usage: list" in out  # "he<Tab>li<Tab>" became "help list "
    assert "no instance named 'alpha'" in err  # "show al<Tab>" became "show alpha "


def test_ctrl_c_at_the_prompt_drops_the_line(manager):
    status, out, _ = run_repl(manager, "lis" + CTRL_C + "help list" + ENTER + "exit" + ENTER)
    assert status == 0
    assert "usage: list" in out
    assert ("list", True) not in manager.calls


def test_ctrl_c_cancels_a_running_command_and_returns_to_the_prompt(manager):
    keys = "logs alpha --follow" + ENTER + "list --no-stats" + ENTER + CTRL_D
    status, out, err = run_repl(manager, keys)
    assert status == 0
    assert "db | first line" in out and "never printed" not in out
    assert "cancelled" in err
    assert manager.log_closed  # the follow stream was closed
    assert ("list", False) in manager.calls  # the next line still ran


def test_parse_errors_do_not_leave_the_shell(manager):
    keys = "start" + ENTER + "'unbalanced" + ENTER + "help" + ENTER + CTRL_D
    _, out, err = run_repl(manager, keys)
    assert "usage: start NAME [SERVICE ...]" in err
    assert "cannot split the line" in err
    assert "Commands:" in out


def test_env_set_offers_to_restart(manager):
    keys = "env alpha set SITE_URL=http://x" + ENTER + "y" + ENTER + CTRL_D
    _, out, _ = run_repl(manager, keys)
    assert "auth, rest" in out
    assert ("restart", "alpha", ["auth", "rest"]) in manager.calls
    keys = "env alpha set SITE_URL=http://x" + ENTER + "n" + ENTER + CTRL_D
    manager.calls.clear()
    _, out, _ = run_repl(manager, keys)
    assert "run: supabase-manager restart alpha auth rest" in out
    assert not [c for c in manager.calls if c[0] == "restart"]


def test_session_history_is_redacted_on_disk(manager, tmp_path):
    from shell.history import make_history

    path = tmp_path / "history"
    keys = "env alpha set JWT_SECRET=topsecret SITE_URL=http://x" + ENTER + "n" + ENTER + CTRL_D
    run_repl(manager, keys, history=make_history(path))
    text = path.read_text()
    assert "topsecret" not in text
    assert "env alpha set JWT_SECRET= SITE_URL=http://x" in text


# --- the wizard ----------------------------------------------------------------------------------
WIZARD_ALL = (
    "create" + ENTER
    + "Bad_Name" + ENTER  # refused while typing: the prompt stays
    + BACKSPACE * 8 + "new-one" + ENTER
    + ENTER  # default template
    + "logs kong" + ENTER
    + "y" + ENTER  # advanced
    + "kong=25000" + ENTER
    + "1.5" + ENTER
    + "2g" + ENTER
    + ENTER  # start: yes
    + "y" + ENTER  # confirm
    + CTRL_D
)  # fmt: skip


def test_wizard_collects_everything_then_creates(manager):
    status, out, _ = run_repl(manager, WIZARD_ALL)
    assert status == 0
    creates = [c[1] for c in manager.calls if c[0] == "create"]
    assert creates == [
        {
            "name": "new-one",
            "template": "v0.8.2",
            "overlays": ["logs", "kong"],
            "extra_compose": [],
            "ports": {"kong": 25000},
            "cpus": 1.5,
            "memory": "2g",
            "start": True,
            "progress": creates[0]["progress"],
        }
    ]
    # the preview: URLs and the secrets the controller says this template generates, masked
    assert "https://new-one.localhost" in out and "https://new-one-studio.localhost" in out
    preview = out[out.index("secrets generated") :].splitlines()[1:3]
    assert [line.split() for line in preview] == [
        ["JWT_SECRET", "********", "(new,", "random)"],
        ["POSTGRES_PASSWORD", "********", "(new,", "random)"],
    ]
    assert "created new-one" in out
    # names, templates, overlays and secrets came from one controller call
    assert [c for c in manager.calls if c[0] == "completion_snapshot"][:1] == [
        ("completion_snapshot",)
    ]


def test_wizard_refuses_an_existing_name(manager):
    """ "alpha" exists: Enter is refused and the name prompt stays, so the same keys then give
    the name a second try; the instance is created under that one."""
    keys = (
        "create" + ENTER
        + "alpha" + ENTER  # refused: an instance named alpha exists
        + BACKSPACE * 5 + "gamma" + ENTER
        + ENTER  # default template
        + ENTER  # no overlay
        + "n" + ENTER  # no advanced settings
        + ENTER  # start: yes
        + "y" + ENTER  # confirm
        + CTRL_C + CTRL_D  # (Ctrl-C ends a wizard still open, as it is with the check broken)
    )  # fmt: skip
    run_repl(manager, keys)
    assert [c[1]["name"] for c in manager.calls if c[0] == "create"] == ["gamma"]


def test_wizard_without_a_template_says_so_before_asking_anything(manager):
    manager.completion_snapshot = lambda: CompletionSnapshot({}, {}, None)
    _, out, err = run_repl(manager, "create" + ENTER + "help" + ENTER + CTRL_D)
    assert err.splitlines() == [
        "supabase-manager: no template yet: run 'template fetch' or 'template import PATH' first"
    ]
    assert "New instance" not in out and "Commands:" in out  # the next line ran normally


def test_wizard_cancel_at_confirm_writes_nothing(manager, tmp_path):
    keys = "create" + ENTER + "x1" + ENTER + ENTER + ENTER + "n" + ENTER + ENTER + "n" + ENTER
    _, out, _ = run_repl(manager, keys + CTRL_D)
    assert "cancelled: nothing was created" in out
    assert not [c for c in manager.calls if c[0] == "create"]
    assert not (tmp_path / "state.json").exists()


def test_ctrl_c_in_the_wizard_cancels_it_and_the_shell_goes_on(manager):
    keys = "create" + ENTER + "x1" + ENTER + CTRL_C + "help" + ENTER + CTRL_D
    _, out, _ = run_repl(manager, keys)
    assert "cancelled" in out and "Commands:" in out
    assert not [c for c in manager.calls if c[0] == "create"]


# --- toolbar and top -----------------------------------------------------------------------------
def test_toolbar_text_counts_instances_and_health(manager):
    ctx = Context(mode=REPL, manager=manager, interactive=True)
    cache = StatusCache(ctx)
    assert "checking" in cache.text()
    cache.refresh()
    assert cache.text() == " 2 instances: 1 running, 1 stopped │ docker up │ caddy DOWN"


def test_toolbar_refresh_never_blocks_the_prompt(manager):
    """A slow health() runs in the thread: the prompt answers meanwhile."""

    def slow_health():
        time.sleep(3)
        return {"docker": True, "caddy": True}

    manager.health = slow_health
    out, err = io.StringIO(), io.StringIO()
    started = time.monotonic()
    with create_pipe_input() as pipe:
        pipe.send_text("help" + ENTER + CTRL_D)
        ctx = Context(mode=REPL, out=out, err=err, manager=manager)
        Repl(ctx, pipe, DummyOutput(), InMemoryHistory(), toolbar=True).run()
    assert time.monotonic() - started < 2
    assert "Commands:" in out.getvalue()


def test_sparkline():
    assert sparkline([0, 50, 100], width=3, top=100) == "▁▅█"
    assert sparkline([], width=4) == "    "
    assert len(sparkline(list(range(100)), width=30)) == 30


def test_monitor_samples_and_renders(manager):
    """Rates come from two samples of Caddy's counters over the time between them."""
    counts = iter([{"alpha.x": 10.0}, {"alpha.x": 25.0}])
    times = iter([100.0, 106.0])
    manager.request_counts = lambda: next(counts)
    monitor = Monitor(manager, clock=lambda: next(times))
    monitor.sample()
    text = "".join(fragment for _, fragment in monitor.render(120))
    assert "measuring" in text and "/s" not in text  # one sample is no rate
    monitor.sample()
    text = "".join(fragment for _, fragment in monitor.render(120))
    assert "alpha" in text and "12.5%" in text and "1.0 MiB" in text
    assert "alpha.x" in text and "2.50/s" in text  # (25 - 10) / 6 s


def test_top_finds_an_error_among_many_other_lines(manager):
    """The controller filters a long tail: an error followed by ordinary lines is still shown."""
    lines = [f"db | ordinary line {i}" for i in range(40)]
    lines.insert(20, "db | FATAL: the one error")
    asked = []

    def logs(name, services=None, follow=False, tail=None, errors_only=False):
        asked.append(tail)
        shown = lines[-tail:] if tail else lines
        return iter([line for line in shown if not errors_only or "FATAL" in line])

    manager.logs = logs
    manager.request_counts = lambda: None
    monitor = Monitor(manager)
    monitor.sample()
    text = "".join(fragment for _, fragment in monitor.render(120))
    assert "alpha: " in text and "db | FATAL: the one error" in text
    assert "ordinary line" not in text
    assert "no per-host metrics" in text


def test_top_leaves_on_q(manager):
    with create_pipe_input() as pipe:
        pipe.send_text("q")
        ctx = Context(mode=REPL, manager=manager, pt_input=pipe, pt_output=DummyOutput())
        started = time.monotonic()
        run_top(ctx, interval=0.1)
    assert time.monotonic() - started < 5


# --- env edit ------------------------------------------------------------------------------------
EDITOR_SCRIPT = """
n=$(cat "$WORK/count" 2>/dev/null || echo 0); n=$((n+1)); echo $n > "$WORK/count"
stat -c %a "$1" >> "$WORK/modes"; echo "$1" >> "$WORK/paths"
if [ $n = 1 ]; then echo 'BAD LINE' >> "$1"
else sed -i -e 's|http://old|http://new|' -e '/BAD LINE/d' "$1"; fi
"""


@pytest.fixture
def editor(tmp_path, monkeypatch):
    script = tmp_path / "editor.sh"
    script.write_text(EDITOR_SCRIPT)
    monkeypatch.setenv("WORK", str(tmp_path))
    monkeypatch.setenv("EDITOR", f"sh {script}")
    monkeypatch.delenv("VISUAL", raising=False)
    return tmp_path


def test_env_edit_shows_problems_and_edits_again(manager, editor):
    keys = "env alpha edit" + ENTER + "y" + ENTER + "n" + ENTER + CTRL_D
    _, out, err = run_repl(manager, keys)
    assert "BAD LINE" in err
    replaced = [c for c in manager.calls if c[0] == "env_replace"]
    # the second round starts from the first round's text, and only a clean text is saved
    assert replaced == [("env_replace", "alpha", "# the env\nSITE_URL=http://new\n")]
    assert "changed: SITE_URL" in out and "restart alpha auth" in out
    assert (editor / "modes").read_text().split() == ["600", "600"]
    for path in (editor / "paths").read_text().split():
        assert not os.path.exists(path)  # the temp copy is gone


def test_env_edit_dropped_leaves_env_alone(manager, editor):
    keys = "env alpha edit" + ENTER + "n" + ENTER + CTRL_D
    _, _, err = run_repl(manager, keys)
    assert "change dropped" in err
    assert not [c for c in manager.calls if c[0] == "env_replace"]


# --- Ctrl-C in plain commands and scripts ---------------------------------------------------------
def _interrupting_table(monkeypatch):
    from dataclasses import replace

    from shell import commands

    def interrupted(ctx, values):
        raise KeyboardInterrupt

    table = [replace(c, handler=interrupted) if c.name == "audit" else c for c in commands.TABLE]
    monkeypatch.setattr(commands, "TABLE", table)


def test_ctrl_c_in_a_plain_command_exits_130(monkeypatch, tmp_path, capsys):
    from shell.cli import main

    _interrupting_table(monkeypatch)
    assert main(["--root", str(tmp_path), "audit"]) == 130


def test_ctrl_c_in_a_script_exits_130(monkeypatch, tmp_path):
    from shell.batch import run_script

    _interrupting_table(monkeypatch)
    err = io.StringIO()
    ctx = Context(mode="batch", out=io.StringIO(), err=err, root=str(tmp_path))
    assert run_script(ctx, ["help", "audit", "help"]) == 130
    assert "line 2: interrupted" in err.getvalue()


# --- rendering of list and show ------------------------------------------------------------------
def _detail(show_secrets):
    from controller.views import ContainerView, InstanceDetail

    return InstanceDetail(
        name="alpha",
        status="partial",
        template="v0.8.2",
        created_at="2026-11-25T10:00:00+00:00",
        overlays=["logs"],
        urls={"api": "https://alpha.x", "studio": "https://alpha-studio.x"},
        ports={"api-gw:8000": 20000},
        containers=[
            ContainerView("db", "alpha-db", "running", "healthy"),
            ContainerView("auth", "alpha-auth", "exited", None),
        ],
        connections={"direct": "postgres://postgres:********@alpha-db:5432/postgres"},
        keys={"ANON_KEY": "eyJ.real" if show_secrets else "******** (8 chars)"},
        requests={"alpha.x": 1.5},
    )


def run_argv(manager, words):
    from shell.run import execute

    out, err = io.StringIO(), io.StringIO()
    ctx = Context(mode="argv", out=out, err=err, manager=manager, interactive=False)
    return execute(ctx, words), out.getvalue(), err.getvalue()


def test_show_renders_every_section(manager):
    manager.show = lambda name, show_secrets=False: _detail(show_secrets)
    status, out, _ = run_argv(manager, ["show", "alpha"])
    assert status == 0
    for text in (
        "partial",
        "2026-11-25T10:00:00+00:00",
        "https://alpha-studio.x",
        "alpha-db",
        "healthy",
        "exited",
        "postgres://postgres:********@alpha-db",
        "******** (8 chars)",
        "127.0.0.1:20000",
        "1.50/s",
        "--show-secrets shows them",
    ):
        assert text in out, text
    assert "\x1b" not in out
    status, out, _ = run_argv(manager, ["show", "alpha", "--show-secrets", "--json"])
    data = json.loads(out)
    assert data["keys"] == {"ANON_KEY": "eyJ.real"}
    assert data["containers"][0] == {
        "service": "db",
        "name": "alpha-db",
        "state": "running",
        "health": "healthy",
    }


def test_list_renders_a_dashboard_and_json(manager):
    _, out, _ = run_argv(manager, ["list"])
    lines = out.splitlines()
    assert lines[0].split() == ["NAME", "STATUS", "UP", "CPU", "MEMORY", "DISK", "API", "URL"]
    assert lines[1].split()[:5] == ["●", "alpha", "running", "3/3", "12.5%"]
    assert lines[2].split()[:4] == ["○", "beta", "stopped", "0/3"]
    _, out, _ = run_argv(manager, ["list", "--json"])
    assert [row["name"] for row in json.loads(out)] == ["alpha", "beta"]


def test_start_all_prints_each_instance_the_manager_started(manager):
    # Rendering only: the real start --all is tested on Docker in test_lifecycle.
    manager.start_all = lambda progress: ["alpha"]
    status, out, _ = run_argv(manager, ["start", "--all"])
    assert status == 0 and out == "started alpha\n"


# --- a value kept off the command line, names refreshed after a command ---------------------------
def test_env_set_with_a_key_alone_asks_for_the_value(manager, tmp_path):
    from shell.history import make_history

    path = tmp_path / "history"
    keys = "env alpha set SMTP_PASS" + ENTER + "pa55-typed-hidden" + ENTER + "n" + ENTER + CTRL_D
    _, out, err = run_repl(manager, keys, history=make_history(path))
    assert ("env_set", "alpha", {"SMTP_PASS": "pa55-typed-hidden"}) in manager.calls
    assert "pa55-typed-hidden" not in path.read_text() + out + err
    assert "env alpha set SMTP_PASS" in path.read_text()


def test_names_are_refreshed_in_the_background_after_each_command(manager):
    def create(**kwargs):
        manager.instances.append(kwargs["name"])
        return []

    manager.create = create
    with create_pipe_input() as pipe:
        ctx = Context(mode=REPL, out=io.StringIO(), err=io.StringIO(), manager=manager)
        repl = Repl(ctx, pipe, DummyOutput(), InMemoryHistory(), toolbar=False)
        repl.refresh_names()
        assert repl.refresher.wait(10)
        before = repl.completer
        assert [c.text for c in before.complete("show ")] == ["alpha", "beta"]
        assert repl.run_line("create zeta --no-start") == 0
        assert repl.refresher.wait(10)
    assert repl.completer is not before  # swapped whole, the old one untouched
    assert [c.text for c in before.complete("show ")] == ["alpha", "beta"]
    assert [c.text for c in repl.completer.complete("show ")] == ["alpha", "beta", "zeta"]


def test_a_tab_typed_before_the_first_names_arrive_waits_for_them(manager):
    """The first snapshot takes a moment: a Tab in the shell's first moments still completes."""
    snapshot = manager.completion_snapshot

    def slow():
        time.sleep(0.3)
        return snapshot()

    manager.completion_snapshot = slow
    _, _, err = run_repl(manager, "show al" + TAB + ENTER + CTRL_D)
    assert "no instance named 'alpha'" in err


@pytest.mark.docker
def test_top_refresh_does_not_walk_instance_folders_every_time(tmp_path, monkeypatch):
    """With the real Manager (Docker answers; no container of these instances exists): the
    first sample measures each folder once, later ones use the cached disk figures."""
    import controller.diskcache
    from controller.manager import Manager
    from controller.state import READY, InstanceRecord, StateStore

    settings = load_settings(tmp_path)
    with StateStore(settings.state_path, settings.lock_path).transaction() as state:
        for name in ("walk-one", "walk-two"):
            state.instances[name] = InstanceRecord(name=name, template="v0.8.2", phase=READY)
            folder = settings.instance_dir(name) / "volumes" / "db" / "data"
            folder.mkdir(parents=True)
            (folder / "PG_VERSION").write_text("17\n")
    walked = []
    real = controller.diskcache.folder_size
    monkeypatch.setattr(
        controller.diskcache, "folder_size", lambda path: walked.append(path) or real(path)
    )
    monitor = Monitor(Manager(settings))
    monitor.sample()
    assert monitor.problem is None and [r.name for r in monitor.rows] == ["walk-one", "walk-two"]
    assert sorted(p.name for p in walked) == ["walk-one", "walk-two"]
    for _ in range(3):
        monitor.sample()
    assert len(walked) == 2
