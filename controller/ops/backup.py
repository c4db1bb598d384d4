"""Backups: one consistent, online snapshot of an instance into the restic repository; listing,
checking and pruning the repository; where its password lives.

The database is a physical base backup (pg_basebackup as the superuser inside the db container,
streamed straight into ``restic backup --stdin``: no plaintext copy on disk), so a restore brings
back every role, grant, owner, Vault secret and migration exactly. Every other read-write volume
of the compose model and the instance folder (.env, override, extra files, bind-mounted data)
follow; the manifest, written last, makes the backup visible. See controller/backupplan.py.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import os
import re
import secrets
import subprocess
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path

import attrs

from controller import backupplan as bp
from controller import containerio
from controller.config import Settings
from controller.errors import OperationError, UsageError
from controller.fsutil import file_lock
from controller.names import validate_name
from controller.restic import Restic, human
from controller.state import READY, StateStore

Progress = Callable[[str], None]

# Picks the superuser the way Supabase's image has it (supabase_admin), else postgres.
_SUPERUSER_SCRIPT = (
    'for u in supabase_admin postgres; do if psql -X -U "$u" -d postgres -tAc "select 1" '
    '>/dev/null 2>&1; then echo "$u"; exit 0; fi; done; exit 1'
)
_TABLES_SQL = (
    "select n.nspname, c.relname, greatest(c.reltuples, 0)::bigint from pg_class c "
    "join pg_namespace n on n.oid = c.relnamespace where c.relkind in ('r', 'p') "
    "and n.nspname not in ('pg_catalog', 'information_schema') "
    "and n.nspname not like 'pg_toast%' order by 1, 2"
)
_SCHEMAS_SQL = (
    "select nspname from pg_namespace where nspname not like 'pg_%' "
    "and nspname <> 'information_schema' order by 1"
)


def _quiet(_: str) -> None:
    pass


@attrs.frozen
class BackupResult:
    instance: str
    backup: str
    snapshot: str
    bytes: int
    added: int
    seconds: float
    notes: list[str]
    warnings: list[str]


@attrs.frozen
class BackupView:
    backup: str
    snapshot: str
    instance: str
    time: str
    size: int
    added: int
    template: str
    postgres: str
    tags: list[str]
    images: dict[str, str]


@contextlib.contextmanager
def instance_lock(settings: Settings, name: str):
    """The same per-instance lock every mutating command takes (controller/ops/base.busy)."""
    try:
        with file_lock(settings.root / "locks" / f"{name}.lock", wait=False):
            yield
    except BlockingIOError:
        raise OperationError(
            f"{name} is busy: another supabase-manager command is working on it"
        ) from None


def _new_id() -> str:
    return datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ") + "-" + secrets.token_hex(3)


def _running_container(project: str, service: str) -> str | None:
    out = containerio.run_docker(
        [
            "ps",
            "-q",
            "--filter",
            f"label=com.docker.compose.project={project}",
            "--filter",
            f"label=com.docker.compose.service={service}",
            "--filter",
            "status=running",
        ],
        "docker ps",
    )
    ids = out.split()
    return ids[0] if ids else None


def _env_value(folder: Path, key: str) -> str:
    from controller.envfile import EnvFile

    try:
        return EnvFile.parse((folder / ".env").read_text()).get(key) or ""
    except FileNotFoundError:
        raise OperationError(f"{folder / '.env'} is missing") from None


def _psql(container: str, user: str, db: str, sql: str, password: str) -> list[list[str]]:
    out = containerio.exec_text(
        container,
        ["psql", "-X", "-U", user, "-d", db, "-tA", "-F", "\t", "-c", sql],
        {"PGPASSWORD": password},
    )
    return [line.split("\t") for line in out.splitlines() if line.strip()]


def superuser(container: str, password: str) -> str:
    out = containerio.exec_text(
        container, ["sh", "-c", _SUPERUSER_SCRIPT], {"PGPASSWORD": password}
    ).strip()
    if not out:
        raise OperationError("no superuser login works in the db container")
    return out


def _repository_exists(restic: Restic) -> bool:
    """A local repository is a folder with a config file (no restic run, which costs a key
    derivation); anything else is asked."""
    location = restic.repository
    if location.startswith("/") or location.startswith("local:"):
        return (Path(location.removeprefix("local:")) / "config").is_file()
    return restic.exists()


def _inspect_db(container: str, password: str, database: str) -> tuple:
    """The superuser, the major version, the schemas, the tables (with estimated rows) and the
    WAL position, from one psql run."""
    user = superuser(container, password)
    rows = _psql_many(
        container,
        user,
        database,
        [
            "select 'V', current_setting('server_version_num')",
            f"select 'S', nspname from ({_SCHEMAS_SQL}) s",
            f"select 'T', * from ({_TABLES_SQL}) t",
            _POSITION_SQL,
        ],
        password,
    )
    major = next((str(int(r[1]) // 10000) for r in rows if r[0] == "V"), "")
    schemas = [r[1] for r in rows if r[0] == "S"]
    tables = [r[1:] for r in rows if r[0] == "T"]
    position = next((r[1:] for r in rows if r[0] == "L"), None)
    return user, major, schemas, tables, position


# Where the cluster's WAL stands: system id, timeline, flushed position.
_POSITION_SQL = (
    "select 'L', (select system_identifier from pg_control_system()), "
    "(select timeline_id from pg_control_checkpoint()), pg_current_wal_flush_lsn()"
)
_END_POINT = re.compile(r"write-ahead log end point: ([0-9A-Fa-f]+/[0-9A-Fa-f]+)")
# WAL records that change nothing a query can see: the segment switch ending a backup,
# checkpoints, the bgwriter's snapshot of running transactions, hint-bit page images, and the
# housekeeping of tuples already dead to everyone (pruning, vacuum, freezing, visibility map).
# Any other record (an insert, a commit, DDL) means the database changed.
_IDLE_RECORDS = {
    ("XLOG", "SWITCH"),
    ("XLOG", "CHECKPOINT_ONLINE"),
    ("XLOG", "CHECKPOINT_SHUTDOWN"),
    ("XLOG", "FPI_FOR_HINT"),
    ("Standby", "RUNNING_XACTS"),
    ("Heap2", "PRUNE"),
    ("Heap2", "VACUUM"),
    ("Heap2", "VISIBLE"),
    ("Heap2", "FREEZE_PAGE"),
}
_WALDUMP = 'exec pg_waldump -p "${PGDATA:-/var/lib/postgresql/data}/pg_wal" -s "$1" -e "$2"'


def _unchanged_since(container: str, known: dict | None, position: Sequence[str] | None) -> bool:
    """Whether not one data-changing WAL record was written after the last backup's end point
    (read with pg_waldump inside the container); False whenever in doubt."""
    if not known or not position or len(position) < 3:
        return False
    if known.get("cluster") != f"{position[0]}:{position[1]}":
        return False
    end, now = known.get("end") or "", position[2]
    if end == now:
        return True
    try:
        out = containerio.exec_text(container, ["sh", "-c", _WALDUMP, "waldump", end, now], {})
    except OperationError:
        return False  # the WAL since then is gone (recycled) or unreadable: take a new one
    records = [
        (match.group(1), match.group(2))
        for match in re.finditer(r"rmgr: (\w+)\s.*?desc: (\w+)", out)
    ]
    return bool(records) and all(record in _IDLE_RECORDS for record in records)


def _psql_many(
    container: str, user: str, db: str, statements: Sequence[str], password: str
) -> list[list[str]]:
    command = ["psql", "-X", "-U", user, "-d", db, "-tA", "-F", "\t"]
    for statement in statements:
        command += ["-c", statement]
    out = containerio.exec_text(container, command, {"PGPASSWORD": password})
    return [line.split("\t") for line in out.splitlines() if line.strip()]


# The tag a manifest names a part with when the part belongs to an earlier backup.
REF_TAGS = {"template": "tpl", "db": "dbref", "files": "filesref", "volumes": "volref"}


def _shared_templates(snapshots, manifests) -> set[str]:
    """Snapshots of parts that manifests name again (``tpl=``, ``dbref=``, ... tags): kept
    while one of those manifests is."""
    named = {m.tag(key) for m in manifests for key in REF_TAGS.values() if m.tag(key)}
    return {s.id for s in snapshots for ref in named if ref and s.id.startswith(ref)}


def forget_orphans(
    restic: Restic, settings: Settings, only: str | None = None, protect: set[str] = frozenset()
) -> int:
    """Forget parts of backups that never got their manifest (a killed backup), for instances
    no command is working on now. Returns how many snapshots went."""
    snapshots = restic.snapshots([bp.SBM_TAG] + ([f"instance={only}"] if only else []))
    complete = {s.tag("backup") for s in snapshots if s.tag("part") == "manifest"}
    orphans: dict[str, list[str]] = {}
    manifests = [s for s in snapshots if s.tag("part") == "manifest"]
    protect = set(protect) | _shared_templates(snapshots, manifests)
    for snap in snapshots:
        if snap.tag("backup") not in complete and snap.id not in protect:
            orphans.setdefault(snap.tag("instance") or "", []).append(snap.id)
    gone = 0
    for instance, ids in orphans.items():
        if instance != only:
            try:
                with instance_lock(settings, instance):
                    restic.forget(ids)
            except OperationError:
                continue  # a backup of it is running now: its parts are not orphans
        else:
            restic.forget(ids)
        gone += len(ids)
    return gone


def _backup_stream(
    restic: Restic,
    producer: subprocess.Popen,
    name: str,
    part: str,
    tags: list[str],
    what: str,
    progress: Progress,
    ok_codes: Sequence[int] = (0,),
    on_stderr: Callable[[str], None] | None = None,
) -> bp.Part:
    try:
        summary = restic.backup_stdin(
            producer.stdout, bp.stdin_name(name, part), tags, progress=progress, what=what
        )
    except BaseException:
        producer.kill()
        producer.wait()
        raise
    finally:
        if producer.stdout:
            producer.stdout.close()
    try:
        stderr = containerio.finish(producer, what, ok_codes)
    except OperationError:
        # restic stored a truncated stream: it must not stay behind as if it were data.
        with contextlib.suppress(OperationError):
            restic.forget([summary.snapshot_id])
        raise
    if on_stderr is not None:
        on_stderr(stderr)
    return bp.Part(summary.snapshot_id, summary.bytes_processed, summary.bytes_added)


def _open_for_backup(settings: Settings, progress: Progress, notes: list[str]) -> Restic:
    """The repository, its password made and the repository initialised on first use."""
    restic, created = bp.open_repository(settings, create_key=True)
    if created:
        notes.append(
            f"generated the backup password in {restic.password.where}: keep a copy "
            "(`backup key export`), losing it loses every backup"
        )
    if not _repository_exists(restic):
        progress(f"initialising the backup repository {restic.repository}")
        restic.init()
        notes.append(f"initialised a new backup repository at {restic.repository}")
    return restic


def backup_instance(
    settings: Settings,
    store: StateStore,
    name: str,
    user_tags: Sequence[str] = (),
    progress: Progress = _quiet,
) -> BackupResult:
    validate_name(name)
    for tag in user_tags:
        if not tag or "," in tag or "=" in tag or tag.strip() != tag:
            raise UsageError(f"invalid tag {tag!r}: no commas, '=' or spaces")
    state = store.read()
    record = state.instances.get(name)
    if record is None:
        raise OperationError(f"no instance named {name!r}")
    if record.phase != READY:
        raise OperationError(f"instance {name!r} is incomplete: finish or delete it first")
    started = time.monotonic()
    from controller.hosts import place_of

    where = place_of(settings, state, record)
    notes: list[str] = []
    # Finding the password (a keyring probe) overlaps with reading the instance.
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        opened = pool.submit(_open_for_backup, settings, progress, notes)
        with instance_lock(settings, name), containerio.engine(where.docker_env()):
            # Parts of a killed backup stay invisible (no manifest) until `backup prune` drops
            # them.
            return _backup_locked(
                settings, opened, record, user_tags, progress, notes, started, where
            )


@attrs.define
class _Db:
    """What the running database says before its backup."""

    container: str | None = None
    user: str = "postgres"
    major: str = ""
    schemas: list[str] = attrs.field(factory=list)
    tables: list[list[str]] = attrs.field(factory=list)
    position: list[str] | None = None
    unchanged: bool = False


def _probe_db(name: str, service: str | None, password: str, database: str, known) -> _Db:
    container = _running_container(name, service) if service else None
    if not container:
        return _Db()
    user, major, schemas, tables, position = _inspect_db(container, password, database)
    unchanged = _unchanged_since(container, known, position)
    return _Db(container, user, major, schemas, tables, position, unchanged)


def _existing_volumes() -> set[str]:
    return set(containerio.run_docker(["volume", "ls", "-q"], "docker volume ls").split())


# One line per entry of the volumes (GNU find), after the time the listing was taken.
_LIST_VOLUMES = (
    "cd /sbm-data && date +%s.%N && "
    "find \"$@\" -printf '%p\\t%y\\t%m\\t%U\\t%G\\t%s\\t%T@\\t%C@\\t%i\\t%l\\n'"
)


def _volumes_digest(image: str | None, mounts: Mapping[str, str]) -> str | None:
    """The fingerprint of the volumes' content, read in a helper container; None when it
    cannot be taken (no GNU find in the image) or an entry is racy."""
    if not image or not mounts:
        return None
    keys = sorted(mounts)
    command = ["sh", "-c", _LIST_VOLUMES, "sh", *keys]
    argv = containerio.helper_argv(image, mounts, command, True, False)
    proc = subprocess.run(
        # --pull never: an image gone since the last backup fails at once, without a registry.
        [argv[0], "run", "--pull", "never", *argv[2:]],
        env=containerio.process_env(),
        capture_output=True,
        text=True,
        errors="surrogateescape",
        stdin=subprocess.DEVNULL,
    )
    lines = proc.stdout.splitlines()
    if proc.returncode != 0 or not lines:
        return None
    try:
        now = float(lines[0])
    except ValueError:
        return None
    names = "\0".join(f"{key}={mounts[key]}" for key in keys)
    return bp.digest_listing(lines[1:], now, "volumes\0" + names)


def _volumes_digest_if(image: str | None, mounts: Mapping[str, str], existing) -> str | None:
    """As _volumes_digest, only when every volume exists (`docker run -v` would make one)."""
    if not set(mounts.values()) <= existing.result():
        return None
    return _volumes_digest(image, mounts)


def _gone_check(restic: Restic, repo: str) -> Callable[[str], bool]:
    """Whether a snapshot an earlier backup stored is gone from the repository (a prune, or a
    `restic forget` by hand), before a new backup names it: a local repository's snapshot
    files are looked at, a remote one is asked once (one restic run) when it comes to that."""
    if bp.is_local(repo):
        return lambda snapshot: bp.snapshot_gone(repo, snapshot)
    present: list[str] | None = None

    def gone(snapshot: str) -> bool:
        nonlocal present
        if present is None:
            present = [s.id for s in restic.snapshots([bp.SBM_TAG])]
        return not any(entry.startswith(snapshot) for entry in present)

    return gone


def _plan(settings: Settings, folder: Path, db_service: str | None) -> bp.Plan:
    return bp.plan_for(folder, db_service, bp.instance_model_cached(settings, folder))


def _backup_locked(
    settings, restic, record, user_tags, progress, notes, started, where=None
) -> BackupResult:
    """The backup of ``record`` on its host ``where`` (a controller.hosts.Place; None: this
    machine), inside ``containerio.engine(where.docker_env())``. ``restic`` is the Restic
    adapter or a future of it.

    Each part whose input provably did not change since the instance's last backup in this
    repository is named again instead of read again: the database when not one data-changing
    WAL record came after that backup's end point, the folder and the volumes when their
    fingerprints (controller/backupplan.py) are the same. The probes run side by side; the
    parts to read then run side by side too (each restic process pays a key derivation); the
    manifest comes after all of them."""
    from controller.hosts import Place
    from controller.templatefiles import TemplateFiles

    where = where or Place(settings)
    name = record.name
    folder = settings.instance_dir(name)
    repo = bp.repository(settings)
    known = bp.cached_parts(settings, repo, name)
    db_service = TemplateFiles(folder).role("db", record.overlays)
    password = _env_value(folder, "POSTGRES_PASSWORD")
    database = _env_value(folder, "POSTGRES_DB") or "postgres"
    backup_id = _new_id()
    parts: dict[str, bp.Part] = {}
    remember: dict[str, dict] = {}

    with concurrent.futures.ThreadPoolExecutor(max_workers=4) as probes:

        def submit(call, *args):
            return probes.submit(containerio.in_context(lambda: call(*args)))

        planned = submit(_plan, settings, folder, db_service)
        db_probe = submit(_probe_db, name, db_service, password, database, known.get("db"))
        existing = submit(_existing_volumes)
        # The volumes of the last backup are listed at once, before the model confirms them.
        last = known.get("volumes") or {}
        early = None
        if last.get("mounts") and last.get("image"):
            early = submit(_volumes_digest_if, last["image"], dict(last["mounts"]), existing)
        plan = planned.result()
        helper = plan.db_image or next(iter(plan.images.values()), None)
        volumes = {v.source: v.name for v in plan.volumes if v.name in existing.result()}
        if early is not None and volumes == last["mounts"] and helper == last["image"]:
            volumes_digest = early.result()
        else:
            volumes_digest = _volumes_digest(helper, volumes)
        excludes = []
        if plan.pgdata and plan.pgdata.type == "bind":
            excludes.append(str((folder / plan.pgdata.source).resolve()))
        if not where.local and plan.binds and helper:
            # The containers of a remote instance write its bind mounts there, not in the
            # folder here: read them on that host through a helper container.
            excludes += [str(folder / source) for source in plan.binds]
        files_digest = bp.folder_digest(folder, [os.path.realpath(p) for p in excludes])
        db = db_probe.result()

    warnings = [
        f"bind mount {path} lies outside the instance folder and is not in the backup"
        for path in plan.external_binds
    ]
    if isinstance(restic, concurrent.futures.Future):
        restic = restic.result()
    gone = _gone_check(restic, repo)
    known = {part: entry for part, entry in known.items() if not gone(entry["snapshot"])}
    jobs: dict[str, Callable[[], bp.Part]] = {}
    major, user = db.major, db.user
    if plan.db_service and plan.pgdata:
        tags = bp.tags(name, backup_id, "db")
        if db.container and db.unchanged and "db" in known:
            progress(f"the database of {name} has not changed since its last backup")
            parts["db"] = bp.Part(known["db"]["snapshot"], int(known["db"].get("bytes") or 0))
        elif db.container:
            progress(f"backing up the database of {name} (pg_basebackup as {db.user})")

            def db_part(tags=tags) -> bp.Part:
                part, end = _base_backup(
                    restic, db, name, password, database, tags, progress, warnings
                )
                # The next backup reuses this snapshot if no data changes after its end point.
                if end and db.position:
                    cluster = f"{db.position[0]}:{db.position[1]}"
                    remember["db"] = {"cluster": cluster, "end": end, "bytes": part.bytes}
                return part

            jobs["db"] = db_part
        else:
            # Stopped: the data folder is consistent as it is.
            progress(f"backing up the database files of {name} (it is stopped)")
            with contextlib.suppress(OSError):
                if where.local:
                    major = (folder / plan.pgdata.source / "PG_VERSION").read_text().strip()

            def stopped_db_part(tags=tags) -> bp.Part:
                mounts = {".": _engine_path(folder, plan.pgdata, where)}
                producer = containerio.tar_out(plan.db_image, mounts)
                return _backup_stream(restic, producer, name, "db", tags, "database", progress)

            jobs["db"] = stopped_db_part

    def same(part: str, digest: str | None) -> bool:
        entry = known.get(part) or {}
        if digest is None or entry.get("digest") != digest:
            return False
        parts[part] = bp.Part(entry["snapshot"], int(entry.get("bytes") or 0))
        return True

    if volumes and not same("volumes", volumes_digest):

        def volumes_part() -> bp.Part:
            producer = containerio.tar_out(helper, volumes)
            tags = bp.tags(name, backup_id, "volumes")
            # GNU tar exits 1 when a file changed as it was read (a live cache): still a backup.
            part = _backup_stream(
                restic, producer, name, "volumes", tags, "volumes", progress, ok_codes=(0, 1)
            )
            remember["volumes"] = {
                "digest": volumes_digest,
                "mounts": volumes,
                "image": helper,
                "bytes": part.bytes,
            }
            return part

        jobs["volumes"] = volumes_part

    if not where.local and plan.binds and helper:

        def binds_part() -> bp.Part:
            mounts = {s: str(where.instance_dir(name) / s) for s in plan.binds}
            producer = containerio.tar_out(helper, mounts)
            tags = bp.tags(name, backup_id, "binds")
            return _backup_stream(
                restic, producer, name, "binds", tags, "bind mounts", progress, ok_codes=(0, 1)
            )

        jobs["binds"] = binds_part

    if not same("files", files_digest):

        def files_part() -> bp.Part:
            tags = bp.tags(name, backup_id, "files")
            summary = restic.backup_paths(
                ["."], tags, cwd=folder, excludes=excludes, progress=progress, what="files"
            )
            part = bp.Part(summary.snapshot_id, summary.bytes_processed, summary.bytes_added)
            remember["files"] = {"digest": files_digest, "bytes": part.bytes}
            return part

        jobs["files"] = files_part

    template_dir = settings.template_dir(record.template)
    template_hash = ""
    if template_dir.is_dir():
        template_hash = bp.template_hash(template_dir)
        cached = bp.cached_template_snapshot(settings, restic.repository, template_hash)
        if cached and not gone(cached):
            parts["template"] = bp.Part(cached)  # the same template is in the repository
        else:

            def template_part() -> bp.Part:
                tags = bp.tags(name, backup_id, "template")
                summary = restic.backup_paths(["."], tags, cwd=template_dir, what="template")
                bp.remember_template_snapshot(
                    settings, restic.repository, template_hash, summary.snapshot_id
                )
                return bp.Part(summary.snapshot_id, summary.bytes_processed, summary.bytes_added)

            jobs["template"] = template_part

    if jobs:
        with concurrent.futures.ThreadPoolExecutor(max_workers=len(jobs)) as pool:
            # Each job's docker processes talk to the instance's engine (containerio.engine).
            futures = {key: pool.submit(containerio.in_context(job)) for key, job in jobs.items()}
            for key, future in futures.items():
                parts[key] = future.result()

    from controller.state import converter

    manifest = bp.Manifest(
        id=backup_id,
        instance=name,
        created=datetime.now(UTC).replace(microsecond=0).isoformat(),
        template=record.template,
        template_hash=template_hash,
        record=converter.unstructure(record),
        postgres_major=major,
        superuser=user,
        db_service=plan.db_service,
        pgdata=attrs.asdict(plan.pgdata) if plan.pgdata else None,
        pgdata_target=plan.pgdata_target,
        images=dict(plan.images),
        schemas=db.schemas,
        tables=[[r[0], r[1], r[2] if len(r) > 2 else "0"] for r in db.tables],
        parts=parts,
        volumes=volumes,
        user_tags=list(user_tags),
    )
    total = sum(p.bytes for p in parts.values())
    added = sum(p.added for p in parts.values())
    # Parts named again from earlier backups: `backup prune` keeps them while a backup does.
    refs = [f"{REF_TAGS[p]}={parts[p].snapshot}" for p in REF_TAGS if p in parts and p not in jobs]
    tags = [
        *bp.tags(name, backup_id, "manifest"),
        f"template={record.template}",
        f"pg={major or '-'}",
        f"size={total}",
        f"added={added}",
        *refs,
        *(f"image={svc}={img}" for svc, img in sorted(plan.images.items()) if "," not in img),
        *user_tags,
    ]
    with tempfile.TemporaryFile() as handle:
        handle.write(manifest.dumps().encode())
        handle.seek(0)
        summary = restic.backup_stdin(
            handle, bp.stdin_name(name, "manifest"), tags, what="manifest"
        )
    # Only parts a visible backup holds are named again by later ones.
    for part, entry in remember.items():
        entry["snapshot"] = parts[part].snapshot
    if remember:
        bp.remember_parts(settings, repo, name, remember)
    progress(f"backup {backup_id} of {name}: {human(total)} in all, {human(added)} new")
    return BackupResult(
        instance=name,
        backup=backup_id,
        snapshot=summary.snapshot_id[:8],
        bytes=total,
        added=added,
        seconds=round(time.monotonic() - started, 2),
        notes=notes,
        warnings=warnings,
    )


def _base_backup(
    restic, db: _Db, name: str, password: str, database: str, tags, progress, warnings
) -> tuple:
    """pg_basebackup's tar streamed into restic; (the part, the WAL end point it holds).

    A tar on stdout takes its WAL with ``-X fetch``, at the end, and fetch uses no replication
    slot: on a busy database a checkpoint during a long backup recycles the segments it needs
    ("requested WAL segment ... has already been removed"). A temporary physical slot, made
    first in a psql session held open for the whole backup, keeps them; it goes when that
    session ends, also when this process is killed (docker closes the session's stdin)."""
    secret = {"PGPASSWORD": password}
    slot = f"sbm_backup_{secrets.token_hex(4)}"
    holder = subprocess.Popen(
        containerio.exec_argv(
            db.container,
            ["psql", "-X", "-U", db.user, "-d", database, "-tA", "-v", "ON_ERROR_STOP=1"],
            secret,
            stdin=True,
        ),
        env=containerio.process_env(secret),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdin is not None and holder.stdout is not None
        holder.stdin.write(
            f"select slot_name from pg_create_physical_replication_slot('{slot}', true, true);\n"
        )
        holder.stdin.flush()
        if holder.stdout.readline().strip() != slot:
            warnings.append(
                "no replication slot could be made: the base backup holds no WAL for itself, "
                "so a long backup of a busy database may fail"
            )
        command = ["pg_basebackup", "-U", db.user, "-D", "-", "-Ft", "-X", "fetch", "-c", "fast"]
        command.append("-v")  # its stderr names the end point of the WAL it holds
        producer = containerio.exec_out(db.container, command, secret)
        stderr: list[str] = []
        part = _backup_stream(
            restic, producer, name, "db", tags, "database", progress, on_stderr=stderr.append
        )
    finally:
        with contextlib.suppress(OSError, ValueError):
            holder.stdin.close()  # the session ends: its temporary slot goes with it
        try:
            holder.wait(30)
        except subprocess.TimeoutExpired:
            holder.kill()
            holder.wait()
    end = _END_POINT.search("".join(stderr))
    return part, end.group(1) if end else None


def _engine_path(folder: Path, mount: bp.DataMount, where=None) -> str:
    """What `docker run -v` takes for a data mount: a volume name or an absolute path on the
    engine's host (``where``, a controller.hosts.Place: the instance's folder there)."""
    if mount.type == "volume":
        return mount.name
    path = Path(mount.source)
    if path.is_absolute():
        return str(path)
    if where is not None and not where.local:
        return str(where.instance_dir(folder.name) / path)
    return str((folder / path).resolve())


def backup_all(
    settings: Settings, store: StateStore, user_tags: Sequence[str] = (), progress=_quiet
) -> tuple[list[BackupResult], list[str]]:
    """Back up every ready instance; (results, failures) — one failure does not stop the rest."""
    results, failures = [], []
    for name, record in sorted(store.read().instances.items()):
        if record.phase != READY:
            continue
        try:
            results.append(backup_instance(settings, store, name, user_tags, progress))
        except OperationError as exc:
            failures.append(f"{name}: {exc}")
    return results, failures


# --- reading the repository ------------------------------------------------------------------
def list_backups(settings: Settings, name: str | None = None) -> list[BackupView]:
    if name is not None:
        validate_name(name)
    restic, _ = bp.open_repository(settings)
    wanted = [bp.SBM_TAG, "part=manifest"] + ([f"instance={name}"] if name else [])
    views = []
    for snap in restic.snapshots([",".join(wanted)]):
        fixed = (
            "sbm",
            "instance=",
            "backup=",
            "part=",
            "template=",
            "pg=",
            "size=",
            "added=",
            *(f"{key}=" for key in REF_TAGS.values()),
        )
        extra = [t for t in snap.tags if not t.startswith(fixed) and not t.startswith("image=")]
        images = {}
        for tag in snap.tags:
            if tag.startswith("image="):
                service, _, image = tag[6:].partition("=")
                images[service] = image
        views.append(
            BackupView(
                backup=snap.tag("backup") or "",
                snapshot=snap.short_id,
                instance=snap.tag("instance") or "",
                time=snap.time[:19].replace("T", " "),
                size=int(snap.tag("size") or 0),
                added=int(snap.tag("added") or 0),
                template=snap.tag("template") or "",
                postgres=snap.tag("pg") or "",
                tags=extra,
                images=images,
            )
        )
    return sorted(views, key=lambda v: (v.instance, v.time))


def check(settings: Settings, read_data: bool = False) -> str:
    restic, _ = bp.open_repository(settings)
    return restic.check(read_data)


def prune(
    settings: Settings, keep: Mapping[str, int] | None = None, progress: Progress = _quiet
) -> dict:
    """Drop backups outside the keep policy (per instance), and orphan parts; free the space."""
    policy = {k: v for k, v in (keep or dict(settings.backup.keep)).items() if v}
    if not policy:
        raise UsageError("prune needs a keep policy: give --keep-* or set [backup] keep")
    from controller import backupkey

    nothing = {"removed": [], "kept": [], "orphan_snapshots": 0}
    if backupkey.locate(settings) is None:
        return nothing  # no backup was ever made here: nothing to prune (the timer stays green)
    restic, _ = bp.open_repository(settings)
    if not _repository_exists(restic):
        return nothing
    snapshots = restic.snapshots([bp.SBM_TAG])
    manifests = [s for s in snapshots if s.tag("part") == "manifest"]
    instances = sorted({s.tag("instance") or "" for s in manifests})
    drop_backups: set[str] = set()
    for instance in instances:
        removed = set(
            restic.forget_policy(policy, [f"{bp.SBM_TAG},part=manifest,instance={instance}"])
        )
        drop_backups |= {s.tag("backup") for s in manifests if s.id in removed}
    kept_manifests = [s for s in manifests if s.tag("backup") not in drop_backups]
    shared = _shared_templates(snapshots, kept_manifests)
    ids = [s.id for s in snapshots if s.tag("backup") in drop_backups and s.id not in shared]
    progress(f"forgetting {len(drop_backups)} backup(s) ({len(ids)} snapshots)")
    restic.unlock()  # a killed backup's stale lock would block forgetting its parts
    restic.forget(ids)
    orphans = forget_orphans(restic, settings, protect=shared)
    # What the caches point at may be gone now: the next backups take those parts afresh.
    bp.remember_template_snapshot(settings, restic.repository, None, None)
    for instance in instances:
        bp.remember_db_snapshot(settings, restic.repository, instance, None, None)
    progress("pruning unreferenced data")
    restic.prune()
    kept = sorted({s.tag("backup") for s in manifests} - drop_backups)
    return {"removed": sorted(drop_backups), "kept": kept, "orphan_snapshots": orphans}


def key_info(settings: Settings) -> dict:
    from controller import backupkey

    source = backupkey.locate(settings)
    return {
        "repository": bp.repository(settings),
        "kind": source.kind if source else None,
        "where": source.where if source else None,
        "note": "losing this password loses every backup; `backup key export` prints it",
    }


def key_export(settings: Settings) -> str:
    from controller import backupkey

    source = backupkey.locate(settings)
    if source is None:
        raise OperationError("no backup password yet: the first backup creates one")
    return source.read()
