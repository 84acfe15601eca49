"""After a 101: the client and upstream connections become a raw byte tunnel.

Both transports are handed to a TunnelEnd each (`transport.set_protocol`), so the HTTP protocols
have no tunnel branches. Each end writes what it reads to the other transport; a full write buffer
on one side pauses reading on the other (same marks as the HTTP path); a half-close is passed on;
when either side is gone, both close.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, cast

from .flow_control import HIGH_WATER, LOW_WATER

if TYPE_CHECKING:
    from .context import TenantContext


class TunnelEnd:
    __slots__ = ("eof", "peer", "transport", "tunnel")

    def __init__(self, tunnel: Tunnel, transport: asyncio.Transport) -> None:
        self.tunnel = tunnel
        self.transport = transport
        self.peer: TunnelEnd | None = None
        self.eof = False

    def data_received(self, data: bytes) -> None:
        peer = self.peer
        if peer is not None and not peer.transport.is_closing():
            self.tunnel.count(self, len(data))
            peer.transport.write(data)

    def eof_received(self) -> bool | None:
        self.eof = True
        peer = self.peer
        if peer is None or peer.eof or not peer.transport.can_write_eof():
            self.tunnel.close()
            return None
        peer.transport.write_eof()
        return True  # keep writing the other direction

    def pause_writing(self) -> None:
        if self.peer is not None:
            self.peer.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.peer is not None and not self.peer.transport.is_closing():
            self.peer.transport.resume_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        self.tunnel.lost(self)


class Tunnel:
    """One tenant connection in tunnel mode; lives in ctx.connections like an HTTP connection."""

    __slots__ = ("client", "ctx", "done", "upstream")

    def __init__(self, ctx: TenantContext, client: asyncio.Transport, upstream: asyncio.Transport) -> None:
        self.ctx = ctx
        self.done = False
        self.client = TunnelEnd(self, client)
        self.upstream = TunnelEnd(self, upstream)
        self.client.peer, self.upstream.peer = self.upstream, self.client
        for end in (self.client, self.upstream):
            end.transport.set_write_buffer_limits(HIGH_WATER, LOW_WATER)
            end.transport.set_protocol(cast(asyncio.BaseProtocol, end))  # duck-typed, as in http.py
            end.transport.resume_reading()  # whatever the HTTP side had paused
        ctx.add_connection(self)

    def count(self, end: TunnelEnd, n: int) -> None:
        counters = self.ctx.counters
        if end is self.client:
            counters.bytes_in += n
        else:
            counters.bytes_out += n

    def lost(self, end: TunnelEnd) -> None:
        self.close()
        if not self.done:
            self.done = True
            self.ctx.discard_connection(self)
            self.ctx.counters.active_connections -= 1
            self.ctx.budget.clients -= 1

    def close(self) -> None:
        for end in (self.client, self.upstream):
            if not end.transport.is_closing():
                end.transport.close()

    # the control plane's drain interface, as on http.ProxyProtocol
    def begin_drain(self) -> None:
        """A tunnel has no request boundary to stop at: it ends when the drain timeout aborts it."""

    def abort(self) -> None:
        for end in (self.client, self.upstream):
            end.transport.abort()
