#!/usr/bin/env bash
# The whole test suite, as the README gives it: setup, lint, host-kernel tests, then the
# kernel stage (dummy links) in a VM when this kernel lacks them.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export PATH="$PWD/.venv/bin:$PATH"

echo "== ruff"
ruff check .
ruff format --check . || { echo "ruff format: run 'ruff format .'"; exit 1; }

echo "== host-kernel tests (unit, integration, ansible)"
pytest -m "not kernel" tests

echo "== kernel stage (dummy links)"
bash scripts/kernel-stage.sh
