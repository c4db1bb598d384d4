"""Test helpers for the Caddy adapter: a real Caddy on loopback, shaped like conftest's ``caddy``
fixture (admin_url, http_port, caddyfile, snippet_dir, stop/start/restart/reload), plus small HTTP
and WebSocket backends that stand in for an instance's gateway, Studio and mail UI."""

import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx

CADDY = shutil.which("caddy", path=str(Path(sys.executable).parent)) or shutil.which("caddy")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def admin_client(admin_url: str, timeout: float = 5.0) -> httpx.Client:
    if admin_url.startswith("unix/"):
        path = "/" + admin_url[len("unix/") :].lstrip("/").split("|", 1)[0]
        return httpx.Client(
            base_url="http://localhost", transport=httpx.HTTPTransport(uds=path), timeout=timeout
        )
    return httpx.Client(base_url=admin_url, timeout=timeout)


class CaddyWorld:
    """A Caddy run from a Caddyfile that imports ``data_root/caddy/*.conf``."""

    def __init__(self, data_root: Path, unix_socket: bool = False) -> None:
        self.data_root = Path(data_root)
        self.home = (
            Path(os.environ.get("TMPDIR", "/tmp")) / f"caddyworld-{os.getpid()}-{free_port()}"
        )
        self.home.mkdir(parents=True)
        self.http_port = free_port()
        if unix_socket:
            self.admin_url = f"unix/{self.home / 'admin.sock'}"
            admin_line = f"admin {self.admin_url}|0600"
        else:
            port = free_port()
            self.admin_url = f"http://127.0.0.1:{port}"
            admin_line = f"admin 127.0.0.1:{port}"
        self.snippet_dir = self.data_root / "caddy"
        self.caddyfile = self.home / "Caddyfile"
        self.caddyfile.write_text(
            "{\n"
            f"\t{admin_line}\n"
            "\tauto_https off\n"
            "\tmetrics {\n\t\tper_host\n\t}\n"
            "\tgrace_period 2s\n"
            f"\tservers 127.0.0.1:{self.http_port} {{\n\t\tname supabase\n\t}}\n"
            "\tdefault_bind 127.0.0.1\n"
            "}\n"
            f"import {self.snippet_dir}/*.conf\n"
        )
        self.env = {
            **os.environ,
            "HOME": str(self.home),
            "XDG_DATA_HOME": str(self.home / "data"),
            "XDG_CONFIG_HOME": str(self.home / "config"),
        }
        self.proc: subprocess.Popen | None = None
        self.log = self.home / "caddy.log"

    def start(self) -> None:
        assert self.proc is None
        self.proc = subprocess.Popen(
            [CADDY, "run", "--config", str(self.caddyfile), "--adapter", "caddyfile"],
            env=self.env,
            stdout=subprocess.DEVNULL,
            stderr=open(self.log, "ab"),  # noqa: SIM115 - the child keeps it
            start_new_session=True,
        )
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"caddy exited: {self.log.read_text()[-2000:]}")
            with contextlib.suppress(httpx.TransportError), admin_client(self.admin_url) as c:
                if c.get("/config/").status_code == 200:
                    return
            time.sleep(0.05)
        raise RuntimeError("caddy admin did not come up")

    def stop(self) -> None:
        if self.proc is None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.proc = None

    def restart(self) -> None:
        self.stop()
        self.start()

    def reload(self) -> None:
        subprocess.run(
            [
                CADDY,
                "reload",
                "--config",
                str(self.caddyfile),
                "--adapter",
                "caddyfile",
                "--address",
                self.admin_url.removeprefix("http://"),
            ],
            env=self.env,
            check=True,
            capture_output=True,
            timeout=30,
        )

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.home, ignore_errors=True)

    def config(self) -> dict:
        with admin_client(self.admin_url) as c:
            return c.get("/config/").json() or {}

    def routes(self) -> list[dict]:
        servers = self.config().get("apps", {}).get("http", {}).get("servers", {})
        return [r for s in servers.values() for r in s.get("routes", [])]


class Backend:
    """A loopback HTTP server answering ``"<instance> <role>"`` and counting what it saw."""

    def __init__(self, instance: str, role: str) -> None:
        self.instance, self.role = instance, role
        self.seen: list[str] = []  # Host headers
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                outer.seen.append(self.headers.get("Host", ""))
                body = json.dumps(
                    {"instance": outer.instance, "role": outer.role, "host": self.headers["Host"]}
                ).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def upstream(self) -> str:
        return f"127.0.0.1:{self.port}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class EchoWebSocket:
    """A websockets echo server on loopback (stands in for Realtime)."""

    def __init__(self) -> None:
        from websockets.sync.server import serve

        def echo(conn) -> None:
            for message in conn:
                conn.send(message)

        self.server = serve(echo, "127.0.0.1", 0)
        self.port = self.server.socket.getsockname()[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def upstream(self) -> str:
        return f"127.0.0.1:{self.port}"

    def close(self) -> None:
        self.server.shutdown()
