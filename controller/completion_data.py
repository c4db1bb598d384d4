"""The names a front-end completes and offers, in one snapshot: instances with their services and
.env keys, templates with their overlays, the services whose host port `create --port` may choose,
and the secrets `create` generates.

Built from state.json and the files under ROOT only (never Docker, never the network), so a shell
can rebuild it in a background thread after each command and swap it in whole (pgcli's completion
refresher). Each part is read defensively: a broken template or a missing .env leaves that entry
empty instead of failing the snapshot, because completion must never break typing.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from pathlib import Path

import attrs

from controller.config import Settings
from controller.errors import ManagerError
from controller.state import State, StateStore


@attrs.frozen
class TemplateNames:
    overlays: tuple[str, ...] = ()
    port_services: tuple[str, ...] = ()  # services whose host port `--port SERVICE=PORT` sets
    generated_secrets: tuple[str, ...] = ()  # secret variables `create` generates per instance


@attrs.frozen
class InstanceNames:
    template: str = ""
    services: tuple[str, ...] = ()
    env_keys: tuple[str, ...] = ()


@attrs.frozen
class CompletionSnapshot:
    instances: Mapping[str, InstanceNames] = attrs.field(factory=dict)
    templates: Mapping[str, TemplateNames] = attrs.field(factory=dict)
    default_template: str | None = None  # the newest template: what the create wizard offers
    hosts: tuple[str, ...] = ()  # `host add`ed hosts (not "local")

    def instance_names(self) -> list[str]:
        return sorted(self.instances)

    def host_names(self, local: bool = True) -> list[str]:
        return (["local"] if local else []) + sorted(self.hosts)

    def template_names(self) -> list[str]:
        return sorted(self.templates)

    def services(self, instance: str) -> tuple[str, ...]:
        entry = self.instances.get(instance)
        return entry.services if entry else ()

    def env_keys(self, instance: str) -> tuple[str, ...]:
        entry = self.instances.get(instance)
        return entry.env_keys if entry else ()

    def overlays(self, template: str | None = None) -> list[str]:
        """Overlays of one template, or of every template when none is named."""
        return self._union(template, "overlays")

    def port_services(self, template: str | None = None) -> list[str]:
        return self._union(template, "port_services")

    def generated_secrets(self, template: str) -> tuple[str, ...]:
        entry = self.templates.get(template)
        return entry.generated_secrets if entry else ()

    def _union(self, template: str | None, field: str) -> list[str]:
        names = [template] if template else list(self.templates)
        found: set[str] = set()
        for name in names:
            entry = self.templates.get(name)
            if entry is not None:
                found.update(getattr(entry, field))
        return sorted(found)


def build_snapshot(settings: Settings, store: StateStore | None = None) -> CompletionSnapshot:
    """Read state and files once; a corrupt state file gives an empty instance list."""
    store = store or StateStore(settings.state_path, settings.lock_path)
    try:
        state = store.read()
    except Exception:  # corrupt or unreadable: the commands themselves report it
        state = State()
    files = {name: _files(settings, name) for name in _template_folders(settings)}
    templates = {name: _template_names(each) for name, each in files.items()}
    services: dict[tuple, tuple[str, ...]] = {}
    instances = {}
    for name, record in state.instances.items():
        key = (record.template, tuple(record.overlays))
        if key not in services:
            services[key] = _services(files.get(record.template), record.overlays)
        instances[name] = InstanceNames(record.template, services[key], _env_keys(settings, name))
    return CompletionSnapshot(
        instances, templates, _newest(state, list(templates)), tuple(sorted(state.hosts))
    )


def _files(settings: Settings, name: str):
    from controller.templatefiles import TemplateFiles

    return TemplateFiles(settings.template_dir(name))


def _template_folders(settings: Settings) -> list[str]:
    try:
        return sorted(
            p.name for p in settings.templates_dir.iterdir() if (p / "docker-compose.yml").is_file()
        )
    except OSError:
        return []


# Each part is read on its own: a template compose-go refuses (or no compose plugin) still leaves
# its overlays and secrets, and completion never fails because of one broken file.
def _template_names(files) -> TemplateNames:
    from controller.envfile import EnvFile
    from controller.envpolicy import is_secret
    from controller.secrets import GENERATED
    from controller.templatefiles import needed_ports

    overlays: list[str] = []
    ports: set[str] = set()
    secrets: list[str] = []
    with contextlib.suppress(Exception):
        overlays = files.overlays()
    with contextlib.suppress(Exception):
        ports = {key.split(":", 1)[0] for key in needed_ports(files, ())}
    with contextlib.suppress(Exception):
        keys = EnvFile.parse(files.env_example()).keys()
        secrets = sorted(k for k in keys if k in GENERATED and is_secret(k))
    return TemplateNames(tuple(overlays), tuple(sorted(ports)), tuple(secrets))


def _services(files, overlays: list[str]) -> tuple[str, ...]:
    if files is None:
        return ()
    try:
        return tuple(sorted(files.services(overlays)))
    except Exception:
        return ()


# .env keys by file, kept while the file's (mtime, size, inode) stays the same: a shell rebuilds
# the snapshot after every command, and parsing hundreds of unchanged .env files each time is
# most of its cost.
_ENV_KEYS: dict[Path, tuple[tuple[int, int, int], tuple[str, ...]]] = {}


def _env_keys(settings: Settings, name: str) -> tuple[str, ...]:
    from controller.envfile import EnvFile

    path = settings.instance_dir(name) / ".env"
    try:
        st = path.stat()
        stamp = (st.st_mtime_ns, st.st_size, st.st_ino)
        cached = _ENV_KEYS.get(path)
        if cached is not None and cached[0] == stamp:
            return cached[1]
        keys = tuple(sorted(EnvFile.parse(path.read_text()).keys()))
    except (OSError, ValueError, ManagerError):
        return ()
    _ENV_KEYS[path] = (stamp, keys)
    return keys


def _newest(state: State, names: list[str]) -> str | None:
    if not names:
        return None
    recorded = [t for t in state.templates.values() if t.name in names]
    if recorded:
        return max(recorded, key=lambda t: t.added_at).name
    return names[-1]
