""".env of an instance: every variable of .env.example in its order with its comments, secrets
generated, URLs, ports and the mail catcher filled in, plus COMPOSE_PROJECT_NAME and COMPOSE_FILE
so that a plain ``docker compose`` in the folder addresses this instance."""

import urllib.parse
from collections.abc import Mapping

from controller import secrets
from controller.config import Settings
from controller.envfile import EnvFile
from controller.envpolicy import is_secret
from controller.state import InstanceRecord
from controller.templatefiles import (
    MAIL_OVERLAY,
    TemplateFiles,
    host_port_variables,
    smtp_port,
)

# Comment above COMPOSE_PROJECT_NAME at the top of a new .env.
_HEADER = (
    "# supabase-manager instance {name}: COMPOSE_PROJECT_NAME and COMPOSE_FILE make a plain\n"
    "# `docker compose` in this folder address this instance. The secrets below were generated\n"
    "# for it; see `supabase-manager env {name}`."
)


def _public_form(example_value: str | None, origin: str) -> str:
    """``origin`` with the path the template's own value carries (e.g. /auth/v1 in v0.8.2)."""
    parsed = urllib.parse.urlsplit(example_value or "")
    if parsed.scheme and parsed.netloc:
        return origin + parsed.path
    return origin


def build_env(
    settings: Settings,
    record: InstanceRecord,
    template: TemplateFiles,
    existing_text: str | None,
    compose_files: list[str],
    initial: Mapping[str, str] | None = None,
) -> EnvFile:
    """The instance's .env; ``existing_text`` (a previous render's) keeps its values.

    ``initial``: values a first render takes for secrets it would otherwise generate (e.g. the
    dashboard password a create already started hashing); ignored once the .env exists.
    """
    name = record.name
    overlays = list(record.overlays)
    example = EnvFile.parse(template.env_example())
    example_values = example.as_dict()
    first = existing_text is None
    env = EnvFile.parse(example.render() if first else existing_text)
    added: set[str] = set()
    if not first:
        previous = None
        for key in example:
            if key not in env:
                env.insert_after(previous, key, example_values[key])
                added.add(key)
            previous = key

    # Secrets: keep what the instance has (unless it is still a demo value), generate the rest.
    keep = {}
    if not first:
        for key, value in env.as_dict().items():
            if key in added or not value:
                continue
            if is_secret(key) and example_values.get(key) == value:
                continue  # a demo value from .env.example never survives
            keep[key] = value
    else:
        for key, value in (initial or {}).items():
            if key in env and key in secrets.GENERATED and value:
                env.set(key, value)
                keep[key] = value
    for key, value in secrets.generate_secrets(env.keys(), existing=keep).items():
        env.set(key, value)
    # Secrets we cannot generate (SMTP_PASS, OPENAI_API_KEY, ...) lose their demo values.
    for key in env:
        demo = example_values.get(key)
        if demo and is_secret(key) and key not in secrets.GENERATED and env.get(key) == demo:
            env.set(key, "")

    # What makes `docker compose` in the folder address this instance.
    if "COMPOSE_PROJECT_NAME" not in env:
        head = _HEADER.format(name=name) + f"\nCOMPOSE_PROJECT_NAME={name}\n\n"
        env.lines[0:0] = EnvFile.parse(head).lines
    env.set("COMPOSE_PROJECT_NAME", name)
    if "COMPOSE_FILE" in env:
        env.set("COMPOSE_FILE", ":".join(compose_files))
    else:
        env.insert_after("COMPOSE_PROJECT_NAME", "COMPOSE_FILE", ":".join(compose_files))

    # Public URLs.
    origin = settings.public_origin(settings.hosts(name)["api"])
    for key in ("SUPABASE_PUBLIC_URL", "API_EXTERNAL_URL"):
        if key in env:
            env.set(key, _public_form(example_values.get(key), origin))
    if "SITE_URL" in env and (
        first or "SITE_URL" in added or env.get("SITE_URL") == example_values.get("SITE_URL")
    ):
        env.set("SITE_URL", _public_form(example_values.get("SITE_URL"), origin))
    if "POOLER_TENANT_ID" in env:
        env.set("POOLER_TENANT_ID", name)
    if "STUDIO_DEFAULT_PROJECT" in env and (
        first or env.get("STUDIO_DEFAULT_PROJECT") == example_values.get("STUDIO_DEFAULT_PROJECT")
    ):
        env.set("STUDIO_DEFAULT_PROJECT", name)

    # Host-port variables reflect the allocated ports (never POSTGRES_PORT & co).
    for var, key in host_port_variables(template, overlays).items():
        if var in env and key in record.ports:
            env.set(var, str(record.ports[key]))

    # The mail catcher.
    if MAIL_OVERLAY in overlays:
        mail = template.role("mail", overlays)
        if mail:
            if "SMTP_HOST" in env:
                env.set("SMTP_HOST", mail)
            if "SMTP_PORT" in env:
                env.set("SMTP_PORT", str(smtp_port(template, overlays, mail)))
    return env
