"""The use cases behind ``controller.manager.Manager``, one module per concern.

Each mutating function takes a ``Context`` (settings and the state store), refuses bad input
before anything is written (UsageError), changes the desired state in state.json under the lock,
then reconciles the outside systems (files, compose, Caddy) for that one instance. Every step is
idempotent: running the same command again after a crash or an outage converges.

- base: the Context, the per-instance lock, the audit wrapper, reading records and .env files
- templates: template fetch/import/list and the template store's names
- create: create and resume a half-created instance
- lifecycle: start, stop, restart, delete, waiting for health
- env: env list/get/set/unset/edit (the rules are controller.envpolicy)
- publish: the Caddy side of an instance (publish, unpublish, sync, status, request rates)
- queries: list, show, logs and the names front-ends complete
- backup, restore: snapshots into the restic repository and back
- rotate: secrets in .env and wherever else they live, with a journal for kill-safety
- upgrade, clone: another template (backed up first, rolled back), a copy with fresh secrets
"""
