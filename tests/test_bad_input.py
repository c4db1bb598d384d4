"""A corpus of bad input, each item run twice: as a plain command (argv) and as the line of a
script piped in. Every one must give exit status 2, exactly one line on stderr (no traceback, no
"internal error"), nothing on stdout, no secret value repeated, and leave ROOT exactly as it was
(a snapshot of every file's path, mode and content before and after).

Items whose check belongs to a controller module another change is adding are marked
xfail(strict=True) with the item of issue 10 (or 9) they wait for: when that change lands they
pass, and the strict marker tells the lead to remove the mark.

In-process (shell.cli.main) to keep the corpus fast; a sample per kind also runs as a real process.
The ROOTs with a template and an instance are made once (`template import`, `create --no-start`,
Caddy pointed at a closed port) and copied for each item.
"""

# ruff: noqa: E501, RUF001  (the corpus is a table: one item per line; RUF001: on purpose)
from __future__ import annotations

import hashlib
import io
import os
import shlex
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.world.templates import fixtures_dir

REPO = Path(__file__).resolve().parent.parent
FIXTURE = fixtures_dir() / "v0.8.2"
CLOSED_CADDY = "http://127.0.0.1:9"


@dataclass(frozen=True)
class Case:
    id: str
    words: tuple[str, ...]
    base: str = "empty"  # which ROOT: empty, template, instance
    files: dict[str, bytes] = field(default_factory=dict)  # written into ROOT first
    secret: str | None = None  # a value that must not appear in any output
    in_script: bool = True  # False: a word no script line can hold (a newline)
    marks: tuple = ()


def case(id: str, line: str | list[str], base: str = "empty", **kw) -> Case:
    words = tuple(shlex.split(line)) if isinstance(line, str) else tuple(line)
    return Case(id, words, base, **kw)


DEEP = b'{"schema": 1, "instances": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
STATE = "state.json"
CONFIG = "config.toml"

CORPUS: list[Case] = [
    # --- names -----------------------------------------------------------------------------------
    case("name-uppercase", "create Bad_Name --no-start"),
    case("name-digit-first", "create 1abc --no-start"),
    case("name-dash-last", "create abc- --no-start"),
    case("name-too-long", f"create {'a' * 41} --no-start"),
    case("name-empty", ["create", "", "--no-start"]),
    case("name-unicode", "create ａbc --no-start"),
    case("name-dots", "create a..b --no-start"),
    case("name-path", "create ../escape --no-start"),
    case("name-show", "show Bad_Name"),
    case("name-delete", "delete ../x --yes --purge"),
    case("name-env", "env Bad_Name"),
    case("name-logs", "logs UPPER"),
    case("name-start", "start a/b"),
    case("name-audit", "audit x_y"),
    case("template-unknown", "create fine --template nosuch --no-start", "template"),
    case("template-escape", "create fine --template ../instances/a --no-start", "template"),
    case("overlay-unknown", "create fine --overlay nosuch --no-start", "template"),
    case("template-empty", ["create", "fine", "--template", "", "--no-start"], "template"),
    case("import-missing", "template import /nonexistent/docker --name t2", "template"),
    case("import-not-a-template", "template import {ROOT}/x.yml --name t2", "template", files={"x.yml": b"a: 1\n"}),
    case("import-bad-name", "template import {ROOT}/templates/v082 --name ../t2", "template"),
    # --- options ---------------------------------------------------------------------------------
    case("port-no-equals", "create fine --port kong --no-start"),
    case("port-zero", "create fine --port kong=0 --no-start"),
    case("port-too-big", "create fine --port kong=65536 --no-start"),
    case("port-huge", "create fine --port kong=99999999999999999999 --no-start"),
    case("port-arabic-digits", "create fine --port kong=٢٢٠٠٠ --no-start"),
    case("port-no-service", "create fine --port =20000 --no-start"),
    case("port-twice", "create fine --port kong=20000 --port kong=20001 --no-start"),
    case("port-out-of-range", "create fine --port api-gw=22 --no-start", "template"),
    case("port-unknown-service", "create fine --port nosuch=20000 --no-start", "template"),
    case("memory-word", "create fine --memory lots --no-start"),
    case("memory-huge", "create fine --memory 99999999999999999999999g --no-start"),
    case("memory-tiny", "create fine --memory 1k --no-start"),
    case("memory-negative", "create fine --memory -1g --no-start"),
    case("cpus-tiny", "create fine --cpus 1e-300 --no-start"),
    case("cpus-zero", "create fine --cpus 0 --no-start"),
    case("cpus-nan", "create fine --cpus nan --no-start"),
    case("cpus-inf", "create fine --cpus inf --no-start"),
    case("cpus-word", "create fine --cpus many --no-start"),
    case("tail-negative", "logs fine --tail -1"),
    case("tail-arabic-digit", "logs fine --tail ٣"),
    case("root-empty", ["--root", "", "list"]),
    # --- extra compose files ---------------------------------------------------------------------
    case("extra-missing", "create fine --extra-compose /nonexistent/x.yml --no-start", "template"),
    case("extra-shadow", "create fine --extra-compose /etc/shadow --no-start", "template"),
    case(
        "extra-list",
        "create fine --extra-compose {ROOT}/extra.yml --no-start",
        "template",
        files={"extra.yml": b"- a\n- b\n"},
    ),
    case(
        "extra-no-services",
        "create fine --extra-compose {ROOT}/extra.yml --no-start",
        "template",
        files={"extra.yml": b"volumes:\n  x: {}\n"},
    ),
    case(
        "extra-binary",
        "create fine --extra-compose {ROOT}/extra.yml --no-start",
        "template",
        files={"extra.yml": bytes(range(256))},
    ),
    case(
        "extra-bad-yaml",
        "create fine --extra-compose {ROOT}/extra.yml --no-start",
        "template",
        files={"extra.yml": b"services: [\n"},
    ),
    # --- env keys and values ---------------------------------------------------------------------
    case("env-key-space", ["env", "inst", "set", "BAD KEY=x"], "instance"),
    case("env-key-digit", "env inst set 1KEY=x", "instance"),
    case("env-no-key", "env inst set =hunter2-value", "instance", secret="hunter2-value"),
    case("env-get-bad-key", ["env", "inst", "get", "no such"], "instance"),
    case("env-unset-bad-key", "env inst unset 1X", "instance"),
    case("env-compose-profiles", "env inst set COMPOSE_PROFILES=x", "instance"),
    case("env-compose-separator", "env inst set COMPOSE_PATH_SEPARATOR=:", "instance"),
    case("env-docker-host", "env inst set DOCKER_HOST=tcp://10.0.0.1:2375", "instance"),
    case("env-managed", "env inst set COMPOSE_PROJECT_NAME=other", "instance"),
    case("env-unsafe", "env inst set POSTGRES_PASSWORD=n3w-pass-value", "instance", secret="n3w-pass-value"),
    case("env-user-space", ["env", "inst", "set", "DASHBOARD_USERNAME=ad min"], "instance"),
    case("env-user-empty", "env inst set DASHBOARD_USERNAME=", "instance"),
    case("env-db-empty", "env inst set POSTGRES_DB=", "instance"),
    case("env-unset-required", "env inst unset DASHBOARD_PASSWORD", "instance"),
    case("env-url", "env inst set SITE_URL=not-a-url", "instance"),
    case("env-not-utf8", ["env", "inst", "set", "SMTP_PASS=caf\udce9-x"], "instance"),
    case("env-newline", ["env", "inst", "set", "SMTP_PASS=a\nb-hidden"], "instance", secret="b-hidden", in_script=False),
    case("env-bare-and-value", "env inst set SMTP_PASS= hunter2-value", "instance", secret="hunter2-value"),
    case("env-two-bare", "env inst set SMTP_PASS hunter2value", "instance", secret="hunter2value"),
    case("env-jwt-not-jwt", "env inst set ANON_KEY=not-a-jwt-value", "instance", secret="not-a-jwt-value"),
    # --- config files ----------------------------------------------------------------------------
    case("config-binary", "list --json", files={CONFIG: bytes(range(256))}),
    case("config-not-toml", "list --json", files={CONFIG: b"domain = \n[[["}),
    case("config-domain-number", "list --json", files={CONFIG: b"domain = 5\n"}),
    case("config-domain-dash", "list --json", files={CONFIG: b'domain = "-bad.example"\n'}),
    case("config-domain-unicode", "list --json", files={CONFIG: 'domain = "exämple.dev"\n'.encode()}),
    case("config-port-zero", "list --json", files={CONFIG: b"public_port = 0\n"}),
    case("config-scheme", "list --json", files={CONFIG: b'scheme = "ftp"\n'}),
    case("config-range-reversed", "list --json", files={CONFIG: b'[ports]\nrange = "30000-20000"\n'}),
    case("config-range-word", "list --json", files={CONFIG: b'[ports]\nrange = "lots"\n'}),
    case("config-missing", "--config {ROOT}/nope.toml list --json"),
    case("config-folder", "--config {ROOT} list --json"),
    case("config-range-number", "list --json", files={CONFIG: b"[ports]\nrange = 5\n"}),
    # --- state files -----------------------------------------------------------------------------
    case("state-not-json", "list --json", files={STATE: b"{not json"}),
    case("state-binary", "list --json", files={STATE: bytes(range(256))}),
    case("state-deep", "list --json", files={STATE: DEEP}),
    case("state-list", "list --json", files={STATE: b"[]"}),
    case("state-schema", "list --json", files={STATE: b'{"schema": 99, "instances": {}}'}),
    case(
        "state-bad-record",
        "create fine --no-start",
        "template",
        files={STATE: b'{"schema": 1, "instances": {"x": {"name": 5}}, "templates": {}}'},
    ),
]  # fmt: skip


# --- ROOTs -------------------------------------------------------------------------------------
def _sm(root: Path, *words: str, stdin: str = "") -> subprocess.CompletedProcess:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("SUPABASE_MANAGER_")}
    environ.update(PYTHONPATH=str(REPO), SUPABASE_MANAGER_CADDY_ADMIN=CLOSED_CADDY, NO_COLOR="1")
    return subprocess.run(
        [sys.executable, "-m", "shell", "--root", str(root), *words],
        input=stdin,
        capture_output=True,
        text=True,
        env=environ,
        cwd=REPO,
        timeout=120,
    )


@pytest.fixture(scope="module")
def bases(tmp_path_factory) -> dict[str, Path]:
    top = tmp_path_factory.mktemp("bad-input-bases")
    empty = top / "empty"
    empty.mkdir()
    template = top / "template"
    result = _sm(template, "template", "import", str(FIXTURE), "--name", "v082")
    assert result.returncode == 0, result.stderr
    instance = top / "instance"
    shutil.copytree(template, instance, symlinks=True)
    result = _sm(instance, "create", "inst", "--no-start")
    # No Caddy here: the instance is made, then exit 1 says its routes are pending.
    assert result.returncode == 1 and "routes are pending" in result.stderr, result.stderr
    return {"empty": empty, "template": template, "instance": instance}


def snapshot(root: Path) -> dict[str, tuple]:
    """Every path under ROOT with its type, mode and content hash; but ROOT/cache, which holds
    compose-go's answers by content hash, written by any read of a template (no state)."""
    out: dict[str, tuple] = {}
    if not root.exists():
        return out
    for folder, dirs, files in os.walk(root):
        if Path(folder) == root and "cache" in dirs:
            dirs.remove("cache")
        for name in dirs + files:
            path = Path(folder, name)
            st = path.lstat()
            rel = str(path.relative_to(root))
            if path.is_symlink():
                out[rel] = ("link", os.readlink(path))
            elif path.is_dir():
                out[rel] = ("dir", st.st_mode & 0o7777)
            else:
                digest = hashlib.sha256(path.read_bytes()).hexdigest()
                out[rel] = ("file", st.st_mode & 0o7777, digest)
    return out


@pytest.fixture
def prepare(bases, tmp_path, monkeypatch) -> Callable[[Case], tuple[Path, list[str]]]:
    monkeypatch.delenv("SUPABASE_MANAGER_ROOT", raising=False)
    monkeypatch.delenv("SUPABASE_MANAGER_CONFIG", raising=False)
    monkeypatch.setenv("SUPABASE_MANAGER_CADDY_ADMIN", CLOSED_CADDY)
    monkeypatch.setenv("NO_COLOR", "1")

    def make(item: Case) -> tuple[Path, list[str]]:
        root = tmp_path / "root"
        shutil.copytree(bases[item.base], root, symlinks=True)
        for name, data in item.files.items():
            (root / name).write_bytes(data)
        words = [w.replace("{ROOT}", str(root)) for w in item.words]
        if words[:1] == ["--root"]:
            return root, words  # the item is about --root itself
        return root, ["--root", str(root), *words]

    return make


def _check(item: Case, root: Path, before: dict, status: int, out: str, err: str, prefix: str):
    lines = err.splitlines()
    assert status == 2, f"exit {status}: {err}"
    assert len(lines) == 1, err
    assert lines[0].startswith(prefix), err
    assert "Traceback" not in err and "internal error" not in err, err
    assert out == ""
    if item.secret:
        assert item.secret not in err
    assert snapshot(root) == before, "ROOT changed"


def _params():
    return [pytest.param(item, id=item.id, marks=item.marks) for item in CORPUS]


@pytest.mark.docker
@pytest.mark.parametrize("item", _params())
def test_bad_input(item, prepare, capsys, monkeypatch):
    """As a plain command, then as line 2 of a script: the same one line (with the line number),
    exit 2, ROOT untouched."""
    from shell.cli import main

    root, argv = prepare(item)
    before = snapshot(root)
    status = main(argv)
    captured = capsys.readouterr()
    _check(item, root, before, status, captured.out, captured.err, "supabase-manager: ")
    message = captured.err.removeprefix("supabase-manager: ")
    if not item.in_script:
        return
    split = 0
    while argv[split : split + 1] in (["--root"], ["--config"]):
        split += 2  # global options stay on the command line, the rest is the script's line
    script = "# a script\n" + shlex.join(argv[split:]) + "\nlist --json\n"
    monkeypatch.setattr(sys, "stdin", io.StringIO(script))
    status = main(argv[:split])
    captured = capsys.readouterr()
    # line 1 is the comment: the failing line is line 2, and line 3 never runs
    _check(item, root, before, status, captured.out, captured.err, "supabase-manager: line 2: ")
    assert captured.err == f"supabase-manager: line 2: {message}"


SAMPLES = ["name-uppercase", "port-arabic-digits", "env-docker-host", "config-domain-number"]


@pytest.mark.docker
@pytest.mark.parametrize("name", SAMPLES)
def test_bad_input_in_a_real_process(name, prepare):
    """A sample per kind as real processes too: what reaches the terminal is the same."""
    item = next(c for c in CORPUS if c.id == name)
    root, argv = prepare(item)
    before = snapshot(root)
    result = _sm(root, *argv[2:])
    _check(
        item, root, before, result.returncode, result.stdout, result.stderr, "supabase-manager: "
    )
    script = shlex.join(argv[2:]) + "\n"
    result = _sm(root, stdin=script)
    _check(
        item, root, before, result.returncode, result.stdout, result.stderr, "supabase-manager: "
    )
