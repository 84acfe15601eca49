"""The sd_notify datagram protocol, spoken directly: READY=1, RELOADING=1, STOPPING=1, WATCHDOG=1.

systemd passes the path of a unix datagram socket in $NOTIFY_SOCKET ("@" starts an abstract
name); a notification is one datagram of newline-separated VAR=value lines. With Type=notify a unit
counts as started only at READY=1; WatchdogSec= sets $WATCHDOG_USEC, and the service must send
WATCHDOG=1 more often than that or it is killed and restarted. Outside systemd nothing is set and
every call does nothing. No dependency: this is the whole protocol nsproxy needs.
"""

from __future__ import annotations

import os
import socket
import time

ENV_SOCKET = "NOTIFY_SOCKET"
ENV_WATCHDOG_USEC = "WATCHDOG_USEC"
ENV_WATCHDOG_PID = "WATCHDOG_PID"


class Notifier:
    """Sends notifications to the socket in $NOTIFY_SOCKET (read once); silent when there is none."""

    def __init__(self, environ: dict[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        path = env.get(ENV_SOCKET, "")
        self.address: str | bytes | None = None
        if path.startswith("@"):
            self.address = b"\0" + path[1:].encode()
        elif path.startswith("/"):
            self.address = path
        self._sock: socket.socket | None = None
        self.watchdog_interval = _watchdog_interval(env)

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def notify(self, *lines: str) -> bool:
        """Send one notification; False when there is no socket or it could not be sent (never raises:
        a service manager that went away must not take the service down)."""
        if self.address is None:
            return False
        try:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            self._sock.sendto("\n".join(lines).encode(), self.address)
        except OSError:
            return False
        return True

    def ready(self, status: str = "") -> bool:
        return self.notify("READY=1", *([f"STATUS={status}"] if status else []))

    def reloading(self) -> bool:
        # MONOTONIC_USEC lets systemd (Type=notify-reload, v253+) tell this reload from an older one.
        return self.notify("RELOADING=1", f"MONOTONIC_USEC={time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000}")

    def stopping(self) -> bool:
        return self.notify("STOPPING=1")

    def status(self, text: str) -> bool:
        return self.notify(f"STATUS={text}")

    def watchdog(self) -> bool:
        return self.notify("WATCHDOG=1")

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


def _watchdog_interval(env: dict[str, str] | os._Environ[str]) -> float | None:
    """Seconds between WATCHDOG=1 pings (half the watchdog timeout), or None when there is no watchdog
    for this process."""
    usec = env.get(ENV_WATCHDOG_USEC, "")
    pid = env.get(ENV_WATCHDOG_PID, "")
    if not usec.isdigit() or int(usec) == 0:
        return None
    if pid and pid != str(os.getpid()):
        return None  # meant for another process (e.g. our parent)
    return int(usec) / 2e6
