"""Listening sockets per tenant, created inside the tenant's network namespace.

A socket belongs to the namespace it was created in for its whole life, so only its creation
needs privilege: the socket broker (nsproxy_appliance/broker) enters the tenant netns, makes,
binds and listens, and hands the socket over; the daemon checks it (daemon/fdcheck.py) and serves
it from the host namespace. The daemon itself never enters a namespace. The broker keeps a copy of
every listening socket, so a restarted daemon gets the same sockets back; closing a listener for
good (tenant or address removed, namespace gone) therefore also releases the broker's copy.

On reload a tenant's listener set is diffed: only addresses that changed are closed or opened, and
a namespace that now has another identity (deleted and recreated) gets all its sockets re-made.
A TLS listener (tls.py) whose certificates changed keeps its socket: its Terminator loads the new
files and new handshakes use them (also on a reload of the same config, when the files changed).
"""

from __future__ import annotations

import asyncio
import errno
import logging
import socket
from collections.abc import Callable
from typing import TYPE_CHECKING

from .. import netns
from ..model import Listen, Tenant
from ..netns import NetnsIdentity
from .tls import HandshakeGate, Terminator, TlsSetupError, server_factory, socket_key

if TYPE_CHECKING:
    from .brokered import BrokeredSockets
    from .context import TenantContext

log = logging.getLogger("nsproxyd")

LISTEN_BACKLOG = 1024
CLIENT_SNDBUF = 256 * 1024  # bytes asked for (the kernel doubles it): flow_control.HIGH_WATER on top

ProtocolFactory = Callable[[], asyncio.Protocol]
FactoryFor = Callable[[Listen], ProtocolFactory]  # the protocol factory of one listener of a tenant

broker: BrokeredSockets | None = None  # where sockets come from: set by nsproxyd at start (main.py)


class TenantListeners:
    """The open listeners of one tenant and the namespace identity they were made in."""

    __slots__ = ("context", "errors", "handshakes", "identity", "servers", "tenant", "tls")

    def __init__(self) -> None:
        self.tenant: str | None = None  # whose they are (set by sync: the broker keys its copies by it)
        self.identity: NetnsIdentity | None = None
        self.servers: dict[Listen, asyncio.AbstractServer] = {}
        self.errors: dict[Listen, str] = {}  # listeners that should exist but could not be made
        self.tls: dict[Listen, Terminator] = {}  # the TLS listeners' certificates (same keys as servers)
        self.context: TenantContext | None = None  # the tenant's (set by its TenantSlot): for TLS listeners
        self.handshakes: HandshakeGate | None = None  # the tenant's TLS handshakes, made with its first TLS listener

    def close(self, listens: list[Listen] | None = None, *, release: bool = True) -> None:
        """Stop accepting on `listens` (all when None); the listening fds are closed at once.

        With `release` the broker closes its copies too (they are gone for good); without (the
        daemon is stopping) a shared broker keeps them, and the kernel queues connections for the
        next daemon (a private broker, which goes with this daemon, releases them anyway).
        """
        closed = []
        for listen in list(self.servers) if listens is None else listens:
            server = self.servers.pop(listen, None)
            self.tls.pop(listen, None)
            if server is not None:
                server.close()
                closed.append(listen)
        if closed and broker is not None and self.tenant is not None and (release or not broker.keeps_listeners):
            broker.release(self.tenant, closed)

    def complete(self, tenant: Tenant) -> bool:
        return not self.errors and set(self.servers) == set(tenant.listen)

    def tls_files_changed(self) -> bool:
        """Whether a TLS listener's certificate, key or CA file changed since it was loaded."""
        return any(terminator.files_changed() for terminator in self.tls.values())

    def _update_tls(self, tenant: Tenant) -> dict[Listen, str]:
        """Keep the socket of a TLS listener whose certificates changed (its socket_key did not):
        load the new files into its Terminator. Returns the listeners whose files cannot be loaded
        (they keep serving what they had)."""
        errors: dict[Listen, str] = {}
        waiting = {socket_key(listen): listen for listen in tenant.listen if listen not in self.servers}
        for old in [listen for listen in self.servers if listen.tls is not None]:
            new = old if old in tenant.listen else waiting.pop(socket_key(old), None)
            if new is None or new.tls is None:
                continue
            terminator = self.tls[old]
            if new is not old:
                self.servers[new] = self.servers.pop(old)
                self.tls[new] = self.tls.pop(old)
            if new is old and terminator.settings == new.tls and not terminator.files_changed():
                continue
            try:
                terminator.update(new.tls)
                log.info("tenant %s: TLS listener %s loaded its certificates again", tenant.name, new)
            except TlsSetupError as e:
                errors[new] = f"{e}; still serving the certificates loaded before"
        return errors


async def make_sockets(tenant: Tenant, listens: list[Listen]) -> tuple[dict[Listen, socket.socket], dict[Listen, str]]:
    """Bound, listening, non-blocking sockets for `listens`, made inside the tenant's netns by the
    broker (SO_REUSEADDR, IPV6_V6ONLY, LISTEN_BACKLOG) and checked here (family, type, listening,
    bound address, namespace cookie).

    Raises OSError when the namespace cannot be entered or the broker refuses; per-address errors
    (bind failed, socket refused) are returned, so one bad address does not take the tenant's other
    listeners down.
    """
    if broker is None:
        raise netns.NetnsError(errno.EPERM, "no socket broker: nsproxyd makes no socket inside a namespace itself")
    made, errors = await broker.listeners(tenant, listens, LISTEN_BACKLOG)
    for listen, sock in list(made.items()):
        try:
            # Accepted connections inherit the listener's send buffer: bounded, so a client that never
            # reads makes the kernel hold little for it (autotuning would let it grow to tcp_wmem's
            # maximum per connection) and one tenant's slow readers cannot slow the others.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, CLIENT_SNDBUF)
            sock.setblocking(False)
        except OSError as e:
            sock.close()
            del made[listen]
            errors[listen] = f"cannot listen on {listen} in {tenant.netns.path}: {e.strerror or e}"
    return made, errors


async def sync(
    loop: asyncio.AbstractEventLoop,
    tenant: Tenant,
    current: TenantListeners,
    factory: FactoryFor,
) -> tuple[bool, str | None]:
    """Make `current` match `tenant.listen` in the tenant's namespace.

    Returns (namespace_changed, error). namespace_changed means every old socket was closed because
    the path now names another namespace (or vanished), so the caller drains old connections.
    error is None when all listeners are open.
    """
    path = tenant.netns.path
    current.tenant = tenant.name
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
    tls_errors = current._update_tls(tenant)
    wanted = set(tenant.listen)
    current.close([listen for listen in current.servers if listen not in wanted])
    missing = [listen for listen in tenant.listen if listen not in current.servers]
    current.errors = {}
    terminators: dict[Listen, Terminator] = {}
    for listen in [listen for listen in missing if listen.tls is not None]:
        try:
            terminators[listen] = Terminator(listen.tls)  # type: ignore[arg-type]  # tls is set
        except TlsSetupError as e:
            tls_errors[listen] = str(e)
            missing.remove(listen)
    if missing:
        try:
            made, errors = await make_sockets(tenant, missing)
        except OSError as e:
            current.identity = None
            current.errors = dict.fromkeys(missing, "namespace unavailable")
            return changed, str(e)
        # the cookie of the namespace the sockets were made in: /tenants reports the full identity
        cookie = next((netns.cookie_of(sock) for sock in made.values()), None)
        current.identity = ident.with_cookie(cookie) if cookie is not None else ident
        for listen, sock in made.items():
            serve = factory(listen)
            terminator = terminators.get(listen)
            if terminator is not None:
                if current.handshakes is None:
                    if current.context is None:
                        raise RuntimeError("a TLS listener needs its tenant's context (TenantListeners.context)")
                    current.handshakes = HandshakeGate(current.context)
                serve = server_factory(loop, terminator, current.handshakes, serve)
            try:
                current.servers[listen] = await loop.create_server(serve, sock=sock, backlog=LISTEN_BACKLOG)
            except OSError as e:
                sock.close()
                errors[listen] = f"cannot serve on {listen}: {e.strerror or e}"
                continue
            if terminator is not None:
                current.tls[listen] = terminator
        current.errors = errors
    elif current.identity is None or not current.identity.same(ident):
        current.identity = ident
    current.errors.update(tls_errors)
    if current.errors:
        return changed, "; ".join(current.errors.values())
    return changed, None
