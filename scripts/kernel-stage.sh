#!/usr/bin/env bash
# The kernel stage: the tests that need dummy links (pytest marker `kernel`), on a real kernel.
# This machine's kernel (and CI's) lacks CONFIG_DUMMY, so they run in a VM booting Debian's
# kernel with virtme-ng; on a kernel with dummy links they run directly. See docs/kernel-stage.md.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh   # idempotent: qemu, the Debian kernel, busybox-static, virtme-ng in .venv
exec .venv/bin/python tests/kernel/stage.py "$@"
