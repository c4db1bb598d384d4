"""A small client for Caddy's admin API over TCP (``http://host:port``) or a unix socket
(``unix//path/admin.sock``).

Every write to the admin API reloads Caddy's whole config and restarts the admin server, and
concurrent writes lose changes: writers hold an flock (see controller.caddy.sync), read with
``get`` (which returns the ETag), then write with ``If-Match`` so a change made in between is
refused (412, ``Conflict``) instead of lost.

The client takes an httpx transport, so the same code runs against a real Caddy and against
``httpx.MockTransport`` in unit tests.
"""

import json
from typing import Any

import httpx

from controller.errors import CaddyUnavailable, OperationError

# A config load at 1500 sites takes well under a second; a stuck Caddy should not hang a command.
DEFAULT_TIMEOUT = 30.0
CONNECT_TIMEOUT = 3.0


class Conflict(Exception):
    """The config changed since it was read (HTTP 412): read again and redo the change."""


class AdminError(OperationError):
    """Caddy answered and refused the request."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


def parse_admin(address: str) -> tuple[str, str | None]:
    """``(base_url, unix_socket_path)`` for an admin address.

    Accepts ``http://host:port``, ``host:port``, ``:port``, ``unix//path`` and ``unix/path`` (a
    trailing ``|mode`` as in Caddy's own ``admin`` option is ignored).
    """
    text = address.strip()
    if text.startswith("unix/"):
        path = text[len("unix/") :].split("|", 1)[0]
        if not path.startswith("/"):
            path = "/" + path
        return "http://localhost", path
    if text.startswith(("http://", "https://")):
        return text.rstrip("/"), None
    if text.startswith(":"):
        text = "localhost" + text
    return "http://" + text.rstrip("/"), None


def _error_text(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return response.text.strip()[:300] or response.reason_phrase
    if isinstance(body, dict) and "error" in body:
        return str(body["error"])
    return json.dumps(body)[:300]


class AdminClient:
    """One connection pool to one Caddy admin endpoint. Use as a context manager."""

    def __init__(
        self,
        address: str,
        timeout: float = DEFAULT_TIMEOUT,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.address = address
        base_url, uds = parse_admin(address)
        if transport is None:
            # A TLS context costs ~35 ms (CA bundle): only an https admin address needs one.
            tls = base_url.startswith("https://")
            transport = httpx.HTTPTransport(uds=uds, verify=tls)
        self._client = httpx.Client(
            base_url=base_url,
            transport=transport,
            timeout=httpx.Timeout(timeout, connect=min(timeout, CONNECT_TIMEOUT)),
            # Caddy checks Host against its admin listener; httpx sends the base URL's host.
            headers={"Accept": "application/json"},
        )

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> "AdminClient":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- raw requests ------------------------------------------------------------------------
    def request(
        self,
        method: str,
        path: str,
        *,
        body: Any = None,
        content: str | bytes | None = None,
        content_type: str = "application/json",
        etag: str | None = None,
    ) -> httpx.Response:
        """Send one request; raise CaddyUnavailable when Caddy cannot be reached, Conflict on
        412 and AdminError on any other error status."""
        headers = {}
        if etag:
            headers["If-Match"] = etag
        if body is not None:
            content = json.dumps(body, separators=(",", ":"))
        if content is not None:
            headers["Content-Type"] = content_type
        try:
            response = self._client.request(method, path, content=content, headers=headers)
        except httpx.TransportError as exc:
            raise CaddyUnavailable(
                f"Caddy admin API at {self.address} cannot be reached: "
                f"{type(exc).__name__}: {exc or 'no answer'}"
            ) from None
        if response.status_code == 412:
            raise Conflict(_error_text(response))
        if response.status_code >= 400:
            raise AdminError(
                f"Caddy refused {method} {path}: {_error_text(response)}", response.status_code
            )
        return response

    def get(self, path: str) -> tuple[Any, str | None]:
        """The JSON at ``path`` (None when the path does not exist) and its ETag."""
        response = self.request("GET", path)
        data = response.json() if response.content else None
        return data, response.headers.get("Etag")

    def text(self, path: str) -> str:
        return self.request("GET", path).text

    def adapt(self, caddyfile: str) -> dict:
        """Caddyfile text to JSON without loading it; AdminError when Caddy rejects the text."""
        response = self.request(
            "POST", "/adapt", content=caddyfile.encode(), content_type="text/caddyfile"
        )
        return response.json()

    def reachable(self) -> bool:
        try:
            self.request("GET", "/config/admin")
        except CaddyUnavailable:
            return False
        except AdminError:
            return True
        return True
