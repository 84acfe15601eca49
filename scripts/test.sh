#!/usr/bin/env bash
# The whole test suite, as the README gives it: setup, lint, host-kernel tests, then the
# kernel stage (dummy links; in a VM when this kernel lacks them). Every stage runs even when an
# earlier one failed, so one run shows every failure; the exit code is non-zero if any failed.
set -uo pipefail
cd "$(dirname "$0")/.."
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
stage "host-kernel tests (unit, integration, ansible)" pytest -m "not kernel" tests
stage "kernel stage (dummy links)" bash scripts/kernel-stage.sh

if ((${#failed[@]})); then
  printf 'FAILED stages: %s\n' "$(IFS=,; echo "${failed[*]}")"
  exit 1
fi
echo "all stages passed"
