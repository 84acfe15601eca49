#!/usr/bin/env bash
# Installs everything nsproxy's quickstart and tests need on a fresh Debian machine (as root):
# Debian packages, then a virtualenv at .venv with nsproxy installed in editable mode.
# Idempotent and quick when everything is already there.
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PACKAGES=(
  iproute2 procps psmisc curl           # ip/ss for debugging, pgrep, curl used by tests
  python3 python3-venv python3-dev gcc  # the virtualenv and wheels that compile
  wrk haproxy nginx-light               # benchmarks: load generator, reference proxy, upstream
  qemu-system-x86 linux-image-amd64     # kernel stage: a real Debian kernel with dummy links
  busybox-static                        # kernel stage: virtme-ng's initramfs needs a static busybox
  python3-apt systemd                   # Ansible tests: the apt module; systemd-analyze verify
)

missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "setup: installing Debian packages: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

PYTHON=${PYTHON:-python3}
if [[ ! -x .venv/bin/python ]]; then
  "$PYTHON" -m venv .venv
fi
stamp=.venv/.nsproxy-installed
if [[ ! -f $stamp || pyproject.toml -nt $stamp || constraints.txt -nt $stamp ]]; then
  echo "setup: installing Python packages into .venv"
  .venv/bin/pip install -q --upgrade pip
  .venv/bin/pip install -q -c constraints.txt -e '.[dev]'
  touch "$stamp"
fi
