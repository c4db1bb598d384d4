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
from shell import values
from shell.context import ARGV, BATCH, REPL, Context
from shell.parse import Command, Opt, ParseError, pattern
from shell.signals import EnterShell, LeaveShell


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
    from controller.names import validate_new_name

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
        validate_new_name(name)
        ports = values.port_map(v["port"])
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
        if v["host"] is not None:
            answers["host"] = v["host"]
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

    problems: list[str] = []  # hosts that did not answer: their instances are unreachable
    rows = ctx.manager.list(resources=not v["no_stats"], problems=problems)
    for problem in problems:
        ctx.warn(problem)

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
        if any(r.host != "local" for r in rows):  # a HOST column once there is another host
            headers.insert(3, "HOST")
            for line, r in zip(body, rows, strict=True):
                line.insert(3, r.host)
        right = (4, 5, 6, 7) if "HOST" in headers else (3, 4, 5, 6)
        table = output.table(headers, body, ctx.out, right=right)
        notes = [
            f"{r.name}: runs template {r.template}, {r.newer_template} was imported since "
            f"('upgrade {r.name} --template {r.newer_template} --dry-run' shows the change)"
            for r in rows
            if r.newer_template
        ]
        return "\n".join([table, *notes])

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
        if d.host != "local":
            lines.append(f"  {'host':<9} {d.host}")
        lines += section("URLs", list(d.urls.items()))
        guarded = [role for role in ("studio", "mail") if role in d.urls]
        if guarded:
            note = f"{' and '.join(guarded)} ask for DASHBOARD_USERNAME / DASHBOARD_PASSWORD"
            lines.append("  " + output.dim(note, ctx.out))
        if d.containers:
            lines.append(output.paint("Containers", "bold", ctx.out))
            rows = [[c.service, c.name, c.state, c.health or "-"] for c in d.containers]
            table = output.table(["SERVICE", "CONTAINER", "STATE", "HEALTH"], rows, None)
            lines += ["  " + line for line in table.splitlines()]
        lines += section("Connections", list(d.connections.items()))
        lines += section("Keys", list(d.keys.items()))
        lines += section("Ports", [(k, f"{d.bind}:{p}") for k, p in sorted(d.ports.items())])
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
    """KEY=VALUE words, or one KEY alone whose value is asked for (so it stays off argv).
    No error repeats a word of the line: a mistyped one may be a secret."""
    from controller.envpolicy import check_key
    from controller.names import validate_name

    validate_name(v["name"])
    assignments: dict[str, str] = {}
    asked: list[str] = []
    for item in v["assignments"]:
        key, eq, value = item.partition("=")
        if eq and not key:
            raise UsageError("env set: an assignment has no KEY before '='")
        check_key(key)
        if eq:
            assignments[key] = value
        else:
            asked.append(key)
    if asked and (len(asked) > 1 or assignments):
        # e.g. `KEY= value` or `KEY value`: that bare word may well be the value.
        raise UsageError(
            "env set: give KEY=VALUE words, or a single KEY alone to be asked for its value"
        )
    for key in asked:
        # The prompt does not repeat the word either: it may be a value typed without its key.
        assignments[key] = ctx.read_secret("value (not shown): ")
        if not assignments[key]:
            # An empty stdin (cron, </dev/null) must not blank a password by accident.
            raise UsageError("env set: no value given; to set an empty value give KEY=")
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


def _caddy_status(ctx: Context, v: dict) -> int:
    """The drift report; exit 1 when Caddy's admin API cannot be reached (the report says so)."""
    status = ctx.manager.caddy_status()
    _emit(ctx, status, lambda: _render_mapping(status))
    if not status.get("reachable"):
        ctx.warn(f"supabase-manager: {status.get('error') or 'Caddy cannot be reached'}")
        return 1
    return 0


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


# --- backup and restore --------------------------------------------------------------------------
def _backup(ctx: Context, v: dict) -> None:
    from controller.restic import human

    result = ctx.manager.backup(v["name"], v["tag"], progress=ctx.progress)
    for note in result.notes:
        ctx.warn(f"note: {note}")
    _warnings(ctx, result.warnings)
    _emit(
        ctx,
        result,
        lambda: (
            f"backed up {result.instance}: backup {result.backup} (snapshot "
            f"{result.snapshot}), {human(result.bytes)} read, {human(result.added)} new, "
            f"{result.seconds:.1f} s"
        ),
    )


def _backup_named(ctx: Context, v: dict) -> None:
    """`backup --instance NAME`: for an instance whose name is a sub-command of backup."""
    _backup(ctx, {**v, "name": v["instance"]})


def _backup_all(ctx: Context, v: dict) -> None:
    results = ctx.manager.backup_all(v["tag"], progress=ctx.progress)
    for note in {n for r in results for n in r.notes}:
        ctx.warn(f"note: {note}")
    _emit(
        ctx,
        results,
        lambda: (
            "\n".join(f"backed up {r.instance}: {r.backup}" for r in results)
            or "no instance to back up"
        ),
    )


def _backup_list(ctx: Context, v: dict) -> None:
    from shell import output

    rows = ctx.manager.backup_list(v["name"])

    def text() -> str:
        if not rows:
            return "no backup yet: 'backup NAME' makes one"
        body = [
            [
                r.snapshot,
                r.instance,
                r.time,
                output.human_bytes(r.size),
                r.template,
                f"pg{r.postgres}" if r.postgres else "-",
                ", ".join(r.tags) or "-",
            ]
            for r in rows
        ]
        headers = ["ID", "INSTANCE", "TIME (UTC)", "SIZE", "TEMPLATE", "PG", "TAGS"]
        return output.table(headers, body, ctx.out, right=(3,))

    _emit(ctx, rows, text)


def _backup_check(ctx: Context, v: dict) -> None:
    line = ctx.manager.backup_check(read_data=v["read_data"])
    _emit(ctx, {"ok": True, "message": line}, lambda: line)


def _backup_prune(ctx: Context, v: dict) -> None:
    keep = {
        kind: v[f"keep_{kind}"]
        for kind in ("last", "daily", "weekly", "monthly")
        if v[f"keep_{kind}"] is not None
    }
    result = ctx.manager.backup_prune(keep or None, progress=ctx.progress)
    _emit(
        ctx,
        result,
        lambda: f"removed {len(result['removed'])} backup(s), kept {len(result['kept'])}",
    )


def _backup_key(ctx: Context, v: dict) -> None:
    info = ctx.manager.backup_key()
    _emit(
        ctx,
        info,
        lambda: (
            f"repository: {info['repository']}\n"
            + (
                f"password:   {info['kind']} {info['where']}\n{info['note']}"
                if info["kind"]
                else "password:   none yet (the first backup creates one)"
            )
        ),
    )


def _backup_key_export(ctx: Context, v: dict) -> int | None:
    if not v["yes"]:
        answer = ctx.confirm("print the backup repository password on the terminal?")
        if answer is None:
            raise UsageError("backup key export: give --yes to print it without a question")
        if not answer:
            ctx.print("not printed")
            return 1
    password = ctx.manager.backup_key_export()
    _emit(ctx, {"password": password}, lambda: password)
    return None


def _restore(ctx: Context, v: dict) -> int | None:
    name = v["name"]
    if v["dry_run"]:
        if v["as_name"]:
            raise UsageError("restore: --dry-run and --as do not go together")
        result = ctx.manager.restore_dry_run(
            name, v["snapshot"], progress=ctx.progress, host=v["host"]
        )
        _emit(
            ctx,
            result,
            lambda: (
                "\n".join(
                    f"{'ok  ' if c.ok else 'FAIL'} {c.what}: {c.detail}" for c in result.checks
                )
                + f"\nbackup {result.backup} of {name}: "
                + ("restorable" if result.ok else "NOT restorable")
                + f" (proved on host {result.host})"
            ),
        )
        return 0 if result.ok else 1
    target = v["as_name"] or name
    # A refusal (another host than its own, a name taken...) comes before the question.
    ctx.manager.restore_check(name, v["as_name"], v["host"])
    if not v["yes"] and not v["as_name"] and target in ctx.manager.instance_names():
        answer = ctx.confirm(f"replace the data of {target} with the backup?")
        if answer is None:
            raise UsageError(f"restore {name}: give --yes to replace its data without a question")
        if not answer:
            ctx.print("not restored")
            return 1
    result = ctx.manager.restore(
        name, v["snapshot"], v["as_name"], progress=ctx.progress, host=v["host"]
    )
    _warnings(ctx, result.warnings)
    _emit(
        ctx,
        result,
        lambda: (
            f"restored {result.instance} from backup {result.backup} of {result.source} "
            f"on host {result.host}"
        ),
    )
    return None


def _rotate(ctx: Context, v: dict) -> None:
    name = v["name"]
    result = ctx.manager.rotate(
        name, v["secrets"], v["all"], v["dry_run"], v["finish"], progress=ctx.progress
    )
    _warnings(ctx, result.warnings)

    def text() -> str:
        lines = []
        if result.recovered:
            lines.append(f"an interrupted rotation was finished: {result.recovered} values")
        verb = "would rotate" if result.dry_run else "rotated"
        for change in result.secrets:
            lines.append(f"{verb} {change.secret} (.env: {', '.join(change.env_keys)})")
            lines += [f"  sql: {sql}" for sql in change.sql]
            lines += [f"  {note}" for note in change.notes]
        if result.services:
            verb = "would recreate" if result.dry_run else "recreated"
            lines.append(f"{verb}: {', '.join(result.services)}")
        if result.client_keys:
            lines.append(
                f"client keys {'to change' if result.dry_run else 'changed'}: "
                f"{', '.join(result.client_keys)} (`show {name} --show-secrets` prints them)"
            )
        if not result.secrets and not result.recovered:
            lines.append("nothing to rotate")
        return "\n".join(lines)

    _emit(ctx, result, text)


def _upgrade(ctx: Context, v: dict) -> int | None:
    name = v["name"]
    if v["rollback"]:
        if v["template"] or v["dry_run"] or v["allow_major"]:
            raise UsageError("upgrade --rollback takes no other option")
        result = ctx.manager.upgrade_rollback(name, progress=ctx.progress)
        _warnings(ctx, result.warnings)
        _emit(ctx, result, lambda: f"rolled {name} back to backup {result.backup}")
        return None
    if not v["template"]:
        raise UsageError("upgrade: give --template TEMPLATE (or --rollback)")
    result = ctx.manager.upgrade(
        name, v["template"], v["dry_run"], v["allow_major"], progress=ctx.progress
    )
    _warnings(ctx, result.warnings)

    def text() -> str:
        from controller.ops.upgrade import major_refusal

        d = result.diff
        lines = [f"{d.old_template} -> {d.new_template}"]
        for label, items in (
            ("services added", d.added),
            ("services removed", d.removed),
            ("new variables", d.new_variables),
            ("removed variables", d.removed_variables),
            ("published ports added", d.ports_added),
            ("published ports removed", d.ports_removed),
        ):
            if items:
                lines.append(f"{label}: {', '.join(items)}")
        lines += [f"service renamed: {old} -> {new}" for old, new in d.renamed.items()]
        lines += [f"image {c.service}: {c.old} -> {c.new}" for c in d.images]
        if d.gateway[0] != d.gateway[1]:
            lines.append(f"gateway: {d.gateway[0]} -> {d.gateway[1]}")
        if d.major_change:
            lines.append(f"postgres: {d.postgres[0]} -> {d.postgres[1]} (major)")
            lines.append("refused: " + major_refusal(d, v["allow_major"]))
        if not result.dry_run:
            lines.append(f"upgraded {name} (backup {result.backup} taken first)")
        return "\n".join(lines)

    _emit(ctx, result, text)
    return None


def _clone(ctx: Context, v: dict) -> None:
    from controller.names import validate_new_name

    validate_new_name(v["new"])
    result = ctx.manager.clone(v["src"], v["new"], progress=ctx.progress, host=v["host"])
    _warnings(ctx, result.warnings)
    _emit(
        ctx,
        result,
        lambda: (
            f"cloned {result.source} as {result.instance} on host {result.host} "
            f"(backup {result.backup}); "
            f"rotated: {', '.join(result.rotated)}"
        ),
    )


def _move(ctx: Context, v: dict) -> None:
    result = ctx.manager.move(v["name"], v["to"], progress=ctx.progress)
    _warnings(ctx, result.warnings)

    def text() -> str:
        lines = []
        if result.recovered:
            lines.append(f"an interrupted move of {result.instance} was {result.recovered}")
        if result.backup:
            lines.append(
                f"moved {result.instance} from {result.source} to {result.target} "
                f"in {result.seconds:.1f} s (backup {result.backup})"
            )
        else:
            lines.append(f"{result.instance} runs on {result.target}")
        return "\n".join(lines)

    _emit(ctx, result, text)


def _host_add(ctx: Context, v: dict) -> None:
    record = ctx.manager.host_add(
        v["name"], v["url"], v["bind"], v["data_root"], accept_new_key=v["accept_new_key"]
    )
    _emit(
        ctx,
        record,
        lambda: (
            f"added host {record.name} ({record.user}@{record.address}:{record.port}, "
            f"ports bound to {record.bind})"
        ),
    )


def _host_remove(ctx: Context, v: dict) -> None:
    ctx.manager.host_remove(v["name"])
    _emit(ctx, {"name": v["name"], "removed": True}, lambda: f"removed host {v['name']}")


def _host_list(ctx: Context, v: dict) -> None:
    from shell import output

    rows = ctx.manager.host_list(live=not v["no_stats"])

    def state(r) -> str:
        if r.reachable is None:
            return "-"
        return f"up (Docker {r.docker_version})" if r.reachable else "unreachable"

    def text() -> str:
        body = [
            [
                r.name,
                r.url or "(this machine)",
                r.bind,
                str(r.instances) if r.running is None else f"{r.running}/{r.instances}",
                state(r),
                str(r.cpus) if r.cpus else "-",
                output.human_bytes(r.memory_bytes),
                output.percent(r.cpu_percent),  # what our containers there use
                output.human_bytes(r.memory_used_bytes),
            ]
            for r in rows
        ]
        headers = ["HOST", "URL", "BIND", "RUNNING", "DOCKER", "CPUS", "MEMORY", "CPU USE"]
        headers.append("MEM USE")
        lines = [output.table(headers, body, ctx.out, right=(3, 5, 6, 7, 8))]
        lines += [f"{r.name}: {r.error}" for r in rows if r.error]
        return "\n".join(lines)

    _emit(ctx, rows, text)


def _keep(text: str) -> int:
    return values.count(text)


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


def _metrics(ctx: Context, v: dict) -> None:
    """The Prometheus text exposition, once (already machine-readable: --json changes nothing)."""
    ctx.out.write(ctx.manager.metrics_text().decode())
    ctx.out.flush()


def _metrics_serve(ctx: Context, v: dict) -> None:
    ctx.manager.metrics_serve(v["listen"], ready=ctx.warn)


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
    raise EnterShell


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
            type=values.port_assignment,
            complete="port_assign",
        ),
        Opt(("--cpus",), "cpus", "CPU limit per service", "N", type=values.cpus),
        Opt(
            ("--memory",), "memory", "memory limit per service, e.g. 2g", "SIZE", type=values.memory
        ),
        Opt(("--no-start",), "no_start", "write everything but do not start it"),
        Opt(
            ("--host",),
            "host",
            "the host to run it on (`host list`; default: the one with the most free memory)",
            "HOST",
            complete="host",
        ),
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
        Opt(("--tail",), "tail", "only the last N lines per service", "N", type=values.count),
        Opt(("--errors",), "errors", "only error-level lines"),
    ),
    cmd("env NAME", "the instance's .env (secrets masked)", _env_list, SHOW_SECRETS),
    cmd("env NAME get KEY", "one value of the instance's .env", _env_get),
    cmd(
        "env NAME set ASSIGNMENT...",
        "set KEY=VALUE in .env (KEY alone: asked for, kept off the command line)",
        _env_set,
        details=(
            "Each ASSIGNMENT is KEY=VALUE. Give one KEY alone (no '=') to keep the value out of\n"
            "the command line, where other users of this host can read it: on a terminal it is\n"
            "asked for without echo, otherwise it is read from stdin, e.g.\n"
            '  printf %s "$PASSWORD" | supabase-manager env NAME set SMTP_PASS\n'
            "The services that must restart to use the new values are named."
        ),
        secret_words=True,
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
    cmd(
        "backup NAME",
        "one encrypted snapshot of an instance (database, volumes, folder) into the repository",
        _backup,
        Opt(("--tag",), "tag", "a tag for this backup", "TAG", repeat=True),
    ),
    cmd(
        "backup",
        "back up one instance named by option (for one called list, check, prune or key)",
        _backup_named,
        Opt(
            ("--instance",), "instance", "the instance", "NAME", required=True, complete="instance"
        ),
        Opt(("--tag",), "tag", "a tag for this backup", "TAG", repeat=True),
    ),
    cmd(
        "backup",
        "back up every instance",
        _backup_all,
        Opt(("--all",), "all", "every instance", required=True),
        Opt(("--tag",), "tag", "a tag for these backups", "TAG", repeat=True),
    ),
    cmd(
        "backup list [NAME]", "backups with id, instance, time, size, template, tags", _backup_list
    ),
    cmd(
        "backup check",
        "verify the backup repository",
        _backup_check,
        Opt(("--read-data",), "read_data", "also read and verify every stored byte"),
    ),
    cmd(
        "backup prune",
        "drop backups outside the keep policy (defaults from config) and free their space",
        _backup_prune,
        Opt(("--keep-last",), "keep_last", "keep the last N backups", "N", type=_keep),
        Opt(("--keep-daily",), "keep_daily", "keep one a day for N days", "N", type=_keep),
        Opt(("--keep-weekly",), "keep_weekly", "keep one a week for N weeks", "N", type=_keep),
        Opt(("--keep-monthly",), "keep_monthly", "keep one a month for N months", "N", type=_keep),
    ),
    cmd("backup key", "where the backup repository's password lives", _backup_key),
    cmd(
        "backup key export",
        "print the backup password (after a confirmation), for offline safekeeping",
        _backup_key_export,
        Opt(("-y", "--yes"), "yes", "do not ask for confirmation"),
    ),
    cmd(
        "restore NAME",
        "put an instance back to a backup (rolls back if it does not become healthy)",
        _restore,
        Opt(("--snapshot",), "snapshot", "backup or snapshot id (default: the latest)", "ID"),
        Opt(("--as",), "as_name", "restore as a new instance NEW", "NEW"),
        Opt(("--dry-run",), "dry_run", "restore into a throwaway project, verify, remove it"),
        Opt(
            ("--host",),
            "host",
            "where a new or deleted instance goes, or the --dry-run runs (`host list`)",
            "HOST",
            complete="host",
        ),
        Opt(("-y", "--yes"), "yes", "do not ask for confirmation"),
        completers={"NAME": None},  # a deleted instance can be restored too
    ),
    cmd(
        "rotate NAME [SECRET...]",
        "rotate secrets in .env and wherever else they live (database, Caddy, signed keys)",
        _rotate,
        Opt(("--all",), "all", "every secret that can be rotated in place"),
        Opt(("--dry-run",), "dry_run", "show the plan: values, SQL (masked), services, clients"),
        Opt(("--finish",), "finish", "with JWT_KEYS: retire the previous signing key"),
        details=(
            "SECRET: POSTGRES_PASSWORD, JWT_SECRET (re-signs ANON_KEY, SERVICE_ROLE_KEY),\n"
            "JWT_KEYS (graceful: the old public key stays until --finish),\n"
            "SUPABASE_PUBLISHABLE_KEY, SUPABASE_SECRET_KEY, DASHBOARD_PASSWORD, SECRET_KEY_BASE,\n"
            "PG_META_CRYPTO_KEY, "
            "LOGFLARE_* tokens, S3_PROTOCOL_ACCESS_KEY_*, MINIO_ROOT_PASSWORD, VAULT_ENC_KEY.\n"
            "With no SECRET it finishes a rotation that was interrupted."
        ),
        completers={"SECRET": "env_key"},
    ),
    cmd(
        "upgrade NAME",
        "move an instance to another template (backed up first, rolled back on failure)",
        _upgrade,
        Opt(
            ("--template",), "template", "the template to move to", "TEMPLATE", complete="template"
        ),
        Opt(("--dry-run",), "dry_run", "only show what changes"),
        Opt(("--allow-major",), "allow_major", "accept a Postgres major version change"),
        Opt(("--rollback",), "rollback", "restore the backup taken before the last upgrade"),
    ),
    cmd(
        "clone SRC NEW",
        "a new instance with SRC's data (fresh backup) and none of its secrets",
        _clone,
        Opt(
            ("--host",),
            "host",
            "the host NEW runs on (`host list`; default: as `create`)",
            "HOST",
            complete="host",
        ),
        completers={"SRC": "instance", "NEW": None},
    ),
    cmd(
        "move NAME",
        "take an instance to another host with its data (it keeps running where it was if "
        "that fails)",
        _move,
        Opt(
            ("--to",),
            "to",
            "the host to move it to (`host list`; `local`: this one)",
            "HOST",
            required=True,
        ),
    ),
    cmd(
        "host add NAME URL",
        "add a Docker host reached over SSH (URL: ssh://USER@ADDRESS[:PORT])",
        _host_add,
        Opt(("--bind",), "bind", "the host's address instance ports bind to", "ADDRESS"),
        Opt(("--data-root",), "data_root", "folder for instance folders there", "DIR"),
        Opt(("--accept-new-key",), "accept_new_key", "record the host's SSH key if unknown"),
        details=(
            "The host needs Docker and the compose plugin, and this user's key (the agent, or\n"
            "[hosts] identity_file in the config) in its authorized_keys. Its SSH host key must\n"
            "be known: check its fingerprint, then add it once with --accept-new-key.\n"
            "--bind defaults to ADDRESS; never 0.0.0.0 (use a private, e.g. WireGuard, address)."
        ),
        completers={"NAME": None, "URL": None},
    ),
    cmd(
        "host list",
        "hosts with URL, bind address, instances, reachability, Docker version, CPUs, memory",
        _host_list,
        Opt(("--no-stats",), "no_stats", "only what state.json says (asks no host)"),
    ),
    cmd(
        "host remove NAME",
        "forget a host (refused while it runs instances)",
        _host_remove,
        completers={"NAME": "remote_host"},
    ),
    cmd("audit [NAME]", "the audit log, optionally of one instance", _audit),
    cmd("check", "health check: one line per problem, exit 1 if there is any", _check),
    cmd(
        "metrics",
        "print the Prometheus metrics once (the exposition format)",
        _metrics,
        prints_data=False,
    ),
    cmd(
        "metrics serve",
        "serve the Prometheus metrics over HTTP until stopped",
        _metrics_serve,
        Opt(("--listen",), "listen", "HOST:PORT (default from [metrics] listen)", "ADDR"),
        prints_data=False,
    ),
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
