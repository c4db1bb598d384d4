"""Reading an upstream template folder (the docker/ folder of supabase/supabase).

Everything is derived from the files, as compose-go reads them (controller/composemodel.py): the
services of the base compose file and its overlays (``docker-compose.NAME.yml``), their container
names, published ports, images, mounts and HTTP ports, and which host ports an instance needs. Only
the built-in ``mail`` overlay is ours: a mail catcher that ``render`` writes as
``docker-compose.mail.yml`` into an instance folder.
"""

import re
from collections.abc import Sequence
from pathlib import Path

import attrs

from controller.composefiles import BASE_FILE
from controller.composemodel import HEALTH_URL, Project, Service, resolve
from controller.errors import OperationError, UsageError

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
      # The inbox holds every Auth e-mail (recovery links): its UI and API ask for the same
      # credentials as Studio, also on the 127.0.0.1 port Caddy proxies to.
      MP_UI_AUTH: "${{DASHBOARD_USERNAME}}:${{DASHBOARD_PASSWORD}}"
      MP_SMTP_BIND_ADDR: "0.0.0.0:{MAIL_SMTP_PORT}"
    healthcheck:
      test: ["CMD", "/mailpit", "readyz"]
      interval: 5s
      timeout: 5s
      retries: 5
"""


# --- records ------------------------------------------------------------------------------------


@attrs.frozen
class PublishedPort:
    service: str
    container_port: int
    protocol: str = "tcp"

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


def derive_http_port(service: Service) -> int | None:
    """The port the service serves HTTP on inside the network, from its definition.

    In order: a URL on the service itself in its healthcheck, its first published port, its first
    exposed port, a PORT-like environment variable.
    """
    local_hosts = {"localhost", "127.0.0.1", "0.0.0.0", service.name, str(service.container_name)}
    for text in service.healthcheck:
        for scheme, host, port in HEALTH_URL.findall(text):
            if host in local_hosts:
                return int(port) if port else (443 if scheme == "https" else 80)
    if service.ports:
        return service.ports[0].target
    if service.expose:
        return service.expose[0]
    for key, value in service.port_env.items():
        if (key == "PORT" or key.endswith(("_API_PORT", "_HTTP_PORT"))) and value.isdigit():
            return int(value)
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


def default_cache_dir(path: Path) -> Path | None:
    """ROOT/cache/compose for a template in ROOT/templates (the store, or its staging folders) or
    an instance folder in ROOT/instances."""
    # A staging folder of `template import` lies deeper (templates/.import-X/template): its
    # answers warm the cache for the template it becomes, as the content is the same.
    for parent in list(Path(path).parents)[:3]:
        if parent.name in ("templates", "instances"):
            return parent.parent / "cache" / "compose"
    return None


class TemplateFiles:
    """A template folder on disk (or an instance folder, which holds a copy of one).

    ``cache_dir`` keeps compose-go's answers by content hash; by default ROOT/cache/compose for a
    template in ROOT/templates, else answers are only kept in memory.
    """

    def __init__(self, path: Path, cache_dir: Path | None = None) -> None:
        self.path = Path(path)
        self.cache_dir = cache_dir if cache_dir is not None else default_cache_dir(self.path)
        self._models: dict[tuple[str, ...], Project] = {}

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

    def own_mail(self, overlays: Sequence[str]) -> bool:
        """Whether the mail overlay is our generated one (the template ships none)."""
        return (
            MAIL_OVERLAY in overlays
            and not (self.path / f"docker-compose.{MAIL_OVERLAY}.yml").is_file()
        )

    def env_example(self) -> str:
        try:
            return (self.path / ".env.example").read_text()
        except FileNotFoundError:
            return ""

    def env_file(self) -> Path | None:
        """The file compose interpolates with: .env when present, else .env.example."""
        for name in (".env", ".env.example"):
            if (self.path / name).is_file():
                return self.path / name
        return None

    # what compose-go makes of the files
    def model(self, overlays: Sequence[str] = (), extra: Sequence[Path] = ()) -> Project:
        """The merged project of the base file, ``overlays`` and ``extra`` files, from compose-go
        (cached by content hash). UsageError for an unknown overlay; OperationError (one line) when
        compose-go is missing or refuses the files."""
        key = (*overlays, *map(str, extra))
        if key in self._models:
            return self._models[key]
        if not (self.path / BASE_FILE).is_file():
            raise UsageError(f"template {self.path} has no {BASE_FILE}")
        paths = self.compose_paths(overlays)
        with _mail_file(self, paths) as files:
            project = resolve(
                [*files, *map(Path, extra)], self.path, self.env_file(), self.cache_dir
            )
        self._models[key] = project
        return project

    def variants(self) -> list[Project]:
        """The base project and the one with every overlay (what any instance of the template
        may run); each overlay alone when they do not go together. `template import` asks for
        them, so that a create finds them in the cache."""
        overlays = [o for o in self.overlays() if o != MAIL_OVERLAY]
        models = [self.model([])]
        if overlays:
            try:
                models.append(self.model(overlays))
            except OperationError:
                models += [self.model([o]) for o in overlays]
        return models

    def services(self, overlays: Sequence[str] = ()) -> dict[str, ServiceInfo]:
        out: dict[str, ServiceInfo] = {}
        for name, service in self.model(overlays).services.items():
            published: list[PublishedPort] = []
            for port in service.ports:
                item = PublishedPort(name, port.target, port.protocol)
                if item not in published:
                    published.append(item)
            out[name] = ServiceInfo(
                name=name,
                container_name=service.container_name,
                image=service.image,
                published=tuple(published),
                http_port=derive_http_port(service),
            )
        return out

    def one_shot_services(self, overlays: Sequence[str] = ()) -> set[str]:
        """Jobs that run once and exit (e.g. a bucket creator): another service waits for them
        with ``condition: service_completed_successfully``. Their exit 0 is success, not "down"."""
        jobs = set()
        for service in self.model(overlays).services.values():
            for name, condition in service.depends_on.items():
                if condition == "service_completed_successfully":
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


class _mail_file:
    """The compose paths with our built-in mail overlay written to a temp file when the folder
    has no docker-compose.mail.yml (the template store never has one)."""

    def __init__(self, template: TemplateFiles, paths: list[Path]) -> None:
        self.template = template
        self.paths = paths
        self._tmp = None

    def __enter__(self) -> list[Path]:
        import tempfile

        mail = self.template.path / f"docker-compose.{MAIL_OVERLAY}.yml"
        if mail not in self.paths or mail.is_file():
            return self.paths
        self._tmp = tempfile.TemporaryDirectory(prefix="sbm-mail-")
        # Same file name as in an instance folder, so the content hash is the same too.
        written = Path(self._tmp.name) / mail.name
        written.write_text(MAIL_COMPOSE)
        return [written if p == mail else p for p in self.paths]

    def __exit__(self, *_: object) -> None:
        if self._tmp is not None:
            self._tmp.cleanup()


# --- host ports an instance needs -----------------------------------------------------------------


def needed_ports(template: TemplateFiles, overlays: Sequence[str]) -> list[str]:
    """Host ports an instance needs: upstream's published ports and the mail web UI's.

    Studio gets none (upstream publishes none either): it has no login of its own, and the
    gateway serves it behind basic auth, so a local user cannot skip that auth.
    """
    services = template.services(overlays)
    keys: list[str] = []
    for info in services.values():
        for port in info.published:
            if port.key not in keys:
                keys.append(port.key)
    if MAIL_OVERLAY in overlays:
        mail = template.role("mail", overlays)
        if mail:
            info = services[mail]
            port = MAIL_UI_PORT if template.own_mail(overlays) else info.http_port
            if port and not info.published:
                key = f"{mail}:{port}"
                if key not in keys:
                    keys.append(key)
    return keys


def role_port_key(template: TemplateFiles, overlays: Sequence[str], role: str) -> str | None:
    """The ``SERVICE:CONTAINER_PORT`` key of the host port that serves ``role``.

    gateway: the gateway's first published port (the API); mail: the mail catcher's web UI;
    db / pooler: the role's first published port. None when there is none (Studio: always).
    """
    service = template.role(role, overlays)
    if service is None:
        return None
    keys = [key for key in needed_ports(template, overlays) if key.split(":", 1)[0] == service]
    return keys[0] if keys else None


def host_port_variables(template: TemplateFiles, overlays: Sequence[str]) -> dict[str, str]:
    """Variables that only set a published port's host side, mapped to that port's key.

    Such a variable (API_GW_HTTP_PORT, KONG_HTTPS_PORT, ...) may reflect the allocated host port
    in .env. One also read elsewhere (POSTGRES_PORT: Postgres's port inside the network) must not.
    """
    return dict(template.model(overlays).host_port_vars)


def smtp_port(template: TemplateFiles, overlays: Sequence[str], service: str) -> int:
    """The SMTP port of the mail catcher ``service`` inside the instance network."""
    if template.own_mail(overlays):
        return MAIL_SMTP_PORT
    found = template.model(overlays).services.get(service)
    ports = [*found.expose, *(p.target for p in found.ports)] if found else []
    for port in ports:
        if port in (1025, 2500, 25, 587, 2525):
            return port
    return MAIL_SMTP_PORT
