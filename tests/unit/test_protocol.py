"""The client-side protocol, socket-free (fake transports, a fake loop with deterministic timers).

What these pin down is the exchange life cycle: one request at a time upstream, pipelining in
order, the limits and their statuses, drain, the retry on a stale kept-alive connection,
back-pressure, and the upgrade hand-over. Real-socket versions of many of these are in
tests/integration/test_proxy_*.py and tests/hostile/.
"""

from __future__ import annotations

import pytest
from protocol_fakes import Wire

from nsproxy_appliance.daemon.flow_control import PEER_BACKPRESSURE

GET = b"GET /%s HTTP/1.1\r\nHost: a\r\n\r\n"
OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


def requests_in(data: bytes) -> list[bytes]:
    """The request lines in what the upstream received."""
    return [line for line in data.split(b"\r\n") if line.endswith(b" HTTP/1.1") and b" /" in line]


def test_keep_alive_requests_share_one_attached_upstream_connection():
    wire = Wire()
    for i in range(3):
        wire.send(GET % str(i).encode())
        head = wire.upstream.data()
        assert requests_in(head) == [b"GET /%d HTTP/1.1" % i]
        assert head.count(b"X-Tenant-ID: acme-id\r\n") == 1
        wire.respond(OK)
        assert wire.client.data() == OK
    assert wire.pool.opened == 1
    assert wire.ctx.counters.requests_by_class["2xx"] == 3


def test_the_upstream_connection_returns_to_the_pool_when_the_client_leaves():
    wire = Wire()
    wire.send(GET % b"a")
    wire.respond(OK)
    wire.client.peer_closes()
    wire.loop.run_ready()
    assert len(wire.pool.idle) == 1 and wire.ctx.budget.idle >= 1


def test_pipelined_requests_go_upstream_one_at_a_time_and_are_answered_in_order():
    wire = Wire()
    wire.send(GET % b"1" + GET % b"2" + GET % b"3")
    assert requests_in(wire.upstream.data()) == [b"GET /1 HTTP/1.1"]
    assert not wire.client.reading  # the queued requests hold reading
    wire.respond(b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\n1")
    assert requests_in(wire.upstream.data()) == [b"GET /2 HTTP/1.1"]
    wire.respond(b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\n2")
    assert requests_in(wire.upstream.data()) == [b"GET /3 HTTP/1.1"]
    wire.respond(b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\n3")
    assert wire.client.data() == b"".join(b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\n%d" % i for i in (1, 2, 3))
    assert wire.client.reading


def test_a_bad_pipelined_request_is_answered_after_the_good_ones_and_never_sent():
    wire = Wire()
    wire.send(GET % b"1" + b"GET /x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, gzip\r\n\r\n")
    assert requests_in(wire.upstream.data()) == [b"GET /1 HTTP/1.1"]
    wire.respond(OK)
    out = wire.client.data()
    assert out.startswith(OK) and out[len(OK) :].startswith(b"HTTP/1.1 400 ")
    assert wire.upstream.data() == b""
    assert wire.client.closing


def test_head_not_complete_within_header_timeout_is_408():
    wire = Wire(header_timeout=2.0)
    wire.send(b"GET / HTTP/1.1\r\nHo")
    wire.loop.advance(1.9)
    wire.send(b"st: a\r\n")  # trickling bytes does not extend the deadline
    wire.loop.advance(0.2)
    assert wire.client.data().startswith(b"HTTP/1.1 408 ")
    assert not wire.pool.transports  # nothing of it went upstream


def test_idle_keep_alive_connection_closes_after_idle_timeout():
    wire = Wire(idle_timeout=5.0)
    wire.send(GET % b"a")
    wire.respond(OK)
    wire.client.data()
    wire.loop.advance(4.9)
    assert not wire.client.closing
    wire.loop.advance(0.2)
    assert wire.client.closing and wire.client.data() == b""


def test_head_over_max_header_bytes_is_431():
    wire = Wire(max_header_bytes=1024)
    wire.send(b"GET / HTTP/1.1\r\nHost: a\r\nX-Big: " + b"x" * 2000 + b"\r\n\r\n")
    assert wire.client.data().startswith(b"HTTP/1.1 431 ")
    assert not wire.pool.transports


def test_body_over_max_body_bytes_is_413_before_or_while_streaming():
    wire = Wire(max_body_bytes=10)
    wire.send(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 11\r\n\r\n")
    assert wire.client.data().startswith(b"HTTP/1.1 413 ") and not wire.pool.transports
    wire = Wire(max_body_bytes=10)
    wire.send(b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n8\r\n12345678\r\n")
    upstream = wire.upstream
    wire.send(b"8\r\n12345678\r\n")
    assert wire.client.data().startswith(b"HTTP/1.1 413 ")
    assert upstream.aborted  # it carried part of the refused body: never reused


def test_slow_body_is_408_at_body_timeout_and_the_upstream_connection_is_dropped():
    wire = Wire(body_timeout=3.0)
    wire.send(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 100\r\n\r\nabc")
    upstream = wire.upstream
    wire.loop.advance(2.0)
    wire.send(b"def")  # bytes keep coming, slowly
    wire.loop.advance(1.1)
    assert wire.client.data().startswith(b"HTTP/1.1 408 ")
    assert upstream.aborted and not wire.pool.idle


def test_drain_finishes_the_request_in_flight_then_closes():
    wire = Wire()
    wire.send(GET % b"a")
    wire.proto.begin_drain()
    assert not wire.client.closing
    wire.respond(OK)
    assert b"Connection: close" in wire.client.data()
    assert wire.client.closing
    idle = Wire()  # kept alive after a response, then idle: closes at once
    idle.send(GET % b"a")
    idle.respond(OK)
    assert not idle.client.closing
    idle.proto.begin_drain()
    assert idle.client.closing


def test_drain_keeps_a_connection_whose_first_request_is_on_its_way():
    """Accepted just before the drain, its request not read yet: closing it would fail a request
    the client already sent. It gets that one request, answered with Connection: close."""
    wire = Wire()
    wire.proto.begin_drain()
    assert not wire.client.closing
    wire.send(GET % b"a")
    wire.respond(OK)
    assert b"Connection: close" in wire.client.data()
    assert wire.client.closing


def test_request_on_a_stale_kept_alive_connection_is_retried_once_on_a_new_one():
    wire = Wire()
    wire.send(GET % b"1")
    wire.respond(OK)
    wire.client.data()
    first = wire.upstream
    wire.send(GET % b"2")
    first.peer_closes()  # the upstream had closed it meanwhile: no byte of a response
    wire.loop.run_ready()
    assert wire.pool.opened == 2
    assert requests_in(wire.upstream.data()) == [b"GET /2 HTTP/1.1"]
    wire.respond(OK)
    assert wire.client.data() == OK


def test_a_request_with_a_body_is_not_retried():
    wire = Wire()
    wire.send(GET % b"1")
    wire.respond(OK)
    wire.client.data()
    wire.send(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\n\r\nhi")
    wire.upstream.peer_closes()
    wire.loop.run_ready()
    assert wire.pool.opened == 1
    assert wire.client.data().startswith(b"HTTP/1.1 502 ")


def test_back_pressure_from_a_slow_client_pauses_the_upstream():
    wire = Wire()
    wire.send(GET % b"big")
    upstream = wire.upstream
    wire.proto.pause_writing()
    assert not upstream.reading
    wire.proto.resume_writing()
    assert upstream.reading
    upstream.protocol.pause_writing()  # the upstream's buffer is full: stop reading the client
    assert not wire.client.reading
    upstream.protocol.resume_writing()
    assert wire.client.reading
    assert wire.proto.gate is not None and not wire.proto.gate.reasons & PEER_BACKPRESSURE


def test_bytes_after_a_websocket_upgrade_are_held_and_dropped_when_the_upstream_does_not_switch():
    wire = Wire()
    upgrade = b"GET /ws HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n"
    wire.send(upgrade + GET % b"smuggled")
    assert requests_in(wire.upstream.data()) == [b"GET /ws HTTP/1.1"]
    wire.send(b"more raw bytes")
    wire.respond(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n")
    assert wire.client.data().startswith(b"HTTP/1.1 403 ")
    assert wire.client.closing
    assert wire.upstream.data() == b""  # neither the held request nor the raw bytes went up


def test_websocket_upgrade_accepted_becomes_a_tunnel_with_the_held_bytes():
    wire = Wire()
    wire.send(b"GET /ws HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\nframe1")
    upstream = wire.upstream
    upstream.data()
    wire.respond(b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\nhello")
    out = wire.client.data()
    assert out.startswith(b"HTTP/1.1 101 ") and out.endswith(b"\r\n\r\nhello")
    assert upstream.data() == b"frame1"
    wire.client.protocol.data_received(b"frame2")  # the client transport now speaks to the tunnel
    assert upstream.data() == b"frame2"
    assert wire.ctx.counters.active_connections == 1


@pytest.mark.parametrize(
    "response",
    [
        b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
        b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\r\n",
    ],
)
def test_a_101_nobody_asked_for_is_502(response):
    wire = Wire()
    if b"h2c" in response:  # asked for WebSocket, got something else
        wire.send(b"GET /ws HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n")
    else:  # asked for no upgrade at all
        wire.send(GET % b"plain")
    upstream = wire.upstream
    wire.respond(response)
    assert wire.client.data().startswith(b"HTTP/1.1 502 ")
    assert upstream.aborted


def test_h2c_upgrade_is_served_as_plain_http11_and_connect_is_405():
    wire = Wire()
    wire.send(b"GET /a HTTP/1.1\r\nHost: a\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\n\r\n" + GET % b"b")
    head = wire.upstream.data()
    assert requests_in(head) == [b"GET /a HTTP/1.1"] and b"h2c" not in head and b"Upgrade" not in head
    wire.respond(OK)
    assert requests_in(wire.upstream.data()) == [b"GET /b HTTP/1.1"]  # parsing went on as HTTP/1.1
    wire = Wire()
    wire.send(b"CONNECT a:443 HTTP/1.1\r\nHost: a:443\r\n\r\n\x16\x03\x01")
    assert wire.client.data().startswith(b"HTTP/1.1 405 ") and not wire.pool.transports


def test_extra_bytes_after_a_response_make_the_connection_unusable():
    wire = Wire()
    wire.send(GET % b"1")
    wire.respond(OK + b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
    assert wire.client.data() == OK  # the unasked-for response never reaches the client
    first = wire.upstream
    assert first.closing
    wire.send(GET % b"2")
    assert wire.upstream is not first


def test_interim_responses_go_to_http11_clients_only():
    wire = Wire()
    wire.send(b"POST / HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\n")
    wire.respond(b"HTTP/1.1 100 Continue\r\n\r\n")
    assert wire.client.data() == b"HTTP/1.1 100 Continue\r\n\r\n"
    wire.send(b"hi")
    assert wire.upstream.data().endswith(b"\r\n\r\nhi")
    wire = Wire()
    wire.send(b"POST / HTTP/1.0\r\nHost: a\r\nContent-Length: 2\r\n\r\nhi")
    wire.respond(b"HTTP/1.1 100 Continue\r\n\r\n" + OK)
    assert wire.client.data().startswith(b"HTTP/1.1 200 ")
