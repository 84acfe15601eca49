"""Where the daemon's sockets come from: the socket broker, with every socket checked (fdcheck).

nsproxyd never enters a namespace itself (it has no capabilities to): listeners.make_sockets and
the `from: tenant` branch of upstream.UpstreamPool._open get their sockets here. This module holds
the daemon's one broker connection, the cookie book and the upstream reserve, and gives a
reconnected broker the daemon's listening sockets to keep.
"""

from __future__ import annotations

import logging
import socket
import subprocess
import sys
from typing import TYPE_CHECKING

from ..broker.client import BrokerClient, BrokerError, UpstreamReserve
from ..identity import NetnsIdentity
from ..model import Listen, Tenant
from . import fdcheck

if TYPE_CHECKING:
    from .state import DaemonState

log = logging.getLogger("nsproxyd")


class BrokeredSockets:
    def __init__(self, client: BrokerClient, *, keeps_listeners: bool = True) -> None:
        self.client = client
        self.keeps_listeners = keeps_listeners  # a shared broker: listeners outlive this daemon
        self.book = fdcheck.CookieBook()
        self.reserve = UpstreamReserve(client, self._check_upstream)

    async def listeners(
        self, tenant: Tenant, listens: list[Listen], backlog: int
    ) -> tuple[dict[Listen, socket.socket], dict[Listen, str]]:
        """Listening sockets for `listens` in the tenant's namespace, each checked; the addresses that
        could not be bound or whose socket was refused, with why. Raises OSError (BrokerError) when
        the namespace cannot be entered or the broker refuses the request."""
        by_key = {str(listen): listen for listen in listens}
        identity, sockets, failed = await self.client.listen(tenant.name, list(by_key), backlog)
        made: dict[Listen, socket.socket] = {}
        errors = {by_key[key]: why for key, why in failed.items() if key in by_key}
        try:
            self.book.check(identity, tenant.netns.path)
        except fdcheck.RefusedSocket as e:
            for sock in sockets.values():
                sock.close()
            log.error("tenant %s: refused the sockets from the broker: %s", tenant.name, e)
            raise BrokerError(f"refused the sockets from the broker: {e}") from None
        for key, sock in sockets.items():
            listen = by_key.get(key)
            if listen is None:
                sock.close()
                continue
            try:
                fdcheck.check_listener(sock, listen, identity)
            except fdcheck.RefusedSocket as e:
                sock.close()
                log.error("tenant %s: refused the socket for %s from the broker: %s", tenant.name, listen, e)
                errors[listen] = f"refused the socket for {listen} from the broker: {e}"
                continue
            made[listen] = sock
        for listen in listens:
            if listen not in made and listen not in errors:
                errors[listen] = f"the broker sent no socket for {listen}"
        return made, errors

    def _check_upstream(self, sock: socket.socket, family: int, identity: NetnsIdentity, path: str) -> None:
        self.book.check(identity, path)
        fdcheck.check_unconnected(sock, family, identity)

    async def upstream_socket(self, netns_path: str, family: int) -> socket.socket:
        """An unconnected socket for a `from: tenant` upstream connection (upstream.tenant_sockets)."""
        return await self.reserve.take(netns_path, family)

    def release(self, tenant: str, listens: list[Listen] | None) -> None:
        self.client.release(tenant, None if listens is None else [str(listen) for listen in listens])

    async def adopt_all(self, state: DaemonState) -> None:
        """Give a (re)started broker every listening socket the daemon serves, to keep for the next
        daemon: without this a broker restart would lose them at the daemon's next restart."""
        held: list[tuple[str, str, int]] = []
        for name, slot in state.slots.items():
            for listen, server in slot.listeners.servers.items():
                for sock in getattr(server, "sockets", None) or ():  # asyncio.Server and uvloop's Server
                    held.append((name, str(listen), sock.fileno()))
        if not held:
            return
        result = await self.client.adopt(held)
        adopted, refused = result["adopted"], len(result["refused"])
        log.info("the restarted broker keeps %d listening sockets (%d refused)", adopted, refused)
        for what, why in result["refused"].items():
            log.warning("the broker refused to keep %s: %s", what, why)

    def close(self) -> None:
        self.reserve.close()
        self.client.close()


def spawn_private_broker(config_path: str) -> tuple[socket.socket, subprocess.Popen[bytes]]:
    """A broker of this daemon's own, for a root daemon started without one (nsproxyd run by hand,
    test harnesses): a child process on one end of a socketpair, which exits when the daemon does.
    Its listeners do not outlive the daemon; `nsproxy-broker` (its own unit) is what makes restarts
    lose nothing."""
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    try:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "nsproxy_appliance.broker.server",
                "--config",
                config_path,
                "--fd",
                str(theirs.fileno()),
            ],
            pass_fds=[theirs.fileno()],
            stdin=subprocess.DEVNULL,
            close_fds=True,
        )
    except OSError:
        ours.close()
        raise
    finally:
        theirs.close()
    return ours, proc
