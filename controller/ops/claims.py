"""An instance's claim on the engine of its host (controller/ownership.py): made by `create`
(also --no-start) and by `start` when a create could not reach the engine."""

from __future__ import annotations

from controller.errors import DockerUnavailable, UsageError
from controller.ops.base import Context
from controller.state import InstanceRecord


def make(ctx: Context, api, found: InstanceRecord, fresh: bool, start: bool) -> None:
    """Put the instance's claim on the engine (controller/ownership.py), so that another ROOT
    neither takes its names nor hands out its ports before it has a container; and remove this
    ROOT's claims left behind. A claim found taken (another ROOT made it since the check) undoes
    a fresh record and refuses (exit 2). Docker gone at `create --no-start`: the claim waits for
    the next command that reaches the engine for this instance."""
    from controller.engine import EngineError
    from controller.ownership import claim, root_id, sweep, where

    if api is None:
        return
    root = root_id(ctx.settings.root)
    try:
        # The claim volume is made with the docker CLI: on the engine of the instance's host.
        from controller import containerio
        from controller.hosts import place_of

        engine_env = place_of(ctx.settings, ctx.store.read(), found).docker_env()
        with containerio.engine(engine_env):
            claim(api.engine, root, where(ctx.settings.root), found.name, set(found.ports.values()))
        sweep(api.engine, root, lambda: ctx.store.read().instances)
    except UsageError:
        if fresh:
            with ctx.store.transaction() as state:
                state.instances.pop(found.name, None)
        raise
    except (EngineError, DockerUnavailable) as exc:
        if start:
            raise DockerUnavailable(
                f"cannot claim {found.name} on the Docker engine: {exc}"
            ) from None


def ensure(ctx: Context, api, found: InstanceRecord) -> None:
    """For a command that reaches the engine for an existing instance (e.g. `start`, under the
    instance's lock): make its claim if `create --no-start` could not (Docker was down), or
    bring it up to date; UsageError (exit 2) when another ROOT holds the name meanwhile."""
    make(ctx, api, found, fresh=False, start=True)
