"""Names an instance gives its containers, networks and volumes on the engine."""

from controller.composemodel import Project
from controller.ownership import EngineNames


def instance_container_name(instance: str, service: str, upstream: str | None) -> str:
    """NAME-<what upstream had after "supabase-">, or NAME-<service> without such a name."""
    if upstream and "supabase-" in upstream:
        suffix = upstream.split("supabase-", 1)[1]
        if suffix:
            return f"{instance}-{suffix}"
    return f"{instance}-{service}"


def container_names(instance: str, services: dict[str, str | None]) -> dict[str, str]:
    """Service -> the instance's container name, for ``services`` (service -> upstream name),
    unique within the instance."""
    out: dict[str, str] = {}
    taken: set[str] = set()
    for service, upstream in services.items():
        container = instance_container_name(instance, service, upstream)
        if container in taken:
            container = f"{instance}-{service}"
        taken.add(container)
        out[service] = container
    return out


def engine_names(project: Project, instance: str) -> EngineNames:
    """The engine-wide names of the objects an instance of ``project`` (the merged template,
    overlays and extra files) creates: its compose project, containers, networks, volumes."""
    names = container_names(instance, {s: b.container_name for s, b in project.services.items()})
    return EngineNames(
        project=instance,
        containers=tuple(names.values()),
        # The override renames a fixed network or volume name to the instance's own as well.
        networks=tuple(f"{instance}_{k}" for k, r in project.networks.items() if not r.external),
        volumes=tuple(f"{instance}_{k}" for k, r in project.volumes.items() if not r.external),
    )
