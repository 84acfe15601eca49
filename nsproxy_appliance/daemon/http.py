"""Client side of the proxy: one asyncio Protocol per client connection, parsed with httptools.

Per request: parse the head (llhttp is strict: smuggling shapes, obs-fold, bad tokens and bad
chunk sizes are parse errors, answered 400 and closed), check the tenant's limits, rewrite the
head (headers.py), take a keep-alive upstream connection from the tenant's pool (or open one),
then stream the body both ways. Back-pressure: each side pauses reading the other while its
write buffer is above the high-water mark (flow_control.py). Pipelined requests wait in a queue
with reading paused, and are answered in order.

The control plane uses `protocol_factory(ctx)` with loop.create_server(sock=...) and calls
`begin_drain()` / `abort()` on the protocols it finds in ctx.connections.
"""

from __future__ import annotations

import asyncio
import collections
import time
from collections.abc import Callable
from typing import Any

import httptools

from .context import TenantContext
from .flow_control import CONNECTING, HIGH_WATER, LOW_WATER, PEER_BACKPRESSURE, PIPELINE, ReadGate, tune_malloc
from .headers import (
    BODY_CHUNKED,
    RequestPolicy,
    error_response,
    rewrite_request,
    rewrite_response,
)
from .lazytimer import LazyTimer
from .upstream import UpstreamConnection, UpstreamPool, pool_for

# Connection phases, for the one lazy timer each connection has.
_HEAD = 0  # waiting for (the rest of) a request head: header_timeout
_IDLE = 1  # keep-alive, between requests: idle_timeout
_BUSY = 2  # a request is being proxied: the upstream side's timers apply

_CLIENT_CLOSED = 499  # status recorded when the client went away before its response


class _NoParser:
    def feed_data(self, data: bytes) -> None:
        pass


_DEAD_PARSER: Any = _NoParser()


class _Reject(Exception):
    """Raised inside a parser callback to answer the request with an error status."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status


class TenantPolicy:
    """What the data plane derives from one version of a tenant's config (cached per reload)."""

    __slots__ = ("limits", "pool", "request", "tenant", "tenant_name", "upstream_label")

    def __init__(self, ctx: TenantContext) -> None:
        tenant = ctx.tenant
        self.tenant = tenant
        self.tenant_name = tenant.name
        self.limits = tenant.limits
        self.request = RequestPolicy.build(tenant.tenant_header, tenant.tenant_id)
        self.upstream_label = tenant.upstream.describe()
        self.pool: UpstreamPool | None = None  # resolved lazily: opening it may fail


def policy_for(ctx: TenantContext) -> TenantPolicy:
    policy = ctx.dataplane
    if policy is None or policy.tenant is not ctx.tenant:
        policy = ctx.dataplane = TenantPolicy(ctx)
    return policy


class _Request:
    __slots__ = (
        "body_bytes",
        "chunked",
        "complete",
        "has_body",
        "head",
        "head_bytes",
        "headers",
        "http11",
        "keep_alive",
        "method",
        "pending",
        "resp_bytes",
        "retried",
        "start",
        "status",
        "upgrade",
        "url",
    )

    def __init__(self) -> None:
        self.url = b""
        self.headers: list[tuple[bytes, bytes]] = []
        self.head_bytes = 0
        self.method = b""
        self.http11 = True
        self.keep_alive = True
        self.upgrade = False
        self.head: bytes | None = None  # rewritten head, kept until it is sent (and for a retry)
        self.chunked = False
        self.has_body = False
        self.body_bytes = 0
        self.complete = False
        self.pending: list[bytes] | None = None  # body bytes read before an upstream is attached
        self.start = 0.0
        self.status = 0
        self.resp_bytes = 0
        self.retried = False


class ProxyProtocol(LazyTimer, asyncio.Protocol):
    """One client connection of one tenant."""

    def __init__(self, ctx: TenantContext) -> None:
        self.ctx = ctx
        self.counters = ctx.counters
        self.loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self.gate: ReadGate | None = None
        self.parser = httptools.HttpRequestParser(self)
        self.client = "-"
        self.client_ip = b""
        self._parsing: _Request | None = None
        self._active: _Request | None = None
        self._queue: collections.deque[_Request] | None = None
        self._up: UpstreamConnection | None = None
        self._connecting: asyncio.Task[None] | None = None
        self._policy: TenantPolicy | None = None
        self._out: list[bytes] = []
        self._phase = _HEAD
        self._phase_since = 0.0
        self._head_raw = 0
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = 0.0
        self._reject: _Reject | None = None
        # response state of the active request
        self._resp_started = False
        self._resp_mode = 0
        self._resp_keep_alive = True
        self._resp_until_eof = False
        self._write_paused = False
        self._upgrading = False  # an Upgrade request was sent; raw client bytes follow it
        self._tunnel = False
        self._draining = False
        self._closing = False
        self._closing_after = False  # a bad pipelined request was seen: stop reading
        self._deferred: tuple[int, str] | None = None
        self._rejected = False
        self.closed = False

    # -- connection life cycle ------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        counters = self.counters
        limits = self.ctx.tenant.limits
        if counters.active_connections >= limits.max_connections:
            # Per-tenant limit: only this tenant's counter is consulted, others are unaffected.
            counters.rejected_connections += 1
            self._rejected = self._closing = True
            transport.write(error_response(503))
            transport.close()
            return
        counters.accepted_connections += 1
        counters.active_connections += 1
        self.ctx.connections.add(self)
        self.gate = ReadGate(transport)
        transport.set_write_buffer_limits(HIGH_WATER, LOW_WATER)
        peer = transport.get_extra_info("peername")
        if isinstance(peer, tuple):
            self.client = peer[0]
            self.client_ip = peer[0].encode()
        self._phase_since = now = self.loop.time()
        self._arm(now + limits.header_timeout)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = self._closing = True
        self.parser = _DEAD_PARSER  # break the protocol <-> parser cycle: freed by refcount, not GC
        if self._rejected:
            return
        self.counters.active_connections -= 1
        self.ctx.connections.discard(self)
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._connecting is not None:
            self._connecting.cancel()
            self._connecting = None
        up = self._up
        if up is not None:
            self._up = None
            up.abort()  # its response is half-read: never reuse it
        req = self._active
        if req is not None and not self._tunnel:
            self._active = None
            self._record(req, req.status if self._resp_started else _CLIENT_CLOSED)

    def eof_received(self) -> bool | None:
        # A client may half-close after its request: finish the response, then close.
        if self._active is not None or self._tunnel:
            self._draining = True
            return True
        return None

    def begin_drain(self) -> None:
        """Finish the in-flight request, then close; an idle connection closes now."""
        self._draining = True
        if self._active is None and not self._tunnel and self._parsing is None and not self._closing:
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

    # -- reading requests -----------------------------------------------------------------
    def data_received(self, data: bytes) -> None:
        if self._closing or self._closing_after:
            return
        self.counters.bytes_in += len(data)
        if self._tunnel or self._upgrading:
            self._forward_raw(data)
            return
        if self._phase == _IDLE:
            self._phase = _HEAD
            self._phase_since = self.loop.time()
        before = self._parsing
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade as exc:
            rest = data[exc.args[0] :]
            if rest:
                self._forward_raw(rest)
        except httptools.HttpParserError:
            reject, self._reject = self._reject, None
            if reject is not None:
                self._parse_error(reject.status, reject.args[0])
            else:
                self._parse_error(400, "malformed request")
            return
        req = self._parsing
        if req is not None and req.head is None:
            # A head is still incomplete. If it was already under way, or no message was, this
            # whole read is head bytes (httptools buffers them internally, so bound them here).
            limits = self.ctx.tenant.limits
            if before is None or before is req:
                self._head_raw += len(data)
                if self._head_raw > limits.max_header_bytes:
                    self._parse_error(431, "request head too large")
                    return
            if self._phase == _HEAD:
                self._arm(self._phase_since + limits.header_timeout)

    def on_message_begin(self) -> None:
        self._parsing = req = _Request()
        req.start = time.perf_counter()
        self._head_raw = 0

    def on_url(self, url: bytes) -> None:
        req = self._parsing
        req.url += url  # type: ignore[union-attr]
        req.head_bytes += len(url)  # type: ignore[union-attr]

    def on_header(self, name: bytes, value: bytes) -> None:
        req = self._parsing
        if req.head is not None:  # a chunked trailer: dropped
            return
        req.headers.append((name, value))
        req.head_bytes += len(name) + len(value) + 4

    def on_headers_complete(self) -> None:
        req = self._parsing
        parser = self.parser
        version = parser.get_http_version()
        if version == "1.0":
            req.http11 = False
        elif version != "1.1":
            self._raise(505, f"HTTP version {version} not supported")
        req.method = parser.get_method()
        req.keep_alive = parser.should_keep_alive()
        req.upgrade = parser.should_upgrade()
        policy = self._current_policy()
        limits = policy.limits
        if req.head_bytes > limits.max_header_bytes:
            self._raise(431, "request head too large")
        try:
            head = rewrite_request(
                req.method,
                req.url,
                req.headers,
                policy.request,
                self.client_ip,
                upgrade=req.upgrade,
                default_host=b"localhost",
            )
        except ValueError:
            self._raise(400, "bad header value")
        if head.content_length is not None and head.content_length > limits.max_body_bytes:
            self._raise(413, "request body too large")
        req.head = head.head
        req.chunked = head.chunked
        req.has_body = head.chunked or bool(head.content_length)
        req.headers = []  # no longer needed: free them early
        self._phase = _BUSY
        if self._active is None:
            self._start(req)
        else:
            queue = self._queue
            if queue is None:
                queue = self._queue = collections.deque()
            queue.append(req)
            self.gate.pause(PIPELINE)  # type: ignore[union-attr]

    def on_body(self, body: bytes) -> None:
        req = self._parsing
        req.body_bytes += len(body)  # type: ignore[union-attr]
        if req.body_bytes > self._current_policy().limits.max_body_bytes:  # type: ignore[union-attr]
            self._raise(413, "request body too large")
        if req is self._active and self._up is not None:
            if req.chunked:  # type: ignore[union-attr]
                self._up.writelines([b"%x\r\n" % len(body), body, b"\r\n"])
            else:
                self._up.write(body)
        else:
            if req.pending is None:  # type: ignore[union-attr]
                req.pending = []  # type: ignore[union-attr]
            req.pending.append(body)  # type: ignore[union-attr]

    def on_message_complete(self) -> None:
        req = self._parsing
        self._parsing = None
        req.complete = True  # type: ignore[union-attr]
        if req.chunked:  # type: ignore[union-attr]
            if req is self._active and self._up is not None:
                self._up.write(b"0\r\n\r\n")
            else:
                if req.pending is None:  # type: ignore[union-attr]
                    req.pending = []  # type: ignore[union-attr]
                req.pending.append(b"")  # type: ignore[union-attr]  # marks the chunked terminator

    def _parse_error(self, status: int, reason: str) -> None:
        active = self._active
        if active is not None and self._parsing is not active:
            # A later pipelined request is bad: answer the ones before it first.
            self._deferred = (status, reason)
            self._parsing = None
            self._closing_after = True
            self.gate.pause(PIPELINE)  # type: ignore[union-attr]
            return
        self._fail(status, reason)

    def _raise(self, status: int, reason: str) -> None:
        self._reject = _Reject(status, reason)
        raise self._reject

    def _current_policy(self) -> TenantPolicy:
        policy = self._policy
        if policy is None or policy.tenant is not self.ctx.tenant:
            policy = self._policy = policy_for(self.ctx)
        return policy

    # -- dispatching to the upstream ------------------------------------------------------
    def _start(self, req: _Request) -> None:
        self._active = req
        self._resp_started = False
        self._resp_keep_alive = req.keep_alive and not self._draining
        self._resp_until_eof = False
        if req.upgrade:
            self._upgrading = True
        policy = self._current_policy()
        pool = policy.pool
        if pool is None or pool.closed or self.ctx.pool is not pool:
            try:
                pool = policy.pool = pool_for(self.ctx)
            except OSError:
                self._fail(502, "upstream namespace unavailable", error="netns")
                return
        conn = pool.acquire()
        if conn is not None:
            self._attach(conn, req, policy.limits.read_timeout)
            return
        self.gate.pause(CONNECTING)  # type: ignore[union-attr]
        self._connecting = self.loop.create_task(self._connect(pool, req))

    async def _connect(self, pool: UpstreamPool, req: _Request) -> None:
        try:
            conn = await pool.connect(self._current_policy().limits.connect_timeout)
        except TimeoutError:
            self._connecting = None
            self._upstream_error(req, "connect_timeout", 504)
            return
        except OSError as exc:
            self._connecting = None
            self._upstream_error(req, _os_error_reason(exc), 502)
            return
        except (ValueError, TypeError):  # e.g. an upstream address the socket layer refuses
            self._connecting = None
            self._upstream_error(req, "connect_error", 502)
            return
        self._connecting = None
        if self.closed or req is not self._active:
            pool.release(conn, True)
            return
        self._attach(conn, req, self._current_policy().limits.read_timeout)
        self.gate.resume(CONNECTING)  # type: ignore[union-attr]

    def _attach(self, conn: UpstreamConnection, req: _Request, read_timeout: float) -> None:
        self._up = conn
        conn.bind(self, no_body=req.method == b"HEAD", read_timeout=read_timeout)
        if self._write_paused:
            conn.gate.pause(PEER_BACKPRESSURE)  # type: ignore[union-attr]
        pending = req.pending
        if not pending:
            conn.transport.write(req.head)  # type: ignore[union-attr,arg-type]  # bind() noted the time
            return
        req.pending = None
        parts = [req.head]
        for chunk in pending:
            if self._upgrading and not req.chunked:
                parts.append(chunk)
            elif req.chunked:
                parts += (b"%x\r\n" % len(chunk), chunk, b"\r\n") if chunk else (b"0\r\n\r\n",)
            else:
                parts.append(chunk)
        conn.writelines(parts)  # type: ignore[arg-type]

    def _forward_raw(self, data: bytes) -> None:
        """Bytes after an Upgrade request head (tunnel data), sent as they are."""
        up = self._up
        if up is not None:
            up.write(data)
            return
        req = self._active
        if req is not None:
            if req.pending is None:
                req.pending = []
            req.pending.append(data)

    # -- the upstream's callbacks (see upstream.UpstreamConnection) -------------------------
    def upstream_head(self, status: int, reason: bytes, headers: list[tuple[bytes, bytes]]) -> None:
        req = self._active
        if req is None:
            return
        if status < 200 and status != 101:
            if req.http11:  # interim responses (100 Continue) go to HTTP/1.1 clients only
                self._out.append(
                    rewrite_response(status, reason, headers, client_http11=True, keep_alive=True, bodiless=True).head
                )
            return
        resp = rewrite_response(
            status,
            reason,
            headers,
            client_http11=req.http11,
            keep_alive=self._resp_keep_alive and not self._draining and not self._upgrading,
            bodiless=req.method == b"HEAD",
        )
        req.status = status
        self._resp_started = True
        self._resp_mode = resp.mode
        self._resp_keep_alive = resp.keep_alive
        self._resp_until_eof = resp.until_eof
        self._out.append(resp.head)

    def upstream_body(self, body: bytes) -> None:
        req = self._active
        if req is None:
            return
        req.resp_bytes += len(body)
        if self._resp_mode == BODY_CHUNKED:
            self._out += (b"%x\r\n" % len(body), body, b"\r\n")
        else:
            self._out.append(body)

    def flush(self) -> None:
        out = self._out
        if not out or self.closed:
            out.clear()
            return
        data = out[0] if len(out) == 1 else b"".join(out)
        out.clear()
        self.counters.bytes_out += len(data)
        self.transport.write(data)  # type: ignore[union-attr]

    def upstream_done(self, conn: UpstreamConnection, keep_alive: bool) -> None:
        req = self._active
        if req is None:
            conn.pool.release(conn, False)
            return
        if self._resp_mode == BODY_CHUNKED:
            self._out.append(b"0\r\n\r\n")
        self.flush()
        reusable = keep_alive and req.complete and not self._upgrading
        self._finish(req, conn, reusable)

    def upstream_failed(self, conn: UpstreamConnection, reason: str) -> None:
        self._up = None
        req = self._active
        if req is None:
            return
        self._upstream_error(req, reason, 504 if reason == "timeout" else 502)

    def upstream_lost(self, conn: UpstreamConnection, exc: Exception | None) -> None:
        self._up = None
        req = self._active
        if req is None:
            return
        if self._resp_started and self._resp_until_eof and exc is None:
            # A close-delimited body ends here.
            if self._resp_mode == BODY_CHUNKED:
                self._out.append(b"0\r\n\r\n")
            self.flush()
            self._finish(req, conn, False)
            return
        if not self._resp_started and not conn.got_bytes and conn.served and not req.has_body and not req.retried:
            # A pooled connection the upstream closed while idle: retry once on a fresh one.
            req.retried = True
            self._active = None
            self._start(req)
            return
        self._upstream_error(req, "reset" if exc is not None else "closed", 502)

    def upstream_tunnel_start(self, rest: bytes) -> None:
        self._tunnel = True
        self._upgrading = False
        req = self._active
        if rest:
            self._out.append(rest)
        self.flush()
        if req is not None:
            self._active = None
            self._record(req, 101)

    def upstream_tunnel_data(self, data: bytes) -> None:
        if not self.closed:
            self.counters.bytes_out += len(data)
            self.transport.write(data)  # type: ignore[union-attr]

    def upstream_tunnel_closed(self) -> None:
        self._up = None
        self._close()

    # -- ending an exchange ---------------------------------------------------------------
    def _finish(self, req: _Request, conn: UpstreamConnection | None, reusable: bool) -> None:
        self._active = None
        self._up = None
        if conn is not None:
            conn.pool.release(conn, reusable)
        self._record(req, req.status)
        if self.closed:
            return
        if not self._resp_keep_alive or not req.complete or self._upgrading:
            self._upgrading = False
            self._close()
            return
        if self.gate.reasons:  # type: ignore[union-attr]
            self.gate.resume(PEER_BACKPRESSURE)  # type: ignore[union-attr]
        queue = self._queue
        if queue:
            nxt = queue.popleft()
            if not queue and not self._closing_after:
                self.gate.resume(PIPELINE)  # type: ignore[union-attr]
            self._start(nxt)
            return
        if self._deferred is not None:
            self._fail(*self._deferred)
            return
        if self._draining:
            self._close()
            return
        limits = self._policy.limits  # type: ignore[union-attr]  # set by _start
        if self._parsing is None:
            self._phase = _IDLE
            self._phase_since = now = self.loop.time()
            self._arm(now + limits.idle_timeout)
        else:  # a pipelined head is half-read
            self._phase = _HEAD
            self._phase_since = now = self.loop.time()
            self._arm(now + limits.header_timeout)

    def _record(self, req: _Request, status: int) -> None:
        duration = time.perf_counter() - req.start
        self.counters.observe(status, duration)
        log = self.ctx.access_log
        if log is not None:
            url = req.url.decode("latin-1")
            log(
                {
                    "tenant": self.ctx.tenant.name,
                    "client": self.client,
                    "method": req.method.decode("latin-1"),
                    "path": url,
                    "status": status,
                    "bytes": req.resp_bytes,
                    "duration": round(duration, 6),
                    "upstream": self._current_policy().upstream_label,
                }
            )

    def _upstream_error(self, req: _Request, reason: str, status: int) -> None:
        self.counters.upstream_error(reason)
        if self._up is not None:
            self._up.abort()
            self._up = None
        if self._resp_started:
            # Part of the response is already out: truncating is the only honest signal.
            self._active = None
            self._record(req, req.status)
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
        if self._resp_started and self._active is not None:
            self._upstream_error(self._active, "client_error", status)  # truncates
            return
        self._closing = True
        if self._up is not None:
            self._up.abort()
            self._up = None
        if self._connecting is not None:
            self._connecting.cancel()
            self._connecting = None
        req = self._active or self._parsing
        self._active = None
        if req is not None:
            req.status = status
            self._record(req, status)
        else:
            self.counters.observe(status, 0.0)
        self._out.clear()
        self._out.append(error_response(status))
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
        limits = self.ctx.tenant.limits
        if phase == _IDLE:
            deadline = self._phase_since + limits.idle_timeout
        else:
            deadline = self._phase_since + limits.header_timeout
        if self.loop.time() < deadline:
            self._arm(deadline)
            return
        if phase == _IDLE:
            self._close()
        else:  # slowloris: the head (or its first byte) did not arrive in time
            self._fail(408, "request head not complete within header timeout")


def _os_error_reason(exc: OSError) -> str:
    if isinstance(exc, ConnectionRefusedError):
        return "refused"
    if isinstance(exc, ConnectionResetError):
        return "reset"
    return "connect_error"


def protocol_factory(ctx: TenantContext) -> Callable[[], asyncio.Protocol]:
    """The factory the control plane passes to loop.create_server for one tenant's listener."""
    tune_malloc()  # once per process: large body buffers are reused instead of re-faulted

    def make() -> asyncio.Protocol:
        return ProxyProtocol(ctx)

    return make


__all__ = ["ProxyProtocol", "TenantPolicy", "protocol_factory"]
