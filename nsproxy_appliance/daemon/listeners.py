"""Listening sockets per tenant, created inside the tenant's network namespace.

A socket belongs to the namespace it was created in for its whole life, so the loop thread enters
the tenant netns only for the socket() calls (netns.entered: enter, run, restore — the process
exits if restoring fails) and binds, listens and serves from the host namespace afterwards.

On reload a tenant's listener set is diffed: only addresses that changed are closed or opened, and
a namespace that now has another identity (deleted and recreated) gets all its sockets re-made.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import socket
from collections.abc import Callable

from .. import netns
from ..model import Listen, Tenant
from ..netns import NetnsIdentity

log = logging.getLogger("nsproxyd")

LISTEN_BACKLOG = 1024
CLIENT_SNDBUF = 256 * 1024  # bytes asked for (the kernel doubles it): flow_control.HIGH_WATER on top

ProtocolFactory = Callable[[], asyncio.Protocol]


class TenantListeners:
    """The open listeners of one tenant and the namespace identity they were made in."""

    __slots__ = ("errors", "identity", "servers")

    def __init__(self) -> None:
        self.identity: NetnsIdentity | None = None
        self.servers: dict[Listen, asyncio.AbstractServer] = {}
        self.errors: dict[Listen, str] = {}  # listeners that should exist but could not be made

    def close(self, listens: list[Listen] | None = None) -> None:
        """Stop accepting on `listens` (all when None); the listening fds are closed at once."""
        for listen in list(self.servers) if listens is None else listens:
            server = self.servers.pop(listen, None)
            if server is not None:
                server.close()

    def complete(self, tenant: Tenant) -> bool:
        return not self.errors and set(self.servers) == set(tenant.listen)


def _family(listen: Listen) -> int:
    return socket.AF_INET6 if listen.family == 6 else socket.AF_INET


def make_sockets(netns_path: str, listens: list[Listen]) -> tuple[dict[Listen, socket.socket], dict[Listen, str]]:
    """Bound, listening, non-blocking sockets for `listens`, made inside the netns at `netns_path`.

    One namespace switch for all of a tenant's sockets; nothing but socket() runs while inside.
    Raises netns.NetnsError when the namespace cannot be entered; per-address bind errors are
    returned, so one bad address does not take the tenant's other listeners down.
    """
    raw: list[tuple[Listen, socket.socket]] = []
    with netns.entered(netns_path):
        try:
            for listen in listens:
                raw.append((listen, socket.socket(_family(listen), socket.SOCK_STREAM)))
        except OSError:
            for _, sock in raw:
                sock.close()
            raise
    made: dict[Listen, socket.socket] = {}
    errors: dict[Listen, str] = {}
    for listen, sock in raw:
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            # Accepted connections inherit the listener's send buffer: bounded, so a client that never
            # reads makes the kernel hold little for it (autotuning would let it grow to tcp_wmem's
            # maximum per connection) and one tenant's slow readers cannot slow the others.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, CLIENT_SNDBUF)
            if sock.family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind((listen.host, listen.port))
            sock.listen(LISTEN_BACKLOG)
            sock.setblocking(False)
        except OSError as e:
            sock.close()
            errors[listen] = f"cannot listen on {listen} in {netns_path}: {e.strerror or e}"
            continue
        made[listen] = sock
    return made, errors


async def sync(
    loop: asyncio.AbstractEventLoop,
    tenant: Tenant,
    current: TenantListeners,
    factory: ProtocolFactory,
) -> tuple[bool, str | None]:
    """Make `current` match `tenant.listen` in the tenant's namespace.

    Returns (namespace_changed, error). namespace_changed means every old socket was closed because
    the path now names another namespace (or vanished), so the caller drains old connections.
    error is None when all listeners are open.
    """
    path = tenant.netns.path
    try:
        ident = netns.identity(path)
        if not netns.is_mounted(path):  # a stale mount point file, or `ip netns add` half done
            raise OSError(errno.ENOENT, "no network namespace is bound there")
    except OSError as e:
        had = current.identity is not None
        current.close()
        current.identity = None
        current.errors = {listen: "namespace unavailable" for listen in tenant.listen}
        return had, f"network namespace {tenant.netns.describe()} ({path}) unavailable: {e.strerror or e}"

    changed = current.identity is not None and not current.identity.same(ident)
    if changed:
        log.info("tenant %s: namespace %s has a new identity %s, re-creating listeners", tenant.name, path, ident)
        current.close()
    wanted = set(tenant.listen)
    current.close([listen for listen in current.servers if listen not in wanted])
    missing = [listen for listen in tenant.listen if listen not in current.servers]
    current.errors = {}
    if missing:
        try:
            made, errors = make_sockets(path, missing)
        except OSError as e:
            current.identity = None
            current.errors = dict.fromkeys(missing, "namespace unavailable")
            return changed, str(e)
        # the cookie of the namespace the sockets were made in: /tenants reports the full identity
        cookie = next((netns.cookie_of(sock) for sock in made.values()), None)
        current.identity = ident.with_cookie(cookie) if cookie is not None else ident
        for listen, sock in made.items():
            try:
                current.servers[listen] = await loop.create_server(factory, sock=sock, backlog=LISTEN_BACKLOG)
            except OSError as e:
                sock.close()
                errors[listen] = f"cannot serve on {listen}: {e.strerror or e}"
        current.errors = errors
    elif current.identity is None or not current.identity.same(ident):
        current.identity = ident
    if current.errors:
        return changed, "; ".join(current.errors.values())
    return changed, None
