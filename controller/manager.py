"""The operations a front-end calls. Each mutating one changes the desired state under the state
lock, then reconciles the real systems (files, compose, Caddy) for that instance, and appends one
line to the audit log.

Every method raises a ``controller.errors.ManagerError`` subclass on failure (UsageError: bad input,
nothing changed, exit 2; anything else: exit 1) with a one-line message that holds no secret.
``progress`` callbacks receive short human-readable lines ("waiting for db: starting").

Heavy modules (docker SDK, python-on-whales, httpx, the renderer) are imported where they are used,
so that cheap commands and completion start fast.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from controller import audit
from controller.config import Settings
from controller.errors import CaddyUnavailable, ManagerError, OperationError, UsageError
from controller.names import validate_name
from controller.state import READY, InstanceRecord, State, StateStore
from controller.status import connection_strings, folder_size, instance_status, job_done
from controller.views import (
    INCOMPLETE,
    ContainerView,
    EnvChange,
    InstanceDetail,
    InstanceSummary,
    TemplateView,
    mask,
)

Progress = Callable[[str], None]

# Variables that supabase-manager owns in every instance's .env.
MANAGED_KEYS = frozenset({"COMPOSE_PROJECT_NAME", "COMPOSE_FILE"})
# Changing these needs more than a restart (the password lives in the database too).
UNSAFE_KEYS = frozenset({"POSTGRES_PASSWORD"})
WAIT_TIMEOUT = float(os.environ.get("SUPABASE_MANAGER_WAIT_TIMEOUT", "300"))


# The keys clients and servers use to call an instance's API (what `show` lists).
API_KEYS = (
    "ANON_KEY",
    "SERVICE_ROLE_KEY",
    "SUPABASE_PUBLISHABLE_KEY",
    "SUPABASE_SECRET_KEY",
)
# Keys an instance cannot run without, even where an empty value would pass validation.
REQUIRED_KEYS = frozenset({"DASHBOARD_USERNAME", "DASHBOARD_PASSWORD", "POSTGRES_DB"})


def _quiet(_: str) -> None:
    pass


def _check_key(key: str) -> None:
    """A KEY argument must be a variable name; anything else is refused without echoing it, as
    it may be a mistyped KEY=secret."""
    from controller.envfile import KEY_RE

    if not KEY_RE.match(key):
        raise UsageError("invalid variable name: use letters, digits and '_' (e.g. SITE_URL)")


class Manager:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.store = StateStore(settings.state_path, settings.lock_path)

    # --- helpers ------------------------------------------------------------------------------
    def _audit(self, command: str, instance: str | None, outcome: str, detail: str = "") -> None:
        audit.append(self.settings.audit_path, command, instance, outcome, detail)

    @contextlib.contextmanager
    def _audited(self, command: str, instance: str | None) -> Iterator[None]:
        try:
            yield
        except UsageError:
            raise  # refused before anything changed: nothing to audit
        except ManagerError as exc:
            self._audit(command, instance, "failed", str(exc))
            raise
        except KeyboardInterrupt:
            self._audit(command, instance, "interrupted")
            raise
        except Exception as exc:
            self._audit(command, instance, "failed", type(exc).__name__)
            raise
        self._audit(command, instance, "ok")

    @contextlib.contextmanager
    def _busy(self, name: str) -> Iterator[None]:
        """One command at a time per instance, across processes: a second one fails at once."""
        from controller.fsutil import file_lock

        try:
            with file_lock(self.settings.root / "locks" / f"{name}.lock", wait=False):
                yield
        except BlockingIOError:
            raise OperationError(
                f"{name} is busy: another supabase-manager command is working on it"
            ) from None

    def _record(self, name: str, state: State | None = None) -> InstanceRecord:
        validate_name(name)
        state = state or self.store.read()
        record = state.instances.get(name)
        if record is None:
            raise OperationError(f"no instance named {name!r}")
        return record

    def _template(self, name: str):
        from controller.templatefiles import TemplateFiles

        path = self.settings.template_dir(name)
        if not (path / "docker-compose.yml").is_file():
            raise OperationError(f"template {name!r} is missing from {path}")
        return TemplateFiles(path)

    def _jobs(self, record: InstanceRecord) -> set[str]:
        try:
            return self._template(record.template).one_shot_services(record.overlays)
        except ManagerError:
            return set()

    def _compose(self, name: str):
        from controller.compose import Compose
        from controller.render import compose_files

        directory = self.settings.instance_dir(name)
        return Compose(name, directory, compose_files(directory))

    def _docker(self):
        from controller.dockerapi import DockerAPI

        api = DockerAPI()
        api.ping()
        return api

    def _env(self, name: str):
        from controller.envfile import EnvFile

        path = self.settings.instance_dir(name) / ".env"
        try:
            return EnvFile.parse(path.read_text())
        except FileNotFoundError:
            raise OperationError(f"{path} is missing; run `create {name}` to finish it") from None

    def _services(self, name: str, services: list[str] | None) -> list[str] | None:
        if not services:
            return None
        known = set(self.service_names(name))
        unknown = [s for s in services if s not in known]
        if unknown:
            raise UsageError(
                f"{name} has no service {unknown[0]!r}; services: {', '.join(sorted(known))}"
            )
        return services

    # --- templates ----------------------------------------------------------------------------
    def template_fetch(self, ref: str | None = None, progress: Progress = _quiet) -> str:
        """Download docker/ of supabase/supabase at ``ref`` (default: the pinned tag); its name."""
        from controller.templates import fetch_template

        with self._audited(f"template fetch {ref or ''}".strip(), None):
            record = fetch_template(self.settings, ref, progress)
            with self.store.transaction() as state:
                state.templates[record.name] = record
        return record.name

    def template_tags(self) -> list[str]:
        """The self-hosted release tags upstream (``template fetch --list``)."""
        from controller.templates import list_tags

        return list_tags(self.settings)

    def template_import(self, path: Path, name: str | None = None) -> str:
        """Import a folder or .tar.gz holding the docker/ folder; returns the template's name."""
        from controller.templates import import_template

        with self._audited(f"template import {path}", None):
            record = import_template(self.settings, Path(path), name)
            with self.store.transaction() as state:
                state.templates[record.name] = record
        return record.name

    def template_list(self) -> list[TemplateView]:
        from controller.templatefiles import TemplateFiles

        state = self.store.read()
        views = []
        for name in self.template_names():
            record = state.templates.get(name)
            path = self.settings.template_dir(name)
            try:
                images = TemplateFiles(path).images()
            except ManagerError:
                images = {}
            users = sorted(n for n, r in state.instances.items() if r.template == name)
            views.append(TemplateView(name, record.source if record else "local", images, users))
        return views

    def _default_template(self, state: State) -> str:
        names = self.template_names()
        if not names:
            raise UsageError(
                "no template yet: run `template fetch` or `template import PATH` first"
            )
        if len(names) == 1:
            return names[0]
        recorded = [t for t in state.templates.values() if t.name in names]
        if recorded:
            return max(recorded, key=lambda t: t.added_at).name
        return sorted(names)[-1]

    # --- instances ----------------------------------------------------------------------------
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
    ) -> list[str]:
        """Create (or finish creating) an instance; returns warnings (e.g. Caddy change pending)."""
        validate_name(name)
        command = "create" + (" --no-start" if not start else "")
        with self._audited(command, name):
            return self._create(
                name, template, overlays, extra_compose, ports, cpus, memory, start, progress
            )

    def _create(
        self, name, template, overlays, extra_compose, ports, cpus, memory, start, progress
    ) -> list[str]:
        from controller.render import check_cpus, check_memory, read_extra_compose

        cpus, memory = check_cpus(cpus), check_memory(memory)
        extra = [Path(p).absolute() for p in extra_compose or []]
        for path in extra:
            if not path.is_file():
                raise UsageError(f"extra compose file {path} does not exist")
        read_extra_compose(extra)  # unreadable or not YAML: refused before anything is written
        if start:
            self._docker()  # Docker down: fail now, before anything is written.
            from controller.compose import check_cli

            check_cli()
        # Refuse bad input against a snapshot first, so that nothing at all is written for it;
        # the transaction below checks again under the lock.
        self._check_new(name, template, overlays, self.store.read())

        with self._busy(name):
            return self._create_locked(
                name, template, overlays, extra, ports, cpus, memory, start, progress
            )

    def _check_new(self, name: str, template: str | None, overlays, state: State):
        """For a name not yet in state: its template files and overlays, or UsageError."""
        existing = state.instances.get(name)
        if existing and existing.phase == READY:
            raise UsageError(f"instance {name!r} already exists")
        if existing:
            return None, []
        self._check_hosts_free(name, state)
        files = self._template(template or self._default_template(state))
        overlays = list(dict.fromkeys(overlays or []))
        files.compose_paths(overlays)  # unknown overlay: UsageError naming the known ones
        return files, overlays

    def _create_locked(
        self, name, template, overlays, extra, ports, cpus, memory, start, progress
    ) -> list[str]:
        from controller.ports import allocate
        from controller.render import needed_ports, render_instance

        with self.store.transaction() as state:
            existing = state.instances.get(name)
            files, overlays_checked = self._check_new(name, template, overlays, state)
            if existing:
                asked = {
                    "--template": template and template != existing.template,
                    "--overlay": overlays and list(overlays) != existing.overlays,
                    "--extra-compose": extra and [str(p) for p in extra] != existing.extra_compose,
                    "--port": bool(ports),
                    "--cpus": cpus is not None and cpus != existing.cpus,
                    "--memory": memory is not None and memory != existing.memory,
                }
                different = [option for option, differs in asked.items() if differs]
                if different:
                    raise UsageError(
                        f"{name} is half-created with other options ({', '.join(different)}): "
                        f"run `create {name}` alone to finish it, or `delete {name}`"
                    )
                progress(f"finishing the interrupted create of {name}")
                record = existing
            else:
                overlays = overlays_checked
                allocated = allocate(
                    needed_ports(files, overlays),
                    ports or {},
                    state.used_ports(),
                    self.settings.port_range,
                )
                record = InstanceRecord(
                    name=name,
                    template=files.path.name,
                    overlays=overlays,
                    extra_compose=[str(p) for p in extra],
                    ports=allocated,
                    cpus=cpus,
                    memory=memory,
                    autostart=start,
                )
                state.instances[name] = record

        files = self._template(record.template)
        progress(f"rendering {self.settings.instance_dir(name)}")
        # On a resumed create the sources may be gone; render keeps the copies it already made.
        sources = [Path(p) for p in record.extra_compose if Path(p).is_file()]
        render_instance(self.settings, record, files, sources)
        warnings = self._publish(name, record)
        if start:
            progress("starting containers")
            self._compose(name).up()
            self._wait_healthy(name, progress)
        with self.store.transaction() as state:
            if name not in state.instances:
                raise OperationError(f"{name} was deleted while it was being created")
            state.instances[name].phase = READY
        return warnings

    def _check_hosts_free(self, name: str, state: State) -> None:
        """Flat names can collide: instance `a`'s Studio host is instance `a-studio`'s API host."""
        mine = set(self.settings.hosts(name).values())
        for other in state.instances:
            if mine & set(self.settings.hosts(other).values()):
                raise UsageError(
                    f"instance name {name!r} would share a host name with instance {other!r}"
                )

    def _wait_healthy(
        self,
        name: str,
        progress: Progress,
        services: list[str] | None = None,
        timeout: float = WAIT_TIMEOUT,
    ) -> None:
        """Wait until the containers (of ``services``, or all) run, healthy where they have a
        healthcheck; a one-shot job only has to exit 0."""
        api = self._docker()
        jobs = self._jobs(self._record(name))
        deadline = time.monotonic() + timeout
        last = ""
        while True:
            containers = [c for c in api.containers(name) if not services or c.service in services]
            waiting = [
                c
                for c in containers
                if not (c.state == "running" and c.health in (None, "healthy"))
                and not job_done(c, jobs)
            ]
            if containers and not waiting:
                progress(f"{name}: all {len(containers)} services are up")
                return
            words = sorted(f"{c.service}: {c.health or c.state}" for c in waiting)
            line = "waiting for " + ", ".join(words) if words else "waiting for containers"
            if line != last:
                progress(line)
                last = line
            failed = [c for c in waiting if c.state in ("exited", "dead")]
            if failed or time.monotonic() > deadline:
                culprit = (failed or waiting or [None])[0]
                what = (
                    f"service {culprit.service} ({culprit.health or culprit.state})"
                    if culprit
                    else "its containers"
                )
                raise OperationError(f"{name}: {what} did not become healthy")
            time.sleep(0.5)

    def start(self, name: str, services: list[str] | None = None, progress: Progress = _quiet):
        record = self._record(name)
        services = self._services(name, services)
        with self._audited("start " + " ".join(services or []), name), self._busy(name):
            self._require_ready(record)
            self._docker()
            self._compose(name).up(services)
            if not services:
                self._set_autostart(name, True)
            self._wait_healthy(name, progress, services)

    def start_all(self, progress: Progress = _quiet) -> list[str]:
        """Start every instance marked to start (boot); returns the names started."""
        started, failures = [], []
        for name, record in sorted(self.store.read().instances.items()):
            if record.phase != READY or not record.autostart:
                continue
            try:
                self.start(name, progress=progress)
                started.append(name)
            except ManagerError as exc:
                failures.append(str(exc))
        if failures:
            raise OperationError(f"{len(failures)} instance(s) failed to start: {failures[0]}")
        return started

    def stop(self, name: str, services: list[str] | None = None, progress: Progress = _quiet):
        record = self._record(name)
        services = self._services(name, services)
        with self._audited("stop " + " ".join(services or []), name), self._busy(name):
            self._require_ready(record)
            self._docker()
            progress(f"stopping {name}")
            self._compose(name).stop(services)
            if not services:
                self._set_autostart(name, False)

    def restart(self, name: str, services: list[str] | None = None, progress: Progress = _quiet):
        record = self._record(name)
        services = self._services(name, services)
        with self._audited("restart " + " ".join(services or []), name), self._busy(name):
            self._require_ready(record)
            self._docker()
            progress(f"restarting {name}")
            # `up` recreates containers whose configuration (.env) changed; restart the rest.
            compose = self._compose(name)
            compose.up(services)
            compose.restart(services)
            self._wait_healthy(name, progress, services)

    def _require_ready(self, record: InstanceRecord) -> None:
        if record.phase != READY:
            raise OperationError(
                f"instance {record.name!r} is incomplete: run `create {record.name}` to finish "
                f"it or `delete {record.name}` to remove it"
            )

    def _set_autostart(self, name: str, value: bool) -> None:
        with self.store.transaction() as state:
            if name in state.instances:
                state.instances[name].autostart = value

    def delete(self, name: str, purge: bool = False, progress: Progress = _quiet) -> list[str]:
        self._record(name)
        warnings: list[str] = []
        with self._audited("delete" + (" --purge" if purge else ""), name), self._busy(name):
            api = self._docker()
            directory = self.settings.instance_dir(name)
            progress(f"removing the containers of {name}")
            if (directory / ".env").is_file():
                with contextlib.suppress(OperationError):
                    self._compose(name).down(volumes=purge)
            api.remove_instance_leftovers(name, volumes=purge)
            warnings += self._unpublish(name)
            if purge:
                progress(f"removing {directory}")
                failed: list[str] = []
                shutil.rmtree(directory, onerror=lambda _f, path, _e: failed.append(path))
                if failed:
                    warnings.append(f"{failed[0]} could not be removed; remove it by hand")
            with self.store.transaction() as state:
                state.instances.pop(name, None)
        return warnings

    def list(self, resources: bool = True) -> list[InstanceSummary]:
        state = self.store.read()
        if not state.instances:
            return []
        api = self._docker()
        grouped = api.by_instance()
        usage = {}
        if resources:
            running = [c.id for cs in grouped.values() for c in cs if c.state == "running"]
            usage = api.usage(running)
        summaries = []
        jobs: dict[tuple, set[str]] = {}  # per template and overlays: parse each once
        for name, record in sorted(state.instances.items()):
            containers = grouped.get(name, [])
            key = (record.template, tuple(record.overlays))
            # Which services are one-shot jobs matters only once something exited 0, and
            # reading the template costs more than the whole Docker query: only then.
            exited_ok = any(c.state == "exited" and c.exit_code == 0 for c in containers)
            if key not in jobs and exited_ok:
                jobs[key] = self._jobs(record)
            status, running_count, total = instance_status(record, containers, jobs.get(key, set()))
            cpu = mem = disk = None
            if resources:
                samples = [usage[c.id] for c in containers if c.id in usage]
                cpu = round(sum(s.cpu_percent for s in samples), 2) if samples else None
                mem = sum(s.memory_bytes for s in samples) if samples else None
                disk = folder_size(self.settings.instance_dir(name))
            summaries.append(
                InstanceSummary(
                    name=name,
                    status=status,
                    template=record.template,
                    api_url=self.settings.public_origin(self.settings.hosts(name)["api"]),
                    created_at=record.created_at,
                    running=running_count,
                    total=total,
                    cpu_percent=cpu,
                    memory_bytes=mem,
                    disk_bytes=disk,
                )
            )
        return summaries

    def show(self, name: str, show_secrets: bool = False) -> InstanceDetail:
        from controller.secrets import is_secret

        record = self._record(name)
        containers = self._docker().containers(name)
        status, _, _ = instance_status(record, containers, self._jobs(record))
        env = self._env(name)
        files = self._template(record.template)
        hosts = self.settings.hosts(name)
        urls = {
            "api": self.settings.public_origin(hosts["api"]),
            "studio": self.settings.public_origin(hosts["studio"]),
        }
        if "mail" in record.overlays:
            urls["mail"] = self.settings.public_origin(hosts["mail"])
        password = env.get("POSTGRES_PASSWORD") or ""
        shown = password if show_secrets else "********"
        keys = {}
        for key in API_KEYS:
            value = env.get(key) or ""
            if value:
                keys[key] = value if show_secrets or not is_secret(key) else mask(value)
        requests = None
        with contextlib.suppress(Exception):
            requests = self.requests_per_host(name)
        return InstanceDetail(
            name=name,
            status=status,
            template=record.template,
            created_at=record.created_at,
            overlays=list(record.overlays),
            urls=urls,
            ports=dict(record.ports),
            containers=[
                ContainerView(c.service, c.name, c.state, c.health)
                for c in sorted(containers, key=lambda c: c.service)
            ],
            connections=connection_strings(
                record,
                files.role("db", record.overlays),
                files.role("pooler", record.overlays),
                env.as_dict(),
                shown,
            ),
            keys=keys,
            requests=requests,
        )

    def logs(
        self,
        name: str,
        services: list[str] | None = None,
        follow: bool = False,
        tail: int | None = None,
        errors_only: bool = False,
    ) -> Iterator[str]:
        """Log lines ("service | text"); with follow, until the caller stops iterating."""
        import re

        self._record(name)
        services = self._services(name, services)
        self._docker()
        error = re.compile(
            r"\b(error|fatal|panic|critical|emerg|alert)\b|\"level\"\s*:\s*\"(error|fatal)\"",
            re.IGNORECASE,
        )
        for line in self._compose(name).logs(services or (), tail=tail, follow=follow):
            if not errors_only or error.search(line):
                yield line

    # --- names for completion (cheap: state and files only, no Docker) ---------------------------
    def instance_names(self) -> list[str]:
        return sorted(self.store.read().instances)

    def template_names(self) -> list[str]:
        try:
            return sorted(
                p.name
                for p in self.settings.templates_dir.iterdir()
                if (p / "docker-compose.yml").is_file()
            )
        except FileNotFoundError:
            return []

    def service_names(self, name: str) -> list[str]:
        record = self.store.read().instances.get(name)
        if record is None:
            return []
        try:
            return sorted(self._template(record.template).services(record.overlays))
        except ManagerError:
            return []

    def overlay_names(self, template: str | None = None) -> list[str]:
        """Overlays of one template, or of every template."""
        from controller.templatefiles import TemplateFiles

        names = [template] if template else self.template_names()
        found: set[str] = set()
        for each in names:
            with contextlib.suppress(ManagerError, OSError):
                found.update(TemplateFiles(self.settings.template_dir(each)).overlays())
        return sorted(found)

    def template_port_services(self, template: str | None = None) -> list[str]:
        """Services whose host port `create --port SERVICE=PORT` may choose."""
        from controller.render import needed_ports
        from controller.templatefiles import TemplateFiles

        names = [template] if template else self.template_names()
        found: set[str] = set()
        for each in names:
            with contextlib.suppress(ManagerError, OSError):
                files = TemplateFiles(self.settings.template_dir(each))
                found.update(key.split(":", 1)[0] for key in needed_ports(files, ()))
        return sorted(found)

    def env_keys(self, name: str) -> list[str]:
        try:
            return self._env(name).keys()
        except ManagerError:
            return []

    # --- env ----------------------------------------------------------------------------------
    def env_list(self, name: str, show_secrets: bool = False) -> list[tuple[str, str]]:
        from controller.secrets import is_secret

        self._record(name)
        env = self._env(name)
        return [
            (key, value if show_secrets or not is_secret(key) else mask(value))
            for key, value in env.items()
        ]

    def env_get(self, name: str, key: str) -> str:
        self._record(name)
        _check_key(key)
        value = self._env(name).get(key)
        if value is None:
            raise OperationError(f"{name} has no variable {key}")
        return value

    def _check_change(self, key: str, value: str | None) -> None:
        """Refuse a change to ``key`` (``value`` None: removing it) that would break the
        instance; raised before anything is written or audited."""
        from controller.envfile import validate

        _check_key(key)
        if key in MANAGED_KEYS:
            raise UsageError(f"{key} is managed by supabase-manager and cannot be changed")
        if key in UNSAFE_KEYS:
            raise UsageError(
                f"{key} also lives inside the database: changing it in .env alone would break "
                "the instance"
            )
        if value is not None:
            problem = validate(key, value)
            if problem:
                raise UsageError(f"invalid value for {key}: {problem}")
        elif key in REQUIRED_KEYS or validate(key, ""):
            raise UsageError(f"{key} cannot be removed: the instance needs it")

    def env_set(self, name: str, assignments: dict[str, str]) -> EnvChange:
        record = self._record(name)
        if not assignments:
            raise UsageError("nothing to set: give KEY=VALUE")
        for key, value in assignments.items():
            self._check_change(key, value)
        with self._audited("env set " + " ".join(sorted(assignments)), name), self._busy(name):
            env = self._env(name)
            for key, value in assignments.items():
                env.set(key, value)
            return self._write_env(record, env, sorted(assignments))

    def env_unset(self, name: str, key: str) -> EnvChange:
        record = self._record(name)
        self._check_change(key, None)
        with self._audited(f"env unset {key}", name), self._busy(name):
            env = self._env(name)
            if env.get(key) is None:
                raise OperationError(f"{name} has no variable {key}")
            env.unset(key)
            return self._write_env(record, env, [key])

    def env_text(self, name: str) -> str:
        """The .env text, for `env edit` to put in the editor."""
        self._record(name)
        return self._env(name).render()

    def env_check(self, name: str, text: str) -> list[str]:
        """Problems with an edited .env text (empty list: fine)."""
        from controller.envfile import EnvFile, check_text, validate

        problems = list(check_text(text))
        if problems:
            return problems
        before, after = self._env(name), EnvFile.parse(text)
        for key in sorted(set(before.keys()) | set(after.keys())):
            if before.get(key) == after.get(key):
                continue
            if key in MANAGED_KEYS:
                problems.append(f"{key} is managed by supabase-manager and cannot be changed")
            elif key in UNSAFE_KEYS:
                problems.append(f"{key} cannot be changed in .env alone (it lives in the database)")
            elif after.get(key) is None and (key in REQUIRED_KEYS or validate(key, "")):
                problems.append(f"{key} cannot be removed: the instance needs it")
        return problems

    def env_replace(self, name: str, text: str) -> EnvChange:
        """Validate and atomically write an edited .env text."""
        from controller.envfile import EnvFile

        record = self._record(name)
        problems = self.env_check(name, text)
        if problems:
            raise UsageError(f"the edited .env has {len(problems)} problem(s): {problems[0]}")
        before, after = self._env(name), EnvFile.parse(text)
        changed = sorted(
            k for k in set(before.keys()) | set(after.keys()) if before.get(k) != after.get(k)
        )
        with self._audited("env edit " + " ".join(changed), name), self._busy(name):
            return self._write_env(record, after, changed)

    def _write_env(self, record: InstanceRecord, env, changed: list[str]) -> EnvChange:
        from controller.envfile import services_using
        from controller.fsutil import atomic_write
        from controller.render import compose_files
        from controller.sites import site_spec

        directory = self.settings.instance_dir(record.name)
        spec = None
        if any(key.startswith("DASHBOARD_") for key in changed):
            # Studio's Caddy route carries these credentials: work it out before writing, so a
            # failure leaves .env as it was.
            files = self._template(record.template)
            spec = site_spec(self.settings, record, files, env.as_dict())
        atomic_write(directory / ".env", env.render(), mode=0o600)
        services = services_using(changed, compose_files(directory)) if changed else []
        warnings = self._publish(record.name, record, spec) if spec else []
        return EnvChange(changed=changed, services=services, warnings=warnings)

    # --- caddy --------------------------------------------------------------------------------
    def _site_spec(self, name: str, record: InstanceRecord):
        from controller.sites import site_spec

        return site_spec(
            self.settings, record, self._template(record.template), self._env(name).as_dict()
        )

    def _publish(self, name: str, record: InstanceRecord, spec=None) -> list[str]:
        """Write the snippet and push the live route; Caddy down only postpones the live part."""
        from controller.caddy import apply_instance, write_snippet

        spec = spec or self._site_spec(name, record)
        write_snippet(self.settings, spec)
        try:
            apply_instance(self.settings, spec)
        except CaddyUnavailable as exc:
            return [f"Caddy's live route for {name} is pending ({exc}); run `caddy sync {name}`"]
        return []

    def _unpublish(self, name: str) -> list[str]:
        from controller.caddy import remove_instance, remove_snippet

        remove_snippet(self.settings, name)
        try:
            remove_instance(self.settings, name)
        except CaddyUnavailable as exc:
            return [
                f"Caddy's live route for {name} could not be removed ({exc}); "
                "run `caddy sync` later"
            ]
        return []

    def _specs(self) -> tuple[dict, dict[str, str]]:
        """Every instance's SiteSpec, and why some could not be worked out (their routes and
        snippets are then left alone, never mistaken for leftovers)."""
        specs, failures = {}, {}
        for name, record in self.store.read().instances.items():
            try:
                specs[name] = self._site_spec(name, record)
            except ManagerError as exc:
                failures[name] = str(exc)
        return specs, failures

    def caddy_sync(self, name: str | None = None) -> list[str]:
        from controller.caddy import sync

        if name is not None:
            self._record(name)
        with self._audited("caddy sync", name):
            specs, failures = self._specs()
            lines = sync(self.settings, specs, only=name, keep=failures)
            skipped = {n: why for n, why in failures.items() if name in (None, n)}
            if skipped:
                first = sorted(skipped)[0]
                raise OperationError(
                    f"left {len(skipped)} instance(s) as they were, e.g. {first}: "
                    f"{skipped[first]} (done: {'; '.join(lines)})"
                )
            return lines

    def caddy_status(self) -> dict:
        from controller.caddy import status

        specs, failures = self._specs()
        result = status(self.settings, specs, keep=failures)
        result["skipped"] = failures
        return result

    def requests_per_host(self, name: str | None = None) -> dict[str, float] | None:
        from controller.caddy import requests_per_host

        counts = requests_per_host(self.settings)
        if counts is None or name is None:
            return counts
        hosts = set(self.settings.hosts(name).values())
        return {host: value for host, value in counts.items() if host in hosts}

    # --- audit, health ------------------------------------------------------------------------
    def audit(self, name: str | None = None) -> list[dict]:
        if name is not None:
            validate_name(name)
        return audit.read(self.settings.audit_path, name)

    def check(self) -> list[str]:
        """Problems worth a look: instances down that should run, unhealthy services, drift."""
        problems = []
        for summary in self.list(resources=False):
            if summary.status == INCOMPLETE:
                problems.append(f"{summary.name}: create did not finish")
        state = self.store.read()
        api = self._docker()
        grouped = api.by_instance()
        for name, record in sorted(state.instances.items()):
            if record.phase != READY or not record.autostart:
                continue
            jobs = self._jobs(record)
            for c in grouped.get(name, []):
                if c.state != "running" and not job_done(c, jobs):
                    problems.append(f"{name}: service {c.service} is {c.state}")
                elif c.health == "unhealthy":
                    problems.append(f"{name}: service {c.service} is unhealthy")
            if not grouped.get(name):
                problems.append(f"{name}: no containers (should be running)")
        caddy = self.caddy_status()
        if not caddy.get("reachable"):
            problems.append(f"Caddy's admin API at {self.settings.caddy_admin} does not answer")
        for name, word in sorted(caddy.get("instances", {}).items()):
            if word != "ok":
                problems.append(f"{name}: Caddy route is {word}")
        return problems

    def health(self) -> dict[str, bool]:
        """Whether Docker and Caddy answer (for the shell's toolbar); quick, never raises."""
        result = {"docker": False, "caddy": False}
        with contextlib.suppress(Exception):
            from controller.dockerapi import DockerAPI

            DockerAPI(timeout=2).ping()
            result["docker"] = True
        with contextlib.suppress(Exception):
            from controller.caddy import reachable

            result["caddy"] = reachable(self.settings, timeout=1.0)
        return result
