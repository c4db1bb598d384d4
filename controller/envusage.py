"""Which services of a compose project read a variable: the ones that must be recreated for an
.env change to take effect."""

from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import yaml

from controller.envfile import referenced_variables


def _strings(node: object) -> Iterator[str]:
    if isinstance(node, str):
        yield node
    elif isinstance(node, dict):
        for key, value in node.items():
            if isinstance(key, str):
                yield key
            yield from _strings(value)
    elif isinstance(node, list | tuple):
        for item in node:
            yield from _strings(item)
    elif hasattr(node, "value"):  # !override / !reset wrappers
        yield from _strings(node.value)


def services_using(keys: Iterable[str], compose_paths: Sequence[Path]) -> list[str]:
    """Services whose definition in ``compose_paths`` interpolates any of ``keys``, sorted: the
    ones that must be recreated for a change to take effect."""
    from controller.composeyaml import load_yaml

    wanted = set(keys)
    found: set[str] = set()
    for path in compose_paths:
        try:
            data = load_yaml(Path(path).read_text())
        except (OSError, UnicodeDecodeError, yaml.YAMLError):
            continue
        services = data.get("services") if isinstance(data, dict) else None
        if not isinstance(services, dict):
            continue
        for name, body in services.items():
            if any(referenced_variables(text) & wanted for text in _strings(body)):
                found.add(str(name))
    return sorted(found)
