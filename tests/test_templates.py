"""The template store: import from folders and tarballs, fetch through GitHub's API.

GitHub cannot be reached from the test machine: tests/fakegithub.py is a local HTTP server that
answers like GitHub's REST API (refs, commits, trees, blobs) and serves a fixture as docker/.
"""

import os
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest

from controller.config import Settings
from controller.errors import OperationError, UsageError
from controller.github import git_blob_sha
from controller.templatefiles import TemplateFiles
from controller.templates import (
    DEFAULT_REF,
    fetch_template,
    import_template,
    list_tags,
    template_name_for,
)
from tests.fakegithub import FakeGitHub
from tests.world.templates import fixtures_dir

FIXTURES = fixtures_dir()
NEW = FIXTURES / "v0.8.2"


def _same_tree(a: Path, b: Path) -> None:
    files_a = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    files_b = sorted(p.relative_to(b) for p in b.rglob("*") if p.is_file())
    assert files_a == files_b
    for relative in files_a:
        assert (a / relative).read_bytes() == (b / relative).read_bytes(), relative


def _nothing_under_templates(root: Path) -> None:
    store = root / "templates"
    assert not store.exists() or not any(store.iterdir()), list(store.rglob("*"))


def test_git_blob_sha_matches_git():
    data = (NEW / "docker-compose.yml").read_bytes()
    if shutil.which("git"):
        out = (
            subprocess.run(
                ["git", "hash-object", "--stdin"], input=data, capture_output=True, check=True
            )
            .stdout.decode()
            .strip()
        )
        assert git_blob_sha(data) == out
    assert git_blob_sha(b"") == "e69de29bb2d1d6434b8b29ae775ad8c2e48c5391"


@pytest.mark.parametrize(
    ("ref", "name"),
    [
        ("self-hosted/v0.8.2", "v0.8.2"),
        ("refs/tags/self-hosted/v1.0.0", "v1.0.0"),
        ("master", "master"),
        ("564eab8ad7840b13324f68b1bfac074ef8d51c21", "564eab8ad784"),
        ("feature/x y", "feature-x-y"),
    ],
)
def test_template_name_for(ref, name):
    assert template_name_for(ref) == name


def test_import_folder_in_three_shapes(tmp_path):
    settings = Settings(root=tmp_path / "root")
    record = import_template(settings, NEW, "v0.8.2")
    assert record.name == "v0.8.2" and record.source.startswith("import:")
    _same_tree(NEW, settings.template_dir("v0.8.2"))
    # A folder holding docker/ (a checkout of the repository), named after it.
    checkout = tmp_path / "supabase-1.2"
    shutil.copytree(FIXTURES / "2025-07-15", checkout / "docker")
    (checkout / "docker" / ".env").write_text("POSTGRES_PASSWORD=mine\n")  # never imported
    record = import_template(settings, checkout)
    assert record.name == "supabase-1.2"
    _same_tree(FIXTURES / "2025-07-15", settings.template_dir("supabase-1.2"))
    # The docker folder itself is named after its parent: that one exists now.
    with pytest.raises(UsageError, match=r"'supabase-1\.2' already exists"):
        import_template(settings, checkout / "docker")
    record = import_template(settings, checkout / "docker", "copy")
    _same_tree(FIXTURES / "2025-07-15", settings.template_dir("copy"))
    assert TemplateFiles(settings.template_dir("v0.8.2")).role("gateway") == "api-gw"
    leftovers = [p.name for p in settings.templates_dir.iterdir()]
    assert sorted(leftovers) == ["copy", "supabase-1.2", "v0.8.2"]  # no temp dirs left


@pytest.mark.parametrize("layout", ["docker", "top/docker", "flat"])
def test_import_tarball(tmp_path, layout):
    archive = tmp_path / "supabase-docker-v0.8.2.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        arcname = "." if layout == "flat" else layout
        tar.add(NEW, arcname=arcname)
    settings = Settings(root=tmp_path / "root")
    record = import_template(settings, archive)
    assert record.name == "supabase-docker-v0.8.2"
    _same_tree(NEW, settings.template_dir(record.name))


def test_import_refuses_bad_input(tmp_path):
    settings = Settings(root=tmp_path / "root")
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "docker-compose.yml").write_text("services: {}\n")
    with pytest.raises(UsageError, match="no Supabase docker folder"):
        import_template(settings, empty, "x")
    with pytest.raises(UsageError, match="does not exist"):
        import_template(settings, tmp_path / "missing", "x")
    junk = tmp_path / "junk.tar.gz"
    junk.write_bytes(b"not a tarball")
    with pytest.raises(UsageError, match="neither a folder nor a tar"):
        import_template(settings, junk, "x")
    with pytest.raises(UsageError, match="invalid template name"):
        import_template(settings, NEW, "../evil")
    broken = tmp_path / "broken"
    shutil.copytree(NEW, broken)
    (broken / "docker-compose.yml").write_text("services: [\n")
    with pytest.raises(UsageError, match=r"not a valid compose template.*yaml"):
        import_template(settings, broken, "broken")
    evil = tmp_path / "evil.tar"
    with tarfile.open(evil, "w") as tar:
        tar.add(NEW, arcname="docker")
        info = tarfile.TarInfo("../outside.txt")
        info.size = 0
        tar.addfile(info)
    with pytest.raises(UsageError, match="cannot be unpacked"):
        import_template(settings, evil, "evil")
    assert not (tmp_path / "root" / "outside.txt").exists()
    _nothing_under_templates(settings.root)


def test_fetch_from_fake_github(tmp_path):
    lines: list[str] = []
    with FakeGitHub(NEW) as github:
        settings = Settings(root=tmp_path, github_api=github.url)
        record = fetch_template(settings, None, lines.append)
        assert record.name == "v0.8.2"
        assert record.source == f"github:{DEFAULT_REF}"
        _same_tree(NEW, settings.template_dir("v0.8.2"))
        files = [p for p in NEW.rglob("*") if p.is_file()]
        assert sum("verified" in line for line in lines) == len(files)
        assert any("docker-compose.yml" in line for line in lines)
        # Only docker/ is downloaded (not the repository's README.md).
        assert not any("README.md" in request for request in github.requests)
        with pytest.raises(UsageError, match="already exists"):
            fetch_template(settings, DEFAULT_REF, lines.append)


def test_fetch_refuses_a_tampered_file_and_leaves_nothing(tmp_path):
    with FakeGitHub(NEW, corrupt=("volumes/db/roles.sql",)) as github:
        settings = Settings(root=tmp_path, github_api=github.url)
        with pytest.raises(OperationError, match=r"docker/volumes/db/roles.sql.*do not match"):
            fetch_template(settings, None, lambda _: None)
    _nothing_under_templates(tmp_path)


def test_fetch_unknown_tag_and_unreachable_api(tmp_path):
    with FakeGitHub(NEW) as github:
        settings = Settings(root=tmp_path, github_api=github.url)
        with pytest.raises(OperationError, match=r"no tag or branch 'self-hosted/v9\.9\.9'"):
            fetch_template(settings, "self-hosted/v9.9.9", lambda _: None)
    settings = Settings(root=tmp_path, github_api="http://127.0.0.1:9")
    with pytest.raises(OperationError, match="cannot be reached"):
        fetch_template(settings, None, lambda _: None)
    _nothing_under_templates(tmp_path)


def test_list_tags_follows_pages(tmp_path):
    tags = ("self-hosted/v0.8.2",)
    extra = ("self-hosted/v0.10.0", "self-hosted/v0.7.1", "self-hosted/v0.9.0", "v1.0.0")
    with FakeGitHub(NEW, tags=tags, extra_tags=extra, page_size=2) as github:
        settings = Settings(root=tmp_path, github_api=github.url)
        assert list_tags(settings) == [
            "self-hosted/v0.10.0",
            "self-hosted/v0.9.0",
            "self-hosted/v0.8.2",
            "self-hosted/v0.7.1",
        ]
        assert sum("matching-refs" in r for r in github.requests) == 2


def test_fetched_template_renders(tmp_path):
    """The fetched folder is a usable template (same services as the fixture)."""
    with FakeGitHub(NEW) as github:
        settings = Settings(root=tmp_path, github_api=github.url)
        fetch_template(settings, None, lambda _: None)
    fetched = TemplateFiles(settings.template_dir("v0.8.2"))
    assert fetched.services(["logs"]) == TemplateFiles(NEW).services(["logs"])
    assert os.access(settings.template_dir("v0.8.2") / "docker-compose.yml", os.R_OK)
