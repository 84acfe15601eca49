"""Where nsproxy keeps its files, and the default waits: each written once, here.

Both directories are overridable (CLI options, environment) so tests and several instances on one
host never collide. The state dir survives reboots (the ledger); the runtime dir is tmpfs (/run).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

DEFAULT_STATE_DIR = "/var/lib/nsproxy"
DEFAULT_RUNTIME_DIR = "/run/nsproxy"

# Default waits, in seconds.
LOCK_TIMEOUT = 30.0  # for another apply holding the lock
DAEMON_TIMEOUT = 30.0  # for the daemon to serve a new config (a reload also gets the drain timeout)
DRAIN_TIMEOUT = 30.0  # in-flight requests of a removed tenant, when the config does not say
STOP_TIMEOUT = 30.0  # for the daemon to exit after SIGTERM before it is killed


@dataclass(frozen=True)
class Paths:
    state_dir: str = DEFAULT_STATE_DIR  # ledger, apply lock, detached daemon's logs
    runtime_dir: str = DEFAULT_RUNTIME_DIR  # daemon config, pidfile, admin socket (tmpfs)

    @property
    def ledger(self) -> str:
        return os.path.join(self.state_dir, "ledger.json")

    @property
    def lock(self) -> str:
        return os.path.join(self.state_dir, "apply.lock")

    @property
    def config(self) -> str:
        return os.path.join(self.runtime_dir, "config.json")

    @property
    def pidfile(self) -> str:
        return os.path.join(self.runtime_dir, "nsproxyd.pid")

    @property
    def admin_socket(self) -> str:
        return os.path.join(self.runtime_dir, "admin.sock")

    @property
    def log_file(self) -> str:
        """The detached daemon's own log (its standard error)."""
        return os.path.join(self.state_dir, "nsproxyd.log")

    @property
    def access_log_file(self) -> str:
        """The detached daemon's standard output: where the lines of `access_log: stdout` go."""
        return os.path.join(self.state_dir, "access.log")

    @property
    def broker_socket(self) -> str:
        """The socket broker's unix socket (nsproxy_appliance/broker)."""
        return os.path.join(self.runtime_dir, "broker.sock")

    @property
    def broker_pidfile(self) -> str:
        return os.path.join(self.runtime_dir, "nsproxy-broker.pid")

    @property
    def broker_log_file(self) -> str:
        """The detached broker's log."""
        return os.path.join(self.state_dir, "nsproxy-broker.log")

    @property
    def drift_file(self) -> str:
        """What the last `nsproxy-reconcile` found (drift.py); the daemon's /metrics exports it."""
        return os.path.join(self.runtime_dir, "drift.json")
