"""Checks of option values typed at the shell. Each delegates to the controller's own rule, so
the shell and the core never disagree about what a valid value is."""

from __future__ import annotations


def port_assignment(text: str) -> str:
    """One ``--port SERVICE=PORT`` value, checked by the controller's parser; kept as typed so
    that ``port_map`` can parse all of them together (and refuse a service given twice)."""
    from controller.ports import parse_port_option

    parse_port_option(text)
    return text


def port_map(values: list[str]) -> dict[str, int]:
    from controller.ports import requested_from_options

    return requested_from_options(values)


def cpus(text: str) -> float | None:
    from controller.limits import check_cpus

    return check_cpus(text)


def memory(text: str) -> str | None:
    from controller.limits import check_memory

    return check_memory(text)


def count(text: str) -> int:
    if not text.isascii() or not text.isdigit():
        raise ValueError(text)
    return int(text)
