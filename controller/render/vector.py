"""The instance's own vector.yml: its containers' names, and only its containers' logs."""

import copy
import re
from collections.abc import Mapping
from pathlib import Path

import yaml

from controller.composeyaml import dump_yaml, load_yaml
from controller.render.names import instance_container_name
from controller.templatefiles import TemplateFiles

_TOKEN = re.compile(r"(?<![A-Za-z0-9_.-])([A-Za-z0-9_.-]*supabase-[A-Za-z0-9_-]*[A-Za-z0-9])")
_DEFAULT = Path("volumes/logs/vector.yml")


def vector_config_files(template: TemplateFiles) -> list[str]:
    """Template-relative paths of the files mounted as Vector's configuration, in any overlay."""
    found: set[str] = set()
    root = template.path.resolve()
    for model in template.variants():
        for name, service in model.services.items():
            if "vector" not in (service.image or "").split(":")[0] and name != "vector":
                continue
            for mount in service.mounts:
                if mount.type != "bind" or not mount.source:
                    continue
                path = (template.path / mount.source).resolve()
                if not path.is_relative_to(root):
                    continue
                if path.is_file() and path.suffix in (".yml", ".yaml", ".toml"):
                    found.add(str(path.relative_to(root)))
    if not found and (template.path / _DEFAULT).is_file():
        found.add(str(_DEFAULT))
    return sorted(found)


def upstream_container_names(template: TemplateFiles, instance: str, overlays) -> dict[str, str]:
    """Upstream container name -> the instance's, for every service the template may run."""
    names: dict[str, str] = {}
    for model in [*template.variants(), template.model(overlays)]:
        for name, service in model.services.items():
            if service.container_name:
                names.setdefault(
                    service.container_name,
                    instance_container_name(instance, name, service.container_name),
                )
    return names


def rewrite_vector(text: str, instance: str, names: Mapping[str, str]) -> str:
    """The instance's own vector.yml: its containers' names, and only its containers' logs.

    ``names`` maps upstream container names to the instance's; any other ``supabase-X`` name in
    the file becomes ``INSTANCE-X`` (the same rule the override file follows).
    """

    def rename(match: re.Match) -> str:
        token = match.group(1)
        if token in names:
            return names[token]
        return instance_container_name(instance, "", token)

    renamed = _TOKEN.sub(rename, text)
    label = f"com.docker.compose.project={instance}"
    try:
        data = load_yaml(renamed)
    except yaml.YAMLError:
        return renamed
    if not isinstance(data, dict) or not isinstance(data.get("sources"), dict):
        return renamed
    expected = _with_project_filter(data, label)
    if expected is None:
        return renamed
    # Keep the file as upstream wrote it (comments, VRL blocks): add the filter line after each
    # docker_logs source's `type:` line, and fall back to a full dump if that does not parse back.
    out: list[str] = []
    for line in renamed.split("\n"):
        out.append(line)
        match = re.match(r"^(\s*)type:\s*[\"']?docker_logs[\"']?\s*(#.*)?$", line)
        if match:
            indent = match.group(1)
            out.append(f"{indent}include_labels:")
            out.append(f'{indent}  - "{label}"')
    candidate = "\n".join(out)
    try:
        if load_yaml(candidate) == expected:
            return candidate
    except yaml.YAMLError:
        pass
    return dump_yaml(expected)


def _with_project_filter(data: dict, label: str) -> dict | None:
    result = copy.deepcopy(data)
    changed = False
    for source in result["sources"].values():
        if isinstance(source, dict) and source.get("type") == "docker_logs":
            labels = list(source.get("include_labels") or [])
            if label not in labels:
                labels.append(label)
            source["include_labels"] = labels
            changed = True
    return result if changed else None
