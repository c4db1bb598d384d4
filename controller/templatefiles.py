"""Reading an upstream template folder (the docker/ folder of supabase/supabase).

Everything is derived from the files: the services of the base compose file and its overlays
(``docker-compose.NAME.yml``), their container names, published ports, images and HTTP ports. Only
the built-in ``mail`` overlay is ours: a mail catcher that ``render`` writes as
``docker-compose.mail.yml`` into an instance folder.
"""

import re
from collections.abc import Mapping, Sequence
from pathlib import Path

import attrs
import yaml

from controller.envfile import EnvFile
from controller.errors import UsageError

BASE_FILE = "docker-compose.yml"
OVERRIDE_FILE = "docker-compose.override.yml"
_OVERLAY_RE = re.compile(r"^docker-compose\.([A-Za-z0-9_-]+)\.ya?ml$")

# --- the built-in mail overlay ------------------------------------------------------------------
MAIL_OVERLAY = "mail"
MAIL_SERVICE = "mail"
MAIL_IMAGE = "axllent/mailpit:v1.27"
MAIL_SMTP_PORT = 1025
MAIL_UI_PORT = 8025
MAIL_COMPOSE = f"""\
# Mail catcher added by supabase-manager (overlay "mail"): Auth sends its e-mails here and the
# web UI shows them. SMTP on {MAIL_SMTP_PORT} inside the instance network, web UI on {MAIL_UI_PORT}.
services:
  {MAIL_SERVICE}:
    container_name: supabase-mail
    image: {MAIL_IMAGE}
    restart: unless-stopped
    expose:
      - "{MAIL_UI_PORT}"
      - "{MAIL_SMTP_PORT}"
    environment:
      MP_SMTP_AUTH_ACCEPT_ANY: "1"
      MP_SMTP_AUTH_ALLOW_INSECURE: "1"
      MP_UI_BIND_ADDR: "0.0.0.0:{MAIL_UI_PORT}"
      MP_SMTP_BIND_ADDR: "0.0.0.0:{MAIL_SMTP_PORT}"
    healthcheck:
      test: ["CMD", "/mailpit", "readyz"]
      interval: 5s
      timeout: 5s
      retries: 5
"""


# --- YAML with compose's merge tags -------------------------------------------------------------


@attrs.frozen
class Override:
    """A value tagged ``!override``: replaces what earlier files said instead of merging."""

    value: object


@attrs.frozen
class Reset:
    """A value tagged ``!reset``: removes what earlier files said."""

    value: object = None


# libyaml's parser, where PyYAML was built with it, reads a compose file about ten times faster.
class _Loader(getattr(yaml, "CSafeLoader", yaml.SafeLoader)):
    pass


def _construct(node: yaml.Node, loader: yaml.SafeLoader) -> object:
    if isinstance(node, yaml.MappingNode):
        return loader.construct_mapping(node, deep=True)
    if isinstance(node, yaml.SequenceNode):
        return loader.construct_sequence(node, deep=True)
    return loader.construct_scalar(node)


_Loader.add_constructor("!override", lambda loader, node: Override(_construct(node, loader)))
_Loader.add_constructor("!reset", lambda loader, node: Reset(_construct(node, loader)))


def load_yaml(text: str) -> object:
    """Parse compose YAML, accepting ``!override`` and ``!reset``."""
    return yaml.load(text, Loader=_Loader)


class _Dumper(yaml.SafeDumper):
    pass


def _represent_str(dumper: yaml.SafeDumper, data: str) -> yaml.Node:
    style = "|" if "\n" in data else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", data, style=style)


def _represent_override(dumper: yaml.SafeDumper, data: Override) -> yaml.Node:
    if isinstance(data.value, list):
        return dumper.represent_sequence("!override", data.value)
    if isinstance(data.value, dict):
        return dumper.represent_mapping("!override", data.value)
    return dumper.represent_scalar("!override", str(data.value))


_Dumper.add_representer(str, _represent_str)
_Dumper.add_representer(Override, _represent_override)


def dump_yaml(data: object) -> str:
    """YAML text for ``data`` (block style, keys in insertion order, ``Override`` as !override)."""
    return yaml.dump(data, Dumper=_Dumper, sort_keys=False, default_flow_style=False, width=100)


# --- compose variable interpolation --------------------------------------------------------------

_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def interpolate(text: str, env: Mapping[str, str]) -> str:
    """Compose's ``$VAR``/``${VAR[:-default]}`` interpolation (nested defaults, ``$$``)."""
    out: list[str] = []
    i = 0
    while i < len(text):
        char = text[i]
        if char != "$":
            out.append(char)
            i += 1
            continue
        if text.startswith("$$", i):
            out.append("$")
            i += 2
            continue
        if text.startswith("${", i):
            depth, j = 1, i + 2
            while j < len(text) and depth:
                if text[j] == "{":
                    depth += 1
                elif text[j] == "}":
                    depth -= 1
                j += 1
            out.append(_expand(text[i + 2 : j - 1], env))
            i = j
            continue
        match = _NAME.match(text, i + 1)
        if match:
            out.append(env.get(match.group(), ""))
            i = match.end()
        else:
            out.append(char)
            i += 1
    return "".join(out)


def _expand(inner: str, env: Mapping[str, str]) -> str:
    match = re.match(r"([A-Za-z_][A-Za-z0-9_]*)(:?[-?+])?(.*)$", inner, re.S)
    if not match:
        return ""
    name, op, rest = match.groups()
    value = env.get(name)
    if op is None:
        return value or ""
    if op in (":-", "-"):
        unset = value is None or (op == ":-" and value == "")
        return interpolate(rest, env) if unset else value or ""
    if op in (":+", "+"):
        is_set = value is not None and (op == "+" or value != "")
        return interpolate(rest, env) if is_set else ""
    return value or ""  # ":?" / "?": compose would fail; we read what there is


# --- records ------------------------------------------------------------------------------------


@attrs.frozen
class PublishedPort:
    service: str
    container_port: int
    protocol: str = "tcp"
    # The host side as written upstream (e.g. "${POSTGRES_PORT}"), to see which variable it uses.
    host_spec: str = attrs.field(default="", eq=False, repr=False)

    @property
    def key(self) -> str:
        return f"{self.service}:{self.container_port}"


@attrs.frozen
class ServiceInfo:
    name: str
    container_name: str | None
    image: str | None
    published: tuple[PublishedPort, ...]
    http_port: int | None


# --- merging ------------------------------------------------------------------------------------


def _normalize_service(body: object) -> dict:
    if not isinstance(body, dict):
        return {}
    body = dict(body)
    for field in ("environment", "labels"):
        value = body.get(field)
        inner = value.value if isinstance(value, Override) else value
        if isinstance(inner, list):
            mapping = {}
            for item in inner:
                key, _, val = str(item).partition("=")
                mapping[key] = val if "=" in str(item) else None
            body[field] = Override(mapping) if isinstance(value, Override) else mapping
    networks = body.get("networks")
    inner = networks.value if isinstance(networks, Override) else networks
    if isinstance(inner, list):
        mapping = {str(item): None for item in inner}
        body["networks"] = Override(mapping) if isinstance(networks, Override) else mapping
    return body


def _merge(base: object, over: object) -> object:
    if isinstance(over, Override):
        return over.value
    if isinstance(base, dict) and isinstance(over, dict):
        merged = dict(base)
        for key, value in over.items():
            if isinstance(value, Reset):
                merged.pop(key, None)
            elif key in merged:
                merged[key] = _merge(merged[key], value)
            else:
                merged[key] = value.value if isinstance(value, Override) else value
        return merged
    if isinstance(base, list) and isinstance(over, list):
        return base + [item for item in over if item not in base]
    return over


def merge_services(documents: Sequence[object]) -> dict[str, dict]:
    """The services of compose ``documents`` merged in order (compose's rules, as we need them)."""
    merged: dict[str, dict] = {}
    for doc in documents:
        services = doc.get("services") if isinstance(doc, dict) else None
        if not isinstance(services, dict):
            continue
        for name, body in services.items():
            name = str(name)
            if isinstance(body, Reset):
                merged.pop(name, None)
                continue
            body = _normalize_service(body.value if isinstance(body, Override) else body)
            merged[name] = _merge(merged[name], body) if name in merged else _merge({}, body)
    return merged


# --- ports --------------------------------------------------------------------------------------


def _port_numbers(spec: str) -> list[int]:
    spec = spec.strip()
    if not spec:
        return []
    if "-" in spec:
        low, high = spec.split("-", 1)
        return list(range(int(low), int(high) + 1))
    return [int(spec)]


def parse_port(entry: object, env: Mapping[str, str]) -> list[tuple[int, str, str]]:
    """(container port, protocol, raw host side) for a ``ports`` entry, short or long syntax."""
    if isinstance(entry, dict):
        target = interpolate(str(entry.get("target", "")), env)
        protocol = interpolate(str(entry.get("protocol") or "tcp"), env)
        host = str(entry.get("published", ""))
        try:
            return [(port, protocol, host) for port in _port_numbers(target)]
        except ValueError:
            return []
    raw = str(entry)
    # Split the raw text on ":" outside ${...} to keep the host part as written.
    parts, depth, current = [], 0, []
    for char in raw:
        if char == "{":
            depth += 1
        elif char == "}":
            depth -= 1
        if char == ":" and depth == 0:
            parts.append("".join(current))
            current = []
        else:
            current.append(char)
    parts.append("".join(current))
    container = interpolate(parts[-1], env)
    protocol = "tcp"
    if "/" in container:
        container, protocol = container.split("/", 1)
    host = parts[-2] if len(parts) >= 2 else ""
    try:
        return [(port, protocol, host) for port in _port_numbers(container)]
    except ValueError:
        return []


_URL_PORT = re.compile(r"(https?)://([A-Za-z0-9_.\-]+|\[[0-9a-fA-F:]+\])(?::(\d+))?")


def derive_http_port(name: str, body: dict, env: Mapping[str, str]) -> int | None:
    """The port the service serves HTTP on inside the network, from its definition.

    In order: a URL on the service itself in its healthcheck, its first published port, its first
    exposed port, a PORT-like environment variable.
    """
    local_hosts = {"localhost", "127.0.0.1", "0.0.0.0", name, str(body.get("container_name"))}
    health = body.get("healthcheck")
    test = health.get("test") if isinstance(health, dict) else None
    texts = [test] if isinstance(test, str) else [str(item) for item in test or []]
    for text in texts:
        for scheme, host, port in _URL_PORT.findall(interpolate(text, env)):
            if host in local_hosts:
                return int(port) if port else (443 if scheme == "https" else 80)
    published = [port for entry in body.get("ports") or [] for port, _, _ in parse_port(entry, env)]
    if published:
        return published[0]
    for entry in body.get("expose") or []:
        try:
            return _port_numbers(interpolate(str(entry), env).split("/")[0])[0]
        except (ValueError, IndexError):
            continue
    environment = body.get("environment")
    if isinstance(environment, dict):
        for key, value in environment.items():
            if key == "PORT" or key.endswith(("_API_PORT", "_HTTP_PORT")):
                text = interpolate(str(value), env)
                if text.isdigit():
                    return int(text)
    return None


# --- the template folder ------------------------------------------------------------------------

_ROLE_HINTS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    # role: (service or container-name words, image words)
    "gateway": (("api-gw", "kong", "envoy", "gateway"), ("kong", "envoy")),
    "studio": (("studio",), ("supabase/studio",)),
    "db": (("db",), ("supabase/postgres",)),
    "pooler": (("supavisor", "pooler"), ("supavisor",)),
    "mail": (("mail",), ("mailpit", "inbucket", "mailhog", "maildev")),
}
ROLES = tuple(_ROLE_HINTS)


class TemplateFiles:
    """A template folder on disk (or an instance folder, which holds a copy of one)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._cache: dict[tuple[str, ...], dict[str, dict]] = {}

    # files
    def overlays(self) -> list[str]:
        found = {MAIL_OVERLAY}
        if self.path.is_dir():
            for child in self.path.iterdir():
                match = _OVERLAY_RE.match(child.name)
                if match and child.is_file() and match.group(1) != "override":
                    found.add(match.group(1))
        return sorted(found)

    def _overlay_path(self, name: str) -> Path:
        for suffix in ("yml", "yaml"):
            path = self.path / f"docker-compose.{name}.{suffix}"
            if path.is_file():
                return path
        return self.path / f"docker-compose.{name}.yml"

    def compose_paths(self, overlays: Sequence[str]) -> list[Path]:
        """The base file, then each overlay's file in the given order.

        For the built-in ``mail`` overlay this is ``docker-compose.mail.yml`` in this folder, which
        exists in an instance folder (render writes it) but not in the template store.
        """
        available = self.overlays()
        paths = [self.path / BASE_FILE]
        for name in overlays:
            if name not in available:
                raise UsageError(
                    f"unknown overlay {name!r} for template {self.path.name}; "
                    f"available: {', '.join(available)}"
                )
            path = self._overlay_path(name)
            if path not in paths:
                paths.append(path)
        return paths

    def env_example(self) -> str:
        try:
            return (self.path / ".env.example").read_text()
        except FileNotFoundError:
            return ""

    def env(self) -> dict[str, str]:
        """Values used to interpolate the compose files: .env when present, else .env.example."""
        for name in (".env", ".env.example"):
            path = self.path / name
            if path.is_file():
                return EnvFile.parse(path.read_text()).as_dict()
        return {}

    def _document(self, path: Path) -> object:
        if path.name == f"docker-compose.{MAIL_OVERLAY}.yml" and not path.is_file():
            return load_yaml(MAIL_COMPOSE)
        try:
            text = path.read_text()
        except FileNotFoundError:
            raise UsageError(f"template {self.path} has no {path.name}") from None
        try:
            doc = load_yaml(text)
        except yaml.YAMLError as exc:
            raise UsageError(f"{path} is not valid YAML: {exc}") from None
        if not isinstance(doc, dict):
            raise UsageError(f"{path} is not a compose file (no mapping at the top)")
        return doc

    def documents(self, overlays: Sequence[str] = ()) -> list[object]:
        return [self._document(path) for path in self.compose_paths(overlays)]

    def merged(self, overlays: Sequence[str] = ()) -> dict[str, dict]:
        """The raw merged service definitions (not interpolated)."""
        key = tuple(overlays)
        if key not in self._cache:
            self._cache[key] = merge_services(self.documents(overlays))
        return self._cache[key]

    def services(self, overlays: Sequence[str] = ()) -> dict[str, ServiceInfo]:
        env = self.env()
        out: dict[str, ServiceInfo] = {}
        for name, body in self.merged(overlays).items():
            published: list[PublishedPort] = []
            for entry in body.get("ports") or []:
                for port, protocol, host in parse_port(entry, env):
                    item = PublishedPort(name, port, protocol, host)
                    if item not in published:
                        published.append(item)
            container = body.get("container_name")
            image = body.get("image")
            out[name] = ServiceInfo(
                name=name,
                container_name=interpolate(str(container), env) if container else None,
                image=interpolate(str(image), env) if image else None,
                published=tuple(published),
                http_port=derive_http_port(name, body, env),
            )
        return out

    def one_shot_services(self, overlays: Sequence[str] = ()) -> set[str]:
        """Jobs that run once and exit (e.g. a bucket creator): another service waits for them
        with ``condition: service_completed_successfully``. Their exit 0 is success, not "down"."""
        jobs = set()
        for body in self.merged(overlays).values():
            depends = body.get("depends_on") or {}
            if isinstance(depends, dict):
                for name, spec in depends.items():
                    if isinstance(spec, dict) and (
                        spec.get("condition") == "service_completed_successfully"
                    ):
                        jobs.add(name)
        return jobs

    def role(self, role: str, overlays: Sequence[str] = ()) -> str | None:
        """The service that plays ``role`` (gateway, studio, db, pooler, mail), or None."""
        if role not in _ROLE_HINTS:
            raise ValueError(f"unknown role {role!r}")
        words, images = _ROLE_HINTS[role]
        services = self.services(overlays)
        candidates = list(services.values())
        if role == "gateway":
            candidates = [s for s in candidates if s.published] or candidates
        # Exact service name, then container name "supabase-WORD", then the image.
        for word in words:
            for service in candidates:
                if service.name == word:
                    return service.name
        for word in words:
            for service in candidates:
                container = (service.container_name or "").rsplit("supabase-", 1)[-1]
                if container == word:
                    return service.name
        for word in images:
            for service in candidates:
                if service.image and word in service.image.split(":")[0]:
                    return service.name
        return None

    def images(self) -> dict[str, str]:
        """Image per service of the base file (the main services)."""
        return {
            name: info.image for name, info in self.services(()).items() if info.image is not None
        }
