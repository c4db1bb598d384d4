"""What a backup of an instance holds, worked out from its compose model, and the manifest that
names the restic snapshots of one backup.

One backup is several restic snapshots sharing the tag ``backup=ID`` (restic 0.14 takes one stdin
stream per snapshot): ``part=db`` (pg_basebackup's tar), ``part=volumes`` (one tar of every
named volume, each under its compose key), ``part=files`` (the instance folder without the
Postgres data), ``part=template`` (once per template content: later backups name it with a
``tpl=ID`` tag) and, written last, ``part=manifest``. A backup exists for us only once its
manifest does, so a killed backup leaves nothing visible; `backup prune` forgets its parts.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path, PurePosixPath

import attrs

from controller.config import Settings
from controller.errors import OperationError

FORMAT = 1
DEFAULT_PGDATA = "/var/lib/postgresql/data"
SBM_TAG = "sbm"


def repository(settings: Settings) -> str:
    return settings.backup.repository or str(settings.root / "backups")


def open_repository(settings: Settings, create_key: bool = False):
    """The Restic adapter for the configured repository; (restic, password created now)."""
    from controller import backupkey
    from controller.errors import UsageError
    from controller.restic import Restic, read_env_file

    if create_key:
        source, created = backupkey.ensure(settings)
    else:
        source, created = backupkey.locate(settings), False
        if source is None:
            raise UsageError(
                "no backup password yet: the first `backup NAME` creates one "
                f"(or set [backup] password_file); repository: {repository(settings)}"
            )
        if source.path is not None and not source.path.is_file():
            raise UsageError(f"backup password file {source.path} does not exist")
    env_file = settings.backup.environment_file
    environment = read_env_file(env_file) if env_file else {}
    return Restic(repository(settings), source, environment), created


@attrs.frozen
class DataMount:
    """Where data lives: a named volume (``volume``: its compose key and engine name) or a host
    folder (``bind``: a path relative to the instance folder, or absolute)."""

    type: str
    source: str
    name: str  # engine name (volume) or the host path as given (bind)


@attrs.frozen
class Plan:
    db_service: str | None
    db_image: str | None
    pgdata: DataMount | None
    pgdata_target: str
    volumes: tuple[DataMount, ...]  # named volumes other than the Postgres data
    external_binds: tuple[str, ...]  # read-write bind mounts outside the instance folder
    images: Mapping[str, str]


def plan_for(folder: Path, db_service: str | None, model=None) -> Plan:
    """The data of the instance in ``folder``, from compose-go's model of its files."""
    from controller import containerio
    from controller.composemodel import instance_model

    model = model or instance_model(folder)
    images = {n: s.image for n, s in model.services.items() if s.image}
    db = model.services.get(db_service) if db_service else None
    pgdata_target = DEFAULT_PGDATA
    if db is not None and db.image:
        pgdata_target = containerio.image_env(db.image).get("PGDATA") or DEFAULT_PGDATA
    pgdata = None
    if db is not None:
        # The mount holding PGDATA: the deepest one at or above it.
        best = None
        for mount in db.mounts:
            target = PurePosixPath(mount.target)
            holds = target == PurePosixPath(pgdata_target) or target in (
                PurePosixPath(pgdata_target).parents
            )
            deeper = best is None or len(target.parts) > len(PurePosixPath(best.target).parts)
            if mount.source and holds and deeper:
                best = mount
        if best is not None:
            pgdata = _data_mount(best, model)
    volumes: dict[str, DataMount] = {}
    external: list[str] = []
    for service in model.services.values():
        for mount in service.mounts:
            if mount.read_only or not mount.source:
                continue
            item = _data_mount(mount, model)
            if item is None or item == pgdata:
                continue
            if item.type == "volume":
                volumes.setdefault(item.source, item)
            elif Path(item.source).is_absolute() and item.source not in external:
                external.append(item.source)
    return Plan(
        db_service=db_service if db is not None else None,
        db_image=db.image if db is not None else None,
        pgdata=pgdata,
        pgdata_target=pgdata_target,
        volumes=tuple(volumes[k] for k in sorted(volumes)),
        external_binds=tuple(external),
        images=images,
    )


def _data_mount(mount, model) -> DataMount | None:
    if mount.type == "volume":
        resource = model.volumes.get(mount.source)
        if resource is None or resource.external:
            return None
        return DataMount("volume", mount.source, resource.name)
    if mount.type == "bind":
        return DataMount("bind", mount.source, mount.source)
    return None


@attrs.define
class Part:
    snapshot: str
    bytes: int = 0
    added: int = 0


@attrs.define
class Manifest:
    id: str
    instance: str
    created: str
    template: str
    template_hash: str
    record: dict
    postgres_major: str
    superuser: str
    db_service: str | None
    pgdata: dict | None  # DataMount as a dict
    pgdata_target: str
    images: dict[str, str]
    schemas: list[str]
    tables: list[list[str]]  # [schema, table, rows at backup time]
    parts: dict[str, Part]  # "db", "volumes", "files", "template"
    volumes: dict[str, str]  # compose key -> engine name at backup time
    user_tags: list[str] = attrs.field(factory=list)
    format: int = FORMAT

    def dumps(self) -> str:
        import cattrs

        return json.dumps(cattrs.unstructure(self), indent=2, sort_keys=True)

    @classmethod
    def loads(cls, text: str | bytes) -> Manifest:
        import cattrs

        try:
            data = json.loads(text)
            return cattrs.structure(data, cls)
        except (ValueError, TypeError, cattrs.errors.BaseValidationError):
            raise OperationError("the backup's manifest is unreadable") from None

    def pgdata_mount(self) -> DataMount | None:
        return DataMount(**self.pgdata) if self.pgdata else None


def stdin_name(instance: str, part: str) -> str:
    """The path restic records for a stdin part (``dump`` reads it back by that path)."""
    if part == "db":
        return f"{instance}/db/base.tar"
    if part == "manifest":
        return f"{instance}/manifest.json"
    if part == "volumes":
        return f"{instance}/volumes.tar"
    raise ValueError(part)


def tags(instance: str, backup_id: str, part: str) -> list[str]:
    return [SBM_TAG, f"instance={instance}", f"backup={backup_id}", f"part={part}"]


def template_hash(folder: Path) -> str:
    import hashlib

    digest = hashlib.sha256()
    for path in sorted(p for p in Path(folder).rglob("*") if p.is_file()):
        digest.update(str(path.relative_to(folder)).encode() + b"\0")
        digest.update(path.read_bytes())
    return digest.hexdigest()


def _template_cache(settings: Settings) -> Path:
    return settings.root / "cache" / "backup-templates.json"


def cached_template_snapshot(settings: Settings, repo: str, digest: str) -> str | None:
    """The snapshot that already holds a template with this content hash in ``repo``."""
    try:
        data = json.loads(_template_cache(settings).read_text())
    except (OSError, ValueError):
        return None
    value = (data.get(repo) or {}).get(digest) if isinstance(data, dict) else None
    return value if isinstance(value, str) else None


def remember_template_snapshot(
    settings: Settings, repo: str, digest: str | None, snapshot: str | None
) -> None:
    """Remember which snapshot holds a template; ``snapshot`` None forgets that entry, and
    ``digest`` None every entry of the repository (after a prune dropped one)."""
    from controller.fsutil import atomic_write, ensure_dir

    path = _template_cache(settings)
    try:
        data = json.loads(path.read_text())
        data = data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        data = {}
    entries = data.setdefault(repo, {})
    if digest is None:
        data.pop(repo, None)
    elif snapshot is None:
        entries.pop(digest, None)
    else:
        entries[digest] = snapshot
    ensure_dir(path.parent, 0o700)
    atomic_write(path, json.dumps(data, indent=2), mode=0o600)


def _db_cache(settings: Settings) -> Path:
    return settings.root / "cache" / "backup-db.json"


def cached_db_snapshot(settings: Settings, repo: str, instance: str) -> dict | None:
    """The last base backup of ``instance`` in ``repo``: its snapshot, the cluster (system id
    and timeline) and the WAL end point it holds."""
    try:
        data = json.loads(_db_cache(settings).read_text())
        entry = data[repo][instance]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return entry if isinstance(entry, dict) else None


def remember_db_snapshot(
    settings: Settings, repo: str | None, instance: str, where: dict | None, snapshot: str | None
) -> None:
    """Record the last base backup of an instance; ``snapshot`` None forgets it (in every
    repository when ``repo`` is None: a restore rewinds the database)."""
    from controller.fsutil import atomic_write, ensure_dir

    path = _db_cache(settings)
    try:
        data = json.loads(path.read_text())
        data = data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        data = {}
    if snapshot is None:
        for entries in data.values():
            if isinstance(entries, dict) and (repo is None or entries is data.get(repo)):
                entries.pop(instance, None)
    else:
        data.setdefault(repo, {})[instance] = {**(where or {}), "snapshot": snapshot}
    ensure_dir(path.parent, 0o700)
    atomic_write(path, json.dumps(data, indent=2), mode=0o600)
