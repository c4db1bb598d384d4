"""Caddyfile snippets ROOT/caddy/NAME.conf: the same routes as the live config, as text Caddy's
Caddyfile imports (``import ROOT/caddy/*.conf``), so instances survive a restart or reload.

A snippet is validated with ``POST /adapt`` when Caddy answers; one Caddy rejects never replaces
a good one (one bad imported file would make every later ``caddy reload`` fail).
"""

import contextlib
import logging
import os
import re
from pathlib import Path

from controller.caddy.admin import AdminClient, AdminError
from controller.caddy.config import MARKER as VARS_KEY
from controller.caddy.config import CaddyConfig
from controller.caddy.routes import AUTH_ROLES, STREAM_CLOSE_DELAY, SiteSpec, check_spec
from controller.errors import CaddyUnavailable, OperationError
from controller.fsutil import atomic_write

log = logging.getLogger(__name__)

HEADER = "# supabase-manager: instance {name}. Generated; `caddy sync` rewrites it.\n"
MARKER = "# supabase-manager: instance "
FILE_MODE = 0o640  # holds a bcrypt hash; Caddy's group reads it
DIR_MODE = 0o750


def site_addresses(cfg: CaddyConfig, spec: SiteSpec) -> list[str]:
    """Caddyfile site addresses: ``scheme://host[:port]``, no port when the scheme implies it."""
    return [cfg.site_address(host) for _, host, _ in spec.routed()]


def render_snippet(cfg: CaddyConfig, spec: SiteSpec) -> str:
    """One site block with the instance's addresses, our marker and a host matcher per role."""
    check_spec(spec)
    lines = [HEADER.format(name=spec.name).rstrip("\n")]
    lines.append(", ".join(site_addresses(cfg, spec)) + " {")
    lines.append(f'\tvars {VARS_KEY} "{cfg.marker(spec.name)}"')
    for role, host, upstream in spec.routed():
        lines.append(f"\t@{role} host {host}")
        lines.append(f"\thandle @{role} {{")
        if role in AUTH_ROLES:
            lines.append("\t\tbasic_auth {")
            lines.append(f'\t\t\t"{spec.user}" {spec.password_hash}')
            lines.append("\t\t}")
        lines.append(f"\t\treverse_proxy {upstream} {{")
        lines.append(f"\t\t\tstream_close_delay {STREAM_CLOSE_DELAY}")
        lines.append("\t\t}")
        lines.append("\t}")
    lines.append("}")
    return "\n".join(lines) + "\n"


def site_line_addresses(text: str) -> set[str]:
    """Site addresses of the site blocks in a snippet (lines at column 0 ending with ``{``)."""
    found: set[str] = set()
    for line in text.splitlines():
        if line[:1] in ("", "#", "\t", " ", "(", "{", "}") or not line.rstrip().endswith("{"):
            continue
        for address in line.rstrip()[:-1].replace(",", " ").split():
            found.add(address.lower())
    return found


def is_ours(path: Path) -> bool:
    try:
        with open(path) as handle:
            return handle.readline().startswith(MARKER)
    except OSError:
        return False


_HASH = re.compile(r"\$2[aby]\$\d\d\$[./A-Za-z0-9]{53}")


def published_hashes(path: Path) -> list[str]:
    """The bcrypt hashes in a snippet (what Caddy checks passwords against)."""
    try:
        return _HASH.findall(Path(path).read_text())
    except OSError:
        return []


def validate(client: AdminClient, text: str, notes: list[str] | None = None) -> bool:
    """True when Caddy adapted ``text``; False when Caddy could not be asked (a note says so).
    OperationError when Caddy rejects it."""
    try:
        client.adapt(text)
    except CaddyUnavailable:
        note = "Caddy is not reachable: snippet written without validation by Caddy"
        # The caller reports notes; logging them too would print them a second time.
        log.debug(note)
        if notes is not None:
            notes.append(note)
        return False
    except AdminError as exc:
        raise OperationError(f"Caddy rejects the snippet: {exc}") from None
    return True


def _ensure_folder(folder: Path) -> None:
    # Only a new folder gets its mode: an admin may have set a group (caddy) and setgid on it.
    if not folder.is_dir():
        folder.mkdir(parents=True, exist_ok=True)
        os.chmod(folder, DIR_MODE)


def write_snippet(
    cfg: CaddyConfig,
    spec: SiteSpec,
    notes: list[str] | None = None,
    client: AdminClient | None = None,
    index: dict[str, str] | None = None,
) -> Path:
    """Write ROOT/caddy/NAME.conf atomically (0640) unless it already holds the same text.

    The text is validated through ``client`` (no client: not validated). Raises OperationError
    (and keeps the old file) when Caddy rejects the text or another snippet already claims one of
    its addresses. When Caddy is down the file is written unvalidated and a line is added to
    ``notes``. ``index`` (from ``address_index``, kept up to date here) saves reading every other
    snippet when many are written in a row. Callers hold the adapter's lock (sync.locked).
    """
    path = cfg.snippet_path(spec.name)
    text = render_snippet(cfg, spec)
    with contextlib.suppress(FileNotFoundError):
        if path.read_text() == text:
            return path
    mine = site_line_addresses(text)
    if index is None:
        index = address_index(cfg)
    taken = sorted(a for a in mine if index.get(a, spec.name) != spec.name)
    if taken:
        owners = sorted({index[a] for a in taken})
        raise OperationError(
            f"instance {spec.name}: {', '.join(f'{o}.conf' for o in owners)} already "
            f"defines {', '.join(taken)}"
        )
    if client is not None:
        try:
            validate(client, text, notes)
        except OperationError as exc:
            raise OperationError(
                f"instance {spec.name}: {exc}; {path.name} was left as it was"
            ) from None
    _ensure_folder(path.parent)
    atomic_write(path, text, FILE_MODE)
    for address in [a for a, owner in index.items() if owner == spec.name]:
        del index[address]
    index.update(dict.fromkeys(mine, spec.name))
    return path


def address_index(cfg: CaddyConfig) -> dict[str, str]:
    """Site address -> name of the snippet (any ``*.conf`` in the folder) that defines it."""
    index: dict[str, str] = {}
    folder = cfg.snippet_dir
    if not folder.is_dir():
        return index
    for path in sorted(folder.glob("*.conf")):
        try:
            text = path.read_text()
        except OSError:
            continue
        for address in site_line_addresses(text):
            index.setdefault(address, path.stem)
    return index


def remove_snippet(cfg: CaddyConfig, name: str) -> None:
    path = cfg.snippet_path(name)
    try:
        path.unlink()
    except FileNotFoundError:
        return
    fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def snippet_names(cfg: CaddyConfig) -> list[str]:
    """Names of the instances that have a snippet written by us."""
    folder = cfg.snippet_dir
    if not folder.is_dir():
        return []
    return sorted(p.stem for p in folder.glob("*.conf") if is_ours(p))
