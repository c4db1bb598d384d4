"""Backup settings, the password source and the restic adapter, against real restic on local
repositories in a temp folder (no Docker needed)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from controller import backupkey
from controller.backupplan import open_repository
from controller.config import load_settings
from controller.errors import UsageError
from controller.restic import ResticError

CLI = [sys.executable, "-m", "shell"]


def settings_for(root, **env):
    return load_settings(root, env={f"SUPABASE_MANAGER_{k}": v for k, v in env.items()})


def test_backup_settings_from_config_and_env(tmp_path):
    (tmp_path / "config.toml").write_text(
        '[backup]\nrepository = "s3:http://127.0.0.1:9/b/p"\npassword_file = "/run/pw"\n'
        'environment_file = "/etc/sbm/s3.env"\nkeep = { daily = 3, weekly = 1 }\n'
    )
    settings = settings_for(tmp_path)
    assert settings.backup.repository == "s3:http://127.0.0.1:9/b/p"
    assert str(settings.backup.password_file) == "/run/pw"
    assert str(settings.backup.environment_file) == "/etc/sbm/s3.env"
    assert dict(settings.backup.keep) == {"daily": 3, "weekly": 1}
    overridden = settings_for(
        tmp_path, BACKUP_REPOSITORY="/srv/repo", BACKUP_PASSWORD_FILE="/run/other"
    )
    assert overridden.backup.repository == "/srv/repo"
    assert str(overridden.backup.password_file) == "/run/other"
    (tmp_path / "config.toml").write_text("[backup]\nkeep = { daily = -1 }\n")
    with pytest.raises(UsageError, match=r"keep\.daily"):
        settings_for(tmp_path)


def test_generated_password_is_private_and_made_once(tmp_path, monkeypatch):
    monkeypatch.setattr(backupkey, "_real_keyring", lambda: None)
    settings = settings_for(tmp_path)
    assert backupkey.locate(settings) is None
    source, created = backupkey.ensure(settings)
    assert created and source.kind == "generated"
    assert source.path == tmp_path / "keys" / "backup.key"
    assert oct(source.path.stat().st_mode & 0o777) == "0o600"
    assert oct(source.path.parent.stat().st_mode & 0o777) == "0o700"
    again, created_again = backupkey.ensure(settings)
    assert not created_again and again.read() == source.read() and len(source.read()) >= 40


def test_keyring_fail_backend_is_never_used(tmp_path):
    import keyring
    from keyring.backends import fail

    previous = keyring.get_keyring()
    keyring.set_keyring(fail.Keyring())
    try:
        assert backupkey._real_keyring() is None
        source, _ = backupkey.ensure(settings_for(tmp_path))
        assert source.kind == "generated"
    finally:
        keyring.set_keyring(previous)


def test_configured_password_file_must_exist(tmp_path):
    settings = settings_for(tmp_path, BACKUP_PASSWORD_FILE=str(tmp_path / "missing"))
    with pytest.raises(UsageError, match="does not exist"):
        backupkey.ensure(settings)


def test_restic_gets_the_password_without_argv_and_maps_errors(tmp_path, monkeypatch):
    monkeypatch.setattr(backupkey, "_real_keyring", lambda: None)
    seen: list[list[str]] = []
    real_run, real_popen = subprocess.run, subprocess.Popen

    def spy_run(argv, *args, **kwargs):
        seen.append(list(argv))
        return real_run(argv, *args, **kwargs)

    class SpyPopen(real_popen):
        def __init__(self, argv, *args, **kwargs):
            seen.append(list(argv))
            super().__init__(argv, *args, **kwargs)

    monkeypatch.setattr(subprocess, "run", spy_run)
    monkeypatch.setattr(subprocess, "Popen", SpyPopen)
    settings = settings_for(tmp_path)
    with pytest.raises(UsageError, match="no backup password yet"):
        open_repository(settings)
    restic, created = open_repository(settings, create_key=True)
    assert created
    assert not restic.exists()
    restic.init()
    data = tmp_path / "data"
    data.mkdir()
    (data / "a.txt").write_text("alpha\n")
    summary = restic.backup_paths(["."], ["sbm", "part=files"], cwd=data)
    assert [s.tag("part") for s in restic.snapshots(["sbm"])] == ["files"]
    assert restic.cat_file(summary.snapshot_id, "/a.txt") == b"alpha\n"
    password = backupkey.key_path(settings).read_text().strip()
    assert seen and not any(password in " ".join(argv) for argv in seen)

    # A wrong password and a missing repository: one clear line each, no password in it.
    backupkey.key_path(settings).write_text("wrong-one\n")
    wrong, _ = open_repository(settings)
    with pytest.raises(ResticError, match="wrong password for the backup repository") as info:
        wrong.snapshots()
    assert "wrong-one" not in str(info.value) and "\n" not in str(info.value)
    nowhere = settings_for(tmp_path, BACKUP_REPOSITORY=str(tmp_path / "nowhere"))
    with pytest.raises(ResticError, match="no backup repository at") as info:
        open_repository(nowhere)[0].snapshots()
    assert info.value.kind == "missing"


def test_backup_key_export_needs_confirmation_in_scripts(tmp_path, monkeypatch):
    env = dict(os.environ, SUPABASE_MANAGER_ROOT=str(tmp_path))
    run = lambda *args: subprocess.run(  # noqa: E731
        [*CLI, *args], env=env, capture_output=True, text=True, stdin=subprocess.DEVNULL
    )
    empty = run("backup", "key")
    assert empty.returncode == 0 and "none yet" in empty.stdout
    monkeypatch.setattr(backupkey, "_real_keyring", lambda: None)
    backupkey.ensure(load_settings(tmp_path, env={}))
    password = (tmp_path / "keys" / "backup.key").read_text().strip()
    info = run("backup", "key")
    assert str(tmp_path / "keys" / "backup.key") in info.stdout and password not in info.stdout
    refused = run("backup", "key", "export")
    assert refused.returncode == 2 and password not in refused.stdout + refused.stderr
    shown = run("backup", "key", "export", "--yes")
    assert shown.returncode == 0 and shown.stdout.strip() == password


def test_scheduled_commands_succeed_before_any_backup(tmp_path):
    """The NixOS timer runs these from day one: with no instance and no repository yet they
    have nothing to do and must not fail."""
    env = dict(os.environ, SUPABASE_MANAGER_ROOT=str(tmp_path))
    for words in (["backup", "--all"], ["backup", "prune"]):
        proc = subprocess.run(
            [*CLI, *words], env=env, capture_output=True, text=True, stdin=subprocess.DEVNULL
        )
        assert proc.returncode == 0, proc.stderr
    assert not (tmp_path / "keys").exists() and not (tmp_path / "backups").exists()


def test_backup_sub_command_words_are_refused_as_new_instance_names(tmp_path):
    """`backup NAME` cannot name an instance called like a sub-command of backup: such names
    are refused at create (and for a restore --as or clone), with nothing written."""
    from controller.names import RESERVED_NAMES
    from shell.commands import TABLE

    subs = {c.words[1] for c in TABLE if c.first == "backup" and len(c.words) > 1}
    assert subs and subs <= RESERVED_NAMES  # a new `backup WORD` must reserve WORD too
    env = dict(os.environ, SUPABASE_MANAGER_ROOT=str(tmp_path))

    def run(*args):
        return subprocess.run(
            [*CLI, *args], env=env, capture_output=True, text=True, stdin=subprocess.DEVNULL
        )

    cases = [("list", ["create", "list"]), ("key", ["create", "key", "--no-start"])]
    cases += [("prune", ["clone", "a", "prune"]), ("check", ["restore", "a", "--as", "check"])]
    for word, words in cases:
        proc = run(*words)
        lines = proc.stderr.strip().splitlines()
        assert proc.returncode == 2 and len(lines) == 1, (words, proc.stderr)
        assert f"invalid instance name '{word}'" in lines[0] and f"(backup {word})" in lines[0]
    assert not (tmp_path / "instances").exists()
    # Names that merely start with such a word stay fine.
    from controller.names import validate_new_name

    assert validate_new_name("list-2") == "list-2"


def test_backup_instance_option_names_an_instance_called_like_a_sub_command(tmp_path):
    env = dict(os.environ, SUPABASE_MANAGER_ROOT=str(tmp_path))

    def run(*args):
        return subprocess.run(
            [*CLI, *args], env=env, capture_output=True, text=True, stdin=subprocess.DEVNULL
        )

    named = run("backup", "--instance", "list", "--tag", "t")
    assert named.returncode == 1 and "no instance named 'list'" in named.stderr
    listing = run("--json", "backup", "list")  # still the listing of backups
    assert "no instance named" not in listing.stderr
    both = run("backup", "--instance", "list", "--all")
    assert both.returncode == 2
