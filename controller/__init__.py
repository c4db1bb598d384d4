"""supabase-manager's core: desired state, templates, instances, adapters to Docker and Caddy.

Nothing in this package talks to a terminal; the front-ends live in ``shell``.
"""

__version__ = "0.1.0"
