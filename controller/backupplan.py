"""What a backup of an instance holds, worked out from its compose model, and the manifest that
names the restic snapshots of one backup.

One backup is several restic snapshots sharing the tag ``backup=ID`` (restic 0.14 takes one stdin
stream per snapshot): ``part=db`` (pg_basebackup's tar), ``part=volumes`` (one tar of every
named volume, each under its compose key), ``part=files`` (the instance folder without the
Postgres data), ``part=template`` (once per template content: later backups name it with a
``tpl=ID`` tag), for an instance on another host ``part=binds`` (its bind-mounted data, read
there, which ``files`` then leaves out) and, written last, ``part=manifest``. A backup exists
for us only once its manifest does, so a killed backup leaves nothing visible; `backup prune`
forgets its parts.

A part whose input provably did not change since the instance's last backup in the repository
is not read again: the manifest names the earlier snapshot (tags ``dbref=``, ``filesref=``,
``volref=``, like ``tpl=``) and `backup prune` keeps it while such a manifest exists. What the
last backup stored is remembered in ROOT/cache/backup-parts.json (forgotten by a restore and a
prune); a backup of an unchanged instance is then one restic run, its manifest's.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
from collections.abc import Mapping, Sequence
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
    # Read-write bind mounts inside the instance folder other than the Postgres data (relative
    # paths: storage, functions, snippets...). On a remote host they are read there.
    binds: tuple[str, ...] = ()


# Where the docker CLI finds its compose plugin: a new plugin may read the same files otherwise.
_PLUGIN_DIRS = (
    "~/.docker/cli-plugins",
    "/usr/local/lib/docker/cli-plugins",
    "/usr/local/libexec/docker/cli-plugins",
    "/usr/lib/docker/cli-plugins",
    "/usr/libexec/docker/cli-plugins",
)
# Compose keys that read files the content key does not hash.
_READS_MORE = re.compile(r"^\s*(include|extends)\s*:", re.MULTILINE)


def instance_model_cached(settings: Settings, folder: Path):
    """compose-go's model of an instance (controller.composemodel.instance_model), kept under
    ROOT/cache/backup-models/ and used again while everything `docker compose config` reads is
    the same: the compose files' names and bytes, the .env, the folder, this process's
    environment (interpolation) and the docker CLI and compose plugin binaries. Files that
    ``include`` or ``extend`` others are asked every time."""
    import shutil

    from controller.compose import config_json
    from controller.composefiles import compose_files
    from controller.composemodel import content_key, project_from, trim
    from controller.fsutil import atomic_write, ensure_dir

    folder = Path(folder)
    files = compose_files(folder)
    env = folder / ".env"
    env_file = env if env.is_file() else None
    key = None
    try:
        if not any(_READS_MORE.search(path.read_text()) for path in files):
            binaries = [shutil.which("docker") or ""]
            binaries += [str(Path(d).expanduser() / "docker-compose") for d in _PLUGIN_DIRS]
            stats = []
            for path in binaries:
                with contextlib.suppress(OSError):
                    st = os.stat(path)
                    stats.append(f"{path} {st.st_size} {st.st_mtime_ns} {st.st_ino}")
            extra = json.dumps(
                [str(folder.resolve()), folder.name, stats, sorted(os.environ.items())]
            )
            key = content_key(files, env_file, extra)
    except OSError:
        key = None
    cache = settings.root / "cache" / "backup-models" / f"{folder.name}.json"
    if key is not None:
        with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
            data = json.loads(cache.read_text())
            if data["key"] == key:
                return project_from(data["model"])
    model = trim(
        config_json(files, folder, [env_file] if env_file else [], project=folder.name), folder
    )
    if key is not None:
        with contextlib.suppress(OSError):
            ensure_dir(cache.parent, 0o700)
            atomic_write(cache, json.dumps({"key": key, "model": model}), mode=0o600)
    return project_from(model)


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
    binds: list[str] = []
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
            elif not Path(item.source).is_absolute() and item.source not in binds:
                binds.append(item.source)
    return Plan(
        db_service=db_service if db is not None else None,
        db_image=db.image if db is not None else None,
        pgdata=pgdata,
        pgdata_target=pgdata_target,
        volumes=tuple(volumes[k] for k in sorted(volumes)),
        external_binds=tuple(external),
        images=images,
        binds=tuple(sorted(binds)),
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

    def host(self) -> str:
        """The host the instance ran on when it was backed up: its record names it since
        state schema 2; a manifest written before says nothing, which means this machine."""
        from controller.state import LOCAL_HOST

        host = self.record.get("host") if isinstance(self.record, dict) else None
        return host if isinstance(host, str) and host else LOCAL_HOST


def stdin_name(instance: str, part: str) -> str:
    """The path restic records for a stdin part (``dump`` reads it back by that path)."""
    if part == "db":
        return f"{instance}/db/base.tar"
    if part == "manifest":
        return f"{instance}/manifest.json"
    if part == "volumes":
        return f"{instance}/volumes.tar"
    if part == "binds":
        return f"{instance}/binds.tar"
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


def _parts_cache(settings: Settings) -> Path:
    return settings.root / "cache" / "backup-parts.json"


def cached_parts(settings: Settings, repo: str, instance: str) -> dict[str, dict]:
    """What the last backup of ``instance`` in ``repo`` stored, per part (db, files, volumes):
    its snapshot, its size and the fingerprint of its input, so that an unchanged part is named
    again instead of read again."""
    try:
        data = json.loads(_parts_cache(settings).read_text())
        entries = data[repo][instance]
    except (OSError, ValueError, KeyError, TypeError):
        return {}
    if not isinstance(entries, dict):
        return {}
    return {k: v for k, v in entries.items() if isinstance(v, dict) and v.get("snapshot")}


def remember_parts(
    settings: Settings, repo: str | None, instance: str, parts: Mapping[str, dict] | None
) -> None:
    """Record the parts of the latest backup of an instance (merged into what is known);
    ``parts`` None forgets them all, in every repository when ``repo`` is None (a restore
    rewinds the instance; a prune may have dropped them)."""
    from controller.fsutil import atomic_write, ensure_dir, file_lock

    path = _parts_cache(settings)
    ensure_dir(path.parent, 0o700)
    with file_lock(path.parent / ".backup-parts.lock"):
        try:
            data = json.loads(path.read_text())
            data = data if isinstance(data, dict) else {}
        except (OSError, ValueError):
            data = {}
        if parts is None:
            for key, entries in data.items():
                if isinstance(entries, dict) and (repo is None or key == repo):
                    entries.pop(instance, None)
        else:
            known = data.setdefault(repo, {}).setdefault(instance, {})
            known.update(parts)
        atomic_write(path, json.dumps(data, indent=2), mode=0o600)


def cached_db_snapshot(settings: Settings, repo: str, instance: str) -> dict | None:
    """The last base backup of ``instance`` in ``repo``: its snapshot, the cluster (system id
    and timeline) and the WAL end point it holds."""
    return cached_parts(settings, repo, instance).get("db")


def remember_db_snapshot(
    settings: Settings, repo: str | None, instance: str, where: dict | None, snapshot: str | None
) -> None:
    """Record the last base backup of an instance; ``snapshot`` None forgets every part known
    of it (in every repository when ``repo`` is None: a restore rewinds the instance)."""
    if snapshot is None:
        remember_parts(settings, repo, instance, None)
    else:
        remember_parts(settings, repo, instance, {"db": {**(where or {}), "snapshot": snapshot}})


def is_local(repo: str) -> bool:
    return repo.startswith("/") or repo.startswith("local:")


def snapshot_gone(repo: str, snapshot: str) -> bool:
    """Whether a local repository lacks ``snapshot`` (a prune or a hand-run `restic forget`
    dropped it), from its snapshot files; remote repositories are not looked at here."""
    if is_local(repo):
        # restic's summary names a snapshot by its short id: the file name starts with it.
        folder = Path(repo.removeprefix("local:")) / "snapshots"
        try:
            return not any(entry.startswith(snapshot) for entry in os.listdir(folder))
        except OSError:
            return True
    return False


# --- fingerprints of a part's input ----------------------------------------------------------
# A part is named again only when its input provably did not change: every entry's path, type,
# mode, owner, size, inode, mtime and ctime are as they were (restic's own test for skipping a
# file, plus ctime, which no program can set back). Entries touched within the timestamp
# granularity of the fingerprint's own time are "racy" (a later write in the same tick would
# not show) and make the fingerprint unusable, as git treats racily clean index entries.
FINE_WINDOW = 0.1  # nanosecond timestamps: the kernel's coarse clock ticks in milliseconds
COARSE_WINDOW = 2.0  # second (or two-second) timestamps


def digest_listing(lines: list[str], now: float, extra: str) -> str | None:
    """The fingerprint of a listing of ``path<TAB>type<TAB>...<TAB>mtime<TAB>ctime<TAB>...``
    lines (fields 6 and 7 are float seconds) taken at ``now``; None when any entry is racy."""
    import hashlib

    newest, fine = 0.0, False
    for line in lines:
        fields = line.split("\t")
        if len(fields) < 9:
            return None
        try:
            times = (float(fields[6]), float(fields[7]))
        except ValueError:
            return None
        newest = max(newest, *times)
        fine = fine or any(t != int(t) for t in times)
    if now - newest < (FINE_WINDOW if fine else COARSE_WINDOW):
        return None
    digest = hashlib.sha256(extra.encode() + b"\0")
    for line in sorted(lines):
        digest.update(line.encode(errors="surrogateescape") + b"\n")
    return digest.hexdigest()


def folder_digest(folder: Path, excludes: Sequence[str] = ()) -> str | None:
    """The fingerprint of an instance folder as ``restic backup .`` with ``excludes`` (absolute
    paths) reads it; None when it cannot be taken or an entry is racy."""
    import time

    now = time.time()
    root = os.path.realpath(folder)
    skip = {os.path.normpath(p) for p in excludes}
    lines: list[str] = []

    def add(path: str) -> None:
        st = os.lstat(path)
        target = os.readlink(path) if os.path.islink(path) else ""
        rel = os.path.relpath(path, root)
        lines.append(
            f"{rel}\t{st.st_mode:o}\t{st.st_uid}\t{st.st_gid}\t{st.st_size}\t{st.st_ino}"
            f"\t{st.st_mtime_ns / 1e9:.9f}\t{st.st_ctime_ns / 1e9:.9f}\t{target}"
        )

    def fail(exc: OSError) -> None:
        raise exc

    try:
        for dirpath, dirnames, filenames in os.walk(root, onerror=fail):
            add(dirpath)
            keep = []
            for name in dirnames:
                path = os.path.join(dirpath, name)
                if path in skip:
                    continue
                if os.path.islink(path):
                    add(path)  # restic stores the link, never what it points to
                else:
                    keep.append(name)
            dirnames[:] = sorted(keep)
            for name in sorted(filenames):
                add(os.path.join(dirpath, name))
    except OSError:
        return None
    extra = "files\0" + "\0".join(sorted(os.path.relpath(p, root) for p in skip))
    return digest_listing(lines, now, extra)
