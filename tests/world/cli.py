"""The program run as a user runs it: a subprocess against one ROOT and one real Caddy."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.world.caddy import CaddyProcess

CLI = [sys.executable, "-m", "shell"]


class CliRoot:
    """A data root served by ``caddy``; ``run`` calls the CLI with settings in the environment."""

    def __init__(self, root: Path, caddy: CaddyProcess, **extra_env: str) -> None:
        self.root = root
        self.caddy = caddy
        self.env = {
            **os.environ,
            "SUPABASE_MANAGER_ROOT": str(root),
            "SUPABASE_MANAGER_DOMAIN": "sbm.test",
            "SUPABASE_MANAGER_SCHEME": "http",
            "SUPABASE_MANAGER_PUBLIC_PORT": str(caddy.http_port),
            "SUPABASE_MANAGER_CADDY_ADMIN": caddy.admin_url,
            "SUPABASE_MANAGER_WAIT_TIMEOUT": "120",
            "NO_COLOR": "1",
            **extra_env,
        }

    def run(self, *args: str, check: bool = True, env: dict | None = None, timeout: float = 300):
        proc = subprocess.run(
            [*CLI, *args],
            env={**self.env, **(env or {})},
            capture_output=True,
            text=True,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
        )
        if check and proc.returncode != 0:
            raise AssertionError(f"{args} exited {proc.returncode}: {proc.stderr}")
        return proc

    def json(self, *args: str, env: dict | None = None):
        return json.loads(self.run("--json", *args, env=env).stdout)
