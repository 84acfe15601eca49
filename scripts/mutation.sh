#!/usr/bin/env bash
# The mutation check (docs/testing.md): mutmut over the modules that guard the four promises, run
# on a pure-Python copy of the tree in build/mutation/; prints the score per module.
#   bash scripts/mutation.sh [--fresh] [--report] [module ...]
set -euo pipefail
cd "$(dirname "$0")/.."
exec .venv/bin/python scripts/mutation.py "$@"
