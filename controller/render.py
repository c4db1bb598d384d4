"""Writing an instance folder: the template copy, .env, docker-compose.override.yml, vector.yml.

The folder ROOT/instances/NAME holds:
- the template's files unchanged (never its .env.example, which carries demo secrets; the
  instance's own vector.yml is rewritten to name and read only this instance's containers),
- ``.env`` (0600): every variable of .env.example in its order with its comments, secrets generated,
  URLs and ports filled in, plus COMPOSE_PROJECT_NAME and COMPOSE_FILE so that a plain
  ``docker compose`` in the folder addresses this instance,
- ``docker-compose.override.yml``: per-instance container names (the upstream name stays a network
  alias), ports rebound to 127.0.0.1, the instance label, resource limits,
- ``docker-compose.mail.yml`` for the built-in mail overlay, and ``extra-N.yml`` copies of extra
  compose files.

Rendering is idempotent: an existing .env keeps its values (secrets above all), so a re-run after a
crash converges instead of producing new secrets.
"""

import os
import re
import stat
import urllib.parse
from collections.abc import Mapping, Sequence
from pathlib import Path

import yaml

from controller import secrets
from controller.config import Settings
from controller.envfile import EnvFile, referenced_variables
from controller.errors import OperationError, UsageError
from controller.fsutil import atomic_write, ensure_dir
from controller.names import validate_name
from controller.state import InstanceRecord
from controller.templatefiles import (
    BASE_FILE,
    MAIL_COMPOSE,
    MAIL_OVERLAY,
    MAIL_SMTP_PORT,
    MAIL_UI_PORT,
    OVERRIDE_FILE,
    Override,
    TemplateFiles,
    dump_yaml,
    interpolate,
    load_yaml,
    merge_services,
    parse_port,
)

INSTANCE_LABEL = "io.supabase-manager.instance"
ENV_FILE = ".env"
MAIL_FILE = f"docker-compose.{MAIL_OVERLAY}.yml"
_EXTRA_RE = re.compile(r"^extra-(\d+)\.yml$")
_MEMORY_RE = re.compile(r"^(\d+(?:\.\d+)?)([bkmg])?b?$", re.IGNORECASE)
# Files of the template never copied into an instance: .env.example holds demo secrets, and
# .env / the override file are the instance's own.
_SKIP_FILES = {".env", ".env.example", OVERRIDE_FILE}
_SKIP_DIRS = {".git"}
# Comment above COMPOSE_PROJECT_NAME at the top of a new .env.
_HEADER = (
    "# supabase-manager instance {name}: COMPOSE_PROJECT_NAME and COMPOSE_FILE make a plain\n"
    "# `docker compose` in this folder address this instance. The secrets below were generated\n"
    "# for it; see `supabase-manager env {name}`."
)


def project_name(record: InstanceRecord) -> str:
    return record.name


def instance_container_name(instance: str, service: str, upstream: str | None) -> str:
    """NAME-<what upstream had after "supabase-">, or NAME-<service> without such a name."""
    if upstream and "supabase-" in upstream:
        suffix = upstream.split("supabase-", 1)[1]
        if suffix:
            return f"{instance}-{suffix}"
    return f"{instance}-{service}"


def check_memory(memory: str | None) -> str | None:
    """Validate a memory limit like 512m, 2g or 1073741824 (bytes; compose's mem_limit)."""
    if memory is None:
        return None
    match = _MEMORY_RE.match(str(memory).strip())
    if not match or float(match.group(1)) <= 0:
        raise UsageError(f"invalid memory limit {memory!r}: use a size like 512m or 2g")
    amount = float(match.group(1))
    factor = {"b": 1, "k": 1024, "m": 1024**2, "g": 1024**3}[(match.group(2) or "b").lower()]
    if amount * factor < 6 * 1024**2:
        raise UsageError(f"invalid memory limit {memory!r}: Docker needs at least 6m")
    return str(memory).strip().lower()


def check_cpus(cpus: float | None) -> float | None:
    if cpus is None:
        return None
    try:
        value = float(cpus)
    except (TypeError, ValueError):
        raise UsageError(f"invalid CPU limit {cpus!r}: use a number like 1.5") from None
    if not 0 < value <= (os.cpu_count() or 1) * 16:
        raise UsageError(f"invalid CPU limit {cpus!r}: must be above 0")
    return value


# --- ports --------------------------------------------------------------------------------------


def _own_mail(template: TemplateFiles, overlays: Sequence[str]) -> bool:
    """Whether the mail overlay is our generated one (the template ships none)."""
    return MAIL_OVERLAY in overlays and not (template.path / MAIL_FILE).is_file()


def needed_ports(template: TemplateFiles, overlays: Sequence[str]) -> list[str]:
    """Host ports an instance needs: upstream's published ports, Studio's, the mail web UI's."""
    services = template.services(overlays)
    keys: list[str] = []
    for info in services.values():
        for port in info.published:
            if port.key not in keys:
                keys.append(port.key)
    studio = template.role("studio", overlays)
    if studio and services[studio].http_port:
        key = f"{studio}:{services[studio].http_port}"
        if key not in keys:
            keys.append(key)
    if MAIL_OVERLAY in overlays:
        mail = template.role("mail", overlays)
        if mail:
            info = services[mail]
            port = MAIL_UI_PORT if _own_mail(template, overlays) else info.http_port
            if port and not info.published:
                key = f"{mail}:{port}"
                if key not in keys:
                    keys.append(key)
    return keys


def role_port_key(template: TemplateFiles, overlays: Sequence[str], role: str) -> str | None:
    """The ``SERVICE:CONTAINER_PORT`` key of the host port that serves ``role``.

    gateway: the gateway's first published port (the API); studio: Studio's HTTP port; mail: the
    mail catcher's web UI; db / pooler: the role's first published port. None when there is none.
    """
    service = template.role(role, overlays)
    if service is None:
        return None
    keys = [key for key in needed_ports(template, overlays) if key.split(":", 1)[0] == service]
    if role == "studio":
        port = template.services(overlays)[service].http_port
        return f"{service}:{port}" if f"{service}:{port}" in keys else None
    return keys[0] if keys else None


def host_port_variables(template: TemplateFiles, overlays: Sequence[str]) -> dict[str, str]:
    """Variables that only set a published port's host side, mapped to that port's key.

    Such a variable (API_GW_HTTP_PORT, KONG_HTTPS_PORT, ...) may reflect the allocated host port
    in .env. One also read elsewhere (POSTGRES_PORT: Postgres's port inside the network) must not.
    """
    elsewhere: set[str] = set()
    for doc in template.documents(overlays):
        if not isinstance(doc, dict):
            continue
        for section, value in doc.items():
            if section != "services" or not isinstance(value, dict):
                elsewhere |= _refs(value)
                continue
            for body in value.values():
                body = getattr(body, "value", body)
                if not isinstance(body, dict):
                    continue
                for field, item in body.items():
                    if field != "ports":
                        elsewhere |= _refs(item)
                        continue
                    for entry in getattr(item, "value", item) or []:
                        elsewhere |= _refs_beside_host(entry)
    out: dict[str, str] = {}
    for info in template.services(overlays).values():
        for port in info.published:
            for var in sorted(referenced_variables(port.host_spec)):
                if var not in elsewhere:
                    out.setdefault(var, port.key)
    return out


def _refs_beside_host(entry: object) -> set[str]:
    """Variables a ``ports`` entry reads outside its host port (e.g. in the container port)."""
    if isinstance(entry, dict):
        return _refs({k: v for k, v in entry.items() if k != "published"})
    parsed = parse_port(entry, {})
    host = parsed[0][2] if parsed else ""
    return referenced_variables(str(entry).replace(host, "", 1) if host else str(entry))


def _refs(node: object) -> set[str]:
    if isinstance(node, str):
        return referenced_variables(node)
    if isinstance(node, dict):
        found: set[str] = set()
        for key, value in node.items():
            found |= _refs(key) | _refs(value)
        return found
    if isinstance(node, list | tuple):
        found = set()
        for item in node:
            found |= _refs(item)
        return found
    if hasattr(node, "value"):
        return _refs(node.value)
    return set()


# --- .env ---------------------------------------------------------------------------------------


def _public_form(example_value: str | None, origin: str) -> str:
    """``origin`` with the path the template's own value carries (e.g. /auth/v1 in v0.8.2)."""
    parsed = urllib.parse.urlsplit(example_value or "")
    if parsed.scheme and parsed.netloc:
        return origin + parsed.path
    return origin


def _compose_file_list(template: TemplateFiles, overlays: Sequence[str], extras: list[str]):
    names = [path.name for path in template.compose_paths(overlays)]
    return [*names, OVERRIDE_FILE, *extras]


def _build_env(
    settings: Settings,
    record: InstanceRecord,
    template: TemplateFiles,
    existing_text: str | None,
    compose_files: list[str],
) -> EnvFile:
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
    current = env.as_dict()
    keep = {}
    if not first:
        for key, value in current.items():
            if key in added or not value:
                continue
            if secrets.is_secret(key) and example_values.get(key) == value:
                continue  # a demo value from .env.example never survives
            keep[key] = value
    for key, value in secrets.generate_secrets(env.keys(), existing=keep).items():
        env.set(key, value)
    # Secrets we cannot generate (SMTP_PASS, OPENAI_API_KEY, ...) lose their demo values.
    for key in env:
        demo = example_values.get(key)
        if (
            demo
            and secrets.is_secret(key)
            and key not in secrets.GENERATED
            and env.get(key) == demo
        ):
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
    for key in ("SITE_URL",):
        if key in env and (first or key in added or env.get(key) == example_values.get(key)):
            env.set(key, _public_form(example_values.get(key), origin))
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
                env.set("SMTP_PORT", str(_smtp_port(template, overlays, mail)))
    return env


def managed_keys(template: TemplateFiles, overlays: Sequence[str]) -> set[str]:
    """.env keys every render sets again (an `env set` of one of them would not last)."""
    keys = {"COMPOSE_PROJECT_NAME", "COMPOSE_FILE", "SUPABASE_PUBLIC_URL", "API_EXTERNAL_URL"}
    keys.add("POOLER_TENANT_ID")
    keys |= set(host_port_variables(template, overlays))
    if MAIL_OVERLAY in overlays:
        keys |= {"SMTP_HOST", "SMTP_PORT"}
    return keys


def _smtp_port(template: TemplateFiles, overlays: Sequence[str], service: str) -> int:
    if _own_mail(template, overlays):
        return MAIL_SMTP_PORT
    body = template.merged(overlays).get(service, {})
    env = template.env()
    for entry in [*(body.get("expose") or []), *(body.get("ports") or [])]:
        text = interpolate(str(entry), env).split("/")[0].rsplit(":", 1)[-1]
        if text.isdigit() and int(text) in (1025, 2500, 25, 587, 2525):
            return int(text)
    return MAIL_SMTP_PORT


# --- docker-compose.override.yml ----------------------------------------------------------------


def _override(
    record: InstanceRecord,
    template: TemplateFiles,
    extra_docs: Sequence[object],
) -> dict:
    name = record.name
    overlays = list(record.overlays)
    env = template.env()
    merged = template.merged(overlays)
    services = template.services(overlays)
    everything = merge_services([{"services": merged}, *extra_docs])
    needed = needed_ports(template, overlays)
    cpus = check_cpus(record.cpus)
    memory = check_memory(record.memory)

    # Ports per service: upstream's published ones, then Studio's / the mail UI's.
    ports: dict[str, list[str]] = {}
    for key in needed:
        service, _, container = key.partition(":")
        protocol = "tcp"
        for port in services.get(service).published if service in services else ():
            if port.key == key:
                protocol = port.protocol
        host = record.ports[key]
        ports.setdefault(service, []).append(f"127.0.0.1:{host}:{container}/{protocol}")

    out_services: dict[str, dict] = {}
    taken: set[str] = set()
    for service, body in everything.items():
        upstream_raw = body.get("container_name")
        upstream = interpolate(str(upstream_raw), env) if upstream_raw else None
        container = instance_container_name(name, service, upstream)
        if container in taken:
            container = f"{name}-{service}"
        taken.add(container)
        entry: dict = {"container_name": container}
        if "network_mode" not in body:
            networks = body.get("networks") or {"default": None}
            if upstream and upstream != container:
                aliased = {}
                for network, config in networks.items():
                    aliases = (config.get("aliases") or []) if isinstance(config, dict) else []
                    if upstream not in aliases:
                        aliased[network] = {"aliases": [upstream]}
                if aliased:
                    entry["networks"] = aliased
            if service in ports:
                entry["ports"] = Override(ports[service])
        entry["labels"] = {INSTANCE_LABEL: name}
        if cpus is not None:
            entry["cpus"] = cpus
        if memory is not None:
            entry["mem_limit"] = memory
        out_services[service] = entry

    doc: dict = {"name": name, "services": out_services}
    # Top-level networks and volumes with a fixed name would be shared by every instance.
    for section in ("networks", "volumes"):
        fixed = {}
        for tdoc in [*template.documents(overlays), *extra_docs]:
            items = tdoc.get(section) if isinstance(tdoc, dict) else None
            for key, config in (items or {}).items() if isinstance(items, dict) else ():
                if isinstance(config, dict) and config.get("name") and not config.get("external"):
                    fixed[key] = {"name": f"{name}_{key}"}
        if fixed:
            doc[section] = fixed
    return doc


# --- vector.yml ---------------------------------------------------------------------------------

_TOKEN = re.compile(r"(?<![A-Za-z0-9_.-])([A-Za-z0-9_.-]*supabase-[A-Za-z0-9_-]*[A-Za-z0-9])")


def vector_config_files(template: TemplateFiles) -> list[str]:
    """Template-relative paths of the files mounted as Vector's configuration, in any overlay."""
    found: list[str] = []
    overlays = [o for o in template.overlays() if o != MAIL_OVERLAY]
    docs = [template.documents([])[0], *(template.documents([o])[-1] for o in overlays)]
    for service, body in merge_services(docs).items():
        image = str(body.get("image") or "")
        if "vector" not in image.split(":")[0] and service != "vector":
            continue
        for volume in body.get("volumes") or []:
            source = volume.get("source") if isinstance(volume, dict) else str(volume).split(":")[0]
            if not source or not str(source).startswith("."):
                continue
            path = (template.path / str(source)).resolve()
            try:
                relative = path.relative_to(template.path.resolve())
            except ValueError:
                continue
            if path.is_file() and path.suffix in (".yml", ".yaml", ".toml"):
                found.append(str(relative))
    default = Path("volumes/logs/vector.yml")
    if not found and (template.path / default).is_file():
        found.append(str(default))
    return sorted(set(found))


def rewrite_vector(text: str, instance: str, names: Mapping[str, str]) -> str:
    """The instance's own vector.yml: its containers' names, and only its containers' logs.

    ``names`` maps upstream container names to the instance's; any other ``supabase-X`` name in
    the file becomes ``INSTANCE-X`` (the same rule the override file follows).
    """

    def rename(match: re.Match) -> str:
        token = match.group(1)
        if token in names:
            return names[token]
        return instance_container_name(instance, "", token)

    renamed = _TOKEN.sub(rename, text)
    label = f"com.docker.compose.project={instance}"
    try:
        data = load_yaml(renamed)
    except yaml.YAMLError:
        return renamed
    if not isinstance(data, dict) or not isinstance(data.get("sources"), dict):
        return renamed
    expected = _with_project_filter(data, label)
    if expected is None:
        return renamed
    # Keep the file as upstream wrote it (comments, VRL blocks): add the filter line after each
    # docker_logs source's `type:` line, and fall back to a full dump if that does not parse back.
    lines = renamed.split("\n")
    out: list[str] = []
    for line in lines:
        out.append(line)
        match = re.match(r"^(\s*)type:\s*[\"']?docker_logs[\"']?\s*(#.*)?$", line)
        if match:
            indent = match.group(1)
            out.append(f"{indent}include_labels:")
            out.append(f'{indent}  - "{label}"')
    candidate = "\n".join(out)
    try:
        if load_yaml(candidate) == expected:
            return candidate
    except yaml.YAMLError:
        pass
    return dump_yaml(expected)


def _with_project_filter(data: dict, label: str) -> dict | None:
    import copy

    result = copy.deepcopy(data)
    changed = False
    for source in result["sources"].values():
        if isinstance(source, dict) and source.get("type") == "docker_logs":
            labels = list(source.get("include_labels") or [])
            if label not in labels:
                labels.append(label)
            source["include_labels"] = labels
            changed = True
    return result if changed else None


# --- writing ------------------------------------------------------------------------------------


def _write_if_changed(path: Path, data: bytes, mode: int) -> None:
    try:
        if path.read_bytes() == data and stat.S_IMODE(path.stat().st_mode) == mode:
            return
    except FileNotFoundError:
        pass
    atomic_write(path, data, mode=mode)


def _copy_template(source: Path, target: Path, replaced: Mapping[str, bytes]) -> None:
    for folder, dirs, files in os.walk(source):
        dirs[:] = sorted(d for d in dirs if d not in _SKIP_DIRS)
        here = Path(folder)
        relative = here.relative_to(source)
        if relative != Path("."):  # the instance folder itself stays 0700
            ensure_dir(target / relative, stat.S_IMODE(here.stat().st_mode) | 0o700)
        for filename in sorted(files):
            src = here / filename
            rel = relative / filename
            if relative == Path(".") and filename in _SKIP_FILES:
                continue
            if src.is_symlink() or not src.is_file():
                continue
            mode = stat.S_IMODE(src.stat().st_mode) | 0o600
            data = replaced.get(str(rel), src.read_bytes())
            _write_if_changed(target / rel, data, mode)


def read_extra_compose(sources: Sequence[Path]) -> list[tuple[bytes, object]]:
    """Each extra compose file's bytes and parsed YAML; UsageError (one line) when one is bad."""
    out = []
    for source in sources:
        try:
            data = Path(source).read_bytes()
        except OSError as exc:
            raise UsageError(
                f"extra compose file {source} cannot be read: {exc.strerror}"
            ) from None
        try:
            doc = load_yaml(data.decode())
        except (yaml.YAMLError, UnicodeDecodeError) as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise UsageError(f"extra compose file {source} is not valid YAML: {first}") from None
        if not isinstance(doc, dict):
            raise UsageError(f"extra compose file {source} is not a compose file")
        out.append((data, doc))
    return out


def _existing_extras(folder: Path) -> list[str]:
    found = []
    for child in folder.iterdir() if folder.is_dir() else ():
        match = _EXTRA_RE.match(child.name)
        if match and child.is_file():
            found.append((int(match.group(1)), child.name))
    return [name for _, name in sorted(found)]


def render_instance(
    settings: Settings,
    record: InstanceRecord,
    template: TemplateFiles,
    extra_compose_sources: Sequence[Path] = (),
) -> Path:
    """Write (or bring up to date) the instance folder for ``record``; returns the folder."""
    name = validate_name(record.name)
    overlays = list(record.overlays)
    check_memory(record.memory)
    check_cpus(record.cpus)
    template.compose_paths(overlays)  # unknown overlays -> UsageError
    if not (template.path / BASE_FILE).is_file():
        raise UsageError(f"template {template.path} has no {BASE_FILE}")
    missing = [key for key in needed_ports(template, overlays) if key not in record.ports]
    if missing:
        raise OperationError(f"no host port allocated for {', '.join(missing)}")
    extras = read_extra_compose(extra_compose_sources)

    ensure_dir(settings.instances_dir, 0o755)
    folder = ensure_dir(settings.instance_dir(name), 0o700)

    # Template copy, with the instance's own Vector configuration.
    upstream_names: dict[str, str] = {}
    env_values = template.env()
    all_overlays = [o for o in template.overlays() if o != MAIL_OVERLAY]
    for overlay_set in ([], *([o] for o in all_overlays), overlays):
        for service, body in template.merged(overlay_set).items():
            raw = body.get("container_name")
            if raw:
                upstream = interpolate(str(raw), env_values)
                upstream_names.setdefault(
                    upstream, instance_container_name(name, service, upstream)
                )
    replaced: dict[str, bytes] = {}
    for relative in vector_config_files(template):
        text = (template.path / relative).read_text()
        replaced[relative] = rewrite_vector(text, name, upstream_names).encode()
    _copy_template(template.path, folder, replaced)

    if _own_mail(template, overlays):
        _write_if_changed(folder / MAIL_FILE, MAIL_COMPOSE.encode(), 0o644)

    # Extra compose files: copies in the folder; a re-render without sources keeps them.
    if extras:
        names = [f"extra-{i}.yml" for i in range(1, len(extras) + 1)]
        for filename, (data, _) in zip(names, extras, strict=True):
            _write_if_changed(folder / filename, data, 0o644)
        for stale in _existing_extras(folder):
            if stale not in names:
                (folder / stale).unlink()
        extra_docs = [doc for _, doc in extras]
    else:
        names = _existing_extras(folder)
        extra_docs = [load_yaml((folder / filename).read_text()) for filename in names]

    # .env first among our own files: from here on a re-run keeps these secrets.
    env_path = folder / ENV_FILE
    existing = env_path.read_text() if env_path.is_file() else None
    env = _build_env(
        settings, record, template, existing, _compose_file_list(template, overlays, names)
    )
    _write_if_changed(env_path, env.render().encode(), 0o600)

    override = _override(record, template, extra_docs)
    header = (
        f"# Written by supabase-manager for instance {name}; rewritten on every render.\n"
        "# Own container names (upstream names stay network aliases), ports on 127.0.0.1.\n"
    )
    _write_if_changed(folder / OVERRIDE_FILE, (header + dump_yaml(override)).encode(), 0o644)
    return folder


def compose_files(instance_dir: Path) -> list[Path]:
    """The instance's compose files (COMPOSE_FILE of its .env), absolute, in order."""
    instance_dir = Path(instance_dir)
    env_path = instance_dir / ENV_FILE
    env = EnvFile.parse(env_path.read_text()) if env_path.is_file() else EnvFile()
    value = env.get("COMPOSE_FILE")
    if not value:
        files = [BASE_FILE] + ([OVERRIDE_FILE] if (instance_dir / OVERRIDE_FILE).is_file() else [])
    else:
        separator = env.get("COMPOSE_PATH_SEPARATOR") or ":"
        files = [item for item in value.split(separator) if item]
    return [(instance_dir / item).absolute() for item in files]


def demo_values(template: TemplateFiles) -> dict[str, str]:
    """The non-empty values .env.example gives secret keys (must never reach an instance)."""
    return {
        key: value
        for key, value in EnvFile.parse(template.env_example()).items()
        if value and secrets.is_secret(key)
    }
