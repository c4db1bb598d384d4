"""Errors a front-end turns into a one-line message and an exit status."""


class ManagerError(Exception):
    """Base class: the operation failed; the message is safe to print (no secrets)."""

    exit_code = 1


class UsageError(ManagerError):
    """Bad usage or bad input. Raised before anything is changed."""

    exit_code = 2


class OperationError(ManagerError):
    """An outside system or the data on disk stopped the operation."""


class StateError(ManagerError):
    """state.json is corrupt or of another schema; it is never overwritten in that case.

    Bad input like any other (exit 2): the file on disk is not one this program wrote.
    """

    exit_code = 2


class DockerUnavailable(OperationError):
    """The Docker daemon or the compose plugin cannot be used."""


class CaddyUnavailable(OperationError):
    """Caddy's admin API cannot be reached."""
