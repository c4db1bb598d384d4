"""docker-compose.override.yml of an instance: per-instance container names (the upstream name
stays a network alias), every published port on 127.0.0.1, this ROOT's labels on every container,
network and volume, resource limits, and no fixed network or volume name shared between
instances. It comes last in COMPOSE_FILE, after any extra compose file, so nothing can undo it."""

from controller.composemodel import Project
from controller.composeyaml import Override
from controller.labels import INSTANCE_LABEL, PORTS_LABEL, ROOT_LABEL
from controller.limits import check_cpus, check_memory
from controller.render.names import container_names
from controller.state import InstanceRecord
from controller.templatefiles import TemplateFiles, needed_ports

LOOPBACK = "127.0.0.1"


def _port_specs(
    record: InstanceRecord, template: TemplateFiles, everything: Project, bind: str = LOOPBACK
) -> dict[str, list[str]]:
    """Per service, its published ports as ``BIND:HOST:CONTAINER/PROTOCOL`` (BIND: 127.0.0.1,
    or for an instance on another host that host's private address)."""
    address = f"[{bind}]" if ":" in bind else bind
    needed = needed_ports(template, record.overlays)
    protocols = {
        f"{name}:{port.target}": port.protocol
        for name, service in everything.services.items()
        for port in service.ports
    }
    specs: dict[str, list[str]] = {}
    for key in needed:
        service, _, container = key.partition(":")
        host = record.ports[key]
        specs.setdefault(service, []).append(
            f"{address}:{host}:{container}/{protocols.get(key, 'tcp')}"
        )
    # Ports only an extra compose file publishes: kept, but on 127.0.0.1 (an empty host side
    # lets the engine choose one).
    for name, service in everything.services.items():
        for port in service.ports:
            if f"{name}:{port.target}" in needed:
                continue
            host = "" if port.published is None else str(port.published)
            spec = f"{address}:{host}:{port.target}/{port.protocol}"
            if spec not in specs.setdefault(name, []):
                specs[name].append(spec)
    return specs


def build_override(
    record: InstanceRecord,
    template: TemplateFiles,
    everything: Project,
    root_id: str,
    bind: str = LOOPBACK,
) -> dict:
    """The override document; ``everything`` is the merged project of the template's files,
    the instance's overlays and its extra compose files; ``bind`` the address ports publish on."""
    name = record.name
    cpus = check_cpus(record.cpus)
    memory = check_memory(record.memory)
    ports = _port_specs(record, template, everything, bind)
    names = container_names(
        name, {service: body.container_name for service, body in everything.services.items()}
    )
    owner = {INSTANCE_LABEL: name, ROOT_LABEL: root_id}

    services: dict[str, dict] = {}
    for service, body in everything.services.items():
        upstream = body.container_name
        container = names[service]
        entry: dict = {"container_name": container}
        if body.network_mode is None:
            if upstream and upstream != container:
                aliased = {
                    network: {"aliases": [upstream]}
                    for network, aliases in (body.networks or {"default": ()}).items()
                    if upstream not in aliases
                }
                if aliased:
                    entry["networks"] = aliased
            if service in ports:
                entry["ports"] = Override(ports[service])
        labels = dict(owner)
        host_ports = [spec.rsplit(":", 2)[1] for spec in ports.get(service, [])]
        if any(host_ports) and body.network_mode is None:
            labels[PORTS_LABEL] = ",".join(p for p in host_ports if p)
        entry["labels"] = labels
        if cpus is not None:
            entry["cpus"] = cpus
        if memory is not None:
            entry["mem_limit"] = memory
        services[service] = entry

    doc: dict = {"name": name, "services": services}
    # Every network and volume carries this ROOT's labels; one with a fixed name would be shared
    # by every instance, so it gets the instance's own.
    for section, resources in (("networks", everything.networks), ("volumes", everything.volumes)):
        out = {}
        for key, resource in resources.items():
            if resource.external:
                continue
            out[key] = {"labels": dict(owner)}
            if resource.fixed_name:
                out[key]["name"] = f"{name}_{key}"
        if out:
            doc[section] = out
    return doc
