"""Settings: command-line options over environment over the TOML config file over defaults."""

import os
import tomllib
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
    root_path = Path(root or env.get(ENV_PREFIX + "ROOT") or DEFAULT_ROOT)
    config_path = Path(config or env.get(ENV_PREFIX + "CONFIG") or root_path / "config.toml")
    data = _read_config(config_path, explicit=bool(config or env.get(ENV_PREFIX + "CONFIG")))

    caddy = data.get("caddy", {}) if isinstance(data.get("caddy", {}), dict) else {}
    ports = data.get("ports", {}) if isinstance(data.get("ports", {}), dict) else {}
    values = {
        "domain": env.get(ENV_PREFIX + "DOMAIN") or data.get("domain"),
        "scheme": env.get(ENV_PREFIX + "SCHEME") or data.get("scheme"),
        "public_port": env.get(ENV_PREFIX + "PUBLIC_PORT") or data.get("public_port"),
        "caddy_admin": env.get(ENV_PREFIX + "CADDY_ADMIN") or caddy.get("admin"),
        "port_range": env.get(ENV_PREFIX + "PORT_RANGE") or ports.get("range"),
        "github_api": env.get(ENV_PREFIX + "GITHUB_API") or data.get("github_api"),
    }
    kwargs: dict = {"root": root_path.absolute()}
    if values["domain"]:
        kwargs["domain"] = _check_domain(str(values["domain"]))
    if values["scheme"]:
        if values["scheme"] not in ("http", "https"):
            raise UsageError(f"invalid scheme {values['scheme']!r}: use http or https")
        kwargs["scheme"] = values["scheme"]
    if values["public_port"]:
        kwargs["public_port"] = _check_port(values["public_port"])
    elif kwargs.get("scheme") == "http":
        kwargs["public_port"] = 80
    if values["caddy_admin"]:
        kwargs["caddy_admin"] = str(values["caddy_admin"])
    if values["port_range"]:
        kwargs["port_range"] = _parse_range(values["port_range"])
    if values["github_api"]:
        kwargs["github_api"] = str(values["github_api"]).rstrip("/")
    return Settings(**kwargs)


def _read_config(path: Path, explicit: bool) -> dict:
    try:
        with open(path, "rb") as handle:
            return tomllib.load(handle)
    except FileNotFoundError:
        if explicit:
            raise UsageError(f"config file {path} does not exist") from None
        return {}
    except tomllib.TOMLDecodeError as exc:
        raise UsageError(f"config file {path} is not valid TOML: {exc}") from None
    except OSError as exc:
        raise UsageError(f"config file {path} cannot be read: {exc.strerror}") from None


def _check_port(value: object) -> int:
    try:
        port = int(str(value))
    except ValueError:
        raise UsageError(f"invalid public port {value!r}") from None
    if not 1 <= port <= 65535:
        raise UsageError(f"invalid public port {value!r}")
    return port


def _check_domain(domain: str) -> str:
    labels = domain.lower().rstrip(".").split(".")
    if not all(label and len(label) <= 63 and label.replace("-", "").isalnum() for label in labels):
        raise UsageError(f"invalid domain {domain!r}")
    return ".".join(labels)
