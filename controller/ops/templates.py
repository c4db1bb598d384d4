"""Template use cases: fetch from GitHub, import a folder or tarball, list; the store's names."""

from __future__ import annotations

import contextlib
from pathlib import Path

from controller.errors import ManagerError, UsageError
from controller.ops.base import Context, Progress, audited, check_writable, quiet
from controller.state import State
from controller.views import TemplateView


def fetch(ctx: Context, ref: str | None = None, progress: Progress = quiet) -> str:
    """Download docker/ of supabase/supabase at ``ref`` (default: the pinned tag); its name."""
    from controller.templates import fetch_template

    check_writable(ctx)
    with audited(ctx, f"template fetch {ref or ''}".strip(), None):
        found = fetch_template(ctx.settings, ref, progress)
        with ctx.store.transaction() as state:
            state.templates[found.name] = found
    return found.name


def tags(ctx: Context) -> list[str]:
    """The self-hosted release tags upstream (``template fetch --list``)."""
    from controller.templates import list_tags

    return list_tags(ctx.settings)


def import_(ctx: Context, path: Path, name: str | None = None) -> str:
    """Import a folder or .tar.gz holding the docker/ folder; returns the template's name."""
    from controller.templates import import_template

    check_writable(ctx)
    with audited(ctx, f"template import {path}", None):
        found = import_template(ctx.settings, Path(path), name)
        with ctx.store.transaction() as state:
            state.templates[found.name] = found
    return found.name


def names(ctx: Context) -> list[str]:
    """Templates in the store (folders holding a docker-compose.yml)."""
    try:
        return sorted(
            p.name
            for p in ctx.settings.templates_dir.iterdir()
            if (p / "docker-compose.yml").is_file()
        )
    except (FileNotFoundError, NotADirectoryError):
        return []


def list_(ctx: Context) -> list[TemplateView]:
    from controller.templatefiles import TemplateFiles

    state = ctx.store.read()
    views = []
    for name in names(ctx):
        found = state.templates.get(name)
        images: dict[str, str] = {}
        with contextlib.suppress(ManagerError, OSError, ValueError):
            images = TemplateFiles(ctx.settings.template_dir(name)).images()
        users = sorted(n for n, r in state.instances.items() if r.template == name)
        views.append(TemplateView(name, found.source if found else "local", images, users))
    return views


def chosen(ctx: Context, requested: str | None, state: State) -> str:
    """The template a new instance uses: the one asked for (UsageError when it is no template
    of the store), else the only one, else the one added last."""
    from controller.templates import template_name_problem

    available = names(ctx)
    if requested is not None:
        if template_name_problem(requested) or requested not in available:
            raise UsageError(
                f"no template named {requested!r}; templates: {', '.join(available) or 'none'}"
            )
        return requested
    if not available:
        raise UsageError("no template yet: run `template fetch` or `template import PATH` first")
    if len(available) == 1:
        return available[0]
    recorded = [t for t in state.templates.values() if t.name in available]
    if recorded:
        return max(recorded, key=lambda t: t.added_at).name
    return sorted(available)[-1]
