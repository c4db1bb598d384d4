"""What every use case needs: the Context, the per-instance lock, the audit wrapper, and reading
an instance's record, template and .env.

Heavy modules (python-on-whales, the Engine API client, the renderer) are imported where they are
used, so that cheap commands and completion start fast.
"""

from __future__ import annotations

import contextlib
import contextvars
import errno
import os
from collections.abc import Callable, Generator, Iterator
from typing import TYPE_CHECKING

import attrs

from controller import audit
from controller.config import Settings
from controller.errors import ManagerError, OperationError, UsageError
from controller.names import validate_name
from controller.state import LOCAL_HOST, READY, InstanceRecord, State, StateStore

if TYPE_CHECKING:
    from controller.dockerapi import DockerAPI
    from controller.engine import Engine
    from controller.envfile import EnvFile
    from controller.templatefiles import TemplateFiles

Progress = Callable[[str], None]
WAIT_TIMEOUT = float(os.environ.get("SUPABASE_MANAGER_WAIT_TIMEOUT", "300"))


def quiet(_: str) -> None:
    pass


@attrs.frozen
class Context:
    settings: Settings
    store: StateStore

    @classmethod
    def of(cls, settings: Settings) -> Context:
        return cls(settings, StateStore(settings.state_path, settings.lock_path))


# --- guards -------------------------------------------------------------------------------------


@contextlib.contextmanager
def audited(ctx: Context, command: str, instance: str | None) -> Iterator[None]:
    """One audit line for the command: ok, failed (with the one-line reason) or interrupted.
    A UsageError means nothing changed: nothing to audit."""
    path = ctx.settings.audit_path
    try:
        yield
    except UsageError:
        raise
    except ManagerError as exc:
        audit.append(path, command, instance, "failed", str(exc))
        raise
    except KeyboardInterrupt:
        audit.append(path, command, instance, "interrupted")
        raise
    except Exception as exc:
        audit.append(path, command, instance, "failed", type(exc).__name__)
        raise
    audit.append(path, command, instance, "ok")


@contextlib.contextmanager
def busy(ctx: Context, name: str) -> Iterator[None]:
    """One command at a time per instance, across processes: a second one fails at once."""
    from controller.fsutil import file_lock

    try:
        with file_lock(ctx.settings.root / "locks" / f"{name}.lock", wait=False):
            yield
    except BlockingIOError:
        raise OperationError(
            f"{name} is busy: another supabase-manager command is working on it"
        ) from None


def check_writable(ctx: Context) -> None:
    """A ROOT this user cannot write (read-only mount, someone else's folder) is refused in one
    line before anything is attempted; the probe file is gone again at once."""
    import tempfile  # here: read-only commands never pay for it

    root = ctx.settings.root
    try:
        fd, probe = tempfile.mkstemp(prefix=".write-test-", dir=root)
    except FileNotFoundError:
        if root.parent.is_dir() and os.access(root.parent, os.W_OK):
            return  # the first command makes ROOT
        raise UsageError(f"the data folder {root} does not exist and cannot be made") from None
    except OSError as exc:
        reason = "it is read-only" if exc.errno == errno.EROFS else exc.strerror
        raise UsageError(f"cannot write to the data folder {root}: {reason}") from None
    os.close(fd)
    os.unlink(probe)


# --- records, templates, files ------------------------------------------------------------------


def record(ctx: Context, name: str, state: State | None = None) -> InstanceRecord:
    validate_name(name)
    state = state or ctx.store.read()
    found = state.instances.get(name)
    if found is None:
        raise OperationError(f"no instance named {name!r}")
    return found


def require_ready(found: InstanceRecord) -> None:
    if found.phase != READY:
        raise OperationError(
            f"instance {found.name!r} is incomplete: run `create {found.name}` to finish "
            f"it or `delete {found.name}` to remove it"
        )
    move = found.move
    if move is not None and move.phase in ("copying", "switched"):
        # A killed move: the folder here may be rendered for the other host already.
        raise OperationError(
            f"a move of {found.name} to {move.target} was interrupted: run `start {found.name}` "
            f"or `move {found.name} --to {move.target}` to settle it first"
        )


def template(ctx: Context, name: str) -> TemplateFiles:
    """The files of an instance's template (gone from the store: OperationError)."""
    from controller.templatefiles import TemplateFiles

    path = ctx.settings.template_dir(name)
    if not (path / "docker-compose.yml").is_file():
        raise OperationError(f"template {name!r} is missing from {path}")
    return TemplateFiles(path)


def jobs(ctx: Context, found: InstanceRecord) -> set[str]:
    """The instance's one-shot services (their exit 0 is success, not "down")."""
    try:
        return template(ctx, found.template).one_shot_services(found.overlays)
    except ManagerError:
        return set()


def place(ctx: Context, host: str = LOCAL_HOST, state: State | None = None):
    """Where instances of ``host`` run (controller/hosts.py)."""
    from controller.hosts import Place
    from controller.hosts import place as find

    if host == LOCAL_HOST:
        return Place(ctx.settings)  # no state read for the local engine
    return find(ctx.settings, state or ctx.store.read(), host)


def compose(ctx: Context, name: str, sync: bool = True):
    """The instance's compose project on the engine of its host. For a remote instance the
    folder is first brought up to date there (only changed files; ``sync=False`` skips it)."""
    from controller.compose import Compose
    from controller.render import compose_files

    directory = ctx.settings.instance_dir(name)
    found = ctx.store.read().instances.get(name)
    if found is None or found.host == LOCAL_HOST:
        return Compose(name, directory, compose_files(directory))
    where = place(ctx, found.host)
    if sync:
        from controller.remotefiles import sync_folder

        sync_folder(where, directory, where.instance_dir(name))
    return Compose(
        name, directory, compose_files(directory), where.docker_env(), where.instance_dir(name)
    )


# Engine clients kept for the length of one facade call (``engine_clients``): over ssh each
# connection is an ssh process or a channel, which must not outlive the command that opened it.
_clients: contextvars.ContextVar[dict[tuple[str, str], Engine] | None] = contextvars.ContextVar(
    "supabase_manager_engine_clients", default=None
)


@contextlib.contextmanager
def engine_clients() -> Iterator[None]:
    """Within it, ``docker()`` hands out one Engine per (ROOT, host), reused (no reconnecting);
    at its end, errors and Ctrl-C included, every one is closed, so that no connection (over
    ssh an ssh process or a channel of the master, controller/engine.py) outlives the call.
    Nested: the outermost closes. The Manager facade runs each of its methods in one
    (``one_call_each``)."""
    if _clients.get() is not None:
        yield
        return
    opened: dict[tuple[str, str], Engine] = {}
    token = _clients.set(opened)
    try:
        yield
    finally:
        _clients.reset(token)
        _close_all(opened)


def _close_all(opened: dict[tuple[str, str], Engine]) -> None:
    while opened:
        _, engine = opened.popitem()
        with contextlib.suppress(Exception):
            engine.close()


def one_call_each(cls: type) -> type:
    """Class decorator: each public method runs in its own ``engine_clients()``; an iterator it
    returns (``logs``) gets clients of its own, closed when it ends or is closed."""
    import functools
    import inspect

    def scoped(method: Callable) -> Callable:
        @functools.wraps(method)
        def call(*args, **kwargs):
            with engine_clients():
                result = method(*args, **kwargs)
            return _iterate_in_scope(result) if inspect.isgenerator(result) else result

        return call

    for name, value in list(vars(cls).items()):
        if not name.startswith("_") and inspect.isfunction(value):
            setattr(cls, name, scoped(value))
    return cls


def _iterate_in_scope(items: Generator) -> Iterator:
    """``items`` with one set of clients for all its steps. The scope is entered for each step
    only, never left open between two: an iterator dropped half-way must not keep the caller's
    later calls from closing theirs."""
    opened: dict[tuple[str, str], Engine] = {}
    try:
        while True:
            token = _clients.set(opened) if _clients.get() is None else None
            try:
                item = next(items)
            except StopIteration:
                return
            finally:
                if token is not None:
                    _clients.reset(token)
            yield item
    finally:
        items.close()
        _close_all(opened)


def _engine(ctx: Context | None, host: str) -> Engine:
    from controller.engine import Engine, EngineAddress

    opened = _clients.get()
    key = ("", LOCAL_HOST) if ctx is None else (str(ctx.settings.root), host)
    if opened is not None and key in opened:
        return opened[key]
    if ctx is None or host == LOCAL_HOST:
        engine = Engine(EngineAddress.from_env(), timeout=10)
    else:
        engine = Engine(place(ctx, host).engine_address(), timeout=30)
    if opened is not None:
        opened[key] = engine
    return engine


def docker(ctx: Context | None = None, host: str = LOCAL_HOST) -> DockerAPI:
    """The Engine API client of ``host``'s engine, checked to answer (DockerUnavailable: one
    line, exit 1). With ``ctx`` it sees only this ROOT's objects (controller/ownership.py).
    Inside ``engine_clients()`` (every Manager call) the connection is reused and closed at its
    end; outside one the caller closes it."""
    from controller.dockerapi import DockerAPI
    from controller.ownership import existing_root_id

    # No id yet: nothing of ours can exist, and "-" matches no id ever made.
    root = (existing_root_id(ctx.settings.root) or "-") if ctx is not None else None
    api = DockerAPI(engine=_engine(ctx, host), root=root)
    api.ping()
    return api


def env_text(ctx: Context, name: str) -> str:
    path = ctx.settings.instance_dir(name) / ".env"
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise OperationError(f"{path} is missing; run `create {name}` to finish it") from None
    except UnicodeDecodeError:
        raise OperationError(f"{path} is not UTF-8 text; fix it by hand") from None
    except OSError as exc:
        raise OperationError(f"{path} cannot be read: {exc.strerror}") from None


def env(ctx: Context, name: str) -> EnvFile:
    from controller.envfile import EnvFile

    return EnvFile.parse(env_text(ctx, name))


def service_names(ctx: Context, found: InstanceRecord) -> list[str]:
    return sorted(template(ctx, found.template).services(found.overlays))


def check_services(ctx: Context, found: InstanceRecord, services: list[str] | None):
    """``services`` when the instance has each of them, else UsageError naming the unknown one."""
    if not services:
        return None
    try:
        known = set(service_names(ctx, found))
    except ManagerError:
        known = set()
    unknown = [s for s in services if s not in known]
    if unknown:
        raise UsageError(
            f"{found.name} has no service {unknown[0]!r}; services: {', '.join(sorted(known))}"
        )
    return services
