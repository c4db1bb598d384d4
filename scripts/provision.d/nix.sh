#!/usr/bin/env bash
# Nix for tests/test_nix.py: `nix-instantiate --parse` of every .nix file, the NixOS module through
# nixpkgs' real module system (nix/tests/module-eval.nix, with the lib vendored in
# ../shared/vendor/nixpkgs-lib) and nix/tests/eval.nix. Debian's nix-bin (2.8) is enough: nothing
# is built and nixpkgs is never fetched.
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
