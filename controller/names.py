"""Instance names: DNS labels that leave room for the ``-studio`` suffix."""

import re

from controller.errors import UsageError

MAX_NAME_LENGTH = 40
_NAME = re.compile(r"^[a-z](?:[a-z0-9-]*[a-z0-9])?$")
# Words `backup` takes as sub-commands (`backup list`, `backup key`, ...): `backup NAME` could
# never name an instance so called, so new instances may not take them. An instance that
# already has one is backed up with `backup --instance NAME`.
RESERVED_NAMES = frozenset({"list", "check", "prune", "key"})


def _syntax_problem(name: str) -> str | None:
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


def name_problem(name: str) -> str | None:
    """Why ``name`` cannot be the name of a new instance, or None when it can."""
    problem = _syntax_problem(name)
    if problem is None and name in RESERVED_NAMES:
        problem = (
            f"'{name}' is a word of the backup command (backup {name}); "
            f"the reserved names are {', '.join(sorted(RESERVED_NAMES))}"
        )
    return problem


def validate_name(name: str) -> str:
    """Return ``name`` or raise UsageError saying what is wrong with it (for a name that may
    already exist: a reserved word made before it was reserved stays usable)."""
    problem = _syntax_problem(name)
    if problem:
        raise UsageError(f"invalid instance name {name!r}: {problem}")
    return name


def validate_new_name(name: str) -> str:
    """As validate_name, for the name of an instance about to be made: reserved words too."""
    problem = name_problem(name)
    if problem:
        raise UsageError(f"invalid instance name {name!r}: {problem}")
    return name
