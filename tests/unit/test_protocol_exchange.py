"""The client-side protocol (daemon/http.py), socket-free, judged by what an operator and the two
peers see: the exact bytes each side receives, the access log record of every request (status,
termination, byte counts, addresses), the tenant's counters and error reasons, and when each
connection is kept, closed or aborted. tests/unit/test_protocol.py covers the life cycle; this
pins down the outcome of each path in full, so a changed status, reason or count is caught."""

from __future__ import annotations

import asyncio
import dataclasses
from typing import Any

import pytest
from fresh_caches import fresh_dataplane_caches  # noqa: F401  (fixture)
from protocol_fakes import FakeLoop, FakePool, FakeTransport, Wire, tenant

from nsproxy_appliance.daemon import http
from nsproxy_appliance.daemon.context import TenantContext
from nsproxy_appliance.daemon.fdbudget import FdBudget
from nsproxy_appliance.daemon.flow_control import CONNECTING, PEER_BACKPRESSURE, PIPELINE
from nsproxy_appliance.daemon.framing import error_response
from nsproxy_appliance.daemon.http import MAX_HELD, ProxyProtocol, protocol_factory
from nsproxy_appliance.daemon.response_head import rewrite_response
from nsproxy_appliance.daemon.tunnel import Tunnel
from nsproxy_appliance.daemon.upstream import UpstreamConnection
from nsproxy_appliance.model import Listen, NetnsRef

pytestmark = pytest.mark.usefixtures("fresh_dataplane_caches")

GET = b"GET /%s HTTP/1.1\r\nHost: a\r\n\r\n"
OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
TIMES = ("duration", "upstream_connect_time", "upstream_first_byte_time", "request_id")


class FailingPool(FakePool):
    """A fake pool whose connect() raises `error` (or, with `hold`, returns later via `finish`)."""

    def __init__(self, ctx: TenantContext, loop: FakeLoop) -> None:
        super().__init__(ctx, loop)
        self.error: BaseException | None = None
        self.suspend = False  # connect() waits once, until the test resumes it

    async def connect(self, timeout: float) -> UpstreamConnection:
        self.timeouts = [*getattr(self, "timeouts", []), timeout]
        if self.suspend:
            await _Suspend()
        if self.error is not None:
            raise self.error
        return await super().connect(timeout)


class _Suspend:
    """An awaitable that suspends its coroutine once (the test resumes it with send(None))."""

    def __await__(self):  # type: ignore[no-untyped-def]
        yield


class LogWire(Wire):
    """A Wire whose tenant has an access log, its own fd budget and, optionally, a listener address."""

    def __init__(self, *, listen: Listen | None = None, peer: tuple[str, int] = ("10.0.0.7", 40000), **limits: Any):
        self.loop = FakeLoop()
        self.log: list[dict[str, Any]] = []
        self.ctx = TenantContext(tenant=tenant(**limits), access_log=self.log.append, budget=FdBudget(limit=10_000))
        self.pool = FailingPool(self.ctx, self.loop)
        self.ctx.pool = self.pool
        self.ctx.policy.pool = self.pool
        self.listen = listen
        self.proto, self.client = self.connect(peer)

    def connect(self, peer: tuple[str, int] = ("10.0.0.8", 40001)) -> tuple[ProxyProtocol, FakeTransport]:
        """Another client connection of the same tenant."""
        proto = ProxyProtocol(self.ctx, self.loop, self.listen)  # type: ignore[arg-type]
        client = FakeTransport(self.loop, peer, ("127.0.0.1", 8080))
        client.protocol = proto
        proto.connection_made(client)  # type: ignore[arg-type]
        return proto, client

    def records(self) -> list[dict[str, Any]]:
        """The access log so far, without the fields that depend on the clock or the request id."""
        for entry in self.log:
            for name in ("duration", "upstream_connect_time", "upstream_first_byte_time"):
                assert entry[name] is None or entry[name] >= 0, entry
        return [{k: v for k, v in entry.items() if k not in TIMES} for entry in self.log]

    def errors(self) -> dict[str, int]:
        return self.ctx.counters.upstream_errors


def _record(**fields: Any) -> dict[str, Any]:
    """The access log record of GET /a from 10.0.0.7:40000 answered 200 with 2 bytes, as changed by `fields`."""
    base = {
        "tenant": "acme",
        "tenant_id": "acme-id",
        "client_request_id": None,
        "client": "10.0.0.7",
        "client_port": 40000,
        "listener": "127.0.0.1:8080",
        "http_version": "1.1",
        "method": "GET",
        "path": "/a",
        "host": "a",
        "user_agent": None,
        "status": 200,
        "request_bytes": 0,
        "response_bytes": 2,
        "bytes": 2,
        "upstream": "http://127.0.0.1:9000 (from host)",
        "upstream_address": "127.0.0.1:9000",
        "upstream_status": 200,
        "termination": "complete",
    }
    return base | fields


def _refused(status: int, reason: str, **fields: Any) -> dict[str, Any]:
    """The record of a request nsproxy answered itself with `status` for `reason`."""
    refused = {
        "status": status,
        "response_bytes": 0,
        "bytes": 0,
        "upstream_address": None,
        "upstream_status": None,
        "termination": f"refused: {reason}",
    }
    return _record(**(refused | fields))


# -- the access log and counters of a served request -----------------------------------------
def test_a_served_request_is_logged_in_full():
    wire = LogWire()
    wire.send(b"GET /a HTTP/1.1\r\nHost: a\r\nUser-Agent: curl/8\r\nX-Request-ID: theirs\r\n\r\n")
    sent = wire.upstream.data()
    wire.respond(OK)
    assert wire.client.data() == OK
    assert wire.records() == [_record(user_agent="curl/8", client_request_id="theirs")]
    entry = wire.log[0]
    assert f"X-Request-ID: {entry['request_id']}\r\n".encode() in sent  # the id nsproxy sent is the one logged
    assert entry["upstream_connect_time"] >= 0 and entry["upstream_first_byte_time"] >= 0
    counters = wire.ctx.counters
    assert counters.requests_by_class == {"1xx": 0, "2xx": 1, "3xx": 0, "4xx": 0, "5xx": 0}
    assert counters.bytes_out == len(OK) and counters.duration_sum > 0
    assert (counters.accepted_connections, counters.active_connections, counters.rejected_connections) == (1, 1, 0)


def test_a_request_on_an_attached_connection_has_no_connect_time():
    wire = LogWire()
    for path in (b"a", b"a"):
        wire.send(GET % path)
        wire.respond(OK)
    assert [e["upstream_connect_time"] is None for e in wire.log] == [False, True]


def test_request_and_response_bytes_are_the_bodies():
    wire = LogWire()
    wire.send(b"POST /a HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello")
    wire.respond(b"HTTP/1.1 201 Created\r\nContent-Length: 3\r\n\r\nyes")
    assert wire.records() == [
        _record(method="POST", status=201, upstream_status=201, request_bytes=5, response_bytes=3, bytes=3)
    ]


def test_an_http10_request_is_logged_as_such_and_gets_the_listener_as_host():
    wire = LogWire(listen=Listen("169.254.169.254", 80))
    wire.send(b"GET /a HTTP/1.0\r\n\r\n")
    assert b"\r\nHost: 169.254.169.254:80\r\n" in wire.upstream.data()
    wire.respond(OK)
    assert wire.client.data() == b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok"
    assert wire.records() == [_record(http_version="1.0", host=None, listener="169.254.169.254:80")]
    assert wire.client.closing


def test_a_listener_on_a_wildcard_address_reports_the_local_address_of_the_connection():
    wire = LogWire(listen=Listen("0.0.0.0", 8080))
    wire.send(GET % b"a")
    assert b"\r\nX-Forwarded-Port: 8080\r\n" in wire.upstream.data()
    wire.respond(OK)
    assert wire.log[0]["listener"] == "127.0.0.1:8080"


def test_the_listener_given_by_the_control_plane_is_used_as_is():
    wire = LogWire(listen=Listen("10.9.9.9", 8181))
    wire.send(GET % b"a")
    assert b"\r\nX-Forwarded-Port: 8181\r\n" in wire.upstream.data()


# -- admission ----------------------------------------------------------------------------------
def test_connections_beyond_max_connections_get_503_and_are_counted_apart():
    wire = LogWire(max_connections=2)
    second, second_client = wire.connect()
    third, third_client = wire.connect()
    assert third_client.data() == error_response(503) and third_client.closing
    counters = wire.ctx.counters
    assert (counters.accepted_connections, counters.active_connections, counters.rejected_connections) == (2, 2, 1)
    assert wire.ctx.budget.clients == 2 and wire.ctx.connections == {wire.proto, second}
    third.connection_lost(None)  # a rejected connection was never counted: nothing to give back
    assert counters.active_connections == 2 and wire.ctx.budget.clients == 2
    second_client.peer_closes()
    wire.loop.run_ready()
    assert counters.active_connections == 1 and wire.ctx.budget.clients == 1 and wire.ctx.connections == {wire.proto}


def test_a_connection_the_fd_budget_cannot_take_gets_503():
    wire = LogWire()
    budget = wire.ctx.budget
    budget.clients = budget.usable // 2  # the whole process is at its fd limit
    _, client = wire.connect()
    assert client.data() == error_response(503) and wire.ctx.counters.rejected_connections == 1


# -- refusals: status, reason, nothing upstream ------------------------------------------------
@pytest.mark.parametrize(
    ("request_bytes", "status", "reason", "fields"),
    [
        (b"GET /a HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400, "more than one Host header", {"host": None}),
        (b"GET /a HTTP/1.1\r\n\r\n", 400, "HTTP/1.1 request without Host", {"host": None}),
        (b"GET /a HTTP/2.0\r\nHost: a\r\n\r\n", 505, "HTTP version 2.0 not supported", {"host": None}),
        (b"GET /a HTTP/0.9\r\nHost: a\r\n\r\n", 505, "HTTP version 0.9 not supported", {"host": None}),
        (
            b"CONNECT a:443 HTTP/1.1\r\nHost: a:443\r\n\r\n",
            405,
            "CONNECT is not supported",
            {"method": "CONNECT", "path": "a:443", "host": None},
        ),
        (
            b"POST /a HTTP/1.1\r\nHost: a\r\nContent-Length: 11\r\n\r\n",
            413,
            "request body too large",
            {"method": "POST"},
        ),
        (
            b"POST /a HTTP/1.1\r\nHost: a\r\nConnection: upgrade\r\nUpgrade: h2c\r\nContent-Length: 1\r\n\r\nx",
            400,
            "upgrade request with a body",
            {"method": "POST"},
        ),
        (b"GET /a HTTP/1.1\r\nHost: a\r\nX: \x01\r\n\r\n", 400, "malformed request", {"host": None}),
    ],
)
def test_a_refused_request_is_answered_logged_and_never_sent(request_bytes, status, reason, fields):
    wire = LogWire(max_body_bytes=10)
    wire.send(request_bytes)
    head_only = fields.get("method") == "HEAD"
    assert wire.client.data() == error_response(status, head_only=head_only) and wire.client.closing
    assert not wire.pool.transports
    if reason == "malformed request":
        fields = fields | {"path": "/a"}
    assert wire.records() == [_refused(status, reason, **fields)]
    assert wire.errors() == {}
    assert wire.ctx.counters.requests_by_class["4xx" if status < 500 else "5xx"] == 1


def test_a_refused_head_request_gets_no_body():
    wire = LogWire()
    wire.send(b"HEAD /a HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\n")
    assert wire.client.data() == error_response(400, head_only=True)
    assert wire.records() == [_refused(400, "HEAD request with a body", method="HEAD", host=None)]


def test_the_head_size_limit_is_exact():
    fits = b"GET /a HTTP/1.1\r\nHost: a\r\nX: " + b"x" * 60 + b"\r\n\r\n"
    limit = len(b"/a") + len(b"Host") + len(b"a") + 4 + len(b"X") + 60 + 4
    wire = LogWire(max_header_bytes=limit)
    wire.send(fits)
    assert wire.pool.transports and wire.client.data() == b""
    wire = LogWire(max_header_bytes=limit - 1)
    wire.send(fits)
    assert wire.client.data() == error_response(431) and not wire.pool.transports
    assert wire.records() == [_refused(431, "request head too large", host=None)]


def test_a_head_trickling_in_over_the_limit_is_refused_before_it_completes():
    wire = LogWire(max_header_bytes=119)
    wire.send(b"GET /a HTTP/1.1\r\nHost: a\r\nX: ")  # 29 bytes
    for _ in range(3):
        wire.send(b"y" * 30)  # 119 bytes so far: exactly the limit
    assert wire.client.data() == b""
    wire.send(b"y")  # one byte more of a head not even complete: over the limit
    assert wire.client.data() == error_response(431) and not wire.pool.transports
    assert wire.records() == [_refused(431, "request head too large", host=None)]


def test_the_body_size_limit_is_exact():
    wire = LogWire(max_body_bytes=5)
    wire.send(b"POST /a HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello")
    assert wire.upstream.data().endswith(b"\r\n\r\nhello")
    wire = LogWire(max_body_bytes=5)
    wire.send(b"POST /a HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n")
    upstream = wire.upstream
    assert upstream.data().endswith(b"\r\n\r\n3\r\nabc\r\n2\r\nde\r\n")
    wire.send(b"1\r\nf\r\n")
    assert wire.client.data() == error_response(413) and upstream.aborted
    assert wire.records() == [_refused(413, "request body too large", method="POST", request_bytes=6)]


# -- bodies upstream ---------------------------------------------------------------------------
def _hold_connect(wire: LogWire) -> list[Any]:
    """Make the upstream connect wait: the coroutines are returned, to be finished with _finish."""
    held: list[Any] = []
    wire.loop.create_task = lambda coro: held.append(coro) or FakeTask()  # type: ignore[method-assign]
    return held


def _finish(wire: LogWire, held: list[Any]) -> None:
    with pytest.raises(StopIteration):
        held.pop(0).send(None)
    wire.loop.run_ready()


def test_a_chunked_body_read_before_the_upstream_connected_is_sent_rechunked_after_the_head():
    wire = LogWire()
    held = _hold_connect(wire)
    wire.send(b"POST /a HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5;ext=1\r\nhello\r\n")
    wire.send(b"1a\r\n" + b"z" * 26 + b"\r\n0\r\nTrailer: x\r\n\r\n")
    assert not wire.pool.transports
    _finish(wire, held)
    (sent,) = wire.upstream.written  # the head and the body read so far: one write
    head, _, body = sent.partition(b"\r\n\r\n")
    assert b"\r\nTransfer-Encoding: chunked" in head and b"Trailer" not in head
    assert body == b"5\r\nhello\r\n1a\r\n" + b"z" * 26 + b"\r\n0\r\n\r\n"  # no extensions, no trailers
    assert wire.proto.gate.reasons == 0 and wire.client.reading  # reading resumes once connected


def test_a_content_length_body_read_before_the_upstream_connected_follows_the_head():
    wire = LogWire()
    held = _hold_connect(wire)
    wire.send(b"POST /a HTTP/1.1\r\nHost: a\r\nContent-Length: 6\r\n\r\nabc")
    wire.send(b"def")
    _finish(wire, held)
    (sent,) = wire.upstream.written
    assert sent.endswith(b"\r\n\r\nabcdef") and sent.count(b"\r\n\r\n") == 1


def test_a_body_that_arrives_after_the_head_streams_as_it_comes():
    wire = LogWire()
    wire.send(b"PUT /a HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n")
    upstream = wire.upstream
    upstream.data()
    wire.send(b"3\r\nabc\r\n")
    assert upstream.data() == b"3\r\nabc\r\n"
    wire.send(b"0\r\n\r\n")
    assert upstream.data() == b"0\r\n\r\n"
    wire = LogWire()
    wire.send(b"PUT /a HTTP/1.1\r\nHost: a\r\nContent-Length: 6\r\n\r\nabc")
    upstream = wire.upstream
    assert upstream.data().endswith(b"\r\n\r\nabc")
    wire.send(b"def")
    assert upstream.data() == b"def"


# -- upstream failures: status, reason, truncation ----------------------------------------------
@pytest.mark.parametrize(
    ("error", "status", "reason"),
    [
        (ConnectionRefusedError(111, "refused"), 502, "refused"),
        (ConnectionResetError(104, "reset"), 502, "reset"),
        (OSError(113, "no route"), 502, "connect_error"),
        (TimeoutError(), 504, "connect_timeout"),
        (ValueError("bad address"), 502, "connect_error"),
    ],
)
def test_an_upstream_that_cannot_be_reached(error, status, reason):
    wire = LogWire(connect_timeout=2.5)
    wire.pool.error = error
    wire.send(GET % b"a")
    assert wire.pool.timeouts == [2.5]
    assert wire.client.data() == error_response(status) and wire.client.closing
    assert wire.errors() == {reason: 1}
    assert wire.records() == [_refused(status, reason, termination=f"upstream_{reason}")]


def test_the_upstream_netns_gone_is_502(tmp_path):
    wire = LogWire()
    gone = NetnsRef(path=str(tmp_path / "no-such-netns"), name=None)
    up = dataclasses.replace(wire.ctx.tenant.upstream, from_ns="tenant")
    wire.ctx.tenant = dataclasses.replace(wire.ctx.tenant, netns=gone, upstream=up)  # a reload
    wire.send(GET % b"a")
    assert wire.client.data() == error_response(502)
    assert wire.errors() == {"netns": 1}
    assert wire.records() == [
        _refused(502, "upstream namespace unavailable", upstream="http://127.0.0.1:9000 (from tenant)")
    ]


@pytest.mark.parametrize(
    ("response", "status", "reason"),
    [
        (b"HTTP/1.1 2x0 OK\r\n\r\n", 502, "bad_response"),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: bogus\r\n\r\n", 502, "bad_response"),
        (
            b"HTTP/1.1 101 Switching Protocols\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n",
            502,
            "unsolicited_101",
        ),
    ],
)
def test_a_bad_response_before_anything_was_relayed_is_502(response, status, reason):
    wire = LogWire()
    wire.send(GET % b"a")
    upstream = wire.upstream
    wire.respond(response)
    assert wire.client.data() == error_response(status) and upstream.aborted
    assert wire.errors() == {reason: 1}
    upstream_status = None if reason == "bad_response" and b"2x0" in response else int(response[9:12])
    assert wire.records() == [
        _refused(status, reason, termination=f"upstream_{reason}", upstream_status=upstream_status)
    ]


def test_the_read_timeout_is_504():
    wire = LogWire(read_timeout=3.0)
    wire.send(GET % b"a")
    upstream = wire.upstream
    wire.loop.advance(3.0)
    assert wire.client.data() == error_response(504) and upstream.aborted
    assert wire.errors() == {"timeout": 1}
    assert wire.records() == [_refused(504, "timeout", termination="upstream_timeout")]


@pytest.mark.parametrize(("exc", "reason"), [(None, "closed"), (ConnectionResetError(), "reset")])
def test_an_upstream_that_goes_before_answering_a_new_connection_is_502(exc, reason):
    wire = LogWire()
    wire.send(GET % b"a")
    wire.upstream.peer_closes(exc)
    wire.loop.run_ready()
    assert wire.pool.opened == 1  # a fresh connection is not retried
    assert wire.client.data() == error_response(502)
    assert wire.errors() == {reason: 1}
    assert wire.records() == [_refused(502, reason, termination=f"upstream_{reason}")]


def test_an_upstream_that_goes_mid_body_truncates_the_response():
    wire = LogWire()
    wire.send(GET % b"a")
    upstream = wire.upstream
    wire.respond(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nhalf")
    assert wire.client.data() == b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nhalf"
    upstream.peer_closes()
    wire.loop.run_ready()
    assert wire.client.aborted and wire.client.data() == b""  # no error response after a started one
    assert wire.records() == [_record(upstream_address=None, response_bytes=0, bytes=0, termination="upstream_closed")]
    assert wire.errors() == {"closed": 1}


def test_a_client_error_after_the_response_started_truncates_instead_of_answering():
    wire = LogWire(body_timeout=5.0)
    wire.send(b"POST /a HTTP/1.1\r\nHost: a\r\nContent-Length: 10\r\n\r\nabc")
    wire.respond(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nearly")  # answered before the body is in
    wire.client.data()
    wire.loop.advance(5.0)
    assert wire.client.aborted and wire.client.data() == b""
    assert wire.errors() == {"client_error": 1}
    assert wire.records() == [
        _record(
            method="POST",
            request_bytes=3,
            response_bytes=0,
            bytes=0,
            upstream_address=None,
            termination="upstream_client_error",
        )
    ]


def test_a_close_delimited_response_ends_when_the_upstream_closes():
    wire = LogWire()
    wire.send(GET % b"a")
    upstream = wire.upstream
    wire.respond(b"HTTP/1.1 200 OK\r\n\r\nstream")
    upstream.peer_closes()
    wire.loop.run_ready()
    assert wire.client.data() == b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n6\r\nstream\r\n0\r\n\r\n"
    assert not wire.client.closing  # the client may send the next request
    assert wire.records() == [_record(response_bytes=6, bytes=6, upstream_address=None)]
    wire.send(GET % b"b")
    assert wire.pool.opened == 2


def test_a_reset_during_a_close_delimited_response_is_an_error():
    wire = LogWire()
    wire.send(GET % b"a")
    upstream = wire.upstream
    wire.respond(b"HTTP/1.1 200 OK\r\n\r\nstream")
    upstream.peer_closes(ConnectionResetError())
    wire.loop.run_ready()
    assert wire.client.aborted and wire.errors() == {"reset": 1}


# -- retry on a stale kept-alive connection -------------------------------------------------------
def test_a_stale_connection_is_retried_once_only():
    wire = LogWire()
    wire.send(GET % b"a")
    wire.respond(OK)
    wire.send(GET % b"b")
    wire.upstream.peer_closes()
    wire.loop.run_ready()
    assert wire.pool.opened == 2  # retried on a new connection...
    second = wire.upstream
    assert second.data().startswith(b"GET /b ")
    second.peer_closes()  # ...which is fresh: no second retry
    wire.loop.run_ready()
    assert wire.pool.opened == 2 and wire.client.data().endswith(error_response(502))
    assert wire.records()[-1] == _refused(502, "closed", path="/b", termination="upstream_closed")


def test_no_retry_once_a_response_byte_arrived():
    wire = LogWire()
    wire.send(GET % b"a")
    wire.respond(OK)
    wire.send(GET % b"b")
    wire.respond(b"HTTP/1.1 200")
    wire.upstream.peer_closes()
    wire.loop.run_ready()
    assert wire.pool.opened == 1 and wire.client.data().endswith(error_response(502))


# -- response heads across requests (the per-connection head cache) ------------------------------
@pytest.mark.parametrize("http11", [True, False])
@pytest.mark.parametrize("keep_alive", [True, False])
@pytest.mark.parametrize("method", [b"GET", b"HEAD"])
def test_each_client_gets_the_head_its_request_calls_for_from_one_upstream_connection(http11, keep_alive, method):
    """One upstream connection answers the same chunked head to clients of every kind in turn:
    each must get the head rewrite_response makes for it, never one made for an earlier client."""
    wire = LogWire()
    raw = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked"
    for warm in ((True, True, b"GET"), (False, True, b"GET"), (True, True, b"HEAD")):  # fill the cache
        proto, client = wire.connect()
        version = b"1.1" if warm[0] else b"1.0"
        proto.data_received(warm[2] + b" /w HTTP/" + version + b"\r\nHost: a\r\nConnection: keep-alive\r\n\r\n")
        wire.respond(raw + b"\r\n\r\n" + (b"" if warm[2] == b"HEAD" else b"0\r\n\r\n"))
        client.peer_closes()
        wire.loop.run_ready()
    assert wire.pool.opened == 1
    proto, client = wire.connect()
    version = b"1.1" if http11 else b"1.0"
    connection = b"keep-alive" if keep_alive else b"close"
    proto.data_received(method + b" /x HTTP/" + version + b"\r\nHost: a\r\nConnection: " + connection + b"\r\n\r\n")
    wire.respond(raw + b"\r\n\r\n" + (b"" if method == b"HEAD" else b"2\r\nhi\r\n0\r\n\r\n"))
    expected = rewrite_response(raw, 200, client_http11=http11, keep_alive=keep_alive, bodiless=method == b"HEAD")
    body = b"" if method == b"HEAD" else (b"2\r\nhi\r\n0\r\n\r\n" if http11 else b"hi")
    assert client.data() == expected.head + body
    assert client.closing is not expected.keep_alive


# -- pipelining, the bad n-th request, drain ------------------------------------------------------
def test_a_bad_pipelined_head_request_is_answered_without_a_body_after_the_good_one():
    wire = LogWire()
    wire.send(GET % b"a" + b"HEAD /b HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\n\r\n")
    assert not wire.client.reading
    wire.respond(OK)
    assert wire.client.data() == OK + error_response(400, head_only=True)
    assert wire.ctx.counters.requests_by_class["4xx"] == 1


def test_a_pipelined_request_whose_body_turns_bad_is_never_sent():
    wire = LogWire()
    wire.send(GET % b"a" + b"POST /b HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n")
    upstream = wire.upstream
    assert upstream.data().startswith(b"GET /a ")
    wire.respond(OK)
    assert upstream.data() == b""
    assert wire.client.data() == OK + error_response(400)
    wire.send(GET % b"c")  # nothing is read after the bad request
    assert upstream.data() == b""


def test_a_bad_pipelined_request_is_in_the_access_log():
    """Every request nsproxy answers has its access log record: one refused after the good
    requests before it (a bad n-th pipelined request) too."""
    wire = LogWire()
    wire.send(GET % b"a" + b"GET /b HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\n\r\n")
    wire.respond(OK)
    assert wire.client.data() == OK + error_response(400)
    assert wire.records() == [_record(), _refused(400, "GET request with a body", path="/b", host=None)]


def test_pipelined_requests_resume_reading_only_when_the_queue_is_empty():
    wire = LogWire()
    wire.send(GET % b"1" + GET % b"2" + GET % b"3")
    wire.respond(OK)
    assert not wire.client.reading and wire.proto.gate.reasons == PIPELINE  # /3 still waits
    wire.respond(OK)
    assert wire.client.reading and wire.proto.gate.reasons == 0


def test_a_half_read_pipelined_head_gets_the_header_timeout_after_the_response():
    """The contract's header_timeout: a head not complete in time is 408. A pipelined head that
    was half read while the request before it was served has header_timeout from that response on
    (not the idle timeout, which would let a slow head hold the connection far longer)."""
    wire = LogWire(header_timeout=4.0, idle_timeout=100.0)
    wire.send(GET % b"1" + b"GET /2 HTTP/1.1\r\nHo")
    wire.loop.advance(3.0)
    wire.respond(OK)
    wire.loop.advance(3.9)
    assert not wire.client.closing
    wire.loop.advance(0.1)
    assert wire.client.data() == OK + error_response(408)
    assert wire.records()[1] == _refused(408, "request head not complete within header timeout", path="/2", host=None)


def test_drain_ends_the_connection_after_the_response_in_flight():
    wire = LogWire()
    wire.send(GET % b"1" + GET % b"2")
    wire.proto.begin_drain()
    upstream = wire.upstream
    assert upstream.data().startswith(b"GET /1 ")
    wire.respond(OK)
    assert wire.client.data() == b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok"
    assert wire.client.closing and upstream.data() == b""  # the queued request is the client's to retry


def test_drain_while_a_head_is_half_read_waits_for_it():
    wire = LogWire()
    wire.send(b"GET /a HTTP/1.1\r\nHo")
    wire.proto.begin_drain()
    assert not wire.client.closing
    wire.send(b"st: a\r\n\r\n")
    wire.respond(OK)
    assert wire.client.data().endswith(b"Connection: close\r\n\r\nok") and wire.client.closing


def test_a_client_half_close_after_its_request_gets_the_response_then_the_close():
    wire = LogWire()
    wire.send(GET % b"a")
    assert wire.proto.eof_received() is True
    wire.respond(OK)
    assert wire.client.data().endswith(b"\r\n\r\nok") and wire.client.closing


def test_a_client_half_close_with_its_request_queued_keeps_the_connection_for_it():
    wire = LogWire()
    wire.send(GET % b"1" + GET % b"2")
    wire.respond(OK)
    assert wire.proto.eof_received() is True
    wire.respond(OK)
    assert wire.client.data().count(b"200 OK") == 2 and wire.client.closing


def test_a_client_half_close_mid_body_is_400():
    wire = LogWire()
    wire.send(b"POST /a HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nab")
    upstream = wire.upstream
    assert wire.proto.eof_received() is None
    assert wire.client.data() == error_response(400) and upstream.aborted
    assert wire.records() == [
        _refused(400, "client closed before the request body was complete", method="POST", request_bytes=2)
    ]


def test_an_idle_client_half_close_just_closes():
    wire = LogWire()
    assert wire.proto.eof_received() is None


# -- the client going away ------------------------------------------------------------------------
def test_a_client_that_goes_mid_request_is_logged_499_and_its_upstream_dropped():
    wire = LogWire()
    wire.send(GET % b"a")
    upstream = wire.upstream
    wire.client.peer_closes()
    wire.loop.run_ready()
    assert upstream.aborted and not wire.pool.idle
    assert wire.records() == [
        _record(
            status=499,
            response_bytes=0,
            bytes=0,
            upstream_status=None,
            upstream_address=None,
            termination="client_closed",
        )
    ]
    assert wire.ctx.counters.active_connections == 0 and wire.ctx.budget.clients == 0
    assert wire.ctx.connections == set() and wire.proto.closed


def test_a_client_that_goes_mid_response_is_logged_with_the_response_status():
    wire = LogWire()
    wire.send(GET % b"a")
    wire.respond(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nhalf")
    wire.client.peer_closes()
    wire.loop.run_ready()
    assert wire.records() == [_record(response_bytes=0, bytes=0, upstream_address=None, termination="client_closed")]


def test_a_client_that_goes_while_its_upstream_connects_cancels_the_connect():
    wire = LogWire()
    cancelled: list[bool] = []

    class Task:
        def cancel(self) -> bool:
            cancelled.append(True)
            return True

    def create_task(coro: Any) -> Task:
        coro.close()
        return Task()

    wire.loop.create_task = create_task  # type: ignore[method-assign]
    wire.send(GET % b"a")
    assert not wire.client.reading and wire.proto.gate.reasons == CONNECTING
    wire.client.peer_closes()
    wire.loop.run_ready()
    assert cancelled == [True]


def test_an_idle_client_leaving_returns_its_upstream_connection():
    wire = LogWire()
    wire.send(GET % b"a")
    wire.respond(OK)
    wire.client.peer_closes()
    wire.loop.run_ready()
    assert len(wire.pool.idle) == 1 and wire.ctx.budget.idle == 1 and wire.records() == [_record()]


def test_a_connect_that_finishes_after_the_client_left_returns_the_connection():
    wire = LogWire()
    held = _hold_connect(wire)
    wire.send(GET % b"a")
    wire.client.peer_closes()
    wire.loop.run_ready()
    _finish(wire, held)
    assert len(wire.pool.idle) == 1 and not wire.upstream.written


class FakeTask:
    def cancel(self) -> bool:
        return True


# -- timers ----------------------------------------------------------------------------------------
def test_the_body_timeout_is_exact():
    wire = LogWire(body_timeout=3.0, header_timeout=100.0)
    wire.send(b"POST /a HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nab")
    wire.loop.advance(2.999)
    assert wire.client.data() == b""
    wire.loop.advance(0.001)
    assert wire.client.data() == error_response(408)
    assert wire.records() == [
        _refused(408, "request body not complete within body_timeout", method="POST", request_bytes=2)
    ]


def test_no_body_timeout_once_the_body_is_in():
    wire = LogWire(body_timeout=3.0, read_timeout=100.0)
    wire.send(b"POST /a HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\n\r\nab")
    wire.loop.advance(50.0)
    assert wire.client.data() == b"" and not wire.client.closing


def test_the_idle_timeout_runs_from_the_end_of_the_last_response():
    wire = LogWire(idle_timeout=5.0, header_timeout=100.0, read_timeout=100.0)
    wire.send(GET % b"a")
    wire.loop.advance(20.0)  # a slow upstream: the idle timeout does not run meanwhile
    wire.respond(OK)
    wire.loop.advance(4.999)
    assert not wire.client.closing
    wire.loop.advance(0.001)
    assert wire.client.closing and wire.client.data() == OK  # closed quietly: no 408 to an idle client


def test_a_request_started_during_idle_gets_the_header_timeout():
    wire = LogWire(idle_timeout=100.0, header_timeout=2.0)
    wire.send(GET % b"a")
    wire.respond(OK)
    wire.client.data()
    wire.loop.advance(4.0)
    wire.send(b"GET /b HTTP/1.1\r\n")  # the next head starts: header_timeout from now
    wire.loop.advance(1.999)
    assert not wire.client.closing
    wire.loop.advance(0.001)
    assert wire.client.data() == error_response(408)


def test_a_busy_connection_has_no_client_side_timeout():
    wire = LogWire(header_timeout=1.0, idle_timeout=1.0, read_timeout=1000.0)
    wire.send(GET % b"a")
    wire.loop.advance(500.0)
    assert not wire.client.closing


# -- back-pressure --------------------------------------------------------------------------------
def test_a_slow_client_pauses_the_upstream_for_the_next_request_too():
    wire = LogWire()
    wire.send(GET % b"a")
    wire.respond(OK)
    wire.proto.pause_writing()  # the client stopped reading
    wire.send(GET % b"b")
    assert not wire.upstream.reading  # the new request's upstream read waits for the client
    wire.proto.resume_writing()
    assert wire.upstream.reading


def test_after_a_response_reading_the_client_resumes_if_the_upstream_had_paused_it():
    wire = LogWire()
    wire.send(b"POST /a HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\n\r\nab")
    wire.upstream.protocol.pause_writing()
    assert not wire.client.reading and wire.proto.gate.reasons == PEER_BACKPRESSURE
    wire.respond(OK)
    assert wire.client.reading and wire.proto.gate.reasons == 0


def test_the_upstream_reading_paused_for_a_client_resumes_when_the_exchange_ends():
    wire = LogWire()
    wire.send(GET % b"a")
    upstream = wire.upstream
    wire.proto.pause_writing()
    wire.proto.resume_writing()
    upstream.protocol.gate.pause(PEER_BACKPRESSURE)
    wire.respond(OK)
    assert upstream.protocol.gate.reasons == 0 and upstream.reading


# -- WebSocket -------------------------------------------------------------------------------------
UPGRADE = b"GET /ws HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n"
SWITCH = b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n"


def test_the_switch_is_logged_101_and_the_tunnel_takes_the_connection():
    wire = LogWire()
    wire.send(UPGRADE + b"held1")
    wire.send(b"held2")
    upstream = wire.upstream
    assert upstream.data().endswith(b"\r\n\r\n")
    wire.respond(SWITCH + b"srv")
    assert wire.client.data() == SWITCH + b"srv"
    assert upstream.data() == b"held1held2"  # held bytes go up once, in order
    assert wire.records() == [
        _record(path="/ws", status=101, response_bytes=0, bytes=0, upstream_address=None, upstream_status=101)
    ]
    (tun,) = wire.ctx.connections
    assert isinstance(tun, Tunnel) and wire.proto._timer is None and wire.proto.parser is http._DEAD_PARSER
    wire.loop.advance(3600.0)  # no HTTP timer runs on a tunnel
    assert not wire.client.closing


def test_a_switch_with_the_wrong_upgrade_is_502():
    wire = LogWire()
    wire.send(UPGRADE)
    wire.respond(b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: websocket2\r\n\r\n")
    assert wire.client.data() == error_response(502) and wire.errors() == {"bad_upgrade": 1}
    assert wire.records() == [
        _refused(502, "bad_upgrade", path="/ws", termination="upstream_bad_upgrade", upstream_status=101)
    ]


def test_the_held_bytes_are_bounded():
    wire = LogWire()
    wire.send(UPGRADE + b"x" * MAX_HELD)
    assert wire.client.data() == b""
    wire.send(b"x")
    assert wire.client.data() == error_response(400)
    assert wire.records() == [_refused(400, "too many bytes before the upstream accepted the upgrade", path="/ws")]


def test_a_switch_after_the_client_went_drops_the_upstream():
    wire = LogWire()
    wire.send(UPGRADE)
    upstream = wire.upstream
    wire.proto._closing = True  # the client connection is being torn down
    wire.respond(SWITCH)
    assert upstream.aborted


# -- the factory ------------------------------------------------------------------------------------
def test_the_factory_makes_protocols_on_the_serving_loop():
    ctx = TenantContext(tenant=tenant(), budget=FdBudget(limit=1000))
    listen = Listen("127.0.0.1", 8080)

    async def make() -> tuple[Any, Any, asyncio.AbstractEventLoop]:
        factory = protocol_factory(ctx, listen)
        return factory(), factory(), asyncio.get_running_loop()

    first, second, loop = asyncio.run(make())
    assert isinstance(first, ProxyProtocol) and first is not second
    assert first.loop is loop and second.loop is loop and first.ctx is ctx and first.listen is listen


# -- more outcomes pinned down ----------------------------------------------------------------------
class Clock:
    """time.perf_counter as the data plane reads it, moved by the test."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.now = 100.0
        monkeypatch.setattr(http.time, "perf_counter", lambda: self.now)


def test_the_logged_times_are_measured_from_the_right_moments_and_rounded(monkeypatch):
    clock = Clock(monkeypatch)
    wire = LogWire()
    held = _hold_connect(wire)
    wire.pool.suspend = True
    wire.send(GET % b"a")
    held[0].send(None)  # the connect starts...
    clock.now = 100.25 + 1.23456789e-3  # ...and takes 251.23456789 ms
    _finish(wire, held)
    clock.now = 100.5 + 1.23456789e-3  # the response head came 1.23456789 ms after the request went up
    wire.respond(OK)
    entry = wire.log[0]
    assert (entry["upstream_connect_time"], entry["upstream_first_byte_time"], entry["duration"]) == (
        0.251235,
        0.25,
        0.501235,
    )
    assert all(isinstance(entry[k], float) for k in ("duration", "upstream_connect_time", "upstream_first_byte_time"))


def test_a_zero_time_is_logged_as_zero_not_as_unknown(monkeypatch):
    Clock(monkeypatch)  # the clock stands still
    wire = LogWire()
    wire.send(GET % b"a")
    wire.respond(OK)
    entry = wire.log[0]
    assert (entry["upstream_connect_time"], entry["upstream_first_byte_time"], entry["duration"]) == (0.0, 0.0, 0.0)


def test_a_refusal_without_a_request_is_counted_with_no_duration():
    wire = LogWire(header_timeout=2.0)
    wire.loop.advance(2.0)  # not one byte arrived
    assert wire.client.data() == error_response(408)
    counters = wire.ctx.counters
    assert counters.requests_by_class["4xx"] == 1 and counters.duration_sum == 0.0 and wire.log == []


def test_a_slow_head_is_408_with_its_reason():
    wire = LogWire(header_timeout=2.0)
    wire.send(b"GET /a HTTP/1.1\r\nHo")
    wire.loop.advance(2.0)
    assert wire.client.data() == error_response(408)
    assert wire.records() == [_refused(408, "request head not complete within header timeout", host=None)]


def test_a_connection_without_addresses_gets_neutral_values():
    wire = LogWire()
    proto = ProxyProtocol(wire.ctx, wire.loop)  # type: ignore[arg-type]
    client = FakeTransport(wire.loop, None, None)  # type: ignore[arg-type]
    client.protocol = proto
    proto.connection_made(client)  # type: ignore[arg-type]
    proto.data_received(b"GET /a HTTP/1.0\r\n\r\n")
    assert b"\r\nHost: localhost\r\n" in wire.upstream.data()
    wire.respond(OK)
    entry = wire.records()[0]
    assert (entry["client"], entry["client_port"], entry["listener"]) == ("-", 0, "-")


def test_bytes_out_add_up_over_requests():
    wire = LogWire()
    for path in (b"a", b"b"):
        wire.send(GET % path)
        wire.respond(OK)
    assert wire.ctx.counters.bytes_out == 2 * len(OK)


def test_nothing_more_is_read_once_the_connection_is_closing():
    wire = LogWire()
    wire.send(b"GET /a HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
    upstream = wire.upstream
    wire.respond(OK)
    assert wire.client.closing
    upstream.data()
    wire.proto.data_received(GET % b"late")  # before the transport reports it closed
    assert upstream.data() == b"" and wire.pool.opened == 1
    wire = LogWire()
    wire.send(b"GET /a HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n")  # refused
    wire.proto.data_received(GET % b"late")
    assert not wire.pool.transports and wire.client.data() == error_response(400)


def test_a_response_before_the_request_body_ended_closes_the_connection():
    wire = LogWire()
    wire.send(b"POST /a HTTP/1.1\r\nHost: a\r\nContent-Length: 10\r\n\r\nabc")
    upstream = wire.upstream
    wire.respond(OK)
    assert wire.client.data() == OK and wire.client.closing and upstream.closing
    wire.proto.data_received(b"defghij")  # the rest of the body, too late: ignored
    assert wire.records() == [_record(method="POST", request_bytes=3, upstream_address=None)]


def test_a_refused_request_gives_the_attached_upstream_connection_back_to_the_pool():
    wire = LogWire()
    wire.send(GET % b"a")
    wire.respond(OK)
    conn = wire.upstream.protocol
    wire.send(b"GET /b HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n")
    wire.loop.run_ready()
    assert wire.pool.idle == [conn] and not conn.closed


def test_the_idle_timeout_works_after_the_header_timer_fired_during_a_slow_response():
    wire = LogWire(header_timeout=2.0, idle_timeout=5.0, read_timeout=100.0)
    wire.send(GET % b"a")
    wire.loop.advance(10.0)  # the header timer fires while the request is being served
    wire.respond(OK)
    wire.loop.advance(4.999)
    assert not wire.client.closing
    wire.loop.advance(0.001)
    assert wire.client.closing


def test_after_a_back_pressured_response_the_connection_idles_with_the_idle_timeout():
    wire = LogWire(header_timeout=2.0, idle_timeout=50.0)
    wire.send(b"POST /a HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\n\r\nab")
    wire.upstream.protocol.pause_writing()
    wire.respond(OK)
    wire.loop.advance(10.0)
    assert not wire.client.closing and wire.client.data() == OK  # no 408: no head is under way
    wire.loop.advance(40.0)
    assert wire.client.closing


def test_a_request_after_a_reload_uses_the_new_pool():
    wire = LogWire()
    wire.send(GET % b"a")
    wire.respond(OK)
    old = wire.upstream
    old.data()
    new_pool = FailingPool(wire.ctx, wire.loop)  # what pool_for makes when a reload changed the upstream
    wire.ctx.pool = wire.ctx.policy.pool = new_pool
    wire.send(GET % b"b")
    assert old.closing and old.data() == b""
    assert new_pool.transports and new_pool.transports[0].data().startswith(b"GET /b ")


def test_a_retry_is_made_once_even_on_another_stale_connection():
    wire = LogWire()
    others = [wire.connect(), wire.connect()]
    for proto, _ in others:  # two served connections go back to the pool
        proto.data_received(GET % b"w")
        wire.respond(OK)
    for _, client in others:
        client.peer_closes()
    wire.loop.run_ready()
    assert len(wire.pool.idle) == 2
    wire.send(GET % b"a")
    for _ in range(2):  # the upstream had closed both meanwhile
        _busy(wire).peer_closes()
        wire.loop.run_ready()
    assert wire.pool.opened == 2  # no third connection: one retry only
    assert wire.client.data() == error_response(502)


def _busy(wire: LogWire) -> FakeTransport:
    """The upstream transport serving the wire's client now."""
    up = wire.proto._up
    assert up is not None
    return up.transport  # type: ignore[return-value]


def test_consecutive_different_heads_on_one_upstream_connection_are_each_relayed():
    wire = LogWire()
    wire.send(GET % b"a")
    wire.respond(OK)
    wire.send(GET % b"b")
    wire.respond(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n")
    assert wire.client.data() == OK + b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n"


def _request(version: bytes, keep_alive: bool, method: bytes) -> bytes:
    connection = b"keep-alive" if keep_alive else b"close"
    return method + b" /x HTTP/" + version + b"\r\nHost: a\r\nConnection: " + connection + b"\r\n\r\n"


def test_the_head_cache_never_serves_one_kind_of_client_the_head_of_another():
    """Every ordered pair of client kinds (HTTP version, keep-alive, HEAD or not), one after the
    other on one upstream connection with the same response head."""
    wire = LogWire()
    raw = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked"
    kinds = [(v, k, m) for v in (b"1.1", b"1.0") for k in (True, False) for m in (b"GET", b"HEAD")]
    for first in kinds:
        for second in kinds:
            for version, keep_alive, method in (first, second):
                proto, client = wire.connect()
                proto.data_received(_request(version, keep_alive, method))
                wire.respond(raw + b"\r\n\r\n" + (b"" if method == b"HEAD" else b"2\r\nhi\r\n0\r\n\r\n"))
                expected = rewrite_response(
                    raw, 200, client_http11=version == b"1.1", keep_alive=keep_alive, bodiless=method == b"HEAD"
                )
                assert client.data().startswith(expected.head), (first, second)
                client.peer_closes()
                wire.loop.run_ready()
    assert wire.pool.opened == 1


def test_a_pipelined_http10_request_after_an_http11_one_is_read_as_http10():
    wire = LogWire()
    wire.send(GET % b"1" + b"GET /2 HTTP/1.0\r\n\r\n")
    wire.respond(OK)
    second = wire.upstream.data()
    assert b"GET /2 HTTP/1.1\r\nHost: 127.0.0.1:8080\r\n" in second  # HTTP/1.0 without Host: the listener's
    wire.respond(OK)
    assert wire.client.data() == OK + b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok"


@pytest.mark.parametrize("upgrade", [b"websocketX", b"Xwebsocket", b"web socket"])
def test_a_switch_to_anything_but_exactly_websocket_is_502(upgrade):
    wire = LogWire()
    wire.send(UPGRADE)
    wire.respond(b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: " + upgrade + b"\r\n\r\n")
    assert wire.client.data() == error_response(502) and wire.errors() == {"bad_upgrade": 1}


def test_abort_drops_the_client_connection():
    wire = LogWire()
    wire.proto.abort()
    assert wire.client.aborted and wire.proto._closing
    wire.proto.data_received(GET % b"a")
    assert not wire.pool.transports
    ProxyProtocol(wire.ctx, wire.loop).abort()  # type: ignore[arg-type]  # never connected: nothing to drop


def test_an_attached_connection_the_upstream_closes_is_let_go():
    wire = LogWire()
    wire.send(GET % b"a")
    wire.respond(OK)
    wire.upstream.peer_closes()
    wire.loop.run_ready()
    wire.send(GET % b"b")
    assert wire.pool.opened == 2 and wire.upstream.data().startswith(b"GET /b ")


def test_rejections_are_counted_each():
    wire = LogWire(max_connections=1)
    wire.connect()
    wire.connect()
    assert wire.ctx.counters.rejected_connections == 2


class LimitsTransport(FakeTransport):
    limits: tuple[int, int] | None = None

    def set_write_buffer_limits(self, high: int, low: int) -> None:
        self.limits = (high, low)


def test_the_client_transport_gets_the_write_buffer_limits():
    wire = LogWire()
    proto = ProxyProtocol(wire.ctx, wire.loop)  # type: ignore[arg-type]
    client = LimitsTransport(wire.loop, ("10.0.0.9", 1), ("127.0.0.1", 8080))
    proto.connection_made(client)  # type: ignore[arg-type]
    assert client.limits == (http.HIGH_WATER, http.LOW_WATER)


def test_bytes_in_and_out_are_counted_over_every_read_and_write():
    wire = LogWire()
    request = b"POST /a HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\n\r\n"
    wire.send(request + b"ab")
    wire.send(b"cd")
    wire.respond(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nxy")
    wire.respond(b"zw")  # the body in two reads: flushed twice
    assert wire.ctx.counters.bytes_in == len(request) + 4
    assert wire.ctx.counters.bytes_out == len(wire.client.data())


def test_a_drained_idle_connection_reads_nothing_more():
    wire = LogWire()
    wire.send(GET % b"a")
    wire.respond(OK)
    upstream = wire.upstream
    upstream.data()
    wire.proto.begin_drain()
    assert wire.client.closing
    wire.proto.data_received(GET % b"late")  # arrives before the transport reports it closed
    assert upstream.data() == b"" and wire.pool.opened == 1


def test_a_read_that_ends_one_request_and_starts_the_next_counts_only_the_next_heads_bytes():
    wire = LogWire(max_header_bytes=100)
    wire.send(b"POST /a HTTP/1.1\r\nHost: a\r\nContent-Length: 200\r\n\r\n")
    wire.send(b"x" * 200 + b"GET /b HTTP/1.1\r\nHo")  # 219 bytes: most of them the body before
    wire.respond(OK)
    wire.send(b"st: a\r\n\r\n")
    assert wire.client.data() == OK and wire.upstream.data().endswith(b"X-Forwarded-Host: a\r\n\r\n")


def test_a_request_bigger_than_the_head_limit_in_one_read_is_fine():
    wire = LogWire(max_header_bytes=1024)
    wire.send(b"POST /a HTTP/1.1\r\nHost: a\r\nContent-Length: 2000\r\n\r\n" + b"x" * 2000)
    wire.respond(OK)
    assert wire.client.data() == OK and not wire.client.closing


def test_an_empty_chunked_body_read_before_the_upstream_connected_still_ends():
    wire = LogWire()
    held = _hold_connect(wire)
    wire.send(b"POST /a HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n")
    _finish(wire, held)
    assert wire.upstream.data().endswith(b"\r\n\r\n0\r\n\r\n")


def test_a_url_split_across_reads_is_forwarded_whole():
    wire = LogWire()
    wire.send(b"GET /lo")
    wire.send(b"ng?q=1 HTTP/1.1\r\nHost: a\r\n\r\n")
    assert wire.upstream.data().startswith(b"GET /long?q=1 HTTP/1.1\r\n")


def test_a_client_already_slow_when_its_upstream_connects_pauses_it():
    wire = LogWire()
    wire.proto.pause_writing()  # before any upstream connection exists
    wire.send(GET % b"a")
    assert not wire.upstream.reading
    wire = LogWire()
    wire.proto.pause_writing()
    wire.proto.resume_writing()
    wire.send(GET % b"a")
    assert wire.upstream.reading


def test_body_bytes_after_a_body_timeout_are_ignored():
    wire = LogWire(body_timeout=1.0)
    wire.send(b"POST /a HTTP/1.1\r\nHost: a\r\nContent-Length: 10\r\n\r\nab")
    upstream = wire.upstream
    wire.loop.advance(1.0)
    assert wire.client.data() == error_response(408)
    wire.proto.data_received(b"cdefgh")  # before the transport reports it closed
    assert upstream.aborted and wire.pool.opened == 1


def test_a_request_after_a_truncated_response_is_not_served():
    wire = LogWire()
    wire.send(GET % b"a")
    upstream = wire.upstream
    wire.respond(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nhalf")
    upstream.peer_closes()
    wire.loop.run_ready()
    assert wire.client.aborted
    wire.proto.data_received(GET % b"b")
    assert wire.pool.opened == 1
