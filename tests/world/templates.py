"""The upstream template fixtures (supabase docker/ folders) and throw-away copies of them."""

from __future__ import annotations

import os
import re
import shutil
import stat
from collections.abc import Mapping
from pathlib import Path

_REPO = Path(__file__).resolve().parents[2]
_CANDIDATES = (
    _REPO / "tests" / "fixtures" / "supabase-docker",
    _REPO.parent / "shared" / "fixtures" / "supabase-docker",
    Path("/work/shared/fixtures/supabase-docker"),
)
TEMPLATE_VERSIONS = ("v0.8.2", "2025-07-15")


def fixtures_dir() -> Path:
    """Folder holding the template fixtures (env SBM_FIXTURES_DIR or SBM_FIXTURES overrides)."""
    override = os.environ.get("SBM_FIXTURES_DIR") or os.environ.get("SBM_FIXTURES")
    if override:
        candidates: tuple[Path, ...] = (Path(override),)
    else:
        candidates = _CANDIDATES
    for candidate in candidates:
        if (candidate / "v0.8.2" / "docker-compose.yml").is_file():
            return candidate
    looked = ", ".join(str(c) for c in candidates)
    raise FileNotFoundError(
        f"template fixtures not found (looked in {looked}; set SBM_FIXTURES_DIR)"
    )


def template_fixture(version: str = "v0.8.2") -> Path:
    """The read-only fixture folder of one upstream template version."""
    path = fixtures_dir() / version
    if not (path / "docker-compose.yml").is_file():
        raise FileNotFoundError(f"no template fixture {version!r} in {fixtures_dir()}")
    return path


def copy_template(version: str, dest: Path) -> Path:
    """A writable copy of a template fixture at dest (the fixtures themselves are read-only)."""
    dest = Path(dest)
    shutil.copytree(template_fixture(version), dest, dirs_exist_ok=True)
    for path in [dest, *dest.rglob("*")]:
        if not path.is_symlink():
            mode = path.stat().st_mode
            path.chmod(mode | stat.S_IWUSR | (stat.S_IXUSR if path.is_dir() else 0))
    return dest


def write_env(folder: Path, project: str, values: Mapping[str, object] | None = None) -> Path:
    """folder/.env from folder/.env.example with COMPOSE_PROJECT_NAME=project and values set.

    Keys of values that .env.example lacks are appended. Returns the .env path.
    """
    folder = Path(folder)
    wanted = {"COMPOSE_PROJECT_NAME": project, **{k: str(v) for k, v in (values or {}).items()}}
    example = folder / ".env.example"
    lines = example.read_text().splitlines() if example.exists() else []
    out: list[str] = []
    done: set[str] = set()
    for line in lines:
        match = re.match(r"\s*([A-Za-z_][A-Za-z0-9_]*)\s*=", line)
        if match and match.group(1) in wanted:
            key = match.group(1)
            out.append(f"{key}={wanted[key]}")
            done.add(key)
        else:
            out.append(line)
    out += [f"{key}={value}" for key, value in wanted.items() if key not in done]
    env = folder / ".env"
    env.write_text("\n".join(out) + "\n")
    return env
