"""Instance names: DNS labels that leave room for the ``-studio`` suffix."""

import re

from controller.errors import UsageError

MAX_NAME_LENGTH = 40
_NAME = re.compile(r"^[a-z](?:[a-z0-9-]*[a-z0-9])?$")


def name_problem(name: str) -> str | None:
    """Why ``name`` is not a valid instance name, or None when it is."""
    if not name:
        return "the name is empty"
    if len(name) > MAX_NAME_LENGTH:
        return f"the name is longer than {MAX_NAME_LENGTH} characters"
    if not _NAME.match(name):
        return (
            "a name uses lowercase letters, digits and '-', starts with a letter "
            "and does not end with '-'"
        )
    return None


def validate_name(name: str) -> str:
    """Return ``name`` or raise UsageError saying what is wrong with it."""
    problem = name_problem(name)
    if problem:
        raise UsageError(f"invalid instance name {name!r}: {problem}")
    return name
