#!/usr/bin/env bash
# Nix for tests/test_nix.py: `nix-instantiate --parse` of every .nix file and the evaluation harness
# nix/tests/eval.nix. Debian's nix-bin is enough: nothing is built and nixpkgs is never fetched.
# Run by the shared provisioning script (every scripts/provision.d/*.sh); safe to run again.
set -euo pipefail

if command -v nix-instantiate >/dev/null 2>&1; then
    exit 0
fi

export DEBIAN_FRONTEND=noninteractive
if ! apt-get install -y --no-install-recommends nix-bin; then
    apt-get update
    apt-get install -y --no-install-recommends nix-bin
fi
nix-instantiate --version
