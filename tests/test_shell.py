"""The shell's command table, parser, help, completion, history redaction and rendering.

No Docker: names for completion come from a state.json written through StateStore, read by the
controller's completion snapshot.
"""

import ast
import io
import json
import shutil
from pathlib import Path

import pytest

from controller.completion_data import build_snapshot
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
    assert v["port"] == ["kong=25000"]  # checked by controller.ports, passed on as a map
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
        ("logs a --tail", "logs: option --tail needs a value (N)"),
        ("logs a --tail many", "logs: option --tail: invalid value 'many'"),
        ("logs a --tail ٣", "logs: option --tail: invalid value '٣'"),  # ASCII digits only
        (
            "create a --port kong",
            "create: option --port: invalid --port 'kong': "
            "expected SERVICE=PORT or SERVICE:CONTAINER_PORT=PORT",
        ),
        (
            "create a --memory lots",
            "create: option --memory: invalid memory limit 'lots': use a size like 512m or 2g",
        ),
        ("template", "template: missing sub-command (one of: fetch, import, list)"),
        ("template nope", "template: unknown sub-command 'nope' (one of: fetch, import, list)"),
        ("env a frob", "env: unexpected argument 'frob'"),
        ("env a get", "env get: missing KEY"),
        ("list --bogus", "list: unknown option --bogus"),
        ("frobnicate", "unknown command 'frobnicate'; try 'help'"),
        ("exit", "unknown command 'exit'; try 'help'"),  # only inside the shell
    ],
)
def test_parse_errors_name_the_command(line, message):
    with pytest.raises(ParseError) as caught:
        parse(table_for(ARGV), split_line(line))
    assert str(caught.value) == message
    assert isinstance(caught.value, UsageError)


def test_start_without_name_shows_both_usages():
    status, _, err = run(["start"])
    assert status == 2
    assert err.splitlines() == [
        "supabase-manager: start: missing NAME",
        "usage: start NAME [SERVICE ...]",
        "usage: start --all",
    ]


def test_help_lists_every_command_of_the_table():
    status, out, _ = run(["help"])
    assert status == 0
    lines = [" ".join(line.split()) for line in out.splitlines()]
    text = "\n".join(lines)
    for command in table_for(ARGV):
        # usage then help on one line, or help alone on the next line for a long usage
        one = f"{command.usage()} {command.help}"
        two = f"{command.usage()}\n{command.help}"
        assert one in lines or two in text, command.name
    assert not [line for line in lines if line.startswith(("exit ", "quit "))]
    _, in_shell, _ = run(["help"], mode=REPL)
    assert [line.split()[0] for line in in_shell.splitlines() if "leave the shell" in line] == [
        "exit",
        "quit",
    ]


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
    assert status == 2
    assert err == "supabase-manager: help: no command 'nope'; 'help' lists them\n"


def test_help_of_env_set_points_to_the_hidden_value_form():
    _, out, _ = run(["help", "env", "set"])
    assert "env NAME set ASSIGNMENT ..." in out.splitlines()[0]
    assert "| supabase-manager env NAME set SMTP_PASS" in out
    assert overview().count("KEY alone: asked for, kept off the command line") == 1


def test_delete_without_yes_is_refused_when_nobody_can_answer(tmp_path):
    status, _, err = run(["delete", "alpha"], root=str(tmp_path))
    assert status == 2
    assert err == "supabase-manager: delete alpha: give --yes to delete without a question\n"


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
def snapshot_of(root):
    return build_snapshot(load_settings(root))


def completions(root, text):
    return [c.text for c in Completer(snapshot_of(root)).complete(text)]


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
    assert completions(root, "show alpha -") == ["--show-secrets", "--json", "--help"]
    assert completions(root, "create x --template ") == ["v0.8.2"]
    # the template's own overlay files, plus the built-in mail catcher
    assert completions(root, "create x --overlay ") == ["kong", "logs", "mail"]
    assert completions(root, "create x --overlay k") == ["kong"]
    assert completions(root, "start --a") == ["--all"]
    assert completions(root, "create x --no") == ["--no-start"]
    # an option is offered once, unless it repeats
    assert completions(root, "delete alpha --purge --") == ["--yes", "--json", "--help"]
    assert completions(root, "create x --overlay logs --")[:2] == ["--template", "--overlay"]


def test_complete_paths(root, tmp_path):
    (tmp_path / "compose-extra.yml").write_text("")
    got = completions(root, f"template import {tmp_path}/comp")
    assert got == [f"{tmp_path}/compose-extra.yml"]


def test_completer_holds_only_metadata(root):
    """Once built, completing reads nothing under ROOT: with ROOT gone it answers the same."""
    completer = Completer(snapshot_of(root))
    before = [completer.complete(t) for t in ("show ", "logs alpha ", "env alpha get ")]
    shutil.rmtree(root)
    assert [completer.complete(t) for t in ("show ", "logs alpha ", "env alpha get ")] == before
    assert [c.text for c in before[1]] == ["db", "kong", "studio"]


def test_refresher_swaps_in_a_completer_that_sees_state_changes(root):
    from shell.refresher import CompletionRefresher

    settings = load_settings(root)
    store = StateStore(settings.state_path, settings.lock_path)
    old = Completer(snapshot_of(root))
    with store.transaction() as state:
        state.instances["gamma"] = InstanceRecord(name="gamma", template="v0.8.2")
    handed: list[Completer] = []
    refresher = CompletionRefresher(lambda: build_snapshot(settings))
    refresher.refresh(handed.append)
    assert refresher.wait(10)
    assert "gamma" not in [c.text for c in old.complete("show ")]  # the old one is unchanged
    assert len(handed) == 1
    assert "gamma" in [c.text for c in handed[0].complete("show ")]


def test_refresh_asked_while_one_runs_runs_again_after_it(root):
    import threading

    from shell.refresher import CompletionRefresher

    gate, loads = threading.Event(), []

    def load():
        loads.append(1)
        gate.wait(10)
        return snapshot_of(root)

    handed: list[Completer] = []
    refresher = CompletionRefresher(load)
    refresher.refresh(handed.append)
    refresher.refresh(handed.append)
    refresher.refresh(handed.append)
    assert refresher.is_refreshing()
    gate.set()
    assert refresher.wait(10)
    assert len(loads) == 2 and len(handed) == 2  # one thread: the first load, then one more


def test_prompt_toolkit_completer_wraps_the_same_logic(root):
    from prompt_toolkit.document import Document

    from shell.completion import prompt_toolkit_completer

    current = Completer(snapshot_of(root))
    completer = prompt_toolkit_completer(lambda: current)
    got = list(completer.get_completions(Document("show pr"), None))
    assert [(c.text, c.start_position) for c in got] == [("prod-db", -2)]
    current = Completer()  # swapped: the wrapper follows
    assert list(completer.get_completions(Document("show pr"), None)) == []


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
        # any line, whatever its command and whether it parses (issue 10, item 9)
        ("set SMTP_PASS= x", "set SMTP_PASS="),
        ("sett JWT_SECRET=hunter2 SITE_URL=http://x", "sett JWT_SECRET= SITE_URL=http://x"),
        ("JWT_SECRET='hun'ter2'", "JWT_SECRET="),
        ("env a set JWT_SECRET = hunter2 SITE_URL=y", "env a set JWT_SECRET = SITE_URL=y"),
        ("env a set JWT_SECRET =hunter2", "env a set JWT_SECRET ="),
        ("env a set SMTP_PASS= x SITE_URL=y", "env a set SMTP_PASS= SITE_URL=y"),
        ("env a set jwt_secret=abc", "env a set jwt_secret="),
        ("env a set JWT_SECRET hunter2", "env a set JWT_SECRET"),
        ('env a set "SMTP_PASS"=x # note', "env a set SMTP_PASS= # note"),
        ("env a set POOLER_TENANT_ID=t1", "env a set POOLER_TENANT_ID=t1"),  # not a secret
    ],
)
def test_history_redaction(line, stored):
    assert redact(line) == stored


def test_history_asks_the_controller_which_keys_are_secret(monkeypatch):
    import controller.envpolicy

    assert is_secret("SMTP_PASS") and not is_secret("POOLER_TENANT_ID")
    monkeypatch.setattr(controller.envpolicy, "is_secret", lambda key: key == "SITE_URL")
    assert redact("env a set SITE_URL=x JWT_SECRET=y") == "env a set SITE_URL= JWT_SECRET=y"


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


# --- structure -----------------------------------------------------------------------------------
def _shell_imports() -> dict[str, set[str]]:
    """shell module -> the shell modules it imports, at the top or inside a function."""
    folder = Path(__file__).resolve().parent.parent / "shell"
    graph: dict[str, set[str]] = {}
    for path in folder.glob("*.py"):
        found: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module:
                if node.module == "shell":
                    found.update(f"shell.{a.name}" for a in node.names)
                elif node.module.startswith("shell."):
                    found.add(node.module)
            elif isinstance(node, ast.Import):
                found.update(a.name for a in node.names if a.name.startswith("shell."))
        graph[f"shell.{path.stem}"] = found
    return graph


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}

    def visit(node: str, path: list[str]) -> list[str] | None:
        state[node] = 1
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return [*path, node, nxt]
            if nxt not in state:
                found = visit(nxt, [*path, node])
                if found:
                    return found
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            found = visit(node, [])
            if found:
                return found
    return None


def test_shell_modules_import_each_other_without_a_cycle():
    graph = _shell_imports()
    assert "shell.commands" in graph["shell.run"]  # the walk sees real imports
    assert _cycle(graph) is None, " -> ".join(_cycle(graph) or [])
    assert _cycle({"a": {"b"}, "b": {"a"}}) == ["a", "b", "a"]


# --- env set keeps its words to itself ----------------------------------------------------------
@pytest.mark.parametrize(
    "line",
    [
        "env alpha set hunter2-secret",  # a value typed without its key
        "env alpha set =hunter2-secret",
        "env alpha set JWT_SECRET hunter2secret",  # two bare words: which is the key?
        "env alpha set SMTP_PASS= hunter2secret",  # a bare word beside an assignment
        "env alpha set JWT_SECRET -hunter2secret",  # looks like an option
        "env alpha set --json=hunter2secret",
        "env Bad_Name set JWT_SECRET=hunter2secret",
    ],
)
def test_a_failed_env_set_never_repeats_its_words(root, line):
    status, out, err = run(split_line(line), root=str(root))
    assert status == 2
    assert len(err.splitlines()) <= 2 and err.startswith("supabase-manager: ")
    for word in ("hunter2", "secret"):
        assert word not in err.lower().replace("env name set", ""), err
    assert out == ""


# --- the controller's completion snapshot ---------------------------------------------------------
@pytest.mark.docker  # compose-go (the docker compose plugin) reads the template
def test_snapshot_of_a_real_template(tmp_path):
    from controller.secrets import GENERATED
    from tests.world.templates import copy_template

    settings = load_settings(tmp_path)
    copy_template("v0.8.2", settings.template_dir("v082"))
    snap = build_snapshot(settings)
    assert snap.template_names() == ["v082"] and snap.default_template == "v082"
    secrets = snap.generated_secrets("v082")
    assert {"JWT_SECRET", "POSTGRES_PASSWORD", "ANON_KEY"} <= set(secrets) <= GENERATED
    assert "POOLER_TENANT_ID" not in secrets  # generated, but not a secret
    assert "api-gw" in snap.port_services("v082")
    assert {"logs", "mail"} <= set(snap.overlays("v082"))


def test_snapshot_survives_a_broken_template_and_a_corrupt_state(root):
    settings = load_settings(root)
    (settings.template_dir("v0.8.2") / "docker-compose.yml").write_text("services: [\n")
    snap = build_snapshot(settings)
    assert snap.instance_names() == INSTANCES
    assert snap.services("alpha") == ()  # compose-go refuses the file: no services, no failure
    assert snap.overlays("v0.8.2") == ["kong", "logs", "mail"]
    assert snap.env_keys("alpha") == ("JWT_SECRET", "POSTGRES_PASSWORD", "SITE_URL")
    settings.state_path.write_text("{not json")
    assert build_snapshot(settings).instance_names() == []


def test_manager_facade_returns_the_snapshot(root):
    from controller.manager import Manager

    assert Manager(load_settings(root)).completion_snapshot() == snapshot_of(root)


def test_env_set_with_a_key_alone_and_nothing_on_stdin_changes_nothing(root, monkeypatch):
    class Recorder:
        settings = load_settings(root)
        calls: list = []

        def env_set(self, name, assignments):
            self.calls.append(assignments)

    manager = Recorder()
    monkeypatch.setattr("sys.stdin", io.StringIO(""))
    status, out, err = run(["env", "alpha", "set", "SMTP_PASS"], manager=manager)
    assert status == 2 and out == ""
    assert err == "supabase-manager: env set: no value given; to set an empty value give KEY=\n"
    assert manager.calls == []


def test_snapshot_sees_an_env_file_change(root):
    settings = load_settings(root)
    assert "NEW_KEY" not in build_snapshot(settings).env_keys("alpha")
    env = settings.instance_dir("alpha") / ".env"
    env.write_text(env.read_text() + "NEW_KEY=1\n")
    assert "NEW_KEY" in build_snapshot(settings).env_keys("alpha")
    env.write_text("ONLY=1\n")
    assert build_snapshot(settings).env_keys("alpha") == ("ONLY",)
