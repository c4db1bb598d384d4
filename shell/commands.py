"""THE command table. Every command is declared here once: its words and arguments (the pattern),
its options, its help, how each argument completes, and its handler. The argv CLI, the REPL,
batch scripts, ``help`` and completion all read this table.

To add a command: write ``def _my_handler(ctx, v)`` (``v`` holds the parsed values by ``dest``;
return an exit status or None for 0, raise a ManagerError subclass to fail) and add one
``cmd("my words NAME [--opt]", "one line of help", _my_handler, Opt(...))`` entry to TABLE.

Handlers import what they need when they run: a fresh ``supabase-manager list --json`` must not
pay for prompt_toolkit, the Docker SDK or httpx.
"""

from __future__ import annotations

from collections.abc import Callable

from controller.errors import ManagerError, UsageError
from shell.context import ARGV, BATCH, REPL, Context
from shell.parse import Command, Opt, ParseError, pattern


class LeaveShell(Exception):
    """Raised by `exit`/`quit` inside the REPL."""


# --- option value checks -------------------------------------------------------------------------
def _port_assignment(text: str) -> tuple[str, int]:
    service, eq, port = text.partition("=")
    if not eq or not service or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise UsageError(f"expected SERVICE=PORT with a port 1-65535, got {text!r}")
    return service, int(port)


def _cpus(text: str) -> float:
    from controller.render import check_cpus

    return check_cpus(text)


def _memory(text: str) -> str:
    from controller.render import check_memory

    return check_memory(text)


def _count(text: str) -> int:
    value = int(text)
    if value < 0:
        raise ValueError(text)
    return value


# --- small helpers -------------------------------------------------------------------------------
def _emit(ctx: Context, data: object, text: Callable[[], str]) -> None:
    """Print ``data`` as JSON with --json, else the human rendering."""
    from shell import output

    if ctx.json:
        ctx.print(output.dumps(data))
    else:
        rendered = text()
        if rendered:
            ctx.print(rendered)


def _warnings(ctx: Context, warnings: list[str] | None) -> None:
    for warning in warnings or []:
        ctx.warn(f"warning: {warning}")


def _url(ctx: Context, name: str, role: str = "api") -> str:
    settings = ctx.settings
    return settings.public_origin(settings.hosts(name)[role])


def _offer_restart(ctx: Context, name: str, change) -> None:
    """After an env change: name the services that must restart and offer to restart them."""
    from shell.parse import quote

    _warnings(ctx, change.warnings)
    if ctx.json:
        from shell import output

        ctx.print(output.dumps(change))
        return
    if change.changed:
        ctx.print(f"changed: {', '.join(change.changed)}")
    else:
        ctx.print("nothing changed")
    if not change.services:
        return
    services = " ".join(change.services)
    ctx.print(f"to apply it, these services must restart: {', '.join(change.services)}")
    answer = ctx.confirm("restart them now?") if ctx.interactive else None
    if answer:
        ctx.manager.restart(name, list(change.services), progress=ctx.progress)
        ctx.print(f"restarted {services}")
    else:
        ctx.print(f"run: supabase-manager restart {quote(name)} {services}")


# --- templates -----------------------------------------------------------------------------------
def _template_fetch(ctx: Context, v: dict) -> None:
    m = ctx.manager
    if v["list"]:
        tags = m.template_tags()
        _emit(ctx, tags, lambda: "\n".join(tags))
        return
    name = m.template_fetch(v["ref"], progress=ctx.progress)
    _emit(ctx, {"template": name}, lambda: f"fetched template {name}")


def _template_import(ctx: Context, v: dict) -> None:
    from pathlib import Path

    name = ctx.manager.template_import(Path(v["path"]), name=v["name"])
    _emit(ctx, {"template": name}, lambda: f"imported template {name}")


def _template_list(ctx: Context, v: dict) -> None:
    import textwrap

    from shell import output

    templates = ctx.manager.template_list()

    def text() -> str:
        if not templates:
            return "no template yet: run 'template fetch' or 'template import PATH'"
        lines = []
        for t in templates:
            images = ", ".join(f"{svc}:{img.rpartition(':')[2]}" for svc, img in t.images.items())
            wrapped = textwrap.wrap(images or "-", 86, break_on_hyphens=False) or ["-"]
            lines += [
                output.paint(t.name, "bold", ctx.out),
                f"  source     {t.source}",
                f"  instances  {', '.join(t.instances) or '-'}",
                f"  images     {wrapped[0]}",
                *(f"             {line}" for line in wrapped[1:]),
            ]
        return "\n".join(lines)

    _emit(ctx, templates, text)


# --- instances -----------------------------------------------------------------------------------
def _create(ctx: Context, v: dict) -> int | None:
    from controller.names import validate_name

    name = v["name"]
    if name is None:
        if not ctx.interactive:
            raise ParseError("create: missing NAME", [_usage("create")])
        from shell.wizard import run_wizard

        answers = run_wizard(ctx)
        if answers is None:
            ctx.print("cancelled: nothing was created")
            return 1
    else:
        validate_name(name)
        ports: dict[str, int] = {}
        for service, port in v["port"]:
            if service in ports:
                raise UsageError(f"create: --port {service}= given twice")
            ports[service] = port
        from pathlib import Path

        answers = {
            "name": name,
            "template": v["template"],
            "overlays": list(dict.fromkeys(v["overlay"])),
            "extra_compose": [Path(p) for p in v["extra_compose"]],
            "ports": ports,
            "cpus": v["cpus"],
            "memory": v["memory"],
            "start": not v["no_start"],
        }
    warnings = ctx.manager.create(**answers, progress=ctx.progress)
    _warnings(ctx, warnings)
    name = answers["name"]
    urls = {role: _url(ctx, name, role) for role in ("api", "studio")}
    _emit(
        ctx,
        {"name": name, "urls": urls, "warnings": warnings or []},
        lambda: f"created {name}: {urls['api']} (studio: {urls['studio']})",
    )
    return None


def _list(ctx: Context, v: dict) -> None:
    from shell import output

    rows = ctx.manager.list(resources=not v["no_stats"])

    def text() -> str:
        if not rows:
            return "no instance yet: 'create NAME' makes one"
        body = [
            [
                output.status_mark(r.status, ctx.out),
                r.name,
                r.status,
                f"{r.running}/{r.total}",
                output.percent(r.cpu_percent),
                output.human_bytes(r.memory_bytes),
                output.human_bytes(r.disk_bytes),
                r.api_url,
            ]
            for r in rows
        ]
        headers = ["", "NAME", "STATUS", "UP", "CPU", "MEMORY", "DISK", "API URL"]
        return output.table(headers, body, ctx.out, right=(3, 4, 5, 6))

    _emit(ctx, rows, text)


def _show(ctx: Context, v: dict) -> None:
    from shell import output

    d = ctx.manager.show(v["name"], show_secrets=v["show_secrets"])

    def section(title: str, pairs: list[tuple[str, str]]) -> list[str]:
        if not pairs:
            return []
        width = max(len(k) for k, _ in pairs)
        return [output.paint(title, "bold", ctx.out)] + [
            f"  {k:<{width}}  {val}" for k, val in pairs
        ]

    def text() -> str:
        lines = [f"{output.status_mark(d.status, ctx.out)} {output.paint(d.name, 'bold', ctx.out)}"]
        lines += [
            f"  {'status':<9} {d.status}",
            f"  {'created':<9} {d.created_at}",
            f"  {'template':<9} {d.template}",
            f"  {'overlays':<9} {', '.join(d.overlays) or '-'}",
        ]
        lines += section("URLs", list(d.urls.items()))
        if d.containers:
            lines.append(output.paint("Containers", "bold", ctx.out))
            rows = [[c.service, c.name, c.state, c.health or "-"] for c in d.containers]
            table = output.table(["SERVICE", "CONTAINER", "STATE", "HEALTH"], rows, None)
            lines += ["  " + line for line in table.splitlines()]
        lines += section("Connections", list(d.connections.items()))
        lines += section("Keys", list(d.keys.items()))
        lines += section("Ports", [(k, f"127.0.0.1:{p}") for k, p in sorted(d.ports.items())])
        if d.requests:
            lines += section("Requests", [(h, f"{r:.2f}/s") for h, r in d.requests.items()])
        if not v["show_secrets"] and d.keys:
            lines.append(output.dim("keys are masked; --show-secrets shows them", ctx.out))
        return "\n".join(lines)

    _emit(ctx, d, text)


def _lifecycle(verb: str) -> Callable[[Context, dict], None]:
    past = {"start": "started", "stop": "stopped", "restart": "restarted"}[verb]

    def handler(ctx: Context, v: dict) -> None:
        method = getattr(ctx.manager, verb)
        services = v["services"] or None
        result = method(v["name"], services, progress=ctx.progress)
        _warnings(ctx, result if isinstance(result, list) else None)
        what = f"{v['name']} ({', '.join(services)})" if services else v["name"]
        _emit(
            ctx,
            {"name": v["name"], "services": services or [], verb: True},
            lambda: f"{past} {what}",
        )

    handler.__name__ = f"_{verb}"
    return handler


def _start_all(ctx: Context, v: dict) -> None:
    """Start every instance marked to start (the boot-time unit runs this)."""
    started = ctx.manager.start_all(progress=ctx.progress)
    _emit(ctx, started, lambda: "\n".join(f"started {n}" for n in started) or "nothing to start")


def _delete(ctx: Context, v: dict) -> int | None:
    name = v["name"]
    if not v["yes"]:
        what = f"instance {name} and all its data" if v["purge"] else f"instance {name}"
        answer = ctx.confirm(f"delete {what}?")
        if answer is None:
            raise UsageError(f"delete {name}: give --yes to delete without a question")
        if not answer:
            ctx.print("not deleted")
            return 1
    warnings = ctx.manager.delete(name, purge=v["purge"], progress=ctx.progress)
    _warnings(ctx, warnings)
    kept = "" if v["purge"] else f" (data kept in {ctx.settings.instance_dir(name)})"
    _emit(ctx, {"name": name, "purged": v["purge"]}, lambda: f"deleted {name}{kept}")
    return None


def _logs(ctx: Context, v: dict) -> None:
    import json

    lines = ctx.manager.logs(
        v["name"],
        v["services"] or None,
        follow=v["follow"],
        tail=v["tail"],
        errors_only=v["errors"],
    )
    try:
        for line in lines:
            ctx.out.write((json.dumps(line) if ctx.json else line.rstrip("\n")) + "\n")
            ctx.out.flush()
    finally:
        close = getattr(lines, "close", None)
        if close is not None:
            close()  # stops a --follow stream when Ctrl-C ends the loop


# --- env -----------------------------------------------------------------------------------------
def _env_list(ctx: Context, v: dict) -> None:
    pairs = ctx.manager.env_list(v["name"], show_secrets=v["show_secrets"])
    _emit(ctx, dict(pairs), lambda: "\n".join(f"{k}={val}" for k, val in pairs))


def _env_get(ctx: Context, v: dict) -> None:
    value = ctx.manager.env_get(v["name"], v["key"])
    _emit(ctx, {v["key"]: value}, lambda: value)


def _env_set(ctx: Context, v: dict) -> None:
    assignments: dict[str, str] = {}
    for item in v["assignments"]:
        key, eq, value = item.partition("=")
        if not eq or not key:
            raise UsageError(f"env set: expected KEY=VALUE, got {item.partition('=')[0]!r}")
        assignments[key] = value
    change = ctx.manager.env_set(v["name"], assignments)
    _offer_restart(ctx, v["name"], change)


def _env_unset(ctx: Context, v: dict) -> None:
    change = ctx.manager.env_unset(v["name"], v["key"])
    _offer_restart(ctx, v["name"], change)


def _env_edit(ctx: Context, v: dict) -> int | None:
    from shell.envedit import edit_env

    change = edit_env(ctx, v["name"])
    if change is None:
        return None
    _offer_restart(ctx, v["name"], change)
    return None


# --- caddy, audit, monitoring --------------------------------------------------------------------
def _caddy_sync(ctx: Context, v: dict) -> None:
    lines = ctx.manager.caddy_sync(v["name"])
    _emit(ctx, lines, lambda: "\n".join(lines) or "caddy routes are in sync")


def _caddy_status(ctx: Context, v: dict) -> None:
    status = ctx.manager.caddy_status()
    _emit(ctx, status, lambda: _render_mapping(status))


def _render_mapping(data: object, indent: int = 0) -> str:
    pad = "  " * indent
    lines = []
    if isinstance(data, dict):
        for key, value in data.items():
            if isinstance(value, dict | list) and value:
                lines.append(f"{pad}{key}:")
                lines.append(_render_mapping(value, indent + 1))
            else:
                shown = "-" if value in (None, [], {}) else value
                lines.append(f"{pad}{key}: {shown}")
    elif isinstance(data, list):
        lines += [
            _render_mapping(item, indent) if isinstance(item, dict) else f"{pad}- {item}"
            for item in data
        ]
    else:
        lines.append(f"{pad}{data}")
    return "\n".join(lines)


def _audit(ctx: Context, v: dict) -> None:
    from shell import output

    entries = ctx.manager.audit(v["name"])

    def text() -> str:
        rows = [
            [
                e.get("time", ""),
                e.get("user", ""),
                e.get("command", ""),
                e.get("instance") or "-",
                e.get("outcome", ""),
            ]
            for e in entries
        ]
        return output.table(["TIME", "USER", "COMMAND", "INSTANCE", "OUTCOME"], rows, ctx.out)

    _emit(ctx, entries, text if entries else lambda: "the audit log is empty")


def _top(ctx: Context, v: dict) -> None:
    if not ctx.interactive and ctx.pt_input is None:
        raise UsageError("top needs a terminal; use 'list --json' in scripts")
    from shell.top import run_top

    run_top(ctx)


def _check(ctx: Context, v: dict) -> int:
    """Health check for monitoring and boot: one line per problem, exit 1 when there is any."""
    try:
        problems = ctx.manager.check()
    except ManagerError as exc:
        problems = [str(exc)]
    if ctx.json:
        from shell import output

        ctx.print(output.dumps({"ok": not problems, "problems": problems}))
    else:
        for problem in problems:
            ctx.print(problem)
        if not problems:
            ctx.print("ok")
    return 1 if problems else 0


# --- the shell itself ----------------------------------------------------------------------------
def _shell(ctx: Context, v: dict) -> int | None:
    if ctx.mode == REPL:
        ctx.print("already in the shell")
        return None
    if ctx.mode == BATCH:
        raise UsageError("'shell' cannot run inside a script")
    import sys

    if not sys.stdin.isatty():
        raise UsageError("the shell needs a terminal; pipe commands to a bare supabase-manager")
    from shell.repl import run_repl

    return run_repl(ctx)


def _help(ctx: Context, v: dict) -> None:
    words = v["commands"]
    if not words:
        ctx.print(overview(ctx.mode))
        return
    matching = [c for c in table_for(ctx.mode) if c.words[: len(words)] == tuple(words)]
    if not matching:
        matching = [c for c in table_for(ctx.mode) if c.first == words[0]]
    if not matching:
        raise UsageError(f"help: no command {' '.join(words)!r}; 'help' lists them")
    ctx.print(command_help(matching))


def _exit(ctx: Context, v: dict) -> None:
    raise LeaveShell


# --- the table -----------------------------------------------------------------------------------
def cmd(text: str, help: str, handler: Callable, *opts: Opt, **kw) -> Command:
    elements = pattern(text, **kw.pop("completers", {}))
    name = " ".join(e.word for e in elements if hasattr(e, "word"))
    return Command(elements, help, handler, tuple(opts), name=name, **kw)


SHOW_SECRETS = Opt(
    ("--show-secrets",), "show_secrets", "show secret values instead of masking them"
)

TABLE: list[Command] = [
    cmd(
        "template fetch",
        "download the docker/ folder of supabase/supabase at a release tag",
        _template_fetch,
        Opt(("--ref",), "ref", "release tag (default: the pinned known-good one)", "TAG"),
        Opt(("--list",), "list", "list the self-hosted release tags instead"),
    ),
    cmd(
        "template import PATH",
        "import a local folder or .tar.gz holding that docker/ folder",
        _template_import,
        Opt(("--name",), "name", "the template's name", "NAME"),
    ),
    cmd("template list", "templates with their source, image tags and instances", _template_list),
    cmd(
        "create [NAME]",
        "create an instance and start it (no NAME in the shell: a wizard)",
        _create,
        Opt(("--template",), "template", "template to use", "NAME", complete="template"),
        Opt(
            ("--overlay",),
            "overlay",
            "upstream overlay to add",
            "OVERLAY",
            repeat=True,
            complete="overlay",
        ),
        Opt(
            ("--extra-compose",),
            "extra_compose",
            "your compose file, layered last",
            "FILE",
            repeat=True,
            complete="path",
        ),
        Opt(
            ("--port",),
            "port",
            "choose a service's host port",
            "SERVICE=PORT",
            repeat=True,
            type=_port_assignment,
            complete="port_assign",
        ),
        Opt(("--cpus",), "cpus", "CPU limit per service", "N", type=_cpus),
        Opt(("--memory",), "memory", "memory limit per service, e.g. 2g", "SIZE", type=_memory),
        Opt(("--no-start",), "no_start", "write everything but do not start it"),
        details="Names: lowercase letters, digits and '-', starting with a letter, at most 40.",
        completers={"NAME": None},  # a new name: nothing to complete
    ),
    cmd(
        "list",
        "dashboard: status, CPU, memory, disk and API URL of every instance",
        _list,
        Opt(("--no-stats",), "no_stats", "skip CPU, memory and disk figures (faster)"),
    ),
    cmd("show NAME", "status, URLs, containers, connection strings and keys", _show, SHOW_SECRETS),
    cmd(
        "start NAME [SERVICE...]", "start an instance or some of its services", _lifecycle("start")
    ),
    cmd(
        "start",
        "start every instance marked to start (used at boot)",
        _start_all,
        Opt(("--all",), "all", "every instance marked to start", required=True),
    ),
    cmd("stop NAME [SERVICE...]", "stop an instance or some of its services", _lifecycle("stop")),
    cmd(
        "restart NAME [SERVICE...]",
        "restart an instance or some of its services",
        _lifecycle("restart"),
    ),
    cmd(
        "delete NAME",
        "delete an instance (its data folder stays unless --purge)",
        _delete,
        Opt(("--purge",), "purge", "also remove the data folder, volumes and network"),
        Opt(("-y", "--yes"), "yes", "do not ask for confirmation"),
    ),
    cmd(
        "logs NAME [SERVICE...]",
        "show an instance's logs",
        _logs,
        Opt(("--follow",), "follow", "keep streaming until Ctrl-C"),
        Opt(("--tail",), "tail", "only the last N lines per service", "N", type=_count),
        Opt(("--errors",), "errors", "only error-level lines"),
    ),
    cmd("env NAME", "the instance's .env (secrets masked)", _env_list, SHOW_SECRETS),
    cmd("env NAME get KEY", "one value of the instance's .env", _env_get),
    cmd(
        "env NAME set ASSIGNMENT...",
        "set KEY=VALUE in .env; names the services to restart",
        _env_set,
    ),
    cmd("env NAME unset KEY", "remove a key from .env", _env_unset),
    cmd("env NAME edit", "edit .env in $EDITOR; validated before it is saved", _env_edit),
    cmd(
        "caddy sync [NAME]",
        "push the routes from the snippets and state to Caddy again",
        _caddy_sync,
    ),
    cmd("caddy status", "Caddy's routes compared with what they should be", _caddy_status),
    cmd(
        "top",
        "live monitor: CPU and memory graphs, requests/s, recent errors",
        _top,
        prints_data=False,
    ),
    cmd("audit [NAME]", "the audit log, optionally of one instance", _audit),
    cmd("check", "health check: one line per problem, exit 1 if there is any", _check),
    cmd("shell", "the interactive shell", _shell, prints_data=False),
    cmd("help [COMMAND...]", "list the commands, or explain one", _help, prints_data=False),
    cmd("exit", "leave the shell (or Ctrl-D)", _exit, repl_only=True, prints_data=False),
    cmd("quit", "leave the shell (or Ctrl-D)", _exit, repl_only=True, prints_data=False),
]


def table_for(mode: str) -> list[Command]:
    return [c for c in TABLE if mode == REPL or not c.repl_only]


def _usage(name: str) -> str:
    return next(c.usage() for c in TABLE if c.name == name)


def overview(mode: str = ARGV) -> str:
    lines = ["Commands:"]
    commands = table_for(mode)
    width = max(len(c.usage()) for c in commands if len(c.usage()) <= 44)
    for c in commands:
        usage = c.usage()
        if len(usage) > width:
            lines.append(f"  {usage}\n  {'':<{width}}  {c.help}")
        else:
            lines.append(f"  {usage:<{width}}  {c.help}")
    lines += [
        "",
        "Global options: --root DIR, --config FILE, --json, -f FILE (run a script), --keep-going.",
        "'help COMMAND' explains one command. With no command: the shell on a terminal,",
        "otherwise commands are read line by line from stdin ('#' starts a comment).",
    ]
    return "\n".join(lines)


def command_help(commands: list[Command]) -> str:
    blocks = []
    for c in commands:
        lines = [f"usage: {c.usage()}", f"  {c.help}"]
        if c.opts:
            width = max(len(o.usage().strip("[]")) for o in c.opts)
            lines.append("options:")
            for o in c.opts:
                flags = ", ".join(o.flags) + (f" {o.metavar}" if o.metavar else "")
                extra = f" (one of: {', '.join(o.choices)})" if o.choices else ""
                extra += " (repeatable)" if o.repeat else ""
                lines.append(f"  {flags:<{width + 4}}  {o.help}{extra}")
        if c.prints_data:
            lines.append("  --json: machine-readable output")
        if c.details:
            lines.append(c.details)
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks)
