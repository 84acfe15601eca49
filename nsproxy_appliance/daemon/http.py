"""Client side of the proxy: one asyncio Protocol per client connection, one Exchange per request.

Per request: llhttp (httptools) parses the head strictly; the whole head is checked and rewritten
(request_head.py) before a single byte of it is written upstream, so a rejected request never
reaches the upstream. The exchange then runs on the upstream connection attached to this client
connection (taken from the tenant's pool on the first request, kept across keep-alive requests,
given back when the client goes), and the body streams both ways with back-pressure: each side
pauses reading the other while its write buffer is above the high-water mark (flow_control.py).
Pipelined requests wait in a queue with reading paused and are sent one at a time: the upstream
never has more than one request outstanding on a connection. After a 101 to a WebSocket upgrade,
both transports are handed to a Tunnel (tunnel.py); client bytes that followed the upgrade request
are held until then, and dropped with the connection if the upstream does not switch.

The control plane uses `protocol_factory(ctx)` with loop.create_server(sock=...) and calls
`begin_drain()` / `abort()` on the protocols (and tunnels) it finds in ctx.connections.
"""

from __future__ import annotations

import asyncio
import collections
import time
from collections.abc import Callable
from typing import cast

import httptools

from ..model import Listen
from .context import TenantContext, TenantPolicy
from .flow_control import CONNECTING, HIGH_WATER, LOW_WATER, PEER_BACKPRESSURE, PIPELINE, ReadGate, tune_malloc
from .framing import LAST_CHUNK, BodyMode, chunk, error_response
from .lazytimer import LazyTimer
from .request_head import REQUEST_IDS, Peer, Refused, rewrite_request
from .response_head import BadResponse, interim_head, rewrite_response
from .tls import client_cert_lines, upstream_error_reason
from .tunnel import Tunnel
from .upstream import UpstreamConnection, UpstreamPool, pool_for

# Connection phases, for the one lazy timer each connection has.
_HEAD = 0  # waiting for (the rest of) a request head: header_timeout
_IDLE = 1  # keep-alive, between requests: idle_timeout
_BUSY = 2  # a request is being proxied: the upstream side's timers apply
_BODY = 3  # the active request's body is still arriving: body_timeout

_CHUNKED = BodyMode.CHUNKED  # bound once: enum attribute access is slow on the hot path
_CLIENT_CLOSED = 499  # status recorded when the client went away before its response
MAX_HELD = 64 * 1024  # client bytes held after a WebSocket upgrade request, until the 101


class _NoParser:
    def feed_data(self, data: bytes) -> None:
        pass


_DEAD_PARSER = _NoParser()
_NO_PEER = Peer("0.0.0.0", 0)
_WILDCARDS = frozenset({"0.0.0.0", "::"})
_NO_HEADERS: list[tuple[bytes, bytes]] = []  # an exchange past its head (never appended to: see on_header)


class Exchange:
    """One request and its response; the UpstreamSink of the connection serving it.

    Created for every request, so most fields are class-level defaults that an instance only
    overrides when they change (cheaper than setting two dozen slots per request).
    """

    method: bytes = b""
    http11: bool = True
    keep_alive: bool = True
    websocket: bool = False
    head: bytes = b""  # rewritten head, kept until it is sent (and for a retry); b"": not parsed yet
    chunked: bool = False
    has_body: bool = False
    body_bytes: int = 0
    body_deadline: float = 0.0
    complete: bool = False  # the whole request has been read from the client
    pending: list[bytes] | None = None  # body read before it could be sent; b"" marks the last chunk
    sent: bool = False  # the head went upstream
    retried: bool = False
    status: int = 0
    resp_bytes: int = 0
    resp_started: bool = False  # the final response head was taken (it may still sit in the output)
    resp_flushed: bool = False  # and part of the response has been written to the client
    resp_keep_alive: bool = True
    mode: int = 0  # a BodyMode
    until_eof: bool = False
    switch_head: bytes = b""
    request_id: bytes = b""  # the X-Request-ID nsproxy sent
    # what the access log adds (filled only while it is on)
    host: bytes | None = None
    user_agent: bytes | None = None
    client_request_id: bytes | None = None
    upstream_status: int = 0  # the upstream's final status; 0: nsproxy answered itself
    sent_at: float = 0.0
    connect_time: float = -1.0  # seconds to open a new upstream connection; -1: an attached one
    first_byte_time: float = -1.0  # seconds from sending the head to the response head
    termination: str = ""  # why the exchange ended otherwise than complete ("" = complete)

    def __init__(self, proto: ProxyProtocol, url: bytes) -> None:
        self.proto = proto
        self.client_gate = proto.gate
        self.out = proto._out
        self.url = url
        self.headers: list[tuple[bytes, bytes]] = []
        self.start = time.perf_counter()

    # -- UpstreamSink: the response ------------------------------------------------------------
    def upstream_interim(self, raw: bytes) -> None:
        if self.http11:  # interim responses (100 Continue, 103) go to HTTP/1.1 clients only
            self.proto._out.append(interim_head(raw))

    def upstream_head(self, status: int, raw: bytes) -> bool:
        proto = self.proto
        if proto._logging:
            self.upstream_status = status
            self.first_byte_time = time.perf_counter() - self.sent_at
        if status == 101 and not self.websocket:
            proto._upstream_error(self, "unsolicited_101", 502)
            return False
        keep_alive = self.keep_alive and not proto._draining and not self.websocket
        bodiless = self.method == b"HEAD"
        flags = self.http11 + 2 * keep_alive + 4 * bodiless
        up = proto._up
        cache = up.head_cache if up is not None else None
        if cache is not None and raw == cache[0] and flags == cache[1]:
            resp = cache[2]  # the same head as this connection's last one: upstreams repeat themselves
        else:
            try:
                resp = rewrite_response(
                    raw, status, client_http11=self.http11, keep_alive=keep_alive, bodiless=bodiless
                )
            except BadResponse:
                proto._upstream_error(self, "bad_response", 502)
                return False
            if up is not None:
                up.head_cache = (raw, flags, resp)
        if status == 101:
            if (resp.upgrade or b"").strip(b" \t").lower() != b"websocket":
                proto._upstream_error(self, "bad_upgrade", 502)
                return False
            self.switch_head = resp.head  # written when the parser hands over the connection
            return False
        self.status = status
        self.resp_started = True
        self.mode = mode = resp.mode
        if not resp.keep_alive:
            self.resp_keep_alive = False
        if resp.until_eof:
            self.until_eof = True
        self.out.append(resp.head)
        return mode == _CHUNKED

    def upstream_flush(self) -> None:
        if self.resp_started:
            self.resp_flushed = True
        self.proto.flush()

    def upstream_done(self, keep_alive: bool, body_bytes: int) -> None:
        if self.mode == _CHUNKED:
            self.out.append(LAST_CHUNK)
        self.resp_bytes = body_bytes
        self.proto._exchange_done(self, keep_alive and self.complete)

    def upstream_failed(self, reason: str) -> None:
        self.proto._upstream_error(self, reason, 504 if reason == "timeout" else 502)

    def upstream_lost(self, conn: UpstreamConnection, exc: Exception | None) -> None:
        proto = self.proto
        if self.resp_started and self.until_eof and exc is None:
            self.upstream_done(False, conn._body_bytes)  # a close-delimited body ends here
            return
        if not self.resp_started and not conn.got_bytes and conn.served and not self.has_body and not self.retried:
            proto._retry(self, conn)  # a kept-alive connection the upstream had closed meanwhile
            return
        proto._upstream_error(self, "reset" if exc is not None else "closed", 502)

    def upstream_switched(self, conn: UpstreamConnection, rest: bytes) -> None:
        self.proto._switch(self, conn, rest)


class ProxyProtocol(LazyTimer):
    """One client connection of one tenant."""

    def __init__(self, ctx: TenantContext, loop: asyncio.AbstractEventLoop, listen: Listen | None = None) -> None:
        self.ctx = ctx
        self.counters = ctx.counters
        self.loop = loop  # a fake one in the socket-free tests
        self._time = loop.time  # bound once: looked up per request otherwise
        self.listen = listen  # the listener's address when the control plane gave it (saves getsockname)
        self.transport: asyncio.Transport | None = None
        self.gate: ReadGate | None = None
        self.parser: httptools.HttpRequestParser | _NoParser = httptools.HttpRequestParser(self)
        self.client = "-"
        self.peer = _NO_PEER  # replaced once connected
        self.default_host = b"localhost"
        self._parsing: Exchange | None = None
        self._last_parsed: Exchange | None = None
        self._active: Exchange | None = None
        self._queue: collections.deque[Exchange] | None = None
        self._up: UpstreamConnection | None = None  # attached across this client's requests
        self._connecting: asyncio.Task[None] | None = None
        self._out: list[bytes] = []
        self._phase = _HEAD
        self._phase_since = 0.0
        self._head_raw = 0
        self._head_size_unknown = False  # a head that began mid-read: its bytes so far are not known
        self._read_len = 0
        self._data = b""  # the read being parsed
        self._msgs_in_read = 0  # requests completed in it so far
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = 0.0
        self._held: list[bytes] | None = None  # bytes after a WebSocket upgrade request
        self._held_bytes = 0
        # a bad pipelined request, answered after the ones before it: status, reason, its exchange
        # (None when it broke off before its URL), so its answer is accounted and logged like any
        self._deferred: tuple[int, str, Exchange | None] | None = None
        self._write_paused = False
        self._draining = False
        self._closing = False
        self._stop_reading = False  # a bad pipelined request was seen: read nothing more
        self._logging = ctx.access_log is not None  # the access log's extra fields are gathered
        self.client_port = 0
        self.listen_label = "-"
        self._rejected = False
        self.closed = False

    # -- connection life cycle ------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport = cast(asyncio.Transport, transport)  # uvloop's does not subclass it
        ctx, counters = self.ctx, self.counters
        policy = ctx.policy
        active = counters.active_connections
        if active >= policy.max_connections or not ctx.budget.admit(active):
            # Only this tenant's counter (and the process-wide fd budget) is consulted.
            counters.rejected_connections += 1
            self._rejected = self._closing = True
            transport.write(error_response(503))
            transport.close()
            return
        counters.accepted_connections += 1
        counters.active_connections = active + 1
        ctx.budget.clients += 1
        ctx.add_connection(self)
        self.gate = ReadGate(transport)
        transport.set_write_buffer_limits(HIGH_WATER, LOW_WATER)
        peer = transport.get_extra_info("peername")
        listen = self.listen
        if listen is None or listen.host in _WILDCARDS:
            local = transport.get_extra_info("sockname")
            if isinstance(local, tuple):
                listen = Listen(local[0], local[1], listen.tls if listen is not None else None)
        if isinstance(peer, tuple) and listen is not None:
            self.client = peer[0]
            self.client_port = peer[1]
            tls = listen.tls
            if tls is None:
                self.peer = Peer.of(peer[0], listen.port)
            else:  # behind TLS (tls.py): the handshake is done
                cert_lines = b""
                if tls.client_ca is not None:
                    sslobj = transport.get_extra_info("ssl_object")
                    cert_lines = client_cert_lines(sslobj, policy.subject_header, policy.fingerprint_header)
                self.peer = Peer.of(peer[0], listen.port, b"https", cert_lines)
            self.listen_label = str(listen)
            self.default_host = self.listen_label.encode()
        self._phase_since = now = self.loop.time()
        self._arm(now + policy.header_timeout)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = self._closing = True
        self.parser = _DEAD_PARSER  # break the protocol <-> parser cycle: freed by refcount, not GC
        self._parsing = self._last_parsed = self._queue = self._deferred = None  # and exchange -> protocol
        if self._rejected:
            return
        self.counters.active_connections -= 1
        self.ctx.budget.clients -= 1
        self.ctx.discard_connection(self)
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._connecting is not None:
            self._connecting.cancel()
            self._connecting = None
        ex = self._active
        up, self._up = self._up, None
        if up is not None:
            if ex is not None and ex.sent:
                up.abort()  # its response is half-read: never reuse it
            else:
                up.pool.release(up, True)
        if ex is not None:
            self._active = None
            ex.termination = "client_closed"
            self._record(ex, ex.status if ex.resp_started else _CLIENT_CLOSED)

    def eof_received(self) -> bool | None:
        # A client may half-close after its request: finish the response, then close.
        ex = self._active
        if ex is not None and not ex.complete:
            self._fail(400, "client closed before the request body was complete")
            return None
        if ex is not None or self._queue:
            self._draining = True
            return True
        return None

    def begin_drain(self) -> None:
        """Finish the in-flight request, then close; an idle connection closes now. One whose first
        request has not arrived yet (accepted just before the drain, its bytes on the way) is kept
        for that request: closing it would fail a request the client already sent (header_timeout
        bounds the wait)."""
        self._draining = True
        if self._active is None and self._parsing is None and not self._closing and self._last_parsed is not None:
            self._close()

    def abort(self) -> None:
        self._closing = True
        if self.transport is not None:
            self.transport.abort()

    def pause_writing(self) -> None:
        self._write_paused = True
        if self._up is not None and self._up.gate is not None:
            self._up.gate.pause(PEER_BACKPRESSURE)

    def resume_writing(self) -> None:
        self._write_paused = False
        if self._up is not None and self._up.gate is not None:
            self._up.gate.resume(PEER_BACKPRESSURE)

    def upstream_gone(self, conn: UpstreamConnection) -> None:
        """The attached upstream connection closed between requests (its keep-alive timeout)."""
        if self._up is conn:
            self._up = None

    # -- reading requests -----------------------------------------------------------------
    def data_received(self, data: bytes) -> None:
        if self._closing or self._stop_reading:
            return
        self.counters.bytes_in += len(data)
        if self._held is not None:
            self._hold(data)
            return
        if self._phase == _IDLE:
            self._phase = _HEAD
            self._phase_since = self._time()
        self._read_len = len(data)
        self._data = data
        self._msgs_in_read = 0
        while True:
            try:
                self.parser.feed_data(data)
            except httptools.HttpParserUpgrade as exc:
                rest = data[exc.args[0] :]
                ex = self._last_parsed
                if ex is not None and ex.websocket:
                    self._held = []
                    if rest:
                        self._hold(rest)
                    return
                if rest and not self._closing:
                    data = self._data = rest  # any other Upgrade is served as plain HTTP/1.1: keep parsing
                    self._msgs_in_read = 0
                    continue
            except httptools.HttpParserError as exc:
                refused = exc.__context__
                if isinstance(refused, Refused):
                    self._parse_error(refused.status, refused.reason)
                else:
                    self._parse_error(400, "malformed request")
                return
            break
        ex = self._parsing
        if ex is not None and not ex.head and not self._closing:
            # A head is still incomplete. If it was already under way, or no message was, this
            # whole read is head bytes (httptools buffers them internally, so bound them here).
            policy = self.ctx.policy
            if not self._msgs_in_read:  # it began this read, or an earlier one
                self._head_raw += len(data)
            else:
                # It began after the end of another request in this read, at an offset httptools
                # does not tell: count what it parsed so far (at least 1, so that the next read is
                # not taken to begin with its request line), and size it exactly when it completes.
                self._head_raw = 1 + len(ex.url) + sum(len(n) + len(v) + 4 for n, v in ex.headers)
                self._head_size_unknown = True
            if self._head_raw > policy.max_header_bytes:
                self._parse_error(431, "request head too large")
                return
            if self._phase == _HEAD:
                self._arm(self._phase_since + policy.header_timeout)
        elif ex is not None and ex.sent and ex.has_body and self._up is not None:
            self._up.cork()  # its body goes on in a later read: on_message_complete uncorks

    def _version_in_read(self) -> bytes | None:
        """The HTTP version of the head just parsed, read off the request line when this read began
        with it (nearly always); None otherwise. httptools' get_http_version formats a str each call,
        which costs more than the rest of the request line handling together."""
        data = self._data
        if self._head_raw or self._msgs_in_read:
            return None
        # CR and LF before a request line (llhttp skips them): the first CRLF is at 0 or ends it
        end = data.find(b"\r\n")
        if end < 8 or data[end - 8 : end - 3] != b"HTTP/":  # llhttp accepted the line: it ends so
            return None
        return data[end - 3 : end]

    def _hold(self, data: bytes) -> None:
        held = self._held
        assert held is not None
        held.append(data)
        self._held_bytes += len(data)
        if self._held_bytes > MAX_HELD:
            self._fail(400, "too many bytes before the upstream accepted the upgrade")

    def on_url(self, url: bytes) -> None:
        # The first callback of every request (llhttp's message_begin is not needed): it starts
        # the exchange, or continues a URL split across reads.
        ex = self._parsing
        if ex is None:
            self._parsing = ex = Exchange(self, url)
            ex.method = self.parser.get_method()  # type: ignore[union-attr]  # known once the URL starts
            self._head_raw = 0
            self._head_size_unknown = False
        else:
            ex.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        ex = self._parsing
        if not ex.head:  # type: ignore[union-attr]  # else: a chunked trailer, dropped
            ex.headers.append((name, value))  # type: ignore[union-attr]  # on_url started it

    def on_headers_complete(self) -> None:
        ex: Exchange = self._parsing  # type: ignore[assignment]  # on_url started it
        parser: httptools.HttpRequestParser = self.parser  # type: ignore[assignment]  # made in connection_made
        version = self._version_in_read()
        if version != b"1.1":
            if version is None:
                version = parser.get_http_version().encode()
            if version != b"1.1":
                if version != b"1.0":
                    raise Refused(505, f"HTTP version {version.decode()} not supported")
                ex.http11 = False
        method = ex.method
        if method == b"CONNECT":
            raise Refused(405, "CONNECT is not supported")
        ex.keep_alive = parser.should_keep_alive()
        policy = self.ctx.policy
        headers = ex.headers
        if (self._head_raw + self._read_len > policy.max_header_bytes or self._head_size_unknown) and (
            len(ex.url) + sum(len(n) + len(v) + 4 for n, v in headers) > policy.max_header_bytes
        ):  # (a head that came in reads smaller than the limit cannot be over it)
            raise Refused(431, "request head too large")
        ex.request_id = request_id = REQUEST_IDS.next()
        head = rewrite_request(
            method,
            ex.url,
            headers,
            policy.request,
            self.peer,
            http11=ex.http11,
            default_host=self.default_host,
            request_id=request_id,
        )
        if self._logging:
            ex.host = head.host
            ex.client_request_id = head.client_request_id
            ex.user_agent = next((v for n, v in headers if n.lower() == b"user-agent"), None)
        length = head.content_length
        if length is not None and length > policy.max_body_bytes:
            raise Refused(413, "request body too large")
        if parser.should_upgrade() and not head.websocket and (head.chunked or length):
            # llhttp reads no body after an upgrade request: one it is not switching for must not have one.
            raise Refused(400, "upgrade request with a body")
        ex.head = head.head
        if head.chunked or length:
            ex.has_body = True
            ex.chunked = head.chunked
        if head.websocket:
            ex.websocket = True
        ex.headers = _NO_HEADERS  # no longer needed: free them early
        self._last_parsed = ex
        if self._active is None:
            self._start(ex)
        else:
            queue = self._queue
            if queue is None:
                queue = self._queue = collections.deque()
            queue.append(ex)
            self.gate.pause(PIPELINE)  # type: ignore[union-attr]  # set in connection_made

    def on_body(self, body: bytes) -> None:
        ex = self._parsing
        assert ex is not None
        ex.body_bytes += len(body)
        if ex.body_bytes > self.ctx.policy.max_body_bytes:
            raise Refused(413, "request body too large")
        if ex.sent:
            up = self._up
            assert up is not None
            if ex.chunked:
                up.writelines(list(chunk(body)))
            else:
                up.write(body)
        elif ex.pending is None:
            ex.pending = [body]
        else:
            ex.pending.append(body)

    def on_message_complete(self) -> None:
        ex: Exchange = self._parsing  # type: ignore[assignment]  # on_url started it
        self._parsing = None
        self._msgs_in_read += 1
        ex.complete = True
        if ex.chunked:
            if ex.sent:
                self._up.write(LAST_CHUNK)  # type: ignore[union-attr]  # sent: it has its upstream
            elif ex.pending is None:
                ex.pending = [b""]
            else:
                ex.pending.append(b"")  # marks the last chunk
        if ex is self._active and self._phase == _BODY:
            self._phase = _BUSY
        if ex.sent and ex.has_body and self._up is not None:
            self._up.uncork()

    def _parse_error(self, status: int, reason: str) -> None:
        active, parsing = self._active, self._parsing
        if active is not None and parsing is not active:
            # A later pipelined request is bad: answer the ones before it first.
            if parsing is not None and self._queue and parsing in self._queue:
                self._queue.remove(parsing)  # its head was fine, its body is not: never send it
            self._deferred = (status, reason, parsing)
            self._parsing = None
            self._stop_reading = True
            self.gate.pause(PIPELINE)  # type: ignore[union-attr]  # set in connection_made
            return
        self._fail(status, reason)

    # -- dispatching to the upstream ------------------------------------------------------
    def _start(self, ex: Exchange) -> None:
        self._active = ex
        policy = self.ctx.policy
        if ex.complete or not ex.has_body:
            self._phase = _BUSY
        else:
            self._phase = _BODY
            ex.body_deadline = self.loop.time() + policy.body_timeout
            self._arm(ex.body_deadline)
        pool = policy.pool
        if pool is None or pool.closed or self.ctx.pool is not pool:
            try:
                pool = policy.pool = pool_for(self.ctx)
            except OSError:
                self._fail(502, "upstream namespace unavailable", error="netns")
                return
        up = self._up
        if up is not None:
            if up.pool is pool and not up.closed:
                self._send(ex, up, policy)
                return
            self._up = None
            up.close()
        conn = pool.acquire()
        if conn is not None:
            conn.owner = self
            self._up = conn
            self._send(ex, conn, policy)
            return
        self.gate.pause(CONNECTING)  # type: ignore[union-attr]  # set in connection_made
        self._connecting = self.loop.create_task(self._connect(pool, ex, policy))

    async def _connect(self, pool: UpstreamPool, ex: Exchange, policy: TenantPolicy) -> None:
        began = time.perf_counter()
        try:
            conn = await pool.connect(policy.connect_timeout)
            ex.connect_time = time.perf_counter() - began
        except TimeoutError:
            self._connecting = None
            self._upstream_error(ex, "connect_timeout", 504)
            return
        except OSError as exc:
            self._connecting = None
            self._upstream_error(ex, _os_error_reason(exc), 502)
            return
        except (ValueError, TypeError):  # e.g. an upstream address the socket layer refuses
            self._connecting = None
            self._upstream_error(ex, "connect_error", 502)
            return
        self._connecting = None
        if self.closed or ex is not self._active:
            pool.release(conn, True)
            return
        conn.owner = self
        self._up = conn
        self._send(ex, conn, policy)
        self.gate.resume(CONNECTING)  # type: ignore[union-attr]  # set in connection_made

    def _send(self, ex: Exchange, up: UpstreamConnection, policy: TenantPolicy) -> None:
        up.bind(ex, no_body=ex.method == b"HEAD", read_timeout=policy.read_timeout)
        if self._logging:
            ex.sent_at = time.perf_counter()
        if self._write_paused:
            up.gate.pause(PEER_BACKPRESSURE)  # type: ignore[union-attr]  # set in connection_made
        ex.sent = True
        pending = ex.pending
        if not pending:
            up.transport.write(ex.head)  # type: ignore[union-attr]  # bind() noted the time
            return
        ex.pending = None
        parts: list[bytes] = [ex.head]
        for piece in pending:
            if not ex.chunked:
                parts.append(piece)
            elif piece:
                parts += chunk(piece)
            else:
                parts.append(LAST_CHUNK)
        up.writelines(parts)

    def _retry(self, ex: Exchange, conn: UpstreamConnection) -> None:
        ex.retried = True
        ex.sent = False
        if self._up is conn:
            self._up = None
        self._active = None
        self._start(ex)

    def _switch(self, ex: Exchange, conn: UpstreamConnection, rest: bytes) -> None:
        """The upstream switched to WebSocket: the connection becomes a tunnel."""
        if self._closing or not ex.switch_head or self.transport is None:
            conn.abort()
            return
        self._active = None
        self._up = None
        self._out.append(ex.switch_head)
        if rest:
            self._out.append(rest)
        self.flush()
        held, self._held = self._held, None
        if held:
            conn.transport.write(b"".join(held))  # type: ignore[union-attr]  # set in connection_made
        self._record(ex, 101)
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._closing = True  # nothing of HTTP is read on this protocol any more
        self.parser = _DEAD_PARSER
        self.ctx.discard_connection(self)  # the tunnel takes over the connection's accounting
        assert conn.transport is not None
        Tunnel(self.ctx, self.transport, conn.transport)

    def flush(self) -> None:
        out = self._out
        if not out:
            return
        if self.closed:
            out.clear()
            return
        data = out[0] if len(out) == 1 else b"".join(out)
        out.clear()
        self.counters.bytes_out += len(data)
        self.transport.write(data)  # type: ignore[union-attr]  # set in connection_made

    # -- ending an exchange ---------------------------------------------------------------
    def _exchange_done(self, ex: Exchange, reusable: bool) -> None:
        """The response is complete: write it out, account for it, and go on with the connection.

        Runs once per request, so the common case (keep-alive, nothing queued) is straight-line.
        """
        out = self._out
        if out and not self.closed:  # flush(), inlined
            data = out[0] if len(out) == 1 else b"".join(out)
            out.clear()
            self.counters.bytes_out += len(data)
            self.transport.write(data)  # type: ignore[union-attr]  # set in connection_made
        self._active = None
        up = self._up
        if up is not None:
            if not reusable:
                self._up = None
                up.close()
            elif up.gate.reasons:  # type: ignore[union-attr]  # set in connection_made
                up.gate.resume(PEER_BACKPRESSURE)  # type: ignore[union-attr]  # set in connection_made
        self._record(ex, ex.status)
        if self.closed:
            return
        if not ex.resp_keep_alive or not ex.complete or ex.websocket:
            self._close()
            return
        gate: ReadGate = self.gate  # type: ignore[assignment]  # set in connection_made
        if gate.reasons or self._queue or self._deferred is not None or self._draining or self._parsing is not None:
            self._next_exchange()
            return
        self._phase = _IDLE
        self._phase_since = now = self._time()
        at = now + self.ctx.policy.idle_timeout
        if self._timer is None or at < self._timer_at:
            self._arm(at)

    def _next_exchange(self) -> None:
        """After a response, when anything more than waiting for the next request is due."""
        gate = self.gate
        assert gate is not None
        if gate.reasons & PEER_BACKPRESSURE:
            gate.resume(PEER_BACKPRESSURE)
        queue = self._queue
        if queue:
            nxt = queue.popleft()
            if not queue and not self._stop_reading:
                gate.resume(PIPELINE)
            self._start(nxt)
            return
        if self._deferred is not None:
            status, reason, self._parsing = self._deferred
            self._fail(status, reason)
            return
        if self._draining:
            self._close()
            return
        policy = self.ctx.policy
        self._phase_since = now = self.loop.time()
        if self._parsing is None:
            self._phase = _IDLE
            self._arm(now + policy.idle_timeout)
        else:  # a pipelined head is half-read
            self._phase = _HEAD
            self._arm(now + policy.header_timeout)

    def _record(self, ex: Exchange, status: int) -> None:
        duration = time.perf_counter() - ex.start
        self.counters.observe(status, duration)
        if self.ctx.access_log is not None:
            self._log(ex, status, duration)

    def _log(self, ex: Exchange, status: int, duration: float) -> None:
        """One access log record: what Envoy's, nginx's and HAProxy's JSON logs carry."""
        log = self.ctx.access_log
        if log is None:
            return
        tenant = self.ctx.tenant
        up = self._up
        log(
            {
                "tenant": tenant.name,
                "tenant_id": tenant.tenant_id,  # as sent in the tenant header
                "request_id": ex.request_id.decode(),
                "client_request_id": _text(ex.client_request_id),  # the client's own X-Request-ID
                "client": self.client,
                "client_port": self.client_port,
                "listener": self.listen_label,
                "http_version": "1.1" if ex.http11 else "1.0",
                "method": ex.method.decode("latin-1"),
                "path": ex.url.decode("latin-1"),
                "host": _text(ex.host),
                "user_agent": _text(ex.user_agent),
                "status": status,
                "request_bytes": ex.body_bytes,
                "response_bytes": ex.resp_bytes,
                "bytes": ex.resp_bytes,  # kept for older log readers: same as response_bytes
                "duration": round(duration, 6),
                "upstream": self.ctx.policy.upstream_label,
                "upstream_address": up.peer_label if up is not None else None,
                "upstream_status": ex.upstream_status or None,
                "upstream_connect_time": round(ex.connect_time, 6) if ex.connect_time >= 0 else None,
                "upstream_first_byte_time": round(ex.first_byte_time, 6) if ex.first_byte_time >= 0 else None,
                "termination": ex.termination or "complete",
            }
        )

    def _upstream_error(self, ex: Exchange, reason: str, status: int) -> None:
        self.counters.upstream_error(reason)
        ex.termination = f"upstream_{reason}"
        up, self._up = self._up, None
        if up is not None:
            up.abort()
        if ex.resp_flushed:
            # Part of the response is already out: truncating is the only honest signal.
            self._active = None
            self._record(ex, ex.status)
            self._closing = True
            if self.transport is not None:
                self.transport.abort()
            return
        self._fail(status, reason)

    def _fail(self, status: int, reason: str, *, error: str | None = None) -> None:
        """Answer with a small error response and close the connection."""
        if error is not None:
            self.counters.upstream_error(error)
        if self._closing:
            return
        ex = self._active
        if ex is not None and ex.resp_flushed:
            self._upstream_error(ex, "client_error", status)  # truncates
            return
        self._closing = True
        up, self._up = self._up, None
        if up is not None:
            if ex is not None and ex.sent:
                up.abort()  # it carried (part of) this request: never reuse it
            else:
                up.pool.release(up, True)
        if self._connecting is not None:
            self._connecting.cancel()
            self._connecting = None
        ex = ex or self._parsing
        self._active = self._parsing = None
        if ex is not None:
            ex.status = status
            if not ex.termination:
                ex.termination = f"refused: {reason}"
            self._record(ex, status)
        else:
            self.counters.observe(status, 0.0)
        self._out.clear()
        self._out.append(error_response(status, head_only=ex is not None and ex.method == b"HEAD"))
        self.flush()
        self._close()

    def _close(self) -> None:
        self._closing = True
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()

    # -- timers ---------------------------------------------------------------------------
    def _on_timer(self) -> None:
        self._timer = None
        if self._closing:
            return
        phase = self._phase
        if phase == _BUSY:
            return  # re-armed when the exchange ends
        now = self.loop.time()
        limits = self.ctx.tenant.limits
        if phase == _BODY:
            ex = self._active
            if ex is None or ex.complete:
                return
            if now < ex.body_deadline:
                self._arm(ex.body_deadline)
                return
            self._fail(408, "request body not complete within body_timeout")
            return
        deadline = self._phase_since + (limits.idle_timeout if phase == _IDLE else limits.header_timeout)
        if now < deadline:
            self._arm(deadline)
            return
        if phase == _IDLE:
            self._close()
        else:  # slowloris: the head (or its first byte) did not arrive in time
            self._fail(408, "request head not complete within header timeout")


def _text(value: bytes | None) -> str | None:
    return None if value is None else value.decode("latin-1")


def _os_error_reason(exc: OSError) -> str:
    tls_reason = upstream_error_reason(exc)  # an https upstream: verification or another TLS failure
    if tls_reason is not None:
        return tls_reason
    if isinstance(exc, ConnectionRefusedError):
        return "refused"
    if isinstance(exc, ConnectionResetError):
        return "reset"
    return "connect_error"


def protocol_factory(ctx: TenantContext, listen: Listen | None = None) -> Callable[[], asyncio.Protocol]:
    """The factory the control plane passes to loop.create_server for one tenant's listener.

    `listen`, when given, is the listener's address (the
    X-Forwarded-Port and the Host of an HTTP/1.0 request without one), so connections need no
    getsockname() of their own unless the listener is a wildcard address.
    """
    tune_malloc()  # once per process: large body buffers are reused instead of re-faulted
    loops: list[asyncio.AbstractEventLoop] = []  # the serving loop, looked up once: it costs a getpid()

    def make() -> ProxyProtocol:
        if not loops:
            loops.append(asyncio.get_running_loop())
        return ProxyProtocol(ctx, loops[0], listen)

    # ProxyProtocol is duck-typed (no asyncio.Protocol base: see upstream.UpstreamPool._open).
    return cast(Callable[[], asyncio.Protocol], make)


__all__ = ["Exchange", "ProxyProtocol", "protocol_factory"]
