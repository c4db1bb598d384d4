"""What the Caddy adapter needs to know, as one small frozen value (no settings object, no
environment lookups inside the adapter)."""

from pathlib import Path

import attrs

ID_PREFIX = "sbm-"
# The key of the ``vars`` handler every route of ours carries, valued "OWNER/NAME": it survives
# the Caddyfile (which cannot set ``@id``), so id-less copies that a reload brings back from our
# snippets are still known to be ours, and whose.
MARKER = "supabase_manager"


@attrs.frozen
class CaddyConfig:
    """Where Caddy's admin API is, how sites are addressed, and whose routes are ours.

    ``admin``: ``http://host:port``, ``host:port`` or ``unix//path/admin.sock``.
    ``owner``: this data root's id (the one its Docker objects are labelled with): route ids
    ``sbm-OWNER-NAME`` and markers ``OWNER/NAME`` tell its routes from any other's.
    ``lock_path``: an flock file that serializes every change (admin writes and snippet files)
    made by any process of this data root. ``bind``: the host a server the adapter has to create
    listens on ("" = every interface).
    """

    admin: str
    lock_path: Path
    snippet_dir: Path
    scheme: str = "https"
    public_port: int = 443
    owner: str = "local"
    bind: str = ""

    def __attrs_post_init__(self) -> None:
        if self.scheme not in ("http", "https"):
            raise ValueError(f"scheme must be http or https, not {self.scheme!r}")
        if not 0 < self.public_port < 65536:
            raise ValueError(f"invalid public port {self.public_port!r}")
        if not self.owner or "/" in self.owner or "-" in self.owner:
            raise ValueError(f"invalid owner {self.owner!r}")

    @property
    def id_prefix(self) -> str:
        return f"{ID_PREFIX}{self.owner}-"

    def route_id(self, name: str) -> str:
        return self.id_prefix + name

    def marker(self, name: str) -> str:
        return f"{self.owner}/{name}"

    def snippet_path(self, name: str) -> Path:
        return self.snippet_dir / f"{name}.conf"

    def site_address(self, host: str) -> str:
        """``scheme://host[:port]``, no port when the scheme implies it."""
        default = {"https": 443, "http": 80}[self.scheme]
        port = "" if self.public_port == default else f":{self.public_port}"
        return f"{self.scheme}://{host}{port}"
