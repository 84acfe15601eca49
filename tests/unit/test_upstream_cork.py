"""A request body that goes on in later reads is written to a corked upstream socket (TCP_CORK, as
HAProxy's MSG_MORE): the kernel fills segments instead of sending a packet through loopback, and
waking the upstream, for every read (bench/body_chunk_cost.py: a body dribbled a byte at a time
cost nsproxyd 25-28 us of system time per byte uncorked, HAProxy 14-16; corked, 14-16). The head
and whatever came with it are never held, and everything is sent the moment the body ends
(uncorked after its last byte was written)."""

from __future__ import annotations

import asyncio
import socket

import pytest
import uvloop
from fresh_caches import fresh_dataplane_caches  # noqa: F401  (fixture)
from protocol_fakes import FakeSocket, Wire
from test_upstream_connection import _connection, _serve

from nsproxy_appliance.daemon.fdbudget import FdBudget
from nsproxy_appliance.daemon.upstream import UpstreamPool
from nsproxy_appliance.model import Upstream

pytestmark = pytest.mark.usefixtures("fresh_dataplane_caches")

PUT = b"PUT /up HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\n\r\n"
CHUNKED = b"PUT /up HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n"
OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


def _wire(family: int = socket.AF_INET) -> Wire:
    wire = Wire()
    wire.pool.socket_family = family
    return wire


def _corks(wire: Wire) -> list[tuple[int, bytes]]:
    sock = wire.upstream.extra["socket"]
    assert isinstance(sock, FakeSocket)
    return sock.corks


def _sent(wire: Wire) -> bytes:
    return b"".join(wire.upstream.written)


def test_a_body_that_goes_on_in_later_reads_is_corked_until_its_last_byte_was_written():
    wire = _wire()
    wire.send(PUT + b"ab")
    head_and_first = _sent(wire)
    assert head_and_first.endswith(b"\r\n\r\nab")
    # the head and the bytes that came with it were written before the cork: never held
    assert _corks(wire) == [(1, head_and_first)]
    wire.send(b"c")
    assert _corks(wire) == [(1, head_and_first)]  # corked once per body, not per read
    wire.send(b"de")
    assert _sent(wire).endswith(b"\r\n\r\nabcde")
    assert _corks(wire) == [(1, head_and_first), (0, _sent(wire))]
    wire.respond(OK)
    assert wire.client.data().endswith(b"\r\n\r\nok")


def test_a_chunked_body_is_uncorked_after_its_last_chunk():
    wire = _wire()
    wire.send(CHUNKED + b"3\r\nabc\r\n")
    wire.send(b"2\r\nde\r\n")
    wire.send(b"0\r\n\r\n")
    sent = _sent(wire)
    assert sent.endswith(b"3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n")
    assert [value for value, _ in _corks(wire)] == [1, 0]
    assert _corks(wire)[-1] == (0, sent)


def test_a_body_that_arrives_with_its_head_and_requests_without_one_are_never_corked():
    wire = _wire()
    wire.send(PUT + b"abcde")
    wire.respond(OK)
    wire.send(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n")
    wire.respond(OK)
    assert _sent(wire).endswith(b"\r\n\r\n") and b"abcde" in _sent(wire)
    assert _corks(wire) == []


def test_the_next_body_on_the_same_connection_is_corked_again():
    wire = _wire()
    wire.send(PUT + b"a")
    wire.send(b"bcde")
    wire.respond(OK)
    wire.send(PUT + b"f")
    wire.send(b"ghij")
    assert [value for value, _ in _corks(wire)] == [1, 0, 1, 0]
    assert _corks(wire)[-1] == (0, _sent(wire)) and _sent(wire).endswith(b"fghij")


def test_a_unix_socket_upstream_is_never_corked():
    wire = _wire(socket.AF_UNIX)
    wire.send(PUT + b"ab")
    wire.send(b"cde")
    assert _sent(wire).endswith(b"abcde")
    assert _corks(wire) == []


def test_an_exchange_that_ended_while_corked_leaves_nothing_held_for_the_next():
    conn, transport, _, _ = _connection(sock_family=socket.AF_INET)
    sock = transport.extra["socket"]
    conn.cork()
    conn.cork()
    assert [value for value, _ in sock.corks] == [1]
    _serve(conn)
    assert [value for value, _ in sock.corks] == [1, 0] and not conn.corked
    conn.uncork()
    assert len(sock.corks) == 2


def test_the_cork_is_the_kernels_on_a_real_tcp_connection():
    """The same calls on uvloop's socket of a real loopback connection: the kernel's TCP_CORK follows,
    and uncorking delivers what it held."""
    server = socket.create_server(("127.0.0.1", 0))
    server.setblocking(False)
    port = server.getsockname()[1]

    async def run() -> None:
        loop = asyncio.get_running_loop()
        upstream = Upstream(kind="http", host="127.0.0.1", port=port, url=f"http://127.0.0.1:{port}")
        pool = UpstreamPool(upstream, None, budget=FdBudget(limit=100), loop=loop)
        conn = await pool.connect(5)
        peer, _ = await asyncio.wait_for(loop.sock_accept(server), 5)
        try:
            sock = conn.transport.get_extra_info("socket")  # type: ignore[union-attr]
            conn.cork()
            assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_CORK) == 1
            conn.write(b"x")
            conn.uncork()
            assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_CORK) == 0
            assert await asyncio.wait_for(loop.sock_recv(peer, 16), 5) == b"x"
        finally:
            conn.close()
            peer.close()

    try:
        uvloop.run(run())
    finally:
        server.close()
