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
  python3-apt systemd                   # Ansible tests: the apt module; systemd-analyze verify, security
  systemd-container                     # systemd-nspawn: the units under a real systemd (test_broker_systemd)
  prometheus                            # promtool: checks and unit-tests deploy/prometheus rules
  logrotate                             # tests run deploy/logrotate/nsproxy for real
)

missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "setup: installing Debian packages: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  # Only the tools are wanted: keep packages such as prometheus from starting their services
  # (a server on a fixed port). Where the image has no policy of its own, deny starts meanwhile.
  if [[ ! -e /usr/sbin/policy-rc.d ]]; then
    trap 'rm -f /usr/sbin/policy-rc.d' EXIT
    printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
    chmod 755 /usr/sbin/policy-rc.d
  fi
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

PYTHON=${PYTHON:-python3}
if [[ ! -x .venv/bin/python ]]; then
  "$PYTHON" -m venv .venv
fi
stamp=.venv/.nsproxy-installed
if [[ ! -f $stamp || pyproject.toml -nt $stamp || constraints.txt -nt $stamp || setup.py -nt $stamp ]]; then
  echo "setup: installing Python packages into .venv"
  .venv/bin/pip install -q --upgrade pip
  .venv/bin/pip install -q -c constraints.txt -e '.[dev]'
  touch "$stamp"
fi
# The editable install compiles the data plane in place (setup.py, mypyc): rebuild it when a compiled
# module's source changed since, or when it is not compiled (unless NSPROXY_PURE_PYTHON=1 asks so).
if ! .venv/bin/python -m nsproxy_appliance.daemon.compiled --check; then
  echo "setup: compiling the data plane (mypyc)"
  .venv/bin/pip install -q -c constraints.txt --no-deps -e .
  touch "$stamp"
fi
