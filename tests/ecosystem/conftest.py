"""Fixtures for the ecosystem suite: the real daemon, through the integration suite's harness
(tests/integration/daemon_harness.py), so both suites start nsproxyd the same way."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "integration"))

from daemon_harness import daemon_launcher, echo  # noqa: F401
