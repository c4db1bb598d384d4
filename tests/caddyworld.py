"""Test helpers for the Caddy adapter: small loopback HTTP and WebSocket backends that stand in
for an instance's gateway, Studio and mail UI. The Caddy itself is tests.world.caddy.CaddyProcess
(conftest's ``caddy`` fixture)."""

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class _LoopbackServer:
    """A server on 127.0.0.1 run by serve_forever in a daemon thread; ``upstream`` dials it."""

    def _serve(self, server, port: int, *serve_args: object) -> None:
        self.server, self.port = server, port
        self.thread = threading.Thread(target=server.serve_forever, args=serve_args, daemon=True)
        self.thread.start()

    @property
    def upstream(self) -> str:
        return f"127.0.0.1:{self.port}"

    def close(self) -> None:
        self.server.shutdown()


class Backend(_LoopbackServer):
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

        server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        server.daemon_threads = True
        # A short poll: shutdown() waits for the loop to wake (0.5 s at the default).
        self._serve(server, server.server_address[1], 0.02)

    def close(self) -> None:
        super().close()
        self.server.server_close()


class EchoWebSocket(_LoopbackServer):
    """A websockets echo server on loopback (stands in for Realtime)."""

    def __init__(self) -> None:
        from websockets.sync.server import serve

        def echo(conn) -> None:
            for message in conn:
                conn.send(message)

        server = serve(echo, "127.0.0.1", 0)
        self._serve(server, server.socket.getsockname()[1])
