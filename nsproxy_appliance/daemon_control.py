"""The applier's hand-off to the daemon: launch it, reload it, or leave it alone.

The applier has already written the runtime config (runtime_config.write) when it calls
ensure_daemon(). This module is the only place that knows how the daemon is started
(systemd unit or detached process with a pidfile) and how it is asked to reload.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from .runtime_config import Paths

DaemonAction = Literal["launched", "reloaded", "unchanged"]


class DaemonError(RuntimeError):
    """The daemon could not be started or did not take the new config; the message says why."""


@dataclass(frozen=True)
class DaemonStatus:
    running: bool
    pid: int | None = None
    generation: str | None = None  # the config generation the daemon reports as active


def status(paths: Paths) -> DaemonStatus:
    """What is running now, without side effects (used by plan and --check)."""
    raise NotImplementedError("filled in by the daemon issue")


def ensure_daemon(paths: Paths, generation: str, *, timeout: float = 30.0) -> DaemonAction:
    """Make the daemon serve config generation `generation` from paths.config.

    Launch if not running, reload if it serves another generation, nothing if it already serves
    this one. Returns only once the daemon reports `generation` active and listeners of removed
    tenants are closed (so their namespaces can be deleted). Raises DaemonError with the reason.
    """
    raise NotImplementedError("filled in by the daemon issue")
