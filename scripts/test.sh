#!/usr/bin/env bash
# The whole test suite, as the README gives it: setup, lint, type check, host-kernel tests, then the
# kernel stage (dummy links; in a VM when this kernel lacks them). Every stage runs even when an
# earlier one failed, so one run shows every failure; the exit code is non-zero if any failed.
set -uo pipefail
cd "$(dirname "$0")/.."
if [[ $(id -u) -ne 0 ]]; then
  # As another user pytest would skip every root test (namespaces, links, the real daemon) and
  # the run would look green: refuse instead of reporting a suite that did not run.
  echo "scripts/test.sh: refusing to run as $(id -un) (uid $(id -u)): the suite needs root for network" \
    "namespaces, links and the real daemon, and would skip those tests. Run it as root (sudo bash scripts/test.sh)." >&2
  exit 2
fi
bash scripts/setup.sh || exit 1
export PATH="$PWD/.venv/bin:$PATH"

failed=()
stage() {
  local name=$1
  shift
  echo "== $name"
  "$@" || failed+=("$name")
}

stage "ruff check" ruff check .
stage "ruff format" ruff format --check .
stage "mypy" mypy
stage "host-kernel tests (unit, integration, ansible)" pytest -m "not kernel" tests
stage "kernel stage (dummy links)" bash scripts/kernel-stage.sh

if ((${#failed[@]})); then
  printf 'FAILED stages: %s\n' "$(IFS=,; echo "${failed[*]}")"
  exit 1
fi
echo "all stages passed"
