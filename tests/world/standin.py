"""Stand-in overlay: run an upstream Supabase compose stack with local images only.

`write_standin_overlay(compose_files, dest)` reads the upstream compose files as compose-go merges
and interpolates them (`docker compose config`, the path the manager itself uses) and writes a
compose file to be layered LAST.
For every service it replaces image, entrypoint, command and healthcheck, and keeps everything else
(ports, container names, networks and aliases, volumes, environment, depends_on):

- the database service (image `.../postgres`, not postgres-meta or postgrest, or named `db`) runs
  sbm-standin/postgres:15: a real PostgreSQL 15 honouring POSTGRES_PASSWORD and PGPORT, healthy
  when `pg_isready` answers. It keeps the service's environment and volumes, so on a first start it
  initialises like supabase/postgres: supabase_admin, postgres and the image's roles, then the
  template's mounted init scripts (roles.sql, jwt.sql, ...); what is modelled and what is not is
  said in tests/world/images/standin-postgres;
- a service another one waits for with `condition: service_completed_successfully` (a one-shot job
  such as minio-createbucket) just exits 0;
- every other service runs sbm-standin/busybox:1's `standin-http`: on every container port the
  service uses (see `service_ports`) it answers 200 on any path and method with the body
  `standin SERVICE of PROJECT` (PROJECT is `${COMPOSE_PROJECT_NAME}`, i.e. the instance) and the
  response headers X-Standin-Method / X-Standin-Path echoing the request line.

Healthchecks run every second, so `depends_on: condition: service_healthy` chains finish in seconds.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from controller.compose import config_json
from controller.composeyaml import Override, Reset, dump_yaml

from .dockerworld import BUSYBOX_IMAGE, POSTGRES_IMAGE

STANDIN_FILE_NAME = "docker-compose.standin.yml"
DEFAULT_PORT = 80
PROJECT_VAR = "${COMPOSE_PROJECT_NAME}"


# -- what the compose files mean: compose-go's answer, as the manager reads it --------------------
def _env_file(folder: Path) -> list[Path]:
    for name in (".env", ".env.example"):
        if (folder / name).is_file():
            return [folder / name]
    return []


def load_services(compose_files: Sequence[Path]) -> dict[str, dict[str, Any]]:
    """The services of compose_files, merged and interpolated by compose-go (`docker compose
    config`), with the .env (or .env.example) of the first file's folder."""
    folder = Path(compose_files[0]).parent
    config = config_json([Path(f) for f in compose_files], folder, _env_file(folder))
    return config.get("services") or {}


# -- which service is what ----------------------------------------------------------------------
def _image_name(image: str) -> str:
    """Last path component of an image reference without tag or digest."""
    ref = image.split("@", 1)[0]
    last = ref.rsplit("/", 1)[-1]
    return last.split(":", 1)[0]


def is_database(name: str, service: Mapping[str, Any]) -> bool:
    """The Postgres service: image .../postgres (not postgres-meta, not postgrest) or named db."""
    return name == "db" or _image_name(str(service.get("image") or "")) == "postgres"


def one_shot_services(services: Mapping[str, Mapping[str, Any]]) -> set[str]:
    """Services another service waits for with condition service_completed_successfully."""
    jobs = set()
    for service in services.values():
        depends = service.get("depends_on") or {}
        if isinstance(depends, Mapping):
            for dep, spec in depends.items():
                if isinstance(spec, Mapping) and spec.get("condition") == (
                    "service_completed_successfully"
                ):
                    jobs.add(dep)
    return jobs


def _as_port(text: Any) -> int | None:
    text = str(text).strip().strip('"').split("/", 1)[0]
    text = text.split("-", 1)[0] if re.fullmatch(r"\d+-\d+", text) else text
    return int(text) if text.isdigit() and 0 < int(text) < 65536 else None


def _container_side(spec: Any) -> int | None:
    if isinstance(spec, Mapping):
        return _as_port(spec.get("target", ""))
    if isinstance(spec, int):
        return _as_port(spec)
    text = str(spec).split("/", 1)[0]
    return _as_port(text.rsplit(":", 1)[-1])


def _names_of(name: str, service: Mapping[str, Any]) -> set[str]:
    """Host names that reach the service: its name, container name and network aliases."""
    names = {name}
    if service.get("container_name"):
        names.add(str(service["container_name"]))
    networks = service.get("networks")
    if isinstance(networks, Mapping):
        for spec in networks.values():
            if isinstance(spec, Mapping):
                names.update(str(alias) for alias in spec.get("aliases") or [])
    return names


_PEER_WORDS = {"DB", "POSTGRES", "SMTP"}
_URL_HOST_PORT = re.compile(r"(?:https?|wss?|tcp)://([A-Za-z0-9_.-]+):(\d+)")
_LOCAL_HOSTS = {"localhost", "127.0.0.1", "0.0.0.0", "[::1]"}


def _healthcheck_text(service: Mapping[str, Any]) -> str:
    test = (service.get("healthcheck") or {}).get("test") or ""
    return " ".join(str(part) for part in test) if isinstance(test, list) else str(test)


def service_ports(
    name: str, service: Mapping[str, Any], services: Mapping[str, Mapping[str, Any]] | None = None
) -> list[int]:
    """Container ports the service listens on, as far as the compose files tell.

    In this order: published ports' container side, `expose`, values of environment variables
    PORT / *_PORT / *_BIND (":5001") that are no peer's port (see _PEER_WORDS), ports in its
    healthcheck's URLs to itself (localhost, 127.0.0.1, /dev/tcp/HOST/PORT, its own names) and
    URLs by which other services reach it (http://NAME:PORT in their environment).
    Falls back to [80].
    """
    found: list[int] = []

    def add(port: int | None) -> None:
        if port is not None and port not in found:
            found.append(port)

    for spec in service.get("ports") or []:
        add(_container_side(spec))
    for spec in service.get("expose") or []:
        add(_container_side(spec))
    env = service.get("environment") or {}
    if isinstance(env, Mapping):
        for key, value in env.items():
            key = str(key)
            # Values are interpolated: a port the service connects to (POSTGRES_PORT, DB_PORT,
            # GOTRUE_SMTP_PORT) reads like its own, so those words rule a variable out.
            if set(key.split("_")) & _PEER_WORDS:
                continue
            if key == "PORT" or key.endswith(("_PORT", "_BIND")):
                match = re.fullmatch(r"(?:[\w.\[\]:-]*:)?(\d+)", str(value).strip())
                if match:
                    add(_as_port(match.group(1)))
    own = _names_of(name, service) | _LOCAL_HOSTS
    check = _healthcheck_text(service)
    for host, port in _URL_HOST_PORT.findall(check):
        if host in own:
            add(_as_port(port))
    for host, port in re.findall(r"(?<![\w.-])([A-Za-z0-9_.\[\]:-]+):(\d+)(?=/|\s|$|['\"])", check):
        if host in own:
            add(_as_port(port))
    for host, port in re.findall(r"/dev/tcp/([A-Za-z0-9_.-]+)/(\d+)", check):
        if host in own:
            add(_as_port(port))
    for other_name, other in (services or {}).items():
        if other_name == name:
            continue
        other_env = other.get("environment") or {}
        values = other_env.values() if isinstance(other_env, Mapping) else other_env
        for value in values:
            for host, port in _URL_HOST_PORT.findall(str(value)):
                if host in own - _LOCAL_HOSTS:
                    add(_as_port(port))
    return found or [DEFAULT_PORT]


# -- the overlay --------------------------------------------------------------------------------
def _http_standin(name: str, ports: list[int]) -> dict[str, Any]:
    return {
        "image": BUSYBOX_IMAGE,
        "pull_policy": "never",
        "entrypoint": Override(
            ["standin-http", f"standin {name} of {PROJECT_VAR}", *map(str, ports)]
        ),
        "command": Reset([]),
        "healthcheck": Override(
            {
                # No `wget -T`: busybox-static 1.35's wget crashes with it.
                "test": ["CMD", "wget", "-q", "-O", "/dev/null", f"http://127.0.0.1:{ports[0]}/"],
                "interval": "1s",
                "timeout": "3s",
                "retries": 30,
                "start_period": "0s",
            }
        ),
    }


def _db_standin() -> dict[str, Any]:
    return {
        "image": POSTGRES_IMAGE,
        "pull_policy": "never",
        "entrypoint": Override(["standin-postgres"]),
        "command": Reset([]),
        "healthcheck": Override(
            {
                # $$: a literal $ for the container's shell, not compose interpolation.
                "test": [
                    "CMD-SHELL",
                    'pg_isready -q -h 127.0.0.1 -p "$${PGPORT:-5432}" -U postgres',
                ],
                "interval": "1s",
                "timeout": "3s",
                "retries": 60,
                "start_period": "0s",
            }
        ),
    }


def _job_standin() -> dict[str, Any]:
    return {
        "image": BUSYBOX_IMAGE,
        "pull_policy": "never",
        "entrypoint": Override(["true"]),
        "command": Reset([]),
        "healthcheck": Override({"disable": True}),
        "restart": "no",
    }


def standin_services(compose_files: Sequence[Path]) -> dict[str, dict[str, Any]]:
    """The overlay's services (values may be Override / Reset)."""
    services = load_services(compose_files)
    jobs = one_shot_services(services)
    overlay: dict[str, dict[str, Any]] = {}
    for name, service in services.items():
        if name in jobs:
            entry = _job_standin()
        elif is_database(name, service):
            entry = _db_standin()
        else:
            entry = _http_standin(name, service_ports(name, service, services))
        if "build" in service:
            entry["build"] = Reset(None)
        if "user" in service:
            entry["user"] = Reset(None)
        overlay[name] = entry
    return overlay


def write_standin_overlay(compose_files: Sequence[Path], dest: Path) -> Path:
    """Write the stand-in overlay for compose_files to dest (layer it last); returns dest."""
    dest = Path(dest)
    files = ", ".join(Path(f).name for f in compose_files)
    header = (
        "# Test world stand-in overlay (tests/world/standin.py); layer it last.\n"
        f"# Generated from: {files}\n"
    )
    dest.write_text(header + dump_yaml({"services": standin_services(compose_files)}))
    return dest


def compose_files_for(template_dir: Path, overlays: Iterable[str] = ()) -> list[Path]:
    """docker-compose.yml of template_dir plus docker-compose.NAME.yml for each overlay."""
    template_dir = Path(template_dir)
    files = [template_dir / "docker-compose.yml"]
    files += [template_dir / f"docker-compose.{name}.yml" for name in overlays]
    for path in files:
        if not path.is_file():
            raise FileNotFoundError(f"compose file missing: {path}")
    return files


def standin_overlay_for(
    template_dir: Path, overlays: Iterable[str] = (), dest: Path | None = None
) -> Path:
    """write_standin_overlay for a template folder and overlay names (kong, logs, s3, ...).

    dest defaults to template_dir/docker-compose.standin.yml.
    """
    template_dir = Path(template_dir)
    files = compose_files_for(template_dir, overlays)
    return write_standin_overlay(files, dest or template_dir / STANDIN_FILE_NAME)


def write_loopback_ports_overlay(
    compose_files: Sequence[Path], dest: Path, free_port: Callable[[], int]
) -> dict[str, int]:
    """Write to dest an overlay publishing every published container port of compose_files on
    127.0.0.1 and a port from free_port() instead of upstream's (all-interface, fixed) ones.

    Returns {"SERVICE:CONTAINER_PORT": host_port} (the manager's key format).
    """
    services = load_services(compose_files)
    mapping: dict[str, int] = {}
    overlay: dict[str, Any] = {}
    for name, service in services.items():
        published = []
        for spec in service.get("ports") or []:
            port = _container_side(spec)
            if port is None or f"{name}:{port}" in mapping:
                continue
            mapping[f"{name}:{port}"] = host = free_port()
            published.append(f"127.0.0.1:{host}:{port}")
        if published:
            overlay[name] = {"ports": Override(published)}
    Path(dest).write_text(
        "# Test world: loopback-only host ports (tests/world/standin.py).\n"
        + dump_yaml({"services": overlay})
    )
    return mapping
