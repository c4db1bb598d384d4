"""Hosts: Docker engines on other machines, reached over SSH (`host add`, `host remove`,
`host list`), and where a new instance goes (`create` without --host).

`host add` checks everything before it records the host: the URL and the bind address, then
over ssh with a probe config (the host is not in ROOT/ssh/config yet) that the machine answers,
that its key is known (or, with --accept-new-key, records it in ROOT/ssh/known_hosts through
ssh's own StrictHostKeyChecking=accept-new), that the key is accepted, and that Docker and the
compose plugin are there and the bind address is one of the machine's own.
"""

from __future__ import annotations

import ipaddress
import re
from urllib.parse import urlsplit

import attrs

from controller.errors import OperationError, UsageError
from controller.ops.base import Context, audited, check_writable
from controller.state import LOCAL_HOST, HostRecord, State

_HOST_NAME = re.compile(r"[a-z][a-z0-9-]{0,30}[a-z0-9]|[a-z]", re.ASCII)
_USER = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,31}", re.ASCII)
_DNS = re.compile(
    r"(?=.{1,253}$)[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
    r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*",
    re.ASCII,
)


def validate_host_name(name: str) -> str:
    if name == LOCAL_HOST:
        raise UsageError("host name 'local' is this machine's engine; choose another name")
    if not _HOST_NAME.fullmatch(name or ""):
        raise UsageError(
            f"invalid host name {name!r}: lowercase letters, digits and '-', starting with a "
            "letter, at most 32 characters"
        )
    return name


def parse_url(url: str) -> tuple[str, str, int]:
    """``ssh://USER@ADDRESS[:PORT]`` -> (user, address, port)."""
    parts = urlsplit(url.strip())
    problem = "expected ssh://USER@ADDRESS[:PORT]"
    if parts.scheme != "ssh" or parts.path not in ("", "/") or parts.query or parts.fragment:
        raise UsageError(f"invalid host URL {url!r}: {problem}")
    try:
        port = parts.port or 22
    except ValueError:
        raise UsageError(f"invalid host URL {url!r}: bad port") from None
    user, address = parts.username or "", parts.hostname or ""
    if not user or parts.password is not None or not _USER.fullmatch(user):
        raise UsageError(f"invalid host URL {url!r}: {problem} (a plain user name)")
    if not address or not (_is_ip(address) or _DNS.fullmatch(address)):
        raise UsageError(f"invalid host URL {url!r}: bad address {address!r}")
    return user, address, port


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def check_bind(bind: str) -> str:
    """An address ports may be published on: one unicast IP, never 0.0.0.0 or ::."""
    try:
        address = ipaddress.ip_address(bind.strip())
    except ValueError:
        raise UsageError(f"invalid --bind {bind!r}: give one IP address of the host") from None
    if address.is_unspecified or address.is_multicast:
        raise UsageError(
            f"invalid --bind {bind!r}: instance ports are bound to one private address of the "
            "host (e.g. its WireGuard one), never every address"
        )
    return str(address)


def check_data_root(path: str) -> str:
    text = path.strip()
    if not text.startswith("/") or ".." in text.split("/") or any(c in text for c in "\n\r\0"):
        raise UsageError(f"invalid --data-root {path!r}: give an absolute folder on the host")
    return text.rstrip("/") or "/"


def add(
    ctx: Context,
    name: str,
    url: str,
    bind: str | None = None,
    data_root: str | None = None,
    accept_new_key: bool = False,
) -> HostRecord:
    """Check the host over ssh and record it; returns its record."""
    from controller import ssh
    from controller.hosts import write_ssh_config

    validate_host_name(name)
    user, address, port = parse_url(url)
    if bind is None and not _is_ip(address):
        raise UsageError(f"--bind is needed: {address} is a name, and ports bind to an address")
    bind_address = check_bind(bind if bind is not None else address)
    root = check_data_root(data_root) if data_root else ""
    check_writable(ctx)
    record = HostRecord(name, user, address, port, bind_address, root)
    known = ctx.store.read().hosts.get(name)
    if known is not None:
        # Adding the same host again changes nothing (the NixOS unit does it on every boot).
        if _same_host(known, record):
            return known
        raise UsageError(
            f"host {name!r} already exists with other settings (`host remove {name}` first)"
        )
    files = ssh.SshFiles.of(ctx.settings.root, ctx.settings.ssh_identity)
    with audited(ctx, f"host add {name}", None):
        probe_config = files.folder / f"config.add-{name}"
        try:
            known_before = files.known_hosts.read_bytes()
        except FileNotFoundError:
            known_before = b""
        try:
            _probe(ctx, files, record, accept_new_key, probe_config)
        except BaseException:
            # A refused host leaves nothing behind, not even the key --accept-new-key recorded.
            from controller.fsutil import atomic_write

            if files.known_hosts.exists():
                atomic_write(files.known_hosts, known_before, mode=0o600)
            raise
        finally:
            probe_config.unlink(missing_ok=True)
        with ctx.store.transaction() as state:
            if name in state.hosts:
                raise UsageError(f"host {name!r} already exists")
            state.hosts[name] = record
            write_ssh_config(ctx.settings, state)
    return record


def _same_host(a: HostRecord, b: HostRecord) -> bool:
    fields = ("user", "address", "port", "bind", "data_root")
    return all(getattr(a, f) == getattr(b, f) for f in fields)


def _probe(ctx: Context, files, record: HostRecord, accept_new_key: bool, config) -> None:
    """Reach the host (its key checked), find Docker and compose there and its bind address."""
    from controller import ssh

    name = record.name
    try:
        ssh.write_config(
            files,
            [record],
            ctx.settings.ssh_identity,
            [name] if accept_new_key else [],
            config,
            known_hosts=ctx.settings.ssh_known_hosts,
            multiplex=False,
        )
        info = ssh.probe(files, name, config)
    except ssh.SshError as exc:
        if exc.kind in ("unknown-key", "changed-key"):
            raise UsageError(str(exc)) from None
        raise
    if info.addresses and record.bind not in info.addresses:
        raise UsageError(
            f"--bind {record.bind} is not an address of host {name} "
            f"(it has {', '.join(a for a in info.addresses if a) or 'none'})"
        )


def remove(ctx: Context, name: str) -> None:
    """Forget a host that runs no instance (its SSH key too)."""
    from controller import ssh
    from controller.hosts import write_ssh_config

    check_writable(ctx)
    state = ctx.store.read()
    if name not in state.hosts:
        raise UsageError(f"no host named {name!r} (see `host list`)")
    with audited(ctx, f"host remove {name}", None):
        with ctx.store.transaction() as state:
            record = state.hosts.get(name)
            if record is None:
                raise UsageError(f"no host named {name!r}")
            users = sorted(n for n, r in state.instances.items() if r.host == name)
            if users:
                raise UsageError(
                    f"host {name} still runs {len(users)} instance(s) ({', '.join(users[:5])}): "
                    "move or delete them first"
                )
            files = ssh.SshFiles.of(ctx.settings.root, ctx.settings.ssh_identity)
            old = ssh.OldBlock.of(files, name)
            del state.hosts[name]
            write_ssh_config(ctx.settings, state)
            old.end()  # after the rewrite: no new master can start on the old block
            # Another name for the same machine (e.g. with another data root) still needs its key.
            shared = any(
                (other.address, other.port) == (record.address, record.port)
                for other in state.hosts.values()
            )
        if not shared:
            ssh.forget_host_key(files, record)


# --- host list ------------------------------------------------------------------------------------


@attrs.define
class HostSummary:
    """One row of `host list`. The figures after ``instances`` are filled by ``details``
    (None: not asked, or the host did not answer; ``error`` says why)."""

    name: str
    url: str  # ssh://USER@ADDRESS[:PORT]; "" for local
    bind: str
    data_root: str
    instances: int
    reachable: bool | None = None
    docker_version: str | None = None
    cpus: int | None = None
    memory_bytes: int | None = None
    cpu_percent: float | None = None
    memory_used_bytes: int | None = None
    error: str | None = None
    running: int | None = None  # of its instances, with every service running


def url_of(record: HostRecord) -> str:
    port = "" if record.port == 22 else f":{record.port}"
    address = f"[{record.address}]" if ":" in record.address else record.address
    return f"ssh://{record.user}@{address}{port}"


def summaries(ctx: Context, state: State | None = None) -> list[HostSummary]:
    """`host list` from state alone: local first, then every host by name."""
    from controller.hosts import LOOPBACK

    state = state or ctx.store.read()
    counts: dict[str, int] = {}
    for found in state.instances.values():
        counts[found.host] = counts.get(found.host, 0) + 1
    rows = [HostSummary(LOCAL_HOST, "", LOOPBACK, "", counts.get(LOCAL_HOST, 0))]
    for name, record in sorted(state.hosts.items()):
        rows.append(
            HostSummary(
                name,
                url_of(record),
                record.bind or record.address,
                record.data_root,
                counts.get(name, 0),
            )
        )
    return rows


def details(ctx: Context, state: State, rows: list[HostSummary]) -> None:
    """`host list`'s live figures (reachability, Docker version, the machine's CPUs and memory,
    instances running, our containers' CPU and memory), every host asked side by side
    (controller/hostsview.py): fills ``rows`` in place."""
    from controller.hostsview import host_figures
    from controller.ops.base import jobs

    figures, errors = host_figures(
        ctx.settings, state, [row.name for row in rows], lambda found: jobs(ctx, found)
    )
    for row in rows:
        got = figures.get(row.name)
        row.reachable = got is not None
        row.error = errors.get(row.name)
        if got is not None:
            row.docker_version = got.info.version
            row.cpus = got.info.cpus or None
            row.memory_bytes = got.info.memory_bytes or None
            row.running = got.running
            row.cpu_percent = got.cpu_percent
            row.memory_used_bytes = got.memory_bytes


def list_hosts(ctx: Context, live: bool = True) -> list[HostSummary]:
    state = ctx.store.read()
    rows = summaries(ctx, state)
    if live:
        details(ctx, state, rows)
    return rows


# --- placement -----------------------------------------------------------------------------------


# A host has this long to say how much memory it has free (one ssh round trip and a `docker
# version`); one that hangs is passed over then, and create goes on without it.
PLACEMENT_TIMEOUT = 5.0

# Asked on the host over ssh (on stdin, nothing on its argv): its engine must answer, then its
# memory figures.
_FREE_MEMORY = """docker version --format '{{.Server.Version}}' >/dev/null 2>&1 || {
  echo "sbm-place no-engine"; exit 0; }
cat /proc/meminfo
"""


@attrs.frozen
class Placement:
    """Where a new instance goes without --host, and why."""

    host: str
    free: dict[str, int]  # bytes available on each host that answered
    passed_over: dict[str, str]  # host -> why it was not a candidate (one line)
    tied: tuple[str, ...] = ()  # other hosts with just as much free memory

    def says(self) -> list[str]:
        """Progress lines for the user: the hosts passed over, then the choice."""
        if not self.free and not self.passed_over:
            return []
        lines = [f"{host} passed over: {why}" for host, why in self.passed_over.items()]
        figures = ", ".join(f"{host} {_gib(value)}" for host, value in self.free.items())
        why = "most free memory" if len(self.free) > 1 else "the only host that answers"
        tie = f"; tied with {', '.join(self.tied)}, first in order (local, then by name)"
        lines.append(
            f"placed on {self.host}: {why} ({figures} available{tie if self.tied else ''})"
        )
        return lines


def _gib(value: int) -> str:
    return f"{value / 2**30:.1f} GiB"


def choose(ctx: Context, state: State) -> str:
    """The host for a new instance without --host (see ``placement``)."""
    return placement(ctx, state).host


def placement(ctx: Context, state: State, timeout: float = PLACEMENT_TIMEOUT) -> Placement:
    """The host for a new instance without --host: the one with the most free memory whose
    engine answers within ``timeout`` seconds, all asked side by side; ties go to the first in
    order, local then the hosts by name. Local alone is chosen without asking anything."""
    if not state.hosts:
        return Placement(LOCAL_HOST, {}, {})
    from controller.status import each_host

    hosts = [LOCAL_HOST, *sorted(state.hosts)]
    # ssh gives up a little before the deadline, so no ssh process outlives the choice.
    free, errors = each_host(
        hosts, lambda host: free_memory(ctx, state, host, timeout - 0.5), timeout
    )
    answering = {host: free[host] for host in hosts if host in free}
    if not answering:
        raise OperationError(
            "no host answers: cannot place the instance (see `host list`): "
            + "; ".join(f"{host}: {errors.get(host, '?')}" for host in hosts)
        )
    most = max(answering.values())
    best = [host for host in hosts if answering.get(host) == most]
    passed = {host: errors.get(host, "no answer") for host in hosts if host not in answering}
    return Placement(best[0], answering, passed, tuple(best[1:]))


def free_memory(ctx: Context, state: State, host: str, timeout: float = PLACEMENT_TIMEOUT) -> int:
    """Bytes of memory the host's machine has available (MemAvailable of /proc/meminfo);
    OperationError (or SshError) when the host or its Docker engine does not answer."""
    if host == LOCAL_HOST:
        from controller.dockerapi import DockerAPI

        api = DockerAPI(timeout=timeout)
        try:
            api.ping()
        finally:
            api.close()
        with open("/proc/meminfo", "rb") as handle:
            text = handle.read().decode(errors="replace")
    else:
        from controller import ssh
        from controller.hosts import place

        found = place(ctx.settings, state, host)
        text = ssh.script(found.ssh_files(), host, _FREE_MEMORY, timeout).decode(errors="replace")
        if text.startswith("sbm-place no-engine"):
            raise OperationError(f"host {host}: its Docker engine does not answer")
    return _available(host, text)


def _available(host: str, meminfo: str) -> int:
    fields = {}
    for line in meminfo.splitlines():
        key, _, rest = line.partition(":")
        words = rest.split()
        if words and words[0].isdigit():
            fields[key.strip()] = int(words[0]) * 1024
    if "MemAvailable" in fields:
        return fields["MemAvailable"]
    if "MemFree" in fields:  # kernels before 3.14: free plus what the page cache can give back
        return fields["MemFree"] + fields.get("Buffers", 0) + fields.get("Cached", 0)
    raise OperationError(f"host {host}: /proc/meminfo says nothing of free memory")
