"""Which compose files make an instance's project, read from its folder alone.

Kept apart from the template model and the renderer, which both need it: it depends on nothing
but the .env parser.
"""

from pathlib import Path

from controller.envfile import EnvFile

BASE_FILE = "docker-compose.yml"
OVERRIDE_FILE = "docker-compose.override.yml"
ENV_FILE = ".env"


def compose_files(instance_dir: Path) -> list[Path]:
    """The instance's compose files (COMPOSE_FILE of its .env), absolute, in order."""
    instance_dir = Path(instance_dir)
    env_path = instance_dir / ENV_FILE
    env = EnvFile.parse(env_path.read_text()) if env_path.is_file() else EnvFile()
    value = env.get("COMPOSE_FILE")
    if not value:
        files = [BASE_FILE] + ([OVERRIDE_FILE] if (instance_dir / OVERRIDE_FILE).is_file() else [])
    else:
        separator = env.get("COMPOSE_PATH_SEPARATOR") or ":"
        files = [item for item in value.split(separator) if item]
    return [(instance_dir / item).absolute() for item in files]
