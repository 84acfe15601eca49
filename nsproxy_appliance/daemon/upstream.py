"""Upstream side of the proxy: one protocol per upstream connection, and a pool per tenant.

A pool belongs to exactly one tenant (its upstream and its netns identity): tenants' address
spaces overlap, so 127.0.0.1:9000 dialled from tenant A's netns is not the same server as from
tenant B's. Pools are never shared.

The connection parses responses with httptools and hands them to its `sink` (the client-side
protocol in http.py) through a handful of methods: upstream_head, upstream_body, upstream_done,
upstream_failed, upstream_lost, upstream_tunnel_start/data/closed, flush. Between requests it
sits idle in the pool, where an unexpected byte or close simply drops it.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import socket
from collections.abc import Callable
from typing import Any

import httptools

from .. import netns
from ..model import Tenant, Upstream
from .flow_control import HIGH_WATER, LOW_WATER, PEER_BACKPRESSURE, ReadGate
from .lazytimer import LazyTimer

MAX_IDLE_PER_POOL = 128  # idle keep-alive connections kept per tenant
POOL_IDLE_TIMEOUT = 30.0  # seconds an idle pooled connection is kept (below common upstream keepalive)


class UpstreamConnection(LazyTimer, asyncio.Protocol):
    """One connection to the upstream; serves one request at a time for one sink."""

    def __init__(self, pool: UpstreamPool) -> None:
        self.pool = pool
        self.loop = pool.loop
        self.transport: asyncio.Transport | None = None
        self.gate: ReadGate | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.sink: Any = None  # the client protocol while a request is in flight
        self.served = 0  # responses completed on this connection (>0: it came from the pool)
        self.tunnel = False
        self.got_bytes = False  # any response byte for the current request
        self.idle_since = 0.0
        self._headers: list[tuple[bytes, bytes]] = []
        self._reason = b""
        self._status = 0
        self._complete = False
        self._keep_alive = False
        self._no_body = False
        self._reset_parser = False
        self._read_timeout = 60.0
        self._last = 0.0
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = 0.0
        self.closed = False

    # -- life cycle -----------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.gate = ReadGate(transport)
        transport.set_write_buffer_limits(HIGH_WATER, LOW_WATER)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.parser = None  # break the connection <-> parser cycle
        self.pool.forget(self)
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        sink = self.sink
        if sink is not None:
            self.sink = None
            if self.tunnel:
                sink.upstream_tunnel_closed()
            else:
                sink.upstream_lost(self, exc)

    def bind(self, sink: Any, *, no_body: bool, read_timeout: float) -> None:
        """Start serving one request for `sink` (the head is written by the caller)."""
        self.sink = sink
        self.got_bytes = False
        self._no_body = no_body
        self._complete = False
        self._read_timeout = read_timeout
        self._last = now = self.loop.time()
        self._arm(now + read_timeout)

    def write(self, data: bytes) -> None:
        self._last = self.loop.time()
        self.transport.write(data)  # type: ignore[union-attr]

    def writelines(self, parts: list[bytes]) -> None:
        self._last = self.loop.time()
        self.transport.writelines(parts)  # type: ignore[union-attr]

    def abort(self) -> None:
        """Drop the connection (the exchange it served went wrong); never reused."""
        self.sink = None
        self.closed = True
        if self.transport is not None:
            self.transport.abort()

    def close(self) -> None:
        self.sink = None
        self.closed = True
        if self.transport is not None:
            self.transport.close()

    # -- flow control ---------------------------------------------------------------------
    def pause_writing(self) -> None:
        if self.sink is not None:
            self.sink.gate.pause(PEER_BACKPRESSURE)

    def resume_writing(self) -> None:
        if self.sink is not None:
            self.sink.gate.resume(PEER_BACKPRESSURE)

    # -- reading --------------------------------------------------------------------------
    def data_received(self, data: bytes) -> None:
        sink = self.sink
        if sink is None:  # bytes on an idle connection: the stream is out of step, drop it
            self.abort()
            return
        self._last = self.loop.time()
        if self.tunnel:
            sink.upstream_tunnel_data(data)
            return
        self.got_bytes = True
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade as exc:
            self.tunnel = True
            sink.upstream_tunnel_start(data[exc.args[0] :])
            return
        except httptools.HttpParserError:
            self._fail("bad_response")
            return
        if self._complete:
            self._finish()
        else:
            sink.flush()

    def eof_received(self) -> bool | None:
        return None  # close; connection_lost tells the sink (close-delimited bodies end here)

    def on_message_begin(self) -> None:
        if self._complete:  # a second response in one read: not ours, never reuse
            self._keep_alive = False
        self._headers = []
        self._reason = b""

    def on_status(self, reason: bytes) -> None:
        self._reason += reason

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers.append((name, value))

    def on_headers_complete(self) -> None:
        if self._complete:
            return
        status = self._status = self.parser.get_status_code()
        self.sink.upstream_head(status, self._reason, self._headers)
        if status >= 200 and self._no_body:
            # httptools cannot be told "this answers a HEAD": end the message here and give
            # the next response a fresh parser.
            self._keep_alive = self.parser.should_keep_alive()
            self._complete = True
            self._reset_parser = True

    def on_body(self, body: bytes) -> None:
        if not self._complete:
            self.sink.upstream_body(body)

    def on_message_complete(self) -> None:
        if self._status >= 200 and not self._complete:
            self._keep_alive = self.parser.should_keep_alive()
            self._complete = True

    def _finish(self) -> None:
        self._complete = False
        if self._reset_parser:
            self._reset_parser = False
            self.parser = httptools.HttpResponseParser(self)
        self.served += 1
        sink = self.sink
        sink.upstream_done(self, self._keep_alive)

    def _fail(self, reason: str) -> None:
        sink = self.sink
        self.abort()
        if sink is not None:
            sink.upstream_failed(self, reason)

    # -- timers (one lazy timer: read timeout while busy, idle expiry while pooled) --------
    def _on_timer(self) -> None:
        self._timer = None
        if self.closed:
            return
        now = self.loop.time()
        if self.sink is None:  # idle in the pool
            deadline = self.idle_since + self.pool.idle_timeout
            if now >= deadline:
                self.pool.forget(self)
                self.close()
            else:
                self._arm(deadline)
            return
        if self.tunnel:
            return
        if self.gate is not None and self.gate.reasons:  # the client is slow, not the upstream
            self._last = now
        deadline = self._last + self._read_timeout
        if now >= deadline:
            self._fail("timeout")
        else:
            self._arm(deadline)

    def park(self) -> None:
        """Called by the pool when the connection goes idle."""
        self.sink = None
        self.idle_since = now = self.loop.time()
        if self.gate is not None and self.gate.reasons:
            self.gate.resume(PEER_BACKPRESSURE)
        self._arm(now + self.pool.idle_timeout)


def _family_of(host: str) -> int:
    try:
        return socket.AF_INET6 if ipaddress.ip_address(host).version == 6 else socket.AF_INET
    except ValueError:
        return socket.AF_INET


class UpstreamPool:
    """Idle keep-alive connections to one tenant's upstream, opened the way its config says."""

    def __init__(
        self,
        upstream: Upstream,
        netns_path: str | None,
        *,
        loop: asyncio.AbstractEventLoop | None = None,
        max_idle: int = MAX_IDLE_PER_POOL,
        idle_timeout: float = POOL_IDLE_TIMEOUT,
    ) -> None:
        self.upstream = upstream
        self.netns_path = netns_path  # None: the host netns
        self.netns_identity = netns.identity(netns_path) if netns_path is not None else None
        self.loop = loop or asyncio.get_running_loop()
        self.max_idle = max_idle
        self.idle_timeout = idle_timeout
        self.idle: list[UpstreamConnection] = []
        self.opened = 0  # connections opened over the pool's life (tests and /metrics)
        self.closed = False
        self.default_host = (
            upstream.host.encode() + (b":%d" % upstream.port if upstream.port not in (0, 80) else b"")
            if upstream.kind == "http"
            else b"localhost"
        )

    def acquire(self) -> UpstreamConnection | None:
        """An idle connection ready for a request, or None (then call connect())."""
        idle = self.idle
        while idle:
            conn = idle.pop()
            if not conn.closed and not conn.transport.is_closing():  # type: ignore[union-attr]
                return conn
        return None

    async def connect(self, timeout: float) -> UpstreamConnection:
        """A new connection; raises TimeoutError or OSError."""
        async with asyncio.timeout(timeout):
            _, conn = await self._open(lambda: UpstreamConnection(self))
        self.opened += 1
        return conn

    async def _open(self, factory: Callable[[], UpstreamConnection]) -> tuple[asyncio.Transport, UpstreamConnection]:
        # The seam for HTTPS upstreams: pass ssl=/server_hostname= to the create_* calls here.
        up = self.upstream
        loop = self.loop
        if up.kind == "unix":
            return await loop.create_unix_connection(factory, up.path)  # type: ignore[return-value]
        if up.from_ns == "tenant" and self.netns_path is not None:
            sock = netns.socket_in(self.netns_path, _family_of(up.host))
            try:
                sock.setblocking(False)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                await loop.sock_connect(sock, (up.host, up.port))
            except BaseException:
                sock.close()
                raise
            return await loop.create_connection(factory, sock=sock)  # type: ignore[return-value]
        return await loop.create_connection(factory, up.host, up.port)  # type: ignore[return-value]

    def release(self, conn: UpstreamConnection, reusable: bool) -> None:
        """The request on `conn` is over: keep it for the next one, or close it."""
        if not reusable or self.closed or conn.closed or len(self.idle) >= self.max_idle:
            conn.close()
            return
        conn.park()
        self.idle.append(conn)

    def forget(self, conn: UpstreamConnection) -> None:
        with contextlib.suppress(ValueError):
            self.idle.remove(conn)

    def close(self) -> None:
        """Close idle connections; busy ones close when their request ends."""
        self.closed = True
        idle, self.idle = self.idle, []
        for conn in idle:
            conn.close()


def pool_for(ctx: Any) -> UpstreamPool:
    """The tenant's pool, rebuilt when its upstream or namespace changed (e.g. on reload)."""
    tenant: Tenant = ctx.tenant
    pool: UpstreamPool | None = ctx.pool
    ns_path = tenant.netns.path if tenant.upstream.kind == "http" and tenant.upstream.from_ns == "tenant" else None
    if (
        pool is not None
        and not pool.closed
        and pool.upstream == tenant.upstream
        and pool.netns_path == ns_path
        and (ns_path is None or pool.netns_identity == _identity_or_none(ns_path))
    ):
        return pool
    if pool is not None:
        pool.close()
    pool = ctx.pool = UpstreamPool(tenant.upstream, ns_path)
    return pool


def _identity_or_none(path: str) -> netns.NetnsIdentity | None:
    try:
        return netns.identity(path)
    except OSError:
        return None
