"""The client-side protocol (daemon/http.py) across the steps of one connection: which upstream
connection and pool a request goes to, what an attached connection survives, what is read (or not)
once an answer is due, and how the end of a response leads to the next request or the close.
Socket-free, with the fakes of tests/unit/protocol_fakes.py and the LogWire of
test_protocol_exchange.py."""

from __future__ import annotations

import ssl

import pytest
from fresh_caches import fresh_dataplane_caches  # noqa: F401  (fixture)
from test_protocol_exchange import GET, OK, FailingPool, LogWire, _hold_connect, _record, _refused

from nsproxy_appliance.daemon.framing import error_response
from nsproxy_appliance.daemon.tls import TlsSetupError

pytestmark = pytest.mark.usefixtures("fresh_dataplane_caches")


# -- an https upstream that fails its handshake ----------------------------------------------------
@pytest.mark.parametrize(
    ("error", "reason"),
    [
        (ssl.SSLCertVerificationError(1, "certificate verify failed"), "tls_verify_failed"),
        (ssl.SSLError(1, "wrong version number"), "tls_error"),
        (TlsSetupError("no such CA file"), "tls_error"),
    ],
)
def test_a_tls_failure_to_connect_is_502_with_its_tls_reason(error, reason):
    wire = LogWire()
    wire.pool.error = error
    wire.send(GET % b"a")
    assert wire.client.data() == error_response(502) and wire.client.closing
    assert wire.errors() == {reason: 1}
    assert wire.records() == [_refused(502, reason, termination=f"upstream_{reason}")]


# -- the response head cache of an upstream connection ---------------------------------------------
def test_a_repeated_response_head_is_taken_from_the_connections_cache():
    """The head an upstream connection last sent, rewritten for the same kind of client, is kept on
    the connection and served again without being rewritten."""
    wire = LogWire()
    wire.send(GET % b"a")
    wire.respond(OK)
    assert wire.client.data() == OK
    conn = wire.upstream.protocol
    assert conn.head_cache is not None  # filled by the first response
    raw, flags, resp = conn.head_cache
    assert raw == b"HTTP/1.1 200 OK\r\nContent-Length: 2"
    assert resp.head == b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n"
    cached = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX-From-Cache: 1\r\n\r\n"
    conn.head_cache = (raw, flags, resp._replace(head=cached))
    wire.send(GET % b"b")
    wire.respond(OK)
    assert wire.client.data() == cached + b"ok"


# -- which pool and which connection a request goes to ---------------------------------------------
def test_a_pool_replaced_in_the_tenant_context_is_followed_though_the_policy_holds_the_old_one():
    wire = LogWire()
    wire.send(GET % b"a")
    wire.respond(OK)
    old = wire.upstream
    old.data()
    new_pool = FailingPool(wire.ctx, wire.loop)
    wire.ctx.pool = new_pool  # the policy still names the old pool
    wire.send(GET % b"b")
    assert old.closing and old.data() == b""
    assert new_pool.transports and new_pool.transports[0].data().startswith(b"GET /b ")
    assert wire.ctx.policy.pool is new_pool


@pytest.mark.parametrize("pooled", [False, True])
def test_an_upstream_connection_attached_to_an_idle_client_outlives_its_read_timer(pooled):
    """Between requests the attached connection is the client's (its idle timeout applies), not
    an idle pooled one that the pool's idle timeout closes."""
    wire = LogWire(read_timeout=1.0, idle_timeout=1000.0)
    wire.pool.idle_timeout = 5.0
    if pooled:  # another client's connection, given back to the pool and taken by this one
        other, other_client = wire.connect()
        other.data_received(GET % b"w")
        wire.respond(OK)
        other_client.peer_closes()
        wire.loop.run_ready()
        assert len(wire.pool.idle) == 1
    wire.send(GET % b"a")
    upstream = wire.upstream
    upstream.data()
    wire.respond(OK)
    assert wire.client.data() == OK
    wire.loop.advance(20.0)  # the read timer fires, and the pool's idle timeout passes, twice over
    assert not upstream.closing and wire.proto._up is upstream.protocol
    wire.send(GET % b"b")
    assert wire.pool.opened == 1 and upstream.data().startswith(b"GET /b ")


def test_a_connect_that_finishes_after_the_request_was_refused_gives_the_connection_back_unused():
    """The refusal has closed the client connection, but the transport has not reported it yet."""
    wire = LogWire()
    held = _hold_connect(wire)
    wire.send(b"POST /a HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nab")
    assert wire.proto.eof_received() is None  # 400: the body cannot be complete
    assert wire.client.data() == error_response(400) and not wire.proto.closed
    with pytest.raises(StopIteration):
        held.pop(0).send(None)
    assert not wire.upstream.written and len(wire.pool.idle) == 1
    assert wire.proto._up is None


# -- nothing more is read once an answer is due ----------------------------------------------------
def test_bytes_after_a_bad_pipelined_request_are_not_read():
    wire = LogWire()
    first = GET % b"a" + b"GET /b HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\n\r\n"
    wire.send(first)
    wire.send(GET % b"c")  # before the request ahead of the bad one is answered
    assert wire.ctx.counters.bytes_in == len(first)
    wire.respond(OK)
    assert wire.client.data() == OK + error_response(400)
    assert wire.records() == [_record(), _refused(400, "GET request with a body", path="/b", host=None)]
    assert wire.pool.opened == 1


def test_a_request_after_a_truncated_response_is_not_read_even_before_the_close_is_reported():
    wire = LogWire()
    wire.send(GET % b"a")
    upstream = wire.upstream
    wire.respond(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n")
    assert wire.client.data() == b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n"
    upstream.protocol.data_received(b"zz\r\n")  # not a chunk size: the response cannot go on
    assert wire.client.aborted and wire.errors() == {"bad_response": 1}
    wire.proto.data_received(GET % b"b")  # before connection_lost
    assert wire.pool.opened == 1 and wire.ctx.counters.bytes_in == len(GET % b"a")
    wire.loop.run_ready()
    assert wire.records() == [
        _record(response_bytes=0, bytes=0, upstream_address=None, termination="upstream_bad_response")
    ]


# -- the end of a response -------------------------------------------------------------------------
@pytest.mark.parametrize("how", ["drain", "half_close"])
def test_a_drain_or_half_close_during_a_response_closes_the_connection_after_it(how):
    """The head already told the client it could keep the connection; it closes all the same once
    the response is complete."""
    wire = LogWire()
    wire.send(GET % b"a")
    wire.respond(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nha")
    if how == "drain":
        wire.proto.begin_drain()
    else:
        assert wire.proto.eof_received() is True
    assert not wire.client.closing
    wire.respond(b"lf")
    assert wire.client.data() == b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nhalf" and wire.client.closing
    assert wire.records() == [_record(response_bytes=4, bytes=4)]


def test_a_response_already_relayed_in_full_ends_without_an_empty_write():
    """A close-delimited response to an HTTP/1.0 client: every byte went out as it came, so the
    end of it has nothing more to write."""
    wire = LogWire()
    wire.send(b"GET /a HTTP/1.0\r\n\r\n")
    upstream = wire.upstream
    wire.respond(b"HTTP/1.1 200 OK\r\n\r\nstream")
    upstream.peer_closes()
    wire.loop.run_ready()
    assert wire.client.written == [b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nstream"]  # one write, no b""
    assert wire.client.closing
