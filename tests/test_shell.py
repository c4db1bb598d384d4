"""The shell's command table, parser, help, completion, history redaction and rendering.

No Docker: names for completion come from a state.json written through StateStore.
"""

import io
import json

import pytest

from controller.config import load_settings
from controller.errors import UsageError
from controller.state import READY, InstanceRecord, StateStore, TemplateRecord
from shell import commands
from shell.cli import split_globals
from shell.commands import TABLE, overview, table_for
from shell.completion import Completer, fuzzy
from shell.context import ARGV, REPL, Context
from shell.history import history_path, is_secret, make_history, redact
from shell.output import dumps, human_bytes, status_mark, table
from shell.parse import ParseError, parse, split_line
from shell.run import execute

INSTANCES = ["alpha", "beta", "prod-db", "staging"]


@pytest.fixture
def root(tmp_path):
    settings = load_settings(tmp_path)
    store = StateStore(settings.state_path, settings.lock_path)
    with store.transaction() as state:
        for name in INSTANCES:
            state.instances[name] = InstanceRecord(name=name, template="v0.8.2", phase=READY)
        state.templates["v0.8.2"] = TemplateRecord("v0.8.2", "import:/x")
    folder = settings.instance_dir("alpha")
    folder.mkdir(parents=True)
    (folder / ".env").write_text("# db\nPOSTGRES_PASSWORD=x\nJWT_SECRET=y\nSITE_URL=http://z\n")
    template = settings.template_dir("v0.8.2")
    template.mkdir(parents=True)
    (template / "docker-compose.yml").write_text(
        "name: supabase\nservices:\n  studio:\n    image: a\n  db:\n    image: b\n"
        "  kong:\n    image: c\nvolumes:\n  x: {}\n"
    )
    for overlay in ("logs", "kong"):
        (template / f"docker-compose.{overlay}.yml").write_text("services: {}\n")
    (folder / "docker-compose.yml").write_text((template / "docker-compose.yml").read_text())
    return tmp_path


def run(tokens, mode=ARGV, **kw):
    out, err = io.StringIO(), io.StringIO()
    ctx = Context(mode=mode, out=out, err=err, interactive=False, **kw)
    status = execute(ctx, tokens)
    return status, out.getvalue(), err.getvalue()


# --- the table and the parser ------------------------------------------------------------------
INTERFACE = [
    "template fetch --ref self-hosted/v0.8.2",
    "template fetch --list",
    "template import /tmp/x --name mine",
    "template list",
    "create demo --template t --overlay logs --overlay kong --extra-compose a.yml "
    "--port kong=25000 --cpus 1.5 --memory 2g --no-start",
    "list",
    "show demo --show-secrets",
    "start demo",
    "start demo db rest",
    "start --all",
    "stop demo db",
    "restart demo",
    "delete demo --purge --yes",
    "logs demo db --follow --tail 10 --errors",
    "env demo",
    "env demo get KEY",
    "env demo set A=1 B=2",
    "env demo unset KEY",
    "env demo edit",
    "caddy sync",
    "caddy sync demo",
    "caddy status",
    "top",
    "audit",
    "audit demo",
    "check",
    "shell",
    "help",
    "help env set",
]


@pytest.mark.parametrize("line", INTERFACE)
def test_every_interface_line_parses(line):
    parsed = parse(table_for(ARGV), split_line(line))
    assert parsed.command is not None
    assert not parsed.help


def test_values_of_a_full_create():
    parsed = parse(TABLE, split_line(INTERFACE[4]))
    v = parsed.values
    assert parsed.command.name == "create"
    assert v["name"] == "demo" and v["template"] == "t"
    assert v["overlay"] == ["logs", "kong"]
    assert v["port"] == [("kong", 25000)]
    assert v["cpus"] == 1.5 and v["memory"] == "2g" and v["no_start"] is True


def test_env_forms_and_start_all_dispatch_to_their_own_commands():
    assert parse(TABLE, ["env", "x"]).command.name == "env"
    assert parse(TABLE, ["env", "x", "set", "A=1"]).values["assignments"] == ["A=1"]
    assert parse(TABLE, ["env", "x", "get", "K"]).command.name == "env get"
    assert parse(TABLE, ["start", "--all"]).command.handler is commands._start_all
    assert parse(TABLE, ["start", "x", "db"]).values["services"] == ["db"]
    assert parse(TABLE, ["list", "--json"]).json


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("show", "show: missing NAME"),
        ("show a b", "show: unexpected argument 'b'"),
        ("logs a --tail", "option --tail needs a value"),
        ("logs a --tail many", "option --tail: invalid value 'many'"),
        ("create a --port kong", "expected SERVICE=PORT"),
        ("create a --memory lots", "use a size like 512m"),
        ("template", "template: missing sub-command (one of: fetch, import, list)"),
        ("template nope", "unknown sub-command 'nope'"),
        ("env a frob", "env: unexpected argument 'frob'"),
        ("env a get", "env get: missing KEY"),
        ("list --bogus", "unknown option --bogus"),
        ("frobnicate", "unknown command 'frobnicate'"),
        ("exit", "unknown command 'exit'"),  # only inside the shell
    ],
)
def test_parse_errors_name_the_command(line, message):
    with pytest.raises(ParseError) as caught:
        parse(table_for(ARGV), split_line(line))
    assert message in str(caught.value)
    assert isinstance(caught.value, UsageError)


def test_parse_error_shows_usage_and_exits_2():
    status, out, err = run(["show"])
    assert status == 2
    assert out == ""
    assert err.splitlines() == [
        "supabase-manager: show: missing NAME",
        "usage: show NAME [--show-secrets]",
    ]


def test_start_without_name_shows_both_usages():
    status, _, err = run(["start"])
    assert status == 2
    assert "usage: start NAME [SERVICE ...]" in err and "usage: start --all" in err


def test_help_lists_every_command_of_the_table():
    status, out, _ = run(["help"])
    assert status == 0
    for command in table_for(ARGV):
        assert command.usage() in out
        assert command.help in out
    assert "  exit " not in out and "leave the shell" not in out


def test_help_command_and_dash_h_agree():
    _, by_help, _ = run(["help", "logs"])
    _, by_flag, _ = run(["logs", "--help"])
    assert by_help == by_flag
    assert "--follow" in by_help and "--tail N" in by_help
    assert by_help.startswith("usage: logs NAME [SERVICE ...]")
    _, env_set, _ = run(["help", "env", "set"])
    assert "usage: env NAME set ASSIGNMENT ..." in env_set and "env NAME get" not in env_set


def test_help_of_unknown_command_exits_2():
    status, _, err = run(["help", "nope"])
    assert status == 2 and "no command 'nope'" in err


def test_overview_and_command_help_render():
    assert "Commands:" in overview(REPL) and "exit" in overview(REPL)


def test_bad_instance_name_exits_2_before_the_manager(tmp_path):
    status, _, err = run(["create", "Bad_Name"], root=str(tmp_path))
    assert status == 2
    assert err.startswith("supabase-manager: invalid instance name 'Bad_Name'")
    assert len(err.splitlines()) == 1
    assert not (tmp_path / "state.json").exists()


def test_delete_without_yes_is_refused_when_nobody_can_answer(tmp_path):
    status, _, err = run(["delete", "alpha"], root=str(tmp_path))
    assert status == 2
    assert "--yes" in err


def test_global_options_anywhere():
    options, words = split_globals(["--root", "/r", "list", "--json", "--config=/c"])
    assert options["root"] == "/r" and options["config"] == "/c"
    assert words == ["list", "--json"]
    options, words = split_globals(["--json", "-f", "script.txt", "--keep-going"])
    assert options["json"] and options["file"] == "script.txt" and options["keep_going"]
    assert words == []
    # -f after the command words is not the global option
    assert split_globals(["logs", "x", "-f"])[1] == ["logs", "x", "-f"]


# --- completion ----------------------------------------------------------------------------------
def completions(root, text):
    ctx = Context(root=str(root), mode=REPL, interactive=False)
    return [c.text for c in Completer(ctx).complete(text)]


def test_complete_commands_and_sub_commands(root):
    assert completions(root, "cr") == ["create"]
    assert set(completions(root, "")) == {c.first for c in table_for(REPL)}
    assert completions(root, "template ") == ["fetch", "import", "list"]
    assert completions(root, "env alpha ") == ["get", "set", "unset", "edit"]
    assert completions(root, "caddy s") == ["sync", "status"]
    assert completions(root, "help en") == ["env"]
    assert completions(root, "help env ") == ["get", "set", "unset", "edit"]


def test_complete_instance_names_wherever_a_name_goes(root):
    for prefix in ("show ", "start ", "stop ", "restart ", "delete ", "logs ", "env ", "audit "):
        assert completions(root, prefix) == INSTANCES, prefix
    assert completions(root, "caddy sync ") == INSTANCES
    assert completions(root, "show st") == ["staging"]
    assert not set(completions(root, "create ")) & set(INSTANCES)  # a new name


def test_instance_names_match_fuzzily(root):
    assert completions(root, "show prd") == ["prod-db"]
    assert completions(root, "show a")[:1] == ["alpha"]
    assert fuzzy("ta", ["beta", "staging", "tango"]) == ["tango", "beta", "staging"]


def test_complete_services_and_env_keys(root):
    assert completions(root, "logs alpha ") == ["db", "kong", "studio"]
    assert completions(root, "stop alpha db ") == ["kong", "studio"]
    assert completions(root, "restart alpha s") == ["studio"]
    assert completions(root, "env alpha get ") == ["JWT_SECRET", "POSTGRES_PASSWORD", "SITE_URL"]
    assert completions(root, "env alpha unset S") == ["SITE_URL"]
    assert completions(root, "env alpha set J") == ["JWT_SECRET="]
    assert completions(root, "env alpha set A=1 P") == ["POSTGRES_PASSWORD="]


def test_complete_options_templates_and_overlays(root):
    assert completions(root, "logs alpha --f") == ["--follow"]
    assert "--show-secrets" in completions(root, "show alpha -")
    assert completions(root, "create x --template ") == ["v0.8.2"]
    # the template's own overlay files, plus the built-in mail catcher
    assert completions(root, "create x --overlay ") == ["kong", "logs", "mail"]
    assert completions(root, "create x --overlay k") == ["kong"]
    assert completions(root, "start --a") == ["--all"]
    assert "--no-start" in completions(root, "create x --no")
    # an option is offered once, unless it repeats
    assert "--purge" not in completions(root, "delete alpha --purge --")
    assert "--overlay" in completions(root, "create x --overlay logs --")


def test_complete_paths(root, tmp_path):
    (tmp_path / "compose-extra.yml").write_text("")
    got = completions(root, f"template import {tmp_path}/comp")
    assert got == [f"{tmp_path}/compose-extra.yml"]


def test_completion_follows_state_changes(root):
    assert "gamma" not in completions(root, "show ")
    settings = load_settings(root)
    store = StateStore(settings.state_path, settings.lock_path)
    ctx = Context(root=str(root), mode=REPL, interactive=False)
    completer = Completer(ctx)
    assert "gamma" not in [c.text for c in completer.complete("show ")]
    with store.transaction() as state:
        state.instances["gamma"] = InstanceRecord(name="gamma", template="v0.8.2")
    assert "gamma" in [c.text for c in completer.complete("show ")]


def test_prompt_toolkit_completer_wraps_the_same_logic(root):
    from prompt_toolkit.document import Document

    from shell.completion import prompt_toolkit_completer

    ctx = Context(root=str(root), mode=REPL, interactive=False)
    completer = prompt_toolkit_completer(Completer(ctx))
    got = list(completer.get_completions(Document("show pr"), None))
    assert [(c.text, c.start_position) for c in got] == [("prod-db", -2)]


# --- history -------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("line", "stored"),
    [
        ("env a set JWT_SECRET=abc", "env a set JWT_SECRET="),
        (
            "env a set SITE_URL=http://x POSTGRES_PASSWORD=p4ss ANON_KEY=ey.j",
            "env a set SITE_URL=http://x POSTGRES_PASSWORD= ANON_KEY=",
        ),
        ("env a set 'SMTP_PASS=two words'", "env a set SMTP_PASS="),
        ("env a set DASHBOARD_PASSWORD='unterminated", "env a set DASHBOARD_PASSWORD="),
        ("show a --show-secrets", "show a --show-secrets"),
        ("list", "list"),
        ("env a get JWT_SECRET", "env a get JWT_SECRET"),
        # options may stand anywhere on the line
        ("env a --json set JWT_SECRET=abc", "env a --json set JWT_SECRET="),
        ("env --json a set JWT_SECRET=abc", "env --json a set JWT_SECRET="),
    ],
)
def test_history_redaction(line, stored):
    assert redact(line) == stored


def test_secret_rule():
    assert is_secret("JWT_SECRET") and is_secret("POSTGRES_PASSWORD") and is_secret("ANON_KEY")
    assert not is_secret("SITE_URL") and not is_secret("STUDIO_PORT")


def test_history_file_never_holds_a_secret_value(tmp_path):
    path = tmp_path / "state" / "supabase-manager" / "history"
    history = make_history(path)
    history.append_string("env alpha set JWT_SECRET=s3cr3t-value SITE_URL=http://ok")
    history.append_string("list")
    text = path.read_text()
    assert "s3cr3t-value" not in text
    assert "JWT_SECRET=" in text and "SITE_URL=http://ok" in text
    assert path.stat().st_mode & 0o777 == 0o600
    assert path.parent.stat().st_mode & 0o777 == 0o700


def test_history_path_follows_xdg(tmp_path):
    assert history_path({"XDG_STATE_HOME": str(tmp_path)}) == (
        tmp_path / "supabase-manager" / "history"
    )
    assert str(history_path({})).endswith(".local/state/supabase-manager/history")


# --- output --------------------------------------------------------------------------------------
def test_output_is_plain_without_a_terminal(monkeypatch):
    stream = io.StringIO()
    text = table(["A", "B"], [["x", "1"], ["long", "22"]], stream, right=(1,))
    assert "\x1b" not in text
    assert text.splitlines() == ["A      B", "x      1", "long  22"]
    assert status_mark("running", stream) == "●"


def test_no_color_env_wins_on_a_terminal(monkeypatch):
    class Tty(io.StringIO):
        def isatty(self):
            return True

    monkeypatch.delenv("NO_COLOR", raising=False)
    monkeypatch.setenv("TERM", "xterm")
    assert "\x1b[" in status_mark("running", Tty())
    monkeypatch.setenv("NO_COLOR", "1")
    assert status_mark("running", Tty()) == "●"


def test_json_of_attrs_records():
    from controller.views import InstanceSummary

    row = InstanceSummary("a", "running", "t", "https://a.x", "2026-01-01T00:00:00+00:00")
    data = json.loads(dumps([row]))
    assert data[0]["name"] == "a" and data[0]["cpu_percent"] is None
    assert human_bytes(1536) == "1.5 KiB" and human_bytes(None) == "-"
