"""Stand-in overlay: run an upstream Supabase compose stack with local images only.

`write_standin_overlay(compose_files, dest)` reads the upstream compose files (merged by service
name, in order, honouring `!override` / `!reset`) and writes a compose file to be layered LAST.
For every service it replaces image, entrypoint, command and healthcheck, and keeps everything else
(ports, container names, networks and aliases, volumes, environment, depends_on):

- the database service (image `.../postgres`, not postgres-meta or postgrest, or named `db`) runs
  sbm-standin/postgres:15: a real PostgreSQL 15 honouring POSTGRES_PASSWORD and PGPORT, healthy
  when `pg_isready` answers;
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

import yaml

from .dockerworld import BUSYBOX_IMAGE, POSTGRES_IMAGE

STANDIN_FILE_NAME = "docker-compose.standin.yml"
DEFAULT_PORT = 80
PROJECT_VAR = "${COMPOSE_PROJECT_NAME}"


# -- YAML with compose's !override and !reset tags ----------------------------------------------
class Override:
    """A value tagged `!override`: replaces the merged value instead of merging into it."""

    def __init__(self, value: Any) -> None:
        self.value = value

    def __repr__(self) -> str:
        return f"Override({self.value!r})"


class Reset:
    """A value tagged `!reset`: removes the key from the merged result."""

    def __init__(self, value: Any = None) -> None:
        self.value = value

    def __repr__(self) -> str:
        return f"Reset({self.value!r})"


class ComposeLoader(yaml.SafeLoader):
    """SafeLoader that accepts compose's `!override` and `!reset` tags."""


def _construct_plain(loader: yaml.SafeLoader, node: yaml.Node) -> Any:
    if isinstance(node, yaml.MappingNode):
        return loader.construct_mapping(node, deep=True)
    if isinstance(node, yaml.SequenceNode):
        return loader.construct_sequence(node, deep=True)
    tag = loader.resolve(yaml.ScalarNode, node.value, (True, False))
    return loader.construct_object(yaml.ScalarNode(tag, node.value), deep=True)


ComposeLoader.add_constructor("!override", lambda ld, n: Override(_construct_plain(ld, n)))
ComposeLoader.add_constructor("!reset", lambda ld, n: Reset(_construct_plain(ld, n)))


class ComposeDumper(yaml.SafeDumper):
    """SafeDumper that writes Override / Reset as `!override` / `!reset`."""


def _represent_tagged(tag: str):
    def represent(dumper: yaml.SafeDumper, data: Override | Reset) -> yaml.Node:
        value = data.value
        if isinstance(value, Mapping):
            return dumper.represent_mapping(tag, value)
        if isinstance(value, list | tuple):
            return dumper.represent_sequence(tag, value)
        if value is None:
            return dumper.represent_scalar(tag, "null")
        return dumper.represent_scalar(tag, str(value))

    return represent


ComposeDumper.add_representer(Override, _represent_tagged("!override"))
ComposeDumper.add_representer(Reset, _represent_tagged("!reset"))


def load_compose_file(path: Path) -> dict[str, Any]:
    """One compose file as a dict; tagged values stay Override / Reset objects."""
    data = yaml.load(Path(path).read_text(), Loader=ComposeLoader)
    return data or {}


# -- merging ------------------------------------------------------------------------------------
_REPLACED_LISTS = {"command", "entrypoint", "test"}
_DELETE = object()


def _plain(value: Any) -> Any:
    """Drop tags from a value that has nothing to merge into."""
    if isinstance(value, Reset):
        return _DELETE
    if isinstance(value, Override):
        return _plain(value.value)
    if isinstance(value, Mapping):
        out = {}
        for key, item in value.items():
            item = _plain(item)
            if item is not _DELETE:
                out[key] = item
        return out
    if isinstance(value, list):
        return [_plain(item) for item in value]
    return value


def _environment_dict(value: Any) -> Any:
    if isinstance(value, list):
        env: dict[str, Any] = {}
        for item in value:
            key, sep, val = str(item).partition("=")
            env[key] = val if sep else None
        return env
    return value


def _merge(base: Any, over: Any, key: str = "") -> Any:
    if isinstance(over, Reset):
        return _DELETE
    if isinstance(over, Override):
        return _plain(over.value)
    if isinstance(base, Mapping) and isinstance(over, Mapping):
        out = dict(base)
        for name, value in over.items():
            merged = _merge(base[name], value, str(name)) if name in base else _plain(value)
            if merged is _DELETE:
                out.pop(name, None)
            else:
                out[name] = merged
        return out
    if isinstance(base, list) and isinstance(over, list) and key not in _REPLACED_LISTS:
        return base + [item for item in _plain(over) if item not in base]
    return _plain(over)


def load_services(compose_files: Sequence[Path]) -> dict[str, dict[str, Any]]:
    """The services of compose_files merged in order, by name (compose's merge, simplified)."""
    services: dict[str, dict[str, Any]] = {}
    for path in compose_files:
        data = load_compose_file(path)
        for name, service in (data.get("services") or {}).items():
            if isinstance(service, Reset):
                services.pop(name, None)
                continue
            if isinstance(service, Override):
                service = service.value
            service = dict(service or {})
            if "environment" in service and not isinstance(
                service["environment"], Override | Reset
            ):
                service["environment"] = _environment_dict(service["environment"])
            if name in services:
                services[name] = _merge(services[name], service)
            else:
                services[name] = _plain(service)
    return services


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


_URL_HOST_PORT = re.compile(r"(?:https?|wss?|tcp)://([A-Za-z0-9_.-]+):(\d+)")
_LOCAL_HOSTS = {"localhost", "127.0.0.1", "0.0.0.0", "[::1]"}


def _healthcheck_text(service: Mapping[str, Any]) -> str:
    test = (service.get("healthcheck") or {}).get("test") or ""
    return " ".join(str(part) for part in test) if isinstance(test, list) else str(test)


def service_ports(
    name: str, service: Mapping[str, Any], services: Mapping[str, Mapping[str, Any]] | None = None
) -> list[int]:
    """Container ports the service listens on, as far as the compose files tell.

    In this order: published ports' container side, `expose`, literal values of environment
    variables PORT / *_PORT / *_BIND (":5001"), ports in its healthcheck's URLs to itself
    (localhost, 127.0.0.1, /dev/tcp/HOST/PORT, its own names) and URLs by which other services
    reach it (http://NAME:PORT in their environment). Falls back to [80].
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
    body = yaml.dump(
        {"services": standin_services(compose_files)},
        Dumper=ComposeDumper,
        sort_keys=False,
        default_flow_style=False,
        width=1000,
    )
    dest.write_text(header + body)
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
        + yaml.dump({"services": overlay}, Dumper=ComposeDumper, sort_keys=False, width=1000)
    )
    return mapping
