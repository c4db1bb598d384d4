"""The remote world of a test module: a ROOT on this machine whose CLI knows the worker
(tests/world/worker.py) as host ``w2``, a real Caddy in front, and, when asked, one instance made
with the stand-in overlay (tests/world/standin.py) on the worker or here.

    @pytest.fixture(scope="module")
    def world(tmp_path_factory, docker_client, worker):
        base = tmp_path_factory.mktemp("mine")
        with remote_world(base, docker_client, worker, instance="x") as w:
            ...  # the data the module's tests read
            yield w

What differs between modules is a parameter: the CliRoot subclass (``world``, built as
``world(root, caddy, worker, client, **env)``), extra environment, the template, whether the host
is added with ``--bind``, and the instance (its name, host and extra compose files).

On the way out, also when the setup failed half-way: the worker's link, sshd and engine are
brought back (a test may have stopped them), every instance of the ROOT is deleted, the ssh
master connections of every generated config of the ROOT are ended (and checked gone, their
control folder under /tmp removed), also after a delete that timed out, Caddy stops, and
whatever is left on either engine is removed (the local engine's under the machine-wide lock).

``shared_world`` (session-scoped, imported into tests/conftest.py): one such world, made once
for the session by the first module that asks, with instance SHARED on the worker holding real
rows and files and a first backup. Modules that leave it as they found it (tests/
test_engine_clients.py, tests/test_remote_restore.py) take it through ``converge()`` instead of
creating an instance of their own. It holds no local lock for the session, so that later
modules' ``docker_sandbox`` does not wait on it.

Beside it, what such modules read: ``psql`` in an instance's db container on either engine,
``write_rows`` / ``checksums`` (real rows to compare), ``worker_files`` (the storage files as the
worker sees them).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import stat
import subprocess
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import TypeVar

import pytest

from .caddy import CaddyProcess
from .cli import CliRoot
from .dockerworld import DockerSandbox
from .net import wait_until
from .standin import write_standin_overlay
from .templates import fixtures_dir

HOST = "w2"
TEMPLATE = "v0.8.2"
STORAGE = Path("volumes") / "storage"
DEBUG = {"SUPABASE_MANAGER_DEBUG": "1"}  # extra env: the CLI prints a bug's traceback


class RemoteRoot(CliRoot):
    """A CliRoot whose ssh identity is the worker's test key."""

    def __init__(self, root: Path, caddy: CaddyProcess, worker, client, **extra_env: str) -> None:
        super().__init__(
            root, caddy, SUPABASE_MANAGER_SSH_IDENTITY_FILE=str(worker.identity_file), **extra_env
        )
        self.worker = worker
        self.client = client  # the docker SDK on the worker's engine (closed with the world)

    def instances(self) -> list[str]:
        """The names of the instances state.json holds."""
        state = self.root / "state.json"
        return list(json.loads(state.read_text()).get("instances", {})) if state.is_file() else []

    def close_masters(self) -> None:
        close_masters(self.root)


W = TypeVar("W", bound=RemoteRoot)

# The session's shared instance on the worker (``shared_world``).
SHARED = "shr"  # no other module names an instance so: it lives the whole session


class SharedWorld(RemoteRoot):
    """The world of ``shared_world``: instance SHARED on the worker, with the rows and files
    ``write_data`` wrote, ``backup`` (the id of its first backup), ``expected`` (its ``rows``)
    and ``expected_files`` (its ``worker_files``) as they were then."""

    backup: str
    expected: dict
    expected_files: dict[str, str]

    def folder(self, name: str = SHARED) -> Path:
        return self.root / "instances" / name

    def state(self) -> dict:
        return json.loads((self.root / "state.json").read_text())

    def root_id(self) -> str:
        return (self.root / "root-id").read_text().strip()

    def converge(self) -> SharedWorld:
        """The worker back (a module since may have stopped its link, sshd or engine) and the
        instance running there (a stopped engine stops its containers): a module's start."""
        _revive(self.worker)
        close_masters(self.root)  # a master to an sshd restarted since would hang
        label = {"label": f"com.docker.compose.project={SHARED}"}
        found = self.client.containers.list(all=True, filters=label)
        if not found or not all(map(_settled, found)):
            self.run("start", SHARED)  # waits until every service is healthy
        return self


def _settled(container) -> bool:
    """Running and healthy (or without a health check), or a one-shot job (never restarted)
    that exited 0. A service stopped with its engine may have exited 0 too: not settled."""
    state = container.attrs["State"]
    if state["Status"] == "exited":
        policy = container.attrs["HostConfig"].get("RestartPolicy", {}).get("Name", "")
        return state["ExitCode"] == 0 and policy in ("", "no")
    health = state.get("Health", {}).get("Status")
    return state["Status"] == "running" and health in (None, "healthy")


@contextlib.contextmanager
def remote_world(
    base: Path,
    docker_client,
    worker,
    *,
    world: type[W] = RemoteRoot,
    env: Mapping[str, str] | None = None,
    template: str = TEMPLATE,
    fixture: str = TEMPLATE,
    bind: bool = True,
    instance: str | None = None,
    on: str = HOST,
    extra_compose: Sequence[Path] = (),
    lock_local: bool = True,
) -> Iterator[W]:
    """The world, in ``base`` (ROOT is base/root): the upstream ``fixture`` imported as
    ``template``, the worker added as HOST (``--bind`` its address when ``bind``), and with
    ``instance`` that instance created on host ``on`` with the stand-in overlay of ``template``
    and then ``extra_compose``.

    With ``lock_local`` the local engine is sandboxed (under the machine-wide lock) while the
    world lasts. Without it (a world that outlives its module: ``shared_world``) nothing here
    holds that lock, which a later module's ``docker_sandbox`` takes in this same process: the
    world's instances then live on the worker only, and a test that makes anything on the local
    engine takes ``docker_sandbox`` itself."""
    root = base / "root"
    root.mkdir()
    client = worker.client()
    try:
        on_worker = DockerSandbox(client)
        _revive(worker)
        on_worker.snapshot()
        local = DockerSandbox(docker_client).session() if lock_local else contextlib.nullcontext()
        with local:
            caddy = CaddyProcess(root, base / "caddy-run")
            try:
                caddy.start()
                w = world(root, caddy, worker, client, **(env or {}))
                try:
                    w.run("template", "import", str(fixtures_dir() / fixture), "--name", template)
                    bound = ("--bind", worker.bind_address) if bind else ()
                    w.run("host", "add", HOST, worker.ssh_url, *bound, "--accept-new-key")
                    if instance is not None:
                        compose = root / "templates" / template / "docker-compose.yml"
                        standin = write_standin_overlay([compose], base / "standin.yml")
                        extra = [("--extra-compose", str(f)) for f in (standin, *extra_compose)]
                        w.run(
                            *("create", instance, "--template", template, "--host", on),
                            *(word for pair in extra for word in pair),
                        )
                    yield w
                finally:
                    try:
                        _revive(worker)
                        for name in w.instances():
                            w.run("delete", name, "--purge", "--yes", check=False)
                    finally:
                        close_masters(root)  # also after a delete that timed out
            finally:
                try:
                    caddy.stop()
                finally:
                    on_worker.cleanup()
    finally:
        client.close()


@pytest.fixture(scope="session")
def shared_world(tmp_path_factory, docker_client, worker) -> Iterator[SharedWorld]:
    """One instance on the worker for the modules that read it or leave it as they found it
    (rows and files equal to ``expected``, running on the worker): made once per session by
    the first module that asks (imported into tests/conftest.py, so that it is one fixture).
    Take it through ``shared_world.converge()`` in a module fixture. It holds no local lock
    (see ``remote_world``): a test that acts on the local engine takes ``docker_sandbox``."""
    base = tmp_path_factory.mktemp("shared-remote")
    with remote_world(
        base,
        docker_client,
        worker,
        world=SharedWorld,
        env=DEBUG,
        instance=SHARED,
        lock_local=False,
    ) as w:
        write_data(w)
        w.backup = w.json("backup", SHARED)["backup"]
        w.expected = rows(SHARED, worker.engine_url)
        w.expected_files = worker_files(worker, w.folder())
        assert w.expected_files and w.expected["role"] == "app_user"
        yield w


def _revive(worker) -> None:
    """The worker's link, sshd and engine up (each a no-op when it already is)."""
    worker.reconnect()
    worker.start_ssh()
    worker.start_engine()


def close_masters(root: Path) -> None:
    """End the ssh master connection (and the engine socket forwarded through it) of every host
    of every config the ROOT has: ROOT/ssh/config and ROOT/ssh/config-<hash>, one per identity
    file (controller/ssh.py SshFiles). A master outlives its sshd's listener: a test that stops
    or hangs sshd ends them first, so that the next command meets sshd with a new connection.

    Then checks that no master of the ROOT is left: every config's masters share one control
    folder, and a master removes its socket (cm-*) there when it ends. That folder, when it is
    the ROOT's own under /tmp (a long ROOT path), goes too, with the forwards' sockets (dk-*)
    and their .lock/.no/.to files; it is never created here."""
    from controller import ssh

    folder = Path(root) / "ssh"
    if not folder.is_dir():
        return
    for config in sorted(folder.glob("config*")):
        variant = config.name.removeprefix("config")
        if variant and not variant.startswith("-"):
            continue  # config.add-NAME: `host add`'s probe, which runs no master
        files = ssh.SshFiles(folder, variant.removeprefix("-"))
        for line in config.read_text().splitlines():
            if line.startswith(f"Host {ssh.ALIAS_PREFIX}"):
                host = line.split()[1].removeprefix(ssh.ALIAS_PREFIX)
                ssh.close_master(files, host, config)
    control = _control_dir(folder)
    if control is not None:
        what = f"every ssh master of {root} to end (no cm-* socket left in {control})"
        wait_until(lambda: not any(control.glob("cm-*")), 20, what)
        if control != folder:
            shutil.rmtree(control, ignore_errors=True)


def _control_dir(folder: Path) -> Path | None:
    """The control folder controller/ssh.py SshFiles.control_dir() gives ``folder`` (ROOT/ssh),
    when it exists and is ours; without creating it as that method does."""
    from controller import ssh

    if len(str(folder)) <= ssh._MAX_CONTROL_DIR:
        return folder
    digest = hashlib.sha256(str(folder).encode()).hexdigest()[:12]
    control = Path("/tmp") / f"sbm-ssh-{os.getuid()}-{digest}"
    try:
        info = control.lstat()
    except OSError:
        return None
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid():
        return None  # not there, a symlink or someone else's: no sockets of ours in it
    return control


def psql(name: str, sql: str, engine: str | None = None, timeout: float = 300) -> str:
    """psql as the superuser in instance ``name``'s db container, on the local engine or on
    ``engine`` (the worker's: ``worker.engine_url``); its unaligned output, stripped."""
    host = ["-H", engine] if engine else []
    proc = subprocess.run(
        [
            *("docker", *host, "exec", f"{name}-db", "psql", "-X", "-U", "postgres"),
            *("-d", "postgres", "-v", "ON_ERROR_STOP=1", "-tA", "-c", sql),
        ],
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip()


def worker_files(worker, folder: Path) -> dict[str, str]:
    """The storage files of the instance folder ``folder`` as the worker sees them (in its own
    mount namespace): {path under volumes/storage: sha256}."""
    proc = worker.run(
        f"cd {folder / STORAGE} 2>/dev/null || exit 0; find . -type f -exec sha256sum {{}} +"
    )
    found = {}
    for line in proc.stdout.splitlines():
        digest, _, path = line.partition("  ")
        found[path.removeprefix("./")] = digest
    return dict(sorted(found.items()))


# The rows a data test writes and compares: real tables, a real role.
TABLES = ("shop.customers", "public.events")


def write_rows(name: str, events: int, engine: str | None = None) -> None:
    """500 rows in shop.customers, ``events`` rows in public.events and the login role
    app_user, in instance ``name``'s database (on ``engine``, as for ``psql``)."""
    psql(
        name,
        f"""
        create schema shop;
        create table shop.customers (id serial primary key, email text not null);
        insert into shop.customers (email) select 'c' || g || '@example.com'
            from generate_series(1, 500) g;
        create table public.events (id bigserial primary key, payload text);
        insert into public.events (payload) select repeat(md5(g::text), 3)
            from generate_series(1, {int(events)}) g;
        create role app_user login password 'r0le-Pa55-word';
        """,
        engine,
    )


def checksums(name: str, engine: str | None = None) -> dict[str, str]:
    """{table: "COUNT:MD5 of its rows in id order"} for each of TABLES."""
    return {
        table: psql(
            name,
            f"select count(*) || ':' || md5(coalesce(string_agg(t::text, ',' order by id), '')) "
            f"from {table} t",
            engine,
        )
        for table in TABLES
    }


def rows(name: str, engine: str | None = None) -> dict:
    """What a user compares: the count and checksum of each table, and the role."""
    role = psql(name, "select rolname from pg_roles where rolname = 'app_user'", engine)
    return {**checksums(name, engine), "role": role}


def write_data(world: SharedWorld) -> None:
    """The shared instance's data, on the worker: ``write_rows`` (20000 events) and two storage
    files (1 MiB of random bytes and a note)."""
    write_rows(SHARED, 20000, world.worker.engine_url)
    bucket = world.folder() / STORAGE / "stub" / "bucket"
    world.worker.run(
        f"mkdir -p {bucket} && head -c 1048576 /dev/urandom > {bucket}/photo.bin"
        f" && echo 'hello from storage' > {bucket}/note.txt"
    )
