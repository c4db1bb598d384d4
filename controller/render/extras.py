"""Extra compose files (``create --extra-compose``): checked, then copied into the folder (0600)
as extra-N.yml, layered after the template's files and before the override."""

import re
from collections.abc import Sequence
from pathlib import Path

import yaml

from controller.composeyaml import load_yaml
from controller.errors import UsageError

EXTRA_RE = re.compile(r"^extra-(\d+)\.yml$")


def read_extra_compose(sources: Sequence[Path]) -> list[bytes]:
    """Each extra compose file's bytes; UsageError (one line) unless it is a compose document
    with a ``services`` mapping."""
    out = []
    for source in sources:
        try:
            data = Path(source).read_bytes()
        except OSError as exc:
            raise UsageError(
                f"extra compose file {source} cannot be read: {exc.strerror}"
            ) from None
        try:
            doc = load_yaml(data.decode())
        except (yaml.YAMLError, UnicodeDecodeError) as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise UsageError(f"extra compose file {source} is not valid YAML: {first}") from None
        if not isinstance(doc, dict) or not isinstance(doc.get("services"), dict):
            raise UsageError(
                f"extra compose file {source} is not a compose file (no `services:` mapping)"
            )
        out.append(data)
    return out


def extra_names(count: int) -> list[str]:
    return [f"extra-{i}.yml" for i in range(1, count + 1)]
