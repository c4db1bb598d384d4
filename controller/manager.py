"""The operations a front-end calls. Each mutating one changes the desired state under the state
lock, then reconciles the real systems (files, compose, Caddy) for that instance, and appends one
line to the audit log.

Every method raises a ``controller.errors.ManagerError`` subclass on failure (UsageError: bad input,
nothing changed, exit 2; anything else: exit 1) with a one-line message that holds no secret.
``progress`` callbacks receive short human-readable lines ("waiting for db: starting").
"""

from collections.abc import Callable, Iterator
from pathlib import Path

from controller.config import Settings
from controller.views import EnvChange, InstanceDetail, InstanceSummary, TemplateView

Progress = Callable[[str], None]


def _quiet(_: str) -> None:
    pass


class Manager:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    # --- templates -------------------------------------------------------------------------
    def template_fetch(self, ref: str | None = None, progress: Progress = _quiet) -> str:
        """Download docker/ of supabase/supabase at ``ref`` (default: the pinned tag); its name."""
        raise NotImplementedError

    def template_tags(self) -> list[str]:
        """The self-hosted release tags upstream (``template fetch --list``)."""
        raise NotImplementedError

    def template_import(self, path: Path, name: str | None = None) -> str:
        """Import a folder or .tar.gz holding the docker/ folder; returns the template's name."""
        raise NotImplementedError

    def template_list(self) -> list[TemplateView]:
        raise NotImplementedError

    # --- instances ---------------------------------------------------------------------------
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
        raise NotImplementedError

    def start(self, name: str, services: list[str] | None = None, progress: Progress = _quiet):
        raise NotImplementedError

    def stop(self, name: str, services: list[str] | None = None, progress: Progress = _quiet):
        raise NotImplementedError

    def restart(self, name: str, services: list[str] | None = None, progress: Progress = _quiet):
        raise NotImplementedError

    def delete(self, name: str, purge: bool = False, progress: Progress = _quiet) -> list[str]:
        raise NotImplementedError

    def list(self, resources: bool = True) -> list[InstanceSummary]:
        raise NotImplementedError

    def show(self, name: str, show_secrets: bool = False) -> InstanceDetail:
        raise NotImplementedError

    def logs(
        self,
        name: str,
        services: list[str] | None = None,
        follow: bool = False,
        tail: int | None = None,
        errors_only: bool = False,
    ) -> Iterator[str]:
        """Log lines ("service | text"); with follow, until the caller stops iterating."""
        raise NotImplementedError

    # --- names for completion (cheap: state and files only, no Docker) ---------------------------
    def instance_names(self) -> list[str]:
        raise NotImplementedError

    def template_names(self) -> list[str]:
        raise NotImplementedError

    def service_names(self, name: str) -> list[str]:
        raise NotImplementedError

    def env_keys(self, name: str) -> list[str]:
        raise NotImplementedError

    # --- env ---------------------------------------------------------------------------------------
    def env_list(self, name: str, show_secrets: bool = False) -> list[tuple[str, str]]:
        raise NotImplementedError

    def env_get(self, name: str, key: str) -> str:
        raise NotImplementedError

    def env_set(self, name: str, assignments: dict[str, str]) -> EnvChange:
        raise NotImplementedError

    def env_unset(self, name: str, key: str) -> EnvChange:
        raise NotImplementedError

    def env_text(self, name: str) -> str:
        """The .env text, for `env edit` to put in the editor."""
        raise NotImplementedError

    def env_check(self, name: str, text: str) -> list[str]:
        """Problems with an edited .env text (empty list: fine)."""
        raise NotImplementedError

    def env_replace(self, name: str, text: str) -> EnvChange:
        """Validate and atomically write an edited .env text."""
        raise NotImplementedError

    # --- caddy, audit, health ---------------------------------------------------------------------
    def caddy_sync(self, name: str | None = None) -> list[str]:
        raise NotImplementedError

    def caddy_status(self) -> dict:
        raise NotImplementedError

    def audit(self, name: str | None = None) -> list[dict]:
        raise NotImplementedError

    def health(self) -> dict[str, bool]:
        """Whether Docker and Caddy answer (for the shell's toolbar); quick, never raises."""
        raise NotImplementedError
