"""The facade front-ends call: one method per command, each handing over to its use case in
controller/ops/ (see controller/ops/__init__.py for the map).

Every method raises a ``controller.errors.ManagerError`` subclass on failure (UsageError: bad input,
nothing changed, exit 2; anything else: exit 1) with a one-line message that holds no secret.
``progress`` callbacks receive short human-readable lines ("waiting for db: starting").

Heavy modules (the Engine API client, python-on-whales, httpx, the renderer) are imported where
they are used, so that cheap commands and completion start fast.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from pathlib import Path

from controller.config import Settings
from controller.errors import OperationError
from controller.names import validate_name
from controller.ops import base
from controller.state import InstanceRecord
from controller.views import EnvChange, InstanceDetail, InstanceSummary, TemplateView

Progress = Callable[[str], None]
_quiet = base.quiet


# Engine clients a call opens (ssh processes for a remote host) are closed when it returns.
@base.one_call_each
class Manager:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.ctx = base.Context.of(settings)
        self.store = self.ctx.store

    # --- shared helpers (controller/ops/base.py), kept for the use cases built on the facade ----
    @contextlib.contextmanager
    def _audited(self, command: str, instance: str | None) -> Iterator[None]:
        with base.audited(self.ctx, command, instance):
            yield

    def _env(self, name: str):
        return base.env(self.ctx, name)

    def _wait_healthy(
        self,
        name: str,
        progress: Progress,
        services: list[str] | None = None,
        timeout: float | None = None,
    ) -> None:
        from controller.ops.lifecycle import wait_healthy

        wait_healthy(self.ctx, name, progress, services, timeout)

    # --- templates (controller/ops/templates.py) ------------------------------------------------
    def template_fetch(self, ref: str | None = None, progress: Progress = _quiet) -> str:
        """Download docker/ of supabase/supabase at ``ref`` (default: the pinned tag); its name."""
        from controller.ops import templates

        return templates.fetch(self.ctx, ref, progress)

    def template_tags(self) -> list[str]:
        """The self-hosted release tags upstream (``template fetch --list``)."""
        from controller.ops import templates

        return templates.tags(self.ctx)

    def template_import(self, path: Path, name: str | None = None) -> str:
        """Import a folder or .tar.gz holding the docker/ folder; returns the template's name."""
        from controller.ops import templates

        return templates.import_(self.ctx, path, name)

    def template_list(self) -> list[TemplateView]:
        from controller.ops import templates

        return templates.list_(self.ctx)

    # --- instances (controller/ops/create.py, controller/ops/lifecycle.py) ----------------------
    def create(
        self,
        name: str,
        template: str | None = None,
        overlays: list[str] | None = None,
        extra_compose: list[Path] | None = None,
        ports: dict[str, int] | None = None,
        cpus: float | None = None,
        memory: str | None = None,
        start: bool = True,
        progress: Progress = _quiet,
        host: str | None = None,
    ) -> list[str]:
        """Create (or finish creating) an instance on ``host`` (None: the host with the most
        free memory that answers; local when there is no other); returns warnings."""
        from controller.ops.create import create

        return create(
            self.ctx,
            name,
            template,
            overlays,
            extra_compose,
            ports,
            cpus,
            memory,
            start,
            progress,
            host,
        )

    def start(self, name: str, services: list[str] | None = None, progress: Progress = _quiet):
        from controller.ops import lifecycle

        lifecycle.start(self.ctx, name, services, progress, recover=self._recover_pending)

    def start_all(self, progress: Progress = _quiet) -> list[str]:
        """Start every instance marked to start (boot); returns the names started."""
        from controller.ops import lifecycle

        return lifecycle.start_all(self.ctx, progress, recover=self._recover_pending)

    def stop(self, name: str, services: list[str] | None = None, progress: Progress = _quiet):
        from controller.ops import lifecycle

        lifecycle.stop(self.ctx, name, services, progress)

    def restart(self, name: str, services: list[str] | None = None, progress: Progress = _quiet):
        from controller.ops import lifecycle

        lifecycle.restart(self.ctx, name, services, progress)

    def delete(self, name: str, purge: bool = False, progress: Progress = _quiet) -> list[str]:
        from controller.ops import lifecycle

        return lifecycle.delete(self.ctx, name, purge, progress)

    # --- hosts (controller/ops/hosts.py) ---------------------------------------------------------
    def host_add(
        self,
        name: str,
        url: str,
        bind: str | None = None,
        data_root: str | None = None,
        accept_new_key: bool = False,
    ):
        """Check a Docker host over SSH and record it (a HostRecord)."""
        from controller.ops import hosts

        return hosts.add(self.ctx, name, url, bind, data_root, accept_new_key)

    def host_remove(self, name: str) -> None:
        """Forget a host that runs no instance."""
        from controller.ops import hosts

        hosts.remove(self.ctx, name)

    def host_list(self, live: bool = True):
        """Every host, local first (HostSummary rows); ``live`` asks each one side by side."""
        from controller.ops import hosts

        return hosts.list_hosts(self.ctx, live)

    # --- queries (controller/ops/queries.py) ----------------------------------------------------
    def list(
        self, resources: bool = True, problems: list[str] | None = None
    ) -> list[InstanceSummary]:
        """Every instance; ``problems`` (when given) receives one line per host whose engine
        did not answer (its instances are `unreachable`)."""
        from controller.ops import queries

        return queries.list_instances(self.ctx, resources, problems)

    def show(self, name: str, show_secrets: bool = False) -> InstanceDetail:
        from controller.ops import queries

        return queries.show(self.ctx, name, show_secrets)

    def logs(
        self,
        name: str,
        services: list[str] | None = None,
        follow: bool = False,
        tail: int | None = None,
        errors_only: bool = False,
    ) -> Iterator[str]:
        """Log lines ("service | text"); with follow, until the caller stops iterating."""
        from controller.ops import queries

        return queries.logs(self.ctx, name, services, follow, tail, errors_only)

    def audit(self, name: str | None = None) -> list[dict]:
        from controller.ops import queries

        return queries.audit_entries(self.ctx, name)

    def instance_names(self) -> list[str]:
        from controller.ops import queries

        return queries.instance_names(self.ctx)

    # --- env (controller/ops/env.py; the rules: controller/envpolicy.py) ------------------------
    def env_list(self, name: str, show_secrets: bool = False) -> list[tuple[str, str]]:
        from controller.ops import env

        return env.env_list(self.ctx, name, show_secrets)

    def env_get(self, name: str, key: str) -> str:
        from controller.ops import env

        return env.env_get(self.ctx, name, key)

    def env_set(self, name: str, assignments: dict[str, str]) -> EnvChange:
        from controller.ops import env

        return env.env_set(self.ctx, name, assignments)

    def env_unset(self, name: str, key: str) -> EnvChange:
        from controller.ops import env

        return env.env_unset(self.ctx, name, key)

    def env_text(self, name: str) -> str:
        """The .env text, for `env edit` to put in the editor."""
        from controller.ops import env

        return env.env_edit_text(self.ctx, name)

    def env_check(self, name: str, text: str, original: str | None = None) -> list[str]:
        """Problems with an edited .env text (empty list: fine)."""
        from controller.ops import env

        return env.env_check(self.ctx, name, text, original)

    def env_replace(self, name: str, text: str, original: str | None = None) -> EnvChange:
        """Validate and atomically write an edited .env text; with ``original`` (what the edit
        started from) a .env changed meanwhile is not overwritten."""
        from controller.ops import env

        return env.env_replace(self.ctx, name, text, original)

    def health(self) -> dict[str, bool]:
        """Whether Docker and Caddy answer (for the shell's toolbar); quick, never raises."""
        from controller.ops import queries

        return queries.health(self.ctx)

    def completion_snapshot(self):
        """Every name the shell completes and the create wizard offers, read once."""
        from controller.completion_data import build_snapshot

        return build_snapshot(self.settings, self.store)

    # --- caddy (controller/ops/publish.py) ----------------------------------------------------
    def _caddy_ops(self):
        from controller.ops import publish
        from controller.ops.base import Context

        return publish, Context(self.settings, self.store)

    def _publish(self, name: str, record: InstanceRecord, spec=None) -> list[str]:
        """Write the snippet and push the live route; Caddy down only postpones the live part."""
        publish, ctx = self._caddy_ops()
        return publish.publish(ctx, record, spec)

    def _unpublish(self, name: str) -> list[str]:
        publish, ctx = self._caddy_ops()
        return publish.unpublish(ctx, name)

    def caddy_sync(self, name: str | None = None) -> list[str]:
        publish, ctx = self._caddy_ops()
        return publish.sync(ctx, name)

    def caddy_status(self) -> dict:
        publish, ctx = self._caddy_ops()
        return publish.status(ctx)

    def requests_per_host(self, name: str | None = None) -> dict[str, float] | None:
        """Requests per second per host, from two samples of Caddy's counters."""
        publish, ctx = self._caddy_ops()
        return publish.request_rates(ctx, name)

    def request_counts(self) -> dict[str, float] | None:
        """Caddy's raw per-host counters (``top`` turns successive ones into rates)."""
        publish, ctx = self._caddy_ops()
        return publish.request_counts(ctx)

    # --- audit, health ------------------------------------------------------------------------
    def check(self) -> list[str]:
        """Problems worth a look (instances down that should run, unhealthy services, API not
        answering through Caddy, missing routes, keys about to expire, Docker or Caddy down):
        the same probes as the metrics."""
        from controller import metrics

        return metrics.check(self.settings)

    def metrics_text(self) -> bytes:
        """The Prometheus exposition of one gathering (`metrics`)."""
        from controller import metrics

        return metrics.exposition(self.settings)

    def metrics_serve(self, listen: str | None = None, ready=None) -> None:
        """Serve the exposition over HTTP until SIGTERM or Ctrl-C (`metrics serve`)."""
        from controller.metrics.server import serve

        serve(self.settings, listen, ready or _quiet)

    # --- backup and restore (controller/ops/backup.py, controller/ops/restore.py) ---------------
    def backup(self, name: str, tags: list[str] | None = None, progress: Progress = _quiet):
        """One snapshot of ``name`` into the backup repository (a BackupResult)."""
        from controller.ops import backup

        validate_name(name)
        with self._audited("backup", name):
            return backup.backup_instance(self.settings, self.store, name, tags or [], progress)

    def backup_all(self, tags: list[str] | None = None, progress: Progress = _quiet):
        """A backup of every ready instance; raises after trying them all if one failed."""
        from controller.ops import backup

        with self._audited("backup --all", None):
            results, failures = backup.backup_all(self.settings, self.store, tags or [], progress)
            if failures:
                raise OperationError(
                    f"{len(failures)} backup(s) failed ({len(results)} done): {failures[0]}"
                )
        return results

    def backup_list(self, name: str | None = None):
        from controller.ops import backup

        return backup.list_backups(self.settings, name)

    def backup_check(self, read_data: bool = False) -> str:
        from controller.ops import backup

        with self._audited("backup check" + (" --read-data" if read_data else ""), None):
            return backup.check(self.settings, read_data)

    def backup_prune(self, keep: dict[str, int] | None = None, progress: Progress = _quiet):
        from controller.ops import backup

        with self._audited("backup prune", None):
            return backup.prune(self.settings, keep, progress)

    def backup_key(self) -> dict:
        from controller.ops import backup

        return backup.key_info(self.settings)

    def backup_key_export(self) -> str:
        from controller.ops import backup

        with self._audited("backup key export", None):
            return backup.key_export(self.settings)

    def _restore_hooks(self):
        from controller.ops.restore import Hooks

        return Hooks(
            wait_healthy=lambda name, progress: self._wait_healthy(name, progress),
            publish=lambda name, record: self._publish(name, record),
            unpublish=self._unpublish,
        )

    def restore(
        self,
        name: str,
        snapshot: str | None = None,
        as_name: str | None = None,
        progress: Progress = _quiet,
        host: str | None = None,
    ):
        """Put ``name`` (or a new instance ``as_name``) back to a backup (a RestoreResult): in
        place on its host; a new one on ``host`` (default: see ops/restore.py)."""
        from controller.ops import restore

        validate_name(name)
        command = "restore" + (f" --as {as_name}" if as_name else "")
        command += f" --host {host}" if host else ""
        with self._audited(command, as_name or name):
            # The engine of the host it goes to is checked there (not this machine's).
            return restore.restore(
                self.settings,
                self.store,
                name,
                self._restore_hooks(),
                snapshot,
                as_name,
                progress,
                host,
            )

    def restore_check(self, name: str, as_name: str | None = None, host: str | None = None):
        """The refusals (UsageError) ``restore`` would make before reading the backup: for the
        front-end to ask them before it asks to replace the data."""
        from controller.ops import restore

        restore.check_request(self.settings, self.store.read(), name, as_name, host)

    def restore_dry_run(
        self, name: str, snapshot: str | None = None, progress=_quiet, host: str | None = None
    ):
        """Restore into a throwaway project on the instance's host (or ``host``), verify,
        remove it (a DryRunResult)."""
        from controller.ops import restore

        validate_name(name)
        with self._audited("restore --dry-run", name):
            return restore.dry_run(self.settings, name, snapshot, progress, host)

    def _recover_restore(self, name: str, progress: Progress = _quiet) -> str | None:
        from controller.ops import restore

        if not self.settings.restore_marker(name).is_file():
            return None
        return restore.recover(self.settings, self.store, name, self._restore_hooks(), progress)

    # --- rotate, upgrade, clone (controller/ops/rotate.py, upgrade.py, clone.py) ----------------
    def _recover_pending(self, name: str, progress: Progress = _quiet) -> str | None:
        """Finish or undo what a killed restore, rotation or upgrade of ``name`` left behind."""
        from controller.ops import move, rotate, upgrade

        # A move first: it names the host the instance runs on (controller/ops/move.py).
        moved = move.recover(self.ctx, name, progress)
        # A restore first: it may be an interrupted upgrade's rollback, which the upgrade's own
        # marker then finishes (restoring the backup taken before it, under this same lock).
        outcome = self._recover_restore(name, progress)
        undone = upgrade.recover(self.ctx, name, progress)
        side = rotate.recover(self.ctx, name, progress)
        return moved or outcome or undone or side

    def rotate(
        self,
        name: str,
        secrets: list[str] | None = None,
        every: bool = False,
        dry_run: bool = False,
        finish: bool = False,
        progress: Progress = _quiet,
    ):
        """Rotate secrets in .env and wherever else they live (a RotateResult); with no secret,
        only converge an interrupted rotation."""
        from controller.ops import rotate

        return rotate.rotate(self.ctx, name, secrets or [], every, dry_run, finish, progress)

    def upgrade(
        self,
        name: str,
        template: str,
        dry_run: bool = False,
        allow_major: bool = False,
        progress: Progress = _quiet,
    ):
        """Move an instance to another template, backed up first, rolled back when it does not
        come up (an UpgradeResult; with dry_run only the difference)."""
        from controller.ops import upgrade

        return upgrade.upgrade(self.ctx, name, template, dry_run, allow_major, progress)

    def upgrade_rollback(self, name: str, progress: Progress = _quiet):
        """Restore the backup taken before the instance's last upgrade (an UpgradeResult)."""
        from controller.ops import upgrade

        return upgrade.rollback(self.ctx, name, progress)

    def clone(self, source: str, new: str, progress: Progress = _quiet, host: str | None = None):
        """A fresh backup of ``source`` restored as ``new`` (on ``host``; default: where
        `create` would put it), then every secret of ``new`` rotated (a CloneResult)."""
        from controller.ops import clone

        return clone.clone(self.ctx, source, new, progress, host)

    def move(self, name: str, host: str, progress: Progress = _quiet):
        """Take ``name`` to ``host``'s engine with its name, secrets and data; on failure it
        keeps running where it was (a MoveResult)."""
        from controller.ops import move

        return move.move(self.ctx, name, host, progress)
