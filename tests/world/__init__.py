"""The real test world: Docker engine, stand-in images and overlays, Caddy, template fixtures.

Fixtures built on it live in tests/conftest.py; scripts/provision sets the machine up.
"""

from .caddy import CaddyProcess
from .dockerworld import BUSYBOX_IMAGE, POSTGRES_IMAGE, DockerSandbox
from .net import free_port, wait_for_http, wait_for_port, wait_until
from .standin import (
    compose_files_for,
    load_services,
    service_ports,
    standin_overlay_for,
    write_loopback_ports_overlay,
    write_standin_overlay,
)
from .templates import copy_template, template_fixture, write_env

__all__ = [
    "BUSYBOX_IMAGE",
    "POSTGRES_IMAGE",
    "CaddyProcess",
    "DockerSandbox",
    "compose_files_for",
    "copy_template",
    "free_port",
    "load_services",
    "service_ports",
    "standin_overlay_for",
    "template_fixture",
    "wait_for_http",
    "wait_for_port",
    "wait_until",
    "write_env",
    "write_loopback_ports_overlay",
    "write_standin_overlay",
]
