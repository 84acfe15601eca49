"""The daemon's link to the socket broker: which broker (a shared one, or a private child), the
connection, and wiring it to the code that needs sockets (listeners, the upstream pools).

Set up in two steps: `prepare()` before the daemon drops its privileges (a private broker must be
started as root), `connect()` on the event loop. Also the small systemd helpers of the process
entry (status line, watchdog task), kept out of main.py.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import subprocess
from typing import TYPE_CHECKING

from ..broker.client import BrokerClient, BrokerError
from ..broker.protocol import SOCKET_NAME
from ..errors import NsproxyError
from ..sdnotify import Notifier
from . import listeners, upstream
from .brokered import BrokeredSockets, spawn_private_broker

if TYPE_CHECKING:
    from .state import DaemonState

log = logging.getLogger("nsproxyd")


def default_socket(config_path: str) -> str:
    return os.path.join(os.path.dirname(os.path.abspath(config_path)), SOCKET_NAME)


def _answers(path: str) -> bool:
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    try:
        probe.settimeout(1.0)
        probe.connect(path)
    except OSError:
        return False
    finally:
        probe.close()
    return True


class BrokerLink:
    def __init__(self, config_path: str, broker_path: str | None = None) -> None:
        self.config_path = config_path
        self.explicit = broker_path is not None
        self.path = broker_path or default_socket(config_path)
        self.private: subprocess.Popen[bytes] | None = None
        self._private_sock: socket.socket | None = None
        self.sockets: BrokeredSockets | None = None

    def prepare(self) -> None:
        """Decide where sockets come from; start a private broker when no shared one answers at the
        default place and the daemon is root. Raises NsproxyError when there is no way."""
        if self.explicit or _answers(self.path):
            return
        if os.geteuid() != 0:
            raise NsproxyError(
                f"no socket broker answers at {self.path}: start nsproxy-broker (nsproxy-broker.service), "
                "or pass --broker"
            )
        try:
            self._private_sock, self.private = spawn_private_broker(self.config_path)
        except OSError as e:
            raise NsproxyError(f"cannot start a private socket broker: {e.strerror or e}") from None
        log.info(
            "no socket broker at %s: started a private one (pid %d); listeners will not outlive this daemon",
            self.path,
            self.private.pid,
        )

    async def connect(self, state: DaemonState) -> bool:
        """Connect and wire the broker in; False (logged) when it cannot be reached."""
        private = self._private_sock
        client = BrokerClient(sock=private) if private is not None else BrokerClient(self.path)
        try:
            await client.connect()
        except BrokerError as e:
            log.error("%s", e)
            return False
        self.sockets = sockets = BrokeredSockets(client, keeps_listeners=self.private is None)

        async def adopt() -> None:
            await sockets.adopt_all(state)

        client.on_reconnect = adopt
        listeners.broker = sockets
        upstream.tenant_sockets = sockets.upstream_socket
        log.info("socket broker: pid %s (%s)", client.broker_pid, "private" if self.private else self.path)
        return True

    def close(self) -> None:
        if self.sockets is not None:
            self.sockets.close()
            self.sockets = None
        listeners.broker = None
        upstream.tenant_sockets = None
        if self.private is not None:  # it exits when its end of the socketpair closes
            try:
                self.private.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.private.kill()
                self.private.wait()
            self.private = None


def status_line(state: DaemonState) -> str:
    """systemd's STATUS= line: what `systemctl status nsproxyd` shows."""
    failed = sum(1 for slot in state.slots.values() if slot.ctx.state == "failed")
    return f"serving generation {state.generation}: {len(state.slots)} tenants, {failed} failed"


async def _ping(notifier: Notifier, interval: float) -> None:
    while True:
        notifier.watchdog()
        await asyncio.sleep(interval)


def start_watchdog(notifier: Notifier) -> asyncio.Task[None] | None:
    """WATCHDOG=1 pings from the event loop itself (a loop that stops turning stops them), when
    systemd asked for them (WatchdogSec=)."""
    if notifier.watchdog_interval is None:
        return None
    return asyncio.get_running_loop().create_task(_ping(notifier, notifier.watchdog_interval))
