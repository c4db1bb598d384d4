"""Fault injection: a test hook, not a feature.

Use cases call ``point("create.rendered")`` between their steps. Nothing happens unless the
environment variable SUPABASE_MANAGER_FAULT names that point when the process starts:

- ``SUPABASE_MANAGER_FAULT=create.rendered``: the process kills itself with SIGKILL there, as a
  power cut or an OOM kill would (no ``finally``, no audit line, no lock released by Python);
- ``SUPABASE_MANAGER_FAULT=create.rendered:pause``: it stops itself with SIGSTOP there, so that
  a test can take Docker or Caddy away before sending SIGCONT.

tests/test_faults.py runs the real CLI once per point and checks that one plain command
converges afterwards. The variable is read once at import: a process that does not set it pays
one string comparison per point.
"""

from __future__ import annotations

import os
import signal

ENV = "SUPABASE_MANAGER_FAULT"

_WANTED, _, _ACTION = os.environ.get(ENV, "").partition(":")


def point(name: str) -> None:
    """A step boundary named ``name`` (``USE-CASE.WHAT-IS-DONE``)."""
    if name != _WANTED:
        return
    os.kill(os.getpid(), signal.SIGSTOP if _ACTION == "pause" else signal.SIGKILL)
