#!/usr/bin/env bash
# The second Docker host of the test world (tests/world/worker.py): Debian's sshd and ssh client,
# iproute2 (network namespaces, veth), util-linux (nsenter, unshare) and rsync (on hand for
# copying instance folders to a worker). Run by scripts/provision; safe to rerun.
#
# The tests start their own sshd inside a network namespace. A fresh install of openssh-server
# would also enable and start ssh.service, listening on every address of this machine: when this
# snippet is the one installing it, the package's service is kept from starting (policy-rc.d)
# and disabled. An openssh-server that was already installed (maybe the way into this machine)
# is left exactly as it was.
set -euo pipefail

PACKAGES=(openssh-server openssh-client iproute2 util-linux rsync)

installed() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q 'install ok installed'; }

missing=()
for pkg in "${PACKAGES[@]}"; do
    installed "$pkg" || missing+=("$pkg")
done
[ ${#missing[@]} -eq 0 ] && exit 0

fresh_sshd=0
installed openssh-server || fresh_sshd=1

export DEBIAN_FRONTEND=noninteractive
policy=/usr/sbin/policy-rc.d
made_policy=0
if [ "$fresh_sshd" = 1 ] && [ ! -e "$policy" ]; then
    # 101: "action forbidden": invoke-rc.d and deb-systemd-invoke start no service meanwhile.
    printf '#!/bin/sh\nexit 101\n' >"$policy"
    chmod 0755 "$policy"
    made_policy=1
    trap 'rm -f "$policy"' EXIT
fi

if ! apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null; then
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

if [ "$fresh_sshd" = 1 ]; then
    # Not enabled at boot either: `systemctl disable` edits the unit links (and sysv-rc's) even
    # when no systemd runs, as in a container; a running systemd also stops it now.
    if command -v systemctl >/dev/null; then
        systemctl disable ssh.service ssh.socket >/dev/null 2>&1 || true
        if [ -d /run/systemd/system ]; then
            systemctl stop ssh.service ssh.socket >/dev/null 2>&1 || true
        fi
    fi
    update-rc.d ssh disable >/dev/null 2>&1 || true
fi
[ "$made_policy" = 1 ] && rm -f "$policy"
/usr/sbin/sshd -V 2>&1 | head -n1
