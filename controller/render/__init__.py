"""Writing an instance folder, split by what it writes.

The folder ROOT/instances/NAME holds:
- the template's files unchanged (folder.py), except the instance's own vector.yml (vector.py),
- ``.env`` (0600, dotenv.py): every variable of .env.example, secrets generated, URLs and ports,
- ``docker-compose.override.yml`` (override.py): own container names, loopback ports, labels,
- ``docker-compose.mail.yml`` for the built-in mail overlay, and ``extra-N.yml`` (0600) copies of
  extra compose files (extras.py).

Rendering is idempotent: an existing .env keeps its values (secrets above all), so a re-run after a
crash converges instead of producing new secrets. Nothing is written through a symlink planted in
the folder (containers can write into parts of it).
"""

from collections.abc import Mapping, Sequence
from pathlib import Path

from controller.composefiles import BASE_FILE, ENV_FILE, OVERRIDE_FILE, compose_files
from controller.composemodel import Project
from controller.composeyaml import dump_yaml
from controller.config import Settings
from controller.envfile import EnvFile
from controller.envpolicy import is_secret
from controller.errors import OperationError, UsageError
from controller.fsutil import NoFollowTree, ensure_dir
from controller.labels import INSTANCE_LABEL, ROOT_LABEL
from controller.limits import check_cpus, check_memory
from controller.names import validate_name
from controller.ownership import root_id
from controller.render.dotenv import build_env
from controller.render.extras import extra_names, read_extra_compose
from controller.render.folder import copy_template, existing_extras
from controller.render.names import instance_container_name
from controller.render.override import build_override
from controller.render.vector import rewrite_vector, upstream_container_names, vector_config_files
from controller.state import InstanceRecord
from controller.templatefiles import (
    MAIL_COMPOSE,
    MAIL_OVERLAY,
    TemplateFiles,
    needed_ports,
)

MAIL_FILE = f"docker-compose.{MAIL_OVERLAY}.yml"

__all__ = [
    "ENV_FILE",
    "INSTANCE_LABEL",
    "ROOT_LABEL",
    "compose_files",
    "demo_values",
    "instance_container_name",
    "merged_project",
    "read_extra_compose",
    "render_instance",
    "rewrite_vector",
]


def merged_project(
    template: TemplateFiles, overlays: Sequence[str], extras: Sequence[Path] = ()
) -> Project:
    """The merged project of the template, ``overlays`` and ``extras`` as compose-go reads it;
    UsageError (exit 2) when compose refuses the extra files or they use the host network."""
    try:
        model = template.model(list(overlays), extra=extras)
    except OperationError as exc:
        if not extras:
            raise
        raise UsageError(f"extra compose files refused by compose: {exc}") from None
    base = template.model(list(overlays))
    for name, service in model.services.items():
        before = base.services.get(name)
        if service.network_mode == "host" and (before is None or before.network_mode != "host"):
            raise UsageError(
                f"extra compose files put service {name} on the host network, where its ports "
                "cannot be kept on 127.0.0.1"
            )
    return model


def render_instance(
    settings: Settings,
    record: InstanceRecord,
    template: TemplateFiles,
    extra_compose_sources: Sequence[Path] = (),
    initial: Mapping[str, str] | None = None,
    bind: str | None = None,
) -> Path:
    """Write (or bring up to date) the instance folder for ``record``; returns the folder.

    ``initial``: secrets a first render uses instead of generating them (see build_env).
    ``bind``: the address its ports publish on (None: that of the record's host).
    """
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
    sources = [Path(p) for p in extra_compose_sources]
    extras = read_extra_compose(sources)
    # New extra files are checked by compose-go before anything is written.
    everything = merged_project(template, overlays, sources) if sources else None
    owner = root_id(settings.root)

    ensure_dir(settings.instances_dir, 0o755)
    folder = ensure_dir(settings.instance_dir(name), 0o700)
    with NoFollowTree(folder) as tree:
        names = upstream_container_names(template, name, overlays)
        replaced = {
            relative: rewrite_vector((template.path / relative).read_text(), name, names).encode()
            for relative in vector_config_files(template)
        }
        copy_template(template.path, tree, replaced)
        if template.own_mail(overlays):
            tree.write(MAIL_FILE, MAIL_COMPOSE.encode(), 0o644)

        # Extra compose files: copies in the folder; a re-render without sources keeps them.
        if extras:
            extra_files = extra_names(len(extras))
            for filename, data in zip(extra_files, extras, strict=True):
                tree.write(filename, data, 0o600)
            for stale in existing_extras(tree):
                if stale not in extra_files:
                    tree.unlink(stale)
        else:
            extra_files = existing_extras(tree)
            everything = merged_project(template, overlays, [folder / f for f in extra_files])

        # .env first among our own files: from here on a re-run keeps these secrets.
        existing = tree.read(ENV_FILE)
        files = [p.name for p in template.compose_paths(overlays)]
        env = build_env(
            settings,
            record,
            template,
            existing.decode() if existing is not None else None,
            [*files, *extra_files, OVERRIDE_FILE],
            initial,
        )
        tree.write(ENV_FILE, env.render().encode(), 0o600)

        if bind is None:
            bind = _bind_of(settings, record)
        override = build_override(record, template, everything, owner, bind)
        header = (
            f"# Written by supabase-manager for instance {name}; rewritten on every render.\n"
            "# Own container names (upstream names stay network aliases), ports on 127.0.0.1.\n"
        )
        tree.write(OVERRIDE_FILE, (header + dump_yaml(override)).encode(), 0o644)
    return folder


def _bind_of(settings: Settings, record: InstanceRecord) -> str:
    """The address of the record's host that its ports publish on (127.0.0.1 here)."""
    from controller.hosts import LOOPBACK, place
    from controller.state import LOCAL_HOST, StateStore

    if record.host == LOCAL_HOST:
        return LOOPBACK
    state = StateStore(settings.state_path, settings.lock_path).read()
    return place(settings, state, record.host).bind


def demo_values(template: TemplateFiles) -> dict[str, str]:
    """The non-empty values .env.example gives secret keys (must never reach an instance)."""
    return {
        key: value
        for key, value in EnvFile.parse(template.env_example()).items()
        if value and is_secret(key)
    }
