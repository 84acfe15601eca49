"""Upstream side of the proxy: one protocol per upstream connection, and a pool per tenant.

A pool belongs to exactly one tenant (its upstream and its netns identity): tenants' address
spaces overlap, so 127.0.0.1:9000 dialled from tenant A's netns is not the same server as from
tenant B's. Pools are never shared.

A connection serves one exchange at a time (nsproxy never pipelines upstream) and reports the
response to it through the `UpstreamSink` methods. It stays attached to the client connection that
took it, across that client's keep-alive requests, and goes back to the pool when the client
connection closes. Responses are validated by llhttp; the head is taken as raw bytes (no Python
callback per header) and handed over whole. Any byte the upstream sends that no request asked for
makes the connection unusable: it is closed, never reused.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import socket
import ssl
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Protocol, cast

import httptools
from mypy_extensions import mypyc_attr

from .. import netns
from ..model import Upstream
from .fdbudget import FdBudget
from .flow_control import HIGH_WATER, LOW_WATER, PEER_BACKPRESSURE, ReadGate
from .lazytimer import LazyTimer
from .response_head import ResponseHead
from .tls import OFFERED_SESSION, client_context, describe_upstream_error, upstream_error_reason

if TYPE_CHECKING:
    from .context import TenantContext

log = logging.getLogger("nsproxyd")

MAX_IDLE_PER_POOL = 128  # idle keep-alive connections kept per tenant
POOL_IDLE_TIMEOUT = 30.0  # seconds an idle pooled connection is kept (below common upstream keepalive)
MAX_RESPONSE_HEAD = 64 * 1024  # bytes; a longer response head is a bad response
UPSTREAM_RCVBUF = 256 * 1024  # bytes asked for (the kernel doubles it) per upstream connection

# Where a `from: tenant` connection gets its unconnected socket, made in the tenant's namespace:
# nsproxyd sets the socket broker's reserve (daemon/brokered.py) and never enters a namespace itself.
# None (in-process harnesses running as root): made here with netns.socket_in.
tenant_sockets: Callable[[str, int], Awaitable[socket.socket]] | None = None


class UpstreamSink(Protocol):
    """What a connection tells the exchange it serves (implemented by http.Exchange).

    Body bytes do not go through a method call each: the connection appends them to `out` (the
    client's output, written once per read by `upstream_flush`), re-chunked when `upstream_head`
    asked for it.
    """

    client_gate: ReadGate | None  # paused while the upstream's write buffer is full
    out: list[bytes]  # the client connection's pending output

    def upstream_interim(self, raw: bytes) -> None:
        """A 1xx head other than 101 (raw, without its final CRLF CRLF)."""

    def upstream_head(self, status: int, raw: bytes) -> bool:
        """The final response head (raw, without its final CRLF CRLF); True: re-chunk the body."""

    def upstream_flush(self) -> None:
        """The end of one read: write what the read produced to the client, in one write."""

    def upstream_done(self, keep_alive: bool, body_bytes: int) -> None:
        """The response is complete; `keep_alive`: the connection may serve another request."""

    def upstream_failed(self, reason: str) -> None:
        """A bad response or a read timeout; the connection is already aborted."""

    def upstream_lost(self, conn: UpstreamConnection, exc: Exception | None) -> None:
        """The connection closed while serving the exchange."""

    def upstream_switched(self, conn: UpstreamConnection, rest: bytes) -> None:
        """A 101 head was parsed; `rest` is what followed it in the same read (tunnel data)."""


class UpstreamOwner(Protocol):
    """The client connection an upstream connection is attached to between its requests."""

    def upstream_gone(self, conn: UpstreamConnection) -> None: ...


class UpstreamConnection(LazyTimer):
    """One connection to the upstream; serves one exchange at a time."""

    def __init__(self, pool: UpstreamPool) -> None:
        self.pool = pool
        self.loop = pool.loop
        self._time = pool.loop.time  # bound once: looked up per request otherwise
        self.transport: asyncio.Transport | None = None
        self.gate: ReadGate | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.sink: UpstreamSink | None = None  # the exchange in flight
        self.owner: UpstreamOwner | None = None  # the client connection holding it (None: pooled)
        self.served = 0  # responses completed on this connection (>0: it is being reused)
        self.got_bytes = False  # any response byte for the current exchange
        self.idle_since = 0.0
        self.closed = False
        self.peer_label = "-"  # where it is connected to (the access log's upstream_address)
        self._data = b""  # the read being parsed (the head is sliced out of it)
        self._pending = b""  # bytes of a head that started in an earlier read
        self._head_from = 0  # where the next head starts in the buffer being parsed
        self._awaiting_head = False
        self._status = 0
        self._complete = False
        self._extra = False  # bytes beyond the response: never reuse
        self._keep_alive = False
        self._rechunk = False
        self._out: list[bytes] = []
        self._body_bytes = 0
        self._no_body = False
        # the last response head and what it became for the client, by client flags (see http.py)
        self.head_cache: tuple[bytes, int, ResponseHead] | None = None
        self._reset_parser = False
        self._read_timeout = 60.0
        self._last = 0.0
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = 0.0
        self._tcp: socket.socket | None = None  # for TCP_CORK (None: a unix socket upstream)
        self.corked = False

    # -- life cycle -----------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport = cast(asyncio.Transport, transport)  # uvloop's does not subclass it
        self.gate = ReadGate(transport)
        transport.set_write_buffer_limits(HIGH_WATER, LOW_WATER)
        sock = transport.get_extra_info("socket")
        if sock is not None:
            # What the upstream sent and the client has not read yet waits here: bounded, like the
            # client side's send buffer (listeners.CLIENT_SNDBUF), rather than autotuned per connection.
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, UPSTREAM_RCVBUF)
            if sock.family != socket.AF_UNIX:
                self._tcp = sock
        peer = transport.get_extra_info("peername")  # once per connection: for the access log
        self.peer_label = (
            (f"[{peer[0]}]:{peer[1]}" if ":" in peer[0] else f"{peer[0]}:{peer[1]}")
            if isinstance(peer, tuple)
            else f"unix:{peer}"
            if peer
            else self.pool.upstream.describe()
        )

    def connection_lost(self, exc: Exception | None) -> None:
        # Not `and not self.closed`: a pooled connection that aborted itself (bytes nobody asked
        # for, e.g. a 408 before the upstream closes) is closed but still in the pool's idle list.
        # forget() only counts it out of the fd budget when it really was there.
        was_idle = self.owner is None and self.sink is None
        self.closed = True
        self.parser = None  # type: ignore[assignment]  # break the connection <-> parser cycle
        self.pool.forget(self, was_idle)
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        sink, owner = self.sink, self.owner
        self.sink = self.owner = None
        if sink is not None:
            sink.upstream_lost(self, exc)
        elif owner is not None:
            owner.upstream_gone(self)

    def usable(self) -> bool:
        return not self.closed and self.transport is not None and not self.transport.is_closing()

    def bind(self, sink: UpstreamSink, *, no_body: bool, read_timeout: float) -> None:
        """Start serving one exchange for `sink` (the head is written by the caller)."""
        self.sink = sink
        self._out = sink.out
        self.got_bytes = False
        self._no_body = no_body
        self._awaiting_head = True
        self._body_bytes = 0
        self._read_timeout = read_timeout
        if self.corked:  # an exchange that ended before its request body did: nothing may wait
            self.uncork()
        self._last = now = self._time()
        at = now + read_timeout
        if self._timer is None or at < self._timer_at:
            self._arm(at)

    def write(self, data: bytes) -> None:
        self._last = self.loop.time()
        self.transport.write(data)  # type: ignore[union-attr]  # set in connection_made

    def writelines(self, parts: list[bytes]) -> None:
        self._last = self.loop.time()
        self.transport.writelines(parts)  # type: ignore[union-attr]  # set in connection_made

    def cork(self) -> None:
        """More of the request body is to come: let the kernel hold partial segments until it ends
        (HAProxy's MSG_MORE). A body dribbled a byte at a time then costs a cheap send per byte, not
        a packet through loopback and a wake-up of the upstream each (tests/unit/test_upstream_cork.py)."""
        sock = self._tcp
        if sock is not None and not self.corked:
            self.corked = True
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_CORK, 1)

    def uncork(self) -> None:
        """The request body is complete: send what the kernel holds, now."""
        if self.corked:
            self.corked = False
            with contextlib.suppress(OSError):
                self._tcp.setsockopt(socket.IPPROTO_TCP, socket.TCP_CORK, 0)  # type: ignore[union-attr]  # cork() set it

    def abort(self) -> None:
        """Drop the connection (the exchange it served went wrong); never reused."""
        self.sink = self.owner = None
        self.closed = True
        if self.transport is not None:
            self.transport.abort()

    def close(self) -> None:
        self.sink = self.owner = None
        self.closed = True
        if self.transport is not None:
            self.transport.close()

    # -- flow control ---------------------------------------------------------------------
    def pause_writing(self) -> None:
        sink = self.sink
        if sink is not None and sink.client_gate is not None:
            sink.client_gate.pause(PEER_BACKPRESSURE)

    def resume_writing(self) -> None:
        sink = self.sink
        if sink is not None and sink.client_gate is not None:
            sink.client_gate.resume(PEER_BACKPRESSURE)

    # -- reading --------------------------------------------------------------------------
    def data_received(self, data: bytes) -> None:
        sink = self.sink
        if sink is None:  # bytes no request asked for: the stream is out of step, drop it
            self.abort()
            return
        self._last = self._time()
        self.got_bytes = True
        self._data = data
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade as exc:
            if self._complete:
                self._extra = True
            else:
                self._switched(data[exc.args[0] :])
                return
        except httptools.HttpParserError:
            if not self._complete:  # after a complete response: extra bytes, handled below
                self._fail("bad_response")
                return
            self._extra = True
        if self.sink is None:  # the exchange gave up on this connection while parsing
            return
        if self._complete:  # the response is over: the exchange ends (inlined: once per request)
            self._complete = False
            extra, self._extra = self._extra, False
            self._head_from = 0
            if self._reset_parser:
                self._reset_parser = False
                self.parser = httptools.HttpResponseParser(self)
            self.served += 1
            if self.served == 1 and self.pool.upstream.tls is not None:
                self.pool.keep_session(self)  # after a response: a TLS 1.3 ticket has arrived by now
            self.sink = None
            sink.upstream_done(self._keep_alive and not extra, self._body_bytes)
            return
        if self._awaiting_head:
            # A head is still incomplete: keep its bytes for the next read (bounded).
            buf = self._pending + data if self._pending else data
            self._pending = buf[self._head_from :]
            if len(self._pending) > MAX_RESPONSE_HEAD:
                self._fail("bad_response")
                return
        self._head_from = 0
        sink.upstream_flush()

    def eof_received(self) -> bool | None:
        return None  # close; connection_lost tells the sink (close-delimited bodies end here)

    def on_message_begin(self) -> None:
        if self._complete or (self._no_body and not self._awaiting_head):
            self._extra = True  # a second response, or a body after a HEAD response

    def _head(self) -> bytes | None:
        """The raw head just parsed, without its final CRLF CRLF (llhttp validated it)."""
        buf = self._pending + self._data if self._pending else self._data
        start = self._head_from
        size = len(buf)
        while start < size and buf[start] in b"\r\n":  # llhttp skips empty lines before a message
            start += 1
        end = buf.find(b"\r\n\r\n", start)
        if end < 0:
            return None
        self._head_from = end + 4 - len(self._pending)  # offsets continue in this read's bytes
        self._pending = b""
        return buf[start:end]

    def on_headers_complete(self) -> None:
        if self._complete or not self._awaiting_head:
            return
        sink = self.sink
        data = self._data
        if not self._pending and not self._head_from and data.startswith(b"HTTP/"):
            end = data.find(b"\r\n\r\n")  # nearly always: the head is at the start of this read
            raw = data[:end] if end > 0 else None
            self._head_from = end + 4
        else:
            raw = self._head()
        if raw is None or sink is None:
            raise httptools.HttpParserError("response head not found")
        status = self._status = self.parser.get_status_code()
        if status < 200 and status != 101:
            sink.upstream_interim(raw)  # another head follows
            return
        self._awaiting_head = False
        self._rechunk = sink.upstream_head(status, raw)
        if status >= 200 and self._no_body:
            # httptools cannot be told "this answers a HEAD": end the message here and give the
            # next response a fresh parser.
            self._keep_alive = self.parser.should_keep_alive()
            self._complete = True
            self._reset_parser = True

    def on_body(self, body: bytes) -> None:
        if self._complete:
            self._extra = True
        elif self.sink is not None:
            self._body_bytes += len(body)
            if self._rechunk:
                self._out += (b"%x\r\n" % len(body), body, b"\r\n")
            else:
                self._out.append(body)

    def on_message_complete(self) -> None:
        if self._status >= 200 and not self._complete and not self._awaiting_head:
            self._keep_alive = self.parser.should_keep_alive()
            self._complete = True

    def _fail(self, reason: str) -> None:
        sink = self.sink
        self.abort()
        if sink is not None:
            sink.upstream_failed(reason)

    def _switched(self, rest: bytes) -> None:
        sink = self.sink
        self.sink = None
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if sink is not None:
            sink.upstream_switched(self, rest)

    # -- timers (one lazy timer: read timeout while busy, idle expiry while pooled) --------
    def _on_timer(self) -> None:
        self._timer = None
        if self.closed:
            return
        now = self.loop.time()
        if self.sink is None:
            if self.owner is None:  # idle in the pool
                deadline = self.idle_since + self.pool.idle_timeout
                if now >= deadline:
                    self.pool.forget(self, True)
                    self.close()
                else:
                    self._arm(deadline)
            return  # attached to an idle client: its idle timeout applies
        if self.gate is not None and self.gate.reasons & PEER_BACKPRESSURE:
            self._last = now  # reading is paused because the client is slow, not the upstream
        deadline = self._last + self._read_timeout
        if now >= deadline:
            self._fail("timeout")
        else:
            self._arm(deadline)

    def park(self) -> None:
        """Called by the pool when the connection goes idle."""
        self.sink = self.owner = None
        self.idle_since = now = self.loop.time()
        if self.gate is not None and self.gate.reasons:
            self.gate.resume(PEER_BACKPRESSURE)
        self._arm(now + self.pool.idle_timeout)


def _family_of(host: str) -> int:
    try:
        return socket.AF_INET6 if ipaddress.ip_address(host).version == 6 else socket.AF_INET
    except ValueError:
        return socket.AF_INET


@mypyc_attr(allow_interpreted_subclasses=True)  # the socket-free tests subclass it (tests/unit/protocol_fakes.py)
class UpstreamPool:
    """Idle keep-alive connections to one tenant's upstream, opened the way its config says."""

    def __init__(
        self,
        upstream: Upstream,
        netns_path: str | None,
        *,
        budget: FdBudget,
        loop: asyncio.AbstractEventLoop | None = None,
        max_idle: int = MAX_IDLE_PER_POOL,
        idle_timeout: float = POOL_IDLE_TIMEOUT,
    ) -> None:
        self.upstream = upstream
        self.netns_path = netns_path  # None: the host netns
        self.netns_identity = netns.identity(netns_path) if netns_path is not None else None
        self.budget = budget
        self.loop = loop or asyncio.get_running_loop()
        self.max_idle = max_idle
        self.idle_timeout = idle_timeout
        self.idle: list[UpstreamConnection] = []
        self.opened = 0  # connections opened over the pool's life (tests and /metrics)
        self.closed = False
        # https upstreams (tls.py): the shared context, the session offered to the next handshake,
        # and why the last connection failed in TLS (for /tenants; None since a success)
        self.tls_context: ssl.SSLContext | None = None
        self.tls_session: ssl.SSLSession | None = None
        self.tls_error: str | None = None

    def acquire(self) -> UpstreamConnection | None:
        """An idle connection ready for a request, or None (then call connect())."""
        idle = self.idle
        while idle:
            conn = idle.pop()
            self.budget.idle -= 1
            if conn.usable():
                return conn
            conn.close()
        return None

    async def connect(self, timeout: float) -> UpstreamConnection:
        """A new connection; raises TimeoutError or OSError (ssl.SSLError and tls.TlsSetupError
        among them: an https upstream that fails verification or cannot be set up)."""
        tls = self.upstream.tls
        # the session this pool's handshake offers (tls.ResumingContext reads it in this task's context)
        token = OFFERED_SESSION.set(self.tls_session) if tls is not None else None
        try:
            async with asyncio.timeout(timeout):
                _, conn = await self._open(lambda: UpstreamConnection(self))
        except OSError as e:
            if tls is not None:
                self._tls_failed(e)
            raise
        finally:
            if token is not None:
                OFFERED_SESSION.reset(token)
        if tls is not None:
            self.tls_error = None
        self.opened += 1
        return conn

    def _tls_context(self) -> tuple[ssl.SSLContext | None, str | None]:
        """(context, server name) for an https upstream; (None, None) for plain ones."""
        tls = self.upstream.tls
        if tls is None:
            return None, None
        ctx = self.tls_context
        if ctx is None:
            ctx = self.tls_context = client_context(tls)  # raises TlsSetupError
        return ctx, tls.server_hostname or self.upstream.host

    def _tls_failed(self, exc: OSError) -> None:
        """Remember (for /tenants) and log why an https connection failed, once per distinct reason."""
        if upstream_error_reason(exc) is None:
            return
        why = describe_upstream_error(exc)
        if why != self.tls_error:
            log.warning("upstream %s: TLS failed: %s", self.upstream.describe(), why)
        self.tls_error = why

    def keep_session(self, conn: UpstreamConnection) -> None:
        """Keep `conn`'s TLS session for the next connection's handshake (resumption)."""
        transport = conn.transport
        sslobj = transport.get_extra_info("ssl_object") if transport is not None else None
        if sslobj is not None:
            session = sslobj.session
            if session is not None:
                self.tls_session = session

    async def _open(self, make: Callable[[], UpstreamConnection]) -> tuple[asyncio.BaseTransport, UpstreamConnection]:
        # https upstreams: ssl= and server_hostname= (None for plain ones) from _tls_context().
        # The protocol classes do not subclass asyncio.Protocol (the loop only calls their methods;
        # a compiled native class cannot have a Python base), hence the cast for the type checker.
        factory = cast(Callable[[], asyncio.Protocol], make)
        up = self.upstream
        loop = self.loop
        if up.kind == "unix":
            transport, conn = await loop.create_unix_connection(factory, up.path)
            return transport, cast(UpstreamConnection, conn)
        if up.from_ns == "tenant" and self.netns_path is not None:
            source = tenant_sockets
            if source is None:
                sock = netns.socket_in(self.netns_path, _family_of(up.host))
            else:
                sock = await source(self.netns_path, _family_of(up.host))
            try:
                sock.setblocking(False)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                await loop.sock_connect(sock, (up.host, up.port))
            except BaseException:
                sock.close()
                raise
            tls, hostname = self._tls_context()
            if tls is None:
                transport, conn = await loop.create_connection(factory, sock=sock)
            else:
                transport, conn = await loop.create_connection(factory, sock=sock, ssl=tls, server_hostname=hostname)
            return transport, cast(UpstreamConnection, conn)
        tls, hostname = self._tls_context()
        if tls is None:
            transport, conn = await loop.create_connection(factory, up.host, up.port)
        else:
            transport, conn = await loop.create_connection(factory, up.host, up.port, ssl=tls, server_hostname=hostname)
        return transport, cast(UpstreamConnection, conn)

    def release(self, conn: UpstreamConnection, reusable: bool) -> None:
        """The client holding `conn` is done with it: keep it for the next client, or close it."""
        if not reusable or self.closed or not conn.usable() or len(self.idle) >= self.max_idle:
            conn.close()
            return
        if not self.budget.may_pool():
            conn.close()
            return
        conn.park()
        self.idle.append(conn)
        self.budget.idle += 1

    def forget(self, conn: UpstreamConnection, was_idle: bool) -> None:
        if was_idle:
            with contextlib.suppress(ValueError):
                self.idle.remove(conn)
                self.budget.idle -= 1

    def close(self) -> None:
        """Close idle connections; busy ones close when their client is done."""
        self.closed = True
        idle, self.idle = self.idle, []
        self.budget.idle -= len(idle)
        for conn in idle:
            conn.close()


def pool_for(ctx: TenantContext) -> UpstreamPool:
    """The tenant's pool, rebuilt when its upstream or namespace changed (e.g. on reload)."""
    tenant = ctx.tenant
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
    pool = ctx.pool = UpstreamPool(tenant.upstream, ns_path, budget=ctx.budget)
    return pool


def _identity_or_none(path: str) -> netns.NetnsIdentity | None:
    try:
        return netns.identity(path)
    except OSError:
        return None
