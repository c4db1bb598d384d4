"""`create` without a NAME in the shell: a step-by-step wizard.

Name (validated while it is typed), template, overlays, an optional advanced step (host ports, CPU
and memory limits), a preview of the URLs and of the secrets that will be generated (masked), then
confirm or cancel. Nothing is written before the confirmation: the wizard only returns the
arguments for Manager.create (or None when cancelled).
"""

from __future__ import annotations

from typing import Any

from controller.completion_data import CompletionSnapshot
from controller.errors import UsageError
from shell import values
from shell.context import Context


def run_wizard(ctx: Context) -> dict[str, Any] | None:
    try:
        return _Wizard(ctx).run()
    except (KeyboardInterrupt, EOFError):
        return None


class _Wizard:
    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        # Instances, templates, overlays and the secrets each template makes: one controller
        # call, fresh (the name check must see an instance created a moment ago).
        self.names: CompletionSnapshot = ctx.manager.completion_snapshot()

    def ask(self, message: str, **kwargs: Any) -> str:
        from prompt_toolkit import PromptSession

        session: PromptSession = PromptSession(input=self.ctx.pt_input, output=self.ctx.pt_output)
        return session.prompt(message, **kwargs).strip()

    def yes(self, question: str, default: bool) -> bool:
        hint = "[Y/n]" if default else "[y/N]"
        answer = self.ask(f"{question} {hint} ", validator=_validator(_yes_no_problem))
        return default if not answer else answer.lower() in ("y", "yes")

    def run(self) -> dict[str, Any] | None:
        from prompt_toolkit.completion import WordCompleter

        from controller.names import name_problem

        existing = set(self.names.instances)

        def name_check(text: str) -> str | None:
            problem = name_problem(text)
            if problem is None and text in existing:
                problem = f"an instance named {text} exists already"
            return problem

        templates = self.names.template_names()
        default = self.names.default_template
        if not templates or default is None:
            raise UsageError(
                "no template yet: run 'template fetch' or 'template import PATH' first"
            )
        self.ctx.print("New instance (Ctrl-C cancels; nothing is written before you confirm).")
        name = self.ask("name: ", validator=_validator(name_check), validate_while_typing=True)

        template = (
            self.ask(
                f"template [{default}]: ",
                completer=WordCompleter(templates),
                validator=_validator(
                    lambda t: None if not t or t in templates else f"one of: {', '.join(templates)}"
                ),
            )
            or default
        )

        available = self.names.overlays(template)
        overlays = self.ask(
            f"overlays ({' '.join(available)}; empty for none): ",
            completer=WordCompleter(available),
            validator=_validator(lambda text: _overlay_problem(text, available)),
        ).split()

        ports: dict[str, int] = {}
        cpus: float | None = None
        memory: str | None = None
        if self.yes("advanced settings (host ports, CPU and memory limits)?", False):
            text = self.ask(
                "host ports, SERVICE=PORT ... (empty: allocated automatically): ",
                validator=_validator(_ports_problem),
            )
            ports = values.port_map(text.split())
            cpus_text = self.ask(
                "CPU limit per service (empty: none): ",
                validator=_validator(_problem_of(values.cpus)),
            )
            cpus = values.cpus(cpus_text) if cpus_text else None
            memory_text = self.ask(
                "memory limit per service, e.g. 2g (empty: none): ",
                validator=_validator(_problem_of(values.memory)),
            )
            memory = memory_text or None
        start = self.yes("start it once created?", True)

        self.preview(name, template, overlays, ports, cpus, memory, start)
        if not self.yes(f"create {name}?", False):
            return None
        return {
            "name": name,
            "template": template,
            "overlays": list(dict.fromkeys(overlays)),
            "extra_compose": [],
            "ports": ports,
            "cpus": cpus,
            "memory": memory,
            "start": start,
        }

    def preview(self, name, template, overlays, ports, cpus, memory, start) -> None:
        settings = self.ctx.settings
        hosts = settings.hosts(name)
        lines = [
            "",
            f"About to create {name}:",
            f"  template   {template}",
            f"  overlays   {', '.join(overlays) or '-'}",
            f"  API        {settings.public_origin(hosts['api'])}",
            f"  Studio     {settings.public_origin(hosts['studio'])}",
        ]
        if "mail" in overlays:
            lines.append(f"  Mail       {settings.public_origin(hosts['mail'])}")
        if ports:
            lines.append(
                "  ports      " + ", ".join(f"{s}=127.0.0.1:{p}" for s, p in ports.items())
            )
        if cpus is not None or memory:
            lines.append(f"  limits     cpus {cpus or '-'}, memory {memory or '-'} per service")
        lines.append(f"  start      {'yes' if start else 'no (--no-start)'}")
        lines.append("  secrets generated for this instance:")
        keys = self.names.generated_secrets(template)
        width = max([len(key) for key in keys] + [10])
        lines += [f"    {key:<{width}}  ******** (new, random)" for key in keys]
        lines.append("")
        self.ctx.print("\n".join(lines))


def _validator(check):
    from prompt_toolkit.validation import ValidationError, Validator

    class _Check(Validator):
        def validate(self, document) -> None:
            problem = check(document.text.strip())
            if problem:
                raise ValidationError(message=problem, cursor_position=len(document.text))

    return _Check()


def _yes_no_problem(text: str) -> str | None:
    return None if text.lower() in ("", "y", "yes", "n", "no") else "answer y or n"


def _overlay_problem(text: str, available: list[str]) -> str | None:
    unknown = [o for o in text.split() if o not in available]
    return f"unknown overlay {unknown[0]!r}; one of: {', '.join(available)}" if unknown else None


def _ports_problem(text: str) -> str | None:
    return _problem_of(lambda t: values.port_map(t.split()))(text)


def _problem_of(convert):
    def check(text: str) -> str | None:
        if not text:
            return None
        try:
            convert(text)
        except UsageError as exc:
            return str(exc)
        except ValueError:
            return f"invalid value {text!r}"
        return None

    return check
