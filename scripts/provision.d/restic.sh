#!/usr/bin/env bash
# restic for backups (controller/restic.py drives it; tests/test_backup.py runs it for real).
# Debian's package is restic 0.14; moto_server (the S3 endpoint of the tests) comes from the
# venv's test extra (moto[server] in pyproject.toml). Run by scripts/provision; safe to rerun.
set -euo pipefail

if command -v restic >/dev/null 2>&1; then
    exit 0
fi

export DEBIAN_FRONTEND=noninteractive
if ! apt-get install -y -qq --no-install-recommends restic >/dev/null; then
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends restic >/dev/null
fi
restic version
