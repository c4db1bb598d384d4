"""Settings: command-line options over environment over the TOML config file over defaults."""

import os
import re
from collections.abc import Mapping
from pathlib import Path

import attrs

from controller.errors import UsageError

DEFAULT_ROOT = Path("/var/lib/supabase")
ENV_PREFIX = "SUPABASE_MANAGER_"


def _parse_range(text: str) -> tuple[int, int]:
    try:
        low, high = (int(part) for part in str(text).split("-", 1))
    except ValueError:
        message = f"invalid port range {text!r}: expected LOW-HIGH, e.g. 20000-29999"
        raise UsageError(message) from None
    if not (1024 <= low <= high <= 65535):
        raise UsageError(f"invalid port range {text!r}: use ports within 1024-65535, low first")
    return low, high


@attrs.frozen
class BackupSettings:
    """[backup]: the restic repository, where its password comes from, the keep policy.

    ``repository`` None means ROOT/backups; ``password_file`` None means the keyring or
    ROOT/keys/backup.key (see controller/backupkey.py)."""

    repository: str | None = None
    password_file: Path | None = None
    environment_file: Path | None = None
    keep: tuple[tuple[str, int], ...] = (("daily", 7), ("weekly", 4), ("monthly", 6))


KEEP_KINDS = ("last", "hourly", "daily", "weekly", "monthly", "yearly")


def _backup_settings(data: object, env: Mapping[str, str]) -> BackupSettings:
    data = data if isinstance(data, dict) else {}
    repository = env.get(ENV_PREFIX + "BACKUP_REPOSITORY") or data.get("repository") or None
    password = env.get(ENV_PREFIX + "BACKUP_PASSWORD_FILE") or data.get("password_file") or None
    environment = data.get("environment_file") or None
    keep = data.get("keep", None)
    kwargs: dict = {
        "repository": str(repository).strip() if repository else None,
        "password_file": Path(str(password)) if password else None,
        "environment_file": Path(str(environment)) if environment else None,
    }
    if keep is not None:
        if not isinstance(keep, dict):
            raise UsageError("invalid [backup] keep: expected e.g. { daily = 7, weekly = 4 }")
        pairs = []
        for kind, count in keep.items():
            if kind not in KEEP_KINDS or not isinstance(count, int) or count < 0:
                raise UsageError(
                    f"invalid [backup] keep.{kind}: use {', '.join(KEEP_KINDS)} with a count >= 0"
                )
            pairs.append((kind, count))
        kwargs["keep"] = tuple(pairs)
    return BackupSettings(**kwargs)


@attrs.frozen
class Settings:
    """Everything a command needs to know about where things are and how they are published."""

    root: Path = DEFAULT_ROOT
    domain: str = "localhost"
    scheme: str = "https"
    public_port: int = 443
    caddy_admin: str = "http://localhost:2019"
    port_range: tuple[int, int] = (20000, 29999)
    # Where `template fetch` asks for files; tests point it at a local stand-in for GitHub.
    github_api: str = "https://api.github.com"
    backup: BackupSettings = BackupSettings()
    # Where `metrics serve` listens (HOST:PORT); checked when the exporter starts.
    metrics_listen: str = "127.0.0.1:9464"
    # [hosts] identity_file: the SSH key for every host (`host add`); None: the agent and
    # ssh's default keys.
    ssh_identity: Path | None = None
    # [hosts] known_hosts: host keys declared by the admin (NixOS), trusted beside the ones
    # `host add --accept-new-key` records in ROOT/ssh/known_hosts.
    ssh_known_hosts: Path | None = None

    @property
    def state_path(self) -> Path:
        return self.root / "state.json"

    @property
    def lock_path(self) -> Path:
        return self.root / ".state.lock"

    @property
    def audit_path(self) -> Path:
        return self.root / "audit.log"

    @property
    def instances_dir(self) -> Path:
        return self.root / "instances"

    @property
    def templates_dir(self) -> Path:
        return self.root / "templates"

    @property
    def caddy_dir(self) -> Path:
        return self.root / "caddy"

    def instance_dir(self, name: str) -> Path:
        return self.instances_dir / name

    def template_dir(self, name: str) -> Path:
        return self.templates_dir / name

    def snippet_path(self, name: str) -> Path:
        return self.caddy_dir / f"{name}.conf"

    def restore_marker(self, name: str) -> Path:
        """Where a restore of ``name`` records how far it got (controller/ops/restore.py)."""
        return self.root / "restore" / f"{name}.json"

    def public_origin(self, host: str) -> str:
        """``scheme://host[:port]``, leaving out the port the scheme implies."""
        default = {"https": 443, "http": 80}[self.scheme]
        port = "" if self.public_port == default else f":{self.public_port}"
        return f"{self.scheme}://{host}{port}"

    def hosts(self, name: str) -> dict[str, str]:
        """The instance's public host names by role: api, studio, mail."""
        return {
            "api": f"{name}.{self.domain}",
            "studio": f"{name}-studio.{self.domain}",
            "mail": f"{name}-mail.{self.domain}",
        }


def load_settings(
    root: str | os.PathLike | None = None,
    config: str | os.PathLike | None = None,
    env: Mapping[str, str] | None = None,
) -> Settings:
    """Build Settings from options (``root``, ``config``), the environment and the config file."""
    env = os.environ if env is None else env
    if root is not None and not str(root).strip():
        raise UsageError("--root is empty: give the data folder, e.g. --root /var/lib/supabase")
    if ENV_PREFIX + "ROOT" in env and not env[ENV_PREFIX + "ROOT"].strip():
        raise UsageError(f"{ENV_PREFIX}ROOT is set but empty: give the data folder or unset it")
    root_path = Path(root or env.get(ENV_PREFIX + "ROOT") or DEFAULT_ROOT)
    config_path = Path(config or env.get(ENV_PREFIX + "CONFIG") or root_path / "config.toml")
    data = _read_config(config_path, explicit=bool(config or env.get(ENV_PREFIX + "CONFIG")))

    caddy = data.get("caddy", {}) if isinstance(data.get("caddy", {}), dict) else {}
    ports = data.get("ports", {}) if isinstance(data.get("ports", {}), dict) else {}
    metrics = data.get("metrics", {}) if isinstance(data.get("metrics", {}), dict) else {}
    values = {
        "domain": env.get(ENV_PREFIX + "DOMAIN") or data.get("domain"),
        "scheme": env.get(ENV_PREFIX + "SCHEME") or data.get("scheme"),
        "public_port": env.get(ENV_PREFIX + "PUBLIC_PORT") or data.get("public_port"),
        "caddy_admin": env.get(ENV_PREFIX + "CADDY_ADMIN") or caddy.get("admin"),
        "port_range": env.get(ENV_PREFIX + "PORT_RANGE") or ports.get("range"),
        "github_api": env.get(ENV_PREFIX + "GITHUB_API") or data.get("github_api"),
        "metrics_listen": env.get(ENV_PREFIX + "METRICS_LISTEN") or metrics.get("listen"),
    }
    kwargs: dict = {"root": root_path.absolute()}
    kwargs["backup"] = _backup_settings(data.get("backup"), env)
    kwargs["ssh_identity"] = _ssh_file(data.get("hosts"), env, "identity_file")
    kwargs["ssh_known_hosts"] = _ssh_file(data.get("hosts"), env, "known_hosts")
    # A value given but empty ("" in the environment) counts as not given; a value of the wrong
    # type in the file (domain = 5) is refused rather than turned into text.
    values = {key: value for key, value in values.items() if value is not None and value != ""}
    for key, value in values.items():
        if not isinstance(value, str) and not (key == "public_port" and _is_int(value)):
            raise UsageError(f"invalid {key.replace('_', ' ')} {value!r}: expected a string")
    for key in ("domain", "scheme", "public_port", "caddy_admin", "port_range", "github_api"):
        values.setdefault(key, None)
    values.setdefault("metrics_listen", None)
    if values["domain"] is not None:
        kwargs["domain"] = _check_domain(values["domain"])
    if values["scheme"] is not None:
        if values["scheme"] not in ("http", "https"):
            raise UsageError(f"invalid scheme {values['scheme']!r}: use http or https")
        kwargs["scheme"] = values["scheme"]
    if values["public_port"] is not None:
        kwargs["public_port"] = _check_port(values["public_port"])
    elif kwargs.get("scheme") == "http":
        kwargs["public_port"] = 80
    if values["caddy_admin"] is not None:
        kwargs["caddy_admin"] = str(values["caddy_admin"])
    if values["port_range"] is not None:
        kwargs["port_range"] = _parse_range(values["port_range"])
    if values["github_api"] is not None:
        kwargs["github_api"] = str(values["github_api"]).rstrip("/")
    if values["metrics_listen"]:
        kwargs["metrics_listen"] = str(values["metrics_listen"]).strip()
    return Settings(**kwargs)


def _ssh_file(data: object, env: Mapping[str, str], key: str) -> Path | None:
    """[hosts] identity_file / known_hosts (env SUPABASE_MANAGER_SSH_IDENTITY_FILE /
    SUPABASE_MANAGER_SSH_KNOWN_HOSTS): an absolute path, or None."""
    data = data if isinstance(data, dict) else {}
    variable = ENV_PREFIX + ("SSH_IDENTITY_FILE" if key == "identity_file" else "SSH_KNOWN_HOSTS")
    value = env.get(variable) or data.get(key) or None
    if value is None:
        return None
    if not isinstance(value, str) or not value.strip() or "\n" in value or '"' in value:
        raise UsageError(f"invalid [hosts] {key} {value!r}: expected a file path")
    path = Path(value.strip()).expanduser()
    if not path.is_absolute():
        raise UsageError(f"invalid [hosts] {key} {value!r}: give an absolute path")
    return path


def _read_config(path: Path, explicit: bool) -> dict:
    # tomllib only once a file is there: most runs have none and it costs every fresh process
    try:
        handle = open(path, "rb")  # noqa: SIM115 (closed below)
    except FileNotFoundError:
        if explicit:
            raise UsageError(f"config file {path} does not exist") from None
        return {}
    except OSError as exc:
        raise UsageError(f"config file {path} cannot be read: {exc.strerror}") from None
    import tomllib

    try:
        with handle:
            return tomllib.load(handle)
    except tomllib.TOMLDecodeError as exc:
        raise UsageError(f"config file {path} is not valid TOML: {exc}") from None
    except UnicodeDecodeError:
        raise UsageError(f"config file {path} is not valid TOML: it is not UTF-8 text") from None
    except RecursionError:
        raise UsageError(f"config file {path} is not valid TOML: nested too deeply") from None
    except OSError as exc:
        raise UsageError(f"config file {path} cannot be read: {exc.strerror}") from None


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_port(value: object) -> int:
    text = str(value).strip() if isinstance(value, str) else None
    if _is_int(value):
        port = int(value)  # type: ignore[arg-type]
    elif text and text.isascii() and text.isdigit():
        port = int(text)
    else:
        raise UsageError(f"invalid public port {value!r}: use a number 1-65535")
    if not 1 <= port <= 65535:
        raise UsageError(f"invalid public port {value!r}: use a number 1-65535")
    return port


# A DNS label in ASCII (a Unicode name must be given in its xn-- form).
_LABEL = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?", re.ASCII)
# Room for the longest host an instance gets: NAME-studio. with a 40-character NAME.
MAX_DOMAIN = 253 - 48


def _check_domain(domain: str) -> str:
    labels = domain.lower().rstrip(".").split(".")
    if not domain.isascii():
        raise UsageError(
            f"invalid domain {domain!r}: use ASCII (write an international name in its xn-- form)"
        )
    if not all(_LABEL.fullmatch(label) for label in labels):
        raise UsageError(
            f"invalid domain {domain!r}: each label is 1-63 letters, digits or '-', "
            "not starting or ending with '-'"
        )
    if len(".".join(labels)) > MAX_DOMAIN:
        raise UsageError(f"invalid domain {domain!r}: longer than {MAX_DOMAIN} characters")
    return ".".join(labels)
