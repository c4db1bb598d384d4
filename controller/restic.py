"""The restic CLI, as a subprocess with ``--json``: the only way this program touches a backup
repository (local path, s3:, b2:, sftp:).

The password reaches restic through its environment (RESTIC_PASSWORD_FILE, or RESTIC_PASSWORD
for the keyring), never argv; backend credentials come from ``[backup] environment_file``.
Errors become one line that says what is wrong (wrong password, no repository, damaged
repository) and never quotes the password.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import IO

import attrs

from controller.backupkey import PasswordSource
from controller.errors import OperationError, UsageError

Progress = Callable[[str], None]


def _quiet(_: str) -> None:
    pass


class ResticError(OperationError):
    """restic failed; ``kind`` is password, missing, damaged, locked or other."""

    def __init__(self, message: str, kind: str = "other") -> None:
        super().__init__(message)
        self.kind = kind


@attrs.frozen
class Snapshot:
    id: str
    short_id: str
    time: str
    paths: tuple[str, ...]
    tags: tuple[str, ...]
    hostname: str

    def tag(self, key: str) -> str | None:
        """The value of a ``key=value`` tag."""
        prefix = key + "="
        return next((t[len(prefix) :] for t in self.tags if t.startswith(prefix)), None)


@attrs.frozen
class Node:
    path: str
    type: str
    size: int


@attrs.frozen
class BackupSummary:
    snapshot_id: str
    bytes_processed: int
    bytes_added: int
    files: int
    seconds: float


def human(size: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} GiB"


def read_env_file(path: Path) -> dict[str, str]:
    """KEY=VALUE lines (``#`` comments, optional quotes) for the backend's credentials."""
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise UsageError(f"backup.environment_file {path} cannot be read: {exc.strerror}") from None
    values = {}
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        key, eq, value = line.removeprefix("export ").partition("=")
        if not eq or not key.strip().replace("_", "").isalnum():
            raise UsageError(f"backup.environment_file {path}: line {number} is not KEY=VALUE")
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        values[key.strip()] = value
    return values


class Restic:
    """One repository. Each method runs one restic command."""

    def __init__(
        self,
        repository: str,
        password: PasswordSource,
        environment: Mapping[str, str] | None = None,
        binary: str = "restic",
    ) -> None:
        self.repository = repository
        self.password = password
        self.environment = dict(environment or {})
        self.binary = binary

    # --- plumbing --------------------------------------------------------------------------
    def _env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("RESTIC_")}
        env.update(self.environment)
        env.update(self.password.env())
        env["RESTIC_REPOSITORY"] = self.repository
        env.setdefault("RESTIC_PROGRESS_FPS", "1")
        return env

    def _argv(self, args: Sequence[str]) -> list[str]:
        if shutil.which(self.binary) is None:
            raise OperationError(
                "restic is not installed (Debian: apt-get install restic; nixpkgs: restic)"
            )
        return [self.binary, *args]

    def _error(self, stderr: str, what: str) -> ResticError:
        text = stderr or ""
        lower = text.lower()
        if "wrong password" in lower or "no key found" in lower:
            return ResticError(
                f"wrong password for the backup repository {self.repository} "
                f"(password from {self.password.kind} {self.password.where})",
                "password",
            )
        if (
            "is there a repository at the following location" in lower
            or "unable to open config file" in lower
            or "repository does not exist" in lower
            or "the specified bucket does not exist" in lower
        ):
            return ResticError(f"no backup repository at {self.repository}", "missing")
        if "repo already locked" in lower or "unable to create lock" in lower:
            return ResticError(
                f"the backup repository {self.repository} is locked by another restic "
                "command; try again when it is done",
                "locked",
            )
        lines = [
            line.strip()
            for line in text.splitlines()
            if line.strip() and not line.strip().startswith("{")
        ]
        fatal = [line for line in lines if line.startswith("Fatal:")]
        detail = (fatal or lines or ["no message"])[-1].removeprefix("Fatal:").strip()
        damaged = any(
            word in lower
            for word in ("repository contains errors", "ciphertext verification failed", "pack")
        )
        kind = "damaged" if damaged and "no such file" not in lower else "other"
        if kind == "damaged":
            return ResticError(
                f"restic {what} failed: the backup repository is damaged ({detail[:160]}); "
                "run `backup check --read-data`",
                kind,
            )
        return ResticError(f"restic {what} failed: {detail[:200]}", kind)

    def run(
        self, args: Sequence[str], what: str, stdin: IO[bytes] | int | None = None
    ) -> subprocess.CompletedProcess:
        proc = subprocess.run(
            self._argv(args),
            env=self._env(),
            stdin=stdin if stdin is not None else subprocess.DEVNULL,
            capture_output=True,
            text=True,
        )
        if proc.returncode != 0:
            raise self._error(proc.stderr, what)
        return proc

    def _json_lines(self, stdout: str) -> list[dict]:
        out = []
        for line in stdout.splitlines():
            line = line.strip()
            if line.startswith(("{", "[")):
                try:
                    out.append(json.loads(line))
                except json.JSONDecodeError:
                    continue
        return out

    # --- repository ------------------------------------------------------------------------
    def exists(self) -> bool:
        """Whether a repository answers with this password (False only when there is none)."""
        try:
            self.run(["cat", "config", "--no-lock"], "cat config")
        except ResticError as exc:
            if exc.kind == "missing":
                return False
            raise
        return True

    def init(self) -> None:
        self.run(["init"], "init")

    def unlock(self) -> None:
        """Remove stale locks (of restic processes that died, e.g. a killed backup)."""
        self.run(["unlock"], "unlock")

    def snapshots(self, tags: Iterable[str] = ()) -> list[Snapshot]:
        args = ["snapshots", "--json", "--no-lock"]
        for tag in tags:
            args += ["--tag", tag]
        data = json.loads(self.run(args, "snapshots").stdout or "[]")
        return [
            Snapshot(
                id=item["id"],
                short_id=item.get("short_id") or item["id"][:8],
                time=item.get("time", ""),
                paths=tuple(item.get("paths") or ()),
                tags=tuple(item.get("tags") or ()),
                hostname=item.get("hostname", ""),
            )
            for item in data or []
        ]

    def ls(self, snapshot: str) -> list[Node]:
        proc = self.run(["ls", "--json", "--no-lock", snapshot], "ls")
        return [
            Node(item["path"], item.get("type", ""), int(item.get("size") or 0))
            for item in self._json_lines(proc.stdout)
            if item.get("struct_type") == "node"
        ]

    def check(self, read_data: bool = False) -> str:
        args = ["check"] + (["--read-data"] if read_data else [])
        proc = self.run(args, "check")
        lines = [line for line in proc.stdout.splitlines() if line.strip()]
        return lines[-1] if lines else "no errors were found"

    def forget(self, snapshot_ids: Sequence[str] = (), prune: bool = False) -> None:
        if not snapshot_ids:
            return
        self.run(["forget", *(["--prune"] if prune else []), *snapshot_ids], "forget")

    def forget_policy(self, keep: Mapping[str, int], tags: Sequence[str]) -> list[str]:
        """Which snapshots carrying ``tags`` (taken as one group) a keep policy would drop;
        nothing is removed here."""
        args = ["forget", "--json", "--dry-run", "--no-lock", "--group-by", ""]
        for tag in tags:
            args += ["--tag", tag]
        for kind, count in keep.items():
            args += [f"--keep-{kind}", str(count)]
        proc = self.run(args, "forget")
        removed = []
        for group in self._json_lines(proc.stdout):
            for entry in group if isinstance(group, list) else [group]:
                if isinstance(entry, dict):
                    removed += [s["id"] for s in entry.get("remove") or []]
        return removed

    def prune(self) -> None:
        self.run(["prune"], "prune")

    # --- data ------------------------------------------------------------------------------
    def _stream_backup(
        self, args: list[str], what: str, progress: Progress, cwd: Path | None, stdin
    ) -> BackupSummary:
        proc = subprocess.Popen(
            self._argv(args),
            env=self._env(),
            cwd=cwd,
            stdin=stdin if stdin is not None else subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        summary: dict = {}
        last = 0.0
        assert proc.stdout is not None and proc.stderr is not None
        try:
            for line in proc.stdout:
                try:
                    item = json.loads(line)
                except json.JSONDecodeError:
                    continue
                kind = item.get("message_type")
                if kind == "summary":
                    summary = item
                elif kind == "status" and time.monotonic() - last >= 1.0:
                    last = time.monotonic()
                    done = item.get("bytes_done") or 0
                    percent = item.get("percent_done")
                    share = (
                        f" ({percent * 100:.0f}%)" if percent and item.get("total_bytes") else ""
                    )
                    progress(f"{what}: {human(done)}{share}")
            stderr = proc.stderr.read()
        finally:
            code = proc.wait()
        if code != 0 or not summary.get("snapshot_id"):
            raise self._error(stderr, "backup")
        return BackupSummary(
            snapshot_id=summary["snapshot_id"],
            bytes_processed=int(summary.get("total_bytes_processed") or 0),
            bytes_added=int(summary.get("data_added") or 0),
            files=int(summary.get("total_files_processed") or 0),
            seconds=float(summary.get("total_duration") or 0),
        )

    def backup_paths(
        self,
        paths: Sequence[str],
        tags: Sequence[str],
        cwd: Path | None = None,
        excludes: Sequence[str] = (),
        host: str | None = None,
        progress: Progress = _quiet,
        what: str = "files",
    ) -> BackupSummary:
        args = ["backup", "--json"]
        for tag in tags:
            args += ["--tag", tag]
        for pattern in excludes:
            args += ["--exclude", pattern]
        if host:
            args += ["--host", host]
        return self._stream_backup([*args, "--", *paths], what, progress, cwd, None)

    def backup_stdin(
        self,
        stdin: IO[bytes] | int,
        filename: str,
        tags: Sequence[str],
        host: str | None = None,
        progress: Progress = _quiet,
        what: str = "stream",
    ) -> BackupSummary:
        args = ["backup", "--json", "--stdin", "--stdin-filename", filename]
        for tag in tags:
            args += ["--tag", tag]
        if host:
            args += ["--host", host]
        return self._stream_backup(args, what, progress, None, stdin)

    def restore(self, snapshot: str, target: Path, progress: Progress = _quiet) -> None:
        progress(f"restoring files of snapshot {snapshot[:8]}")
        self.run(["restore", snapshot, "--target", str(target)], "restore")

    def dump(self, snapshot: str, path: str) -> subprocess.Popen:
        """A running ``restic dump``; its stdout is the file's bytes. Call ``finish_dump``."""
        return subprocess.Popen(
            self._argv(["dump", "--no-lock", snapshot, path]),
            env=self._env(),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )

    def finish_dump(self, proc: subprocess.Popen) -> None:
        assert proc.stderr is not None
        stderr = proc.stderr.read().decode(errors="replace")
        if proc.wait() != 0:
            raise self._error(stderr, "dump")

    def cat_file(self, snapshot: str, path: str) -> bytes:
        proc = subprocess.run(
            self._argv(["dump", "--no-lock", snapshot, path]),
            env=self._env(),
            stdin=subprocess.DEVNULL,
            capture_output=True,
        )
        if proc.returncode != 0:
            raise self._error(proc.stderr.decode(errors="replace"), "dump")
        return proc.stdout
