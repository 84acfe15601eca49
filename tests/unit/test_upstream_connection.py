"""One upstream connection (daemon/upstream.py UpstreamConnection), socket-free, against a sink that
records what the connection tells the exchange: the raw head (exact, however the reads split it),
the body, when the response is complete and whether the connection may serve another request,
and every way it can fail (bad bytes, bytes nobody asked for, the read timeout)."""

from __future__ import annotations

import socket
from typing import Any

import pytest
from protocol_fakes import FakeLoop, FakeSocket, FakeTransport

from nsproxy_appliance.daemon.fdbudget import FdBudget
from nsproxy_appliance.daemon.flow_control import HIGH_WATER, LOW_WATER, PEER_BACKPRESSURE, ReadGate
from nsproxy_appliance.daemon.upstream import MAX_RESPONSE_HEAD, UPSTREAM_RCVBUF, UpstreamConnection, UpstreamPool
from nsproxy_appliance.model import Upstream

HEAD = b"HTTP/1.1 200 OK\r\nContent-Length: 2"
OK = HEAD + b"\r\n\r\nok"
UPSTREAM = Upstream(kind="http", host="127.0.0.1", port=9000, url="http://127.0.0.1:9000")


class Sink:
    """An UpstreamSink that records every call, in order."""

    def __init__(self, *, rechunk: bool = False, gate: ReadGate | None = None) -> None:
        self.client_gate = gate
        self.out: list[bytes] = []
        self.calls: list[tuple[Any, ...]] = []
        self.rechunk = rechunk

    def upstream_interim(self, raw: bytes) -> None:
        self.calls.append(("interim", raw))

    def upstream_head(self, status: int, raw: bytes) -> bool:
        self.calls.append(("head", status, raw))
        return self.rechunk

    def upstream_flush(self) -> None:
        self.calls.append(("flush",))

    def upstream_done(self, keep_alive: bool, body_bytes: int) -> None:
        self.calls.append(("done", keep_alive, body_bytes))

    def upstream_failed(self, reason: str) -> None:
        self.calls.append(("failed", reason))

    def upstream_lost(self, conn: UpstreamConnection, exc: Exception | None) -> None:
        self.calls.append(("lost", conn, exc))

    def upstream_switched(self, conn: UpstreamConnection, rest: bytes) -> None:
        self.calls.append(("switched", conn, rest))


class Owner:
    def __init__(self) -> None:
        self.gone: list[UpstreamConnection] = []

    def upstream_gone(self, conn: UpstreamConnection) -> None:
        self.gone.append(conn)


class RecordingTransport(FakeTransport):
    limits: tuple[int, int] | None = None

    def set_write_buffer_limits(self, high: int, low: int) -> None:
        self.limits = (high, low)


def _connection(
    peer: Any = ("127.0.0.1", 9000), upstream: Upstream = UPSTREAM, sock_family: int | None = None, **pool_kw: Any
):
    """A connection made on a fake transport (with a FakeSocket of `sock_family` when given)."""
    loop = FakeLoop()
    pool = UpstreamPool(upstream, None, budget=FdBudget(limit=1000), loop=loop, **pool_kw)  # type: ignore[arg-type]
    conn = UpstreamConnection(pool)
    transport = RecordingTransport(loop, peer, ("127.0.0.1", 50000))
    if sock_family is not None:
        transport.extra["socket"] = FakeSocket(transport, sock_family)
    transport.protocol = conn
    conn.connection_made(transport)  # type: ignore[arg-type]
    return conn, transport, pool, loop


@pytest.fixture
def up():
    return _connection()


def _serve(conn: UpstreamConnection, sink: Sink | None = None, *, head: bool = False, timeout: float = 10.0) -> Sink:
    sink = sink or Sink()
    conn.bind(sink, no_body=head, read_timeout=timeout)
    return sink


# -- a response ---------------------------------------------------------------------------
def test_a_response_in_one_read(up):
    conn, _transport, _, _ = up
    sink = _serve(conn)
    assert conn.sink is sink and conn.got_bytes is False
    conn.data_received(OK)
    assert sink.calls == [("head", 200, HEAD), ("done", True, 2)]
    assert sink.out == [b"ok"]
    assert (conn.sink, conn.served, conn.got_bytes, conn.closed) == (None, 1, True, False)


def test_a_head_split_across_reads_is_handed_over_whole(up):
    conn, _, _, _ = up
    sink = _serve(conn)
    response = HEAD + b"\r\nX-A: 1\r\n\r\nok"
    for i in range(len(response)):
        conn.data_received(response[i : i + 1])
    heads = [c for c in sink.calls if c[0] == "head"]
    assert heads == [("head", 200, HEAD + b"\r\nX-A: 1")]
    assert sink.calls[-1] == ("done", True, 2) and b"".join(sink.out) == b"ok"
    assert sink.calls.count(("flush",)) == len(response) - 1  # every read but the last is flushed


def test_a_head_split_after_some_body_bytes_of_the_same_read(up):
    conn, _, _, _ = up
    sink = _serve(conn)
    conn.data_received(b"HTTP/1.1 200 OK\r\nCon")
    conn.data_received(b"tent-Length: 2\r\n\r\no")
    conn.data_received(b"k")
    assert sink.calls == [("flush",), ("head", 200, HEAD), ("flush",), ("done", True, 2)]
    assert sink.out == [b"o", b"k"]


def test_empty_lines_before_a_response_are_not_part_of_its_head(up):
    conn, _, _, _ = up
    sink = _serve(conn)
    conn.data_received(b"\r\n\r\n" + OK)
    assert sink.calls[0] == ("head", 200, HEAD)
    conn2, *_ = _connection()
    sink2 = _serve(conn2)
    conn2.data_received(b"\r\n")
    conn2.data_received(b"\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
    assert ("head", 200, HEAD) in sink2.calls


def test_a_lone_lf_before_a_response_is_not_part_of_its_head(up):
    conn, _, _, _ = up
    sink = _serve(conn)
    conn.data_received(b"\n" + OK)
    assert sink.calls[0] == ("head", 200, HEAD)


def test_a_head_whose_second_read_starts_like_a_status_line(up):
    conn, _, _, _ = up
    sink = _serve(conn)
    conn.data_received(b"HTTP/1.1 200 OK\r\nVia: ")
    conn.data_received(b"HTTP/1.1 proxy\r\nContent-Length: 0\r\n\r\n")  # a header value, not a head
    assert ("head", 200, b"HTTP/1.1 200 OK\r\nVia: HTTP/1.1 proxy\r\nContent-Length: 0") in sink.calls


def test_a_split_interim_head_then_the_final_head_in_the_same_read(up):
    conn, _, _, _ = up
    sink = _serve(conn)
    conn.data_received(b"HTTP/1.1 100 Cont")
    conn.data_received(b"inue\r\n\r\n" + OK)
    assert sink.calls == [("flush",), ("interim", b"HTTP/1.1 100 Continue"), ("head", 200, HEAD), ("done", True, 2)]
    sink = _serve(conn)
    conn.data_received(OK)  # the next response starts clean
    assert sink.calls == [("head", 200, HEAD), ("done", True, 2)]


def test_interim_responses_then_the_final_one(up):
    conn, _, _, _ = up
    sink = _serve(conn)
    conn.data_received(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n" + OK)
    assert sink.calls == [
        ("interim", b"HTTP/1.1 100 Continue"),
        ("interim", b"HTTP/1.1 103 Early Hints\r\nLink: </a>"),
        ("head", 200, HEAD),
        ("done", True, 2),
    ]


def test_an_interim_response_split_from_the_final_one(up):
    conn, _, _, _ = up
    sink = _serve(conn)
    conn.data_received(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 20")
    conn.data_received(b"0 OK\r\nContent-Length: 2\r\n\r\nok")
    assert sink.calls == [("interim", b"HTTP/1.1 100 Continue"), ("flush",), ("head", 200, HEAD), ("done", True, 2)]


def test_the_body_is_counted_and_rechunked_when_the_exchange_asks(up):
    conn, _, _, _ = up
    sink = _serve(conn, Sink(rechunk=True))
    conn.data_received(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n")
    conn.data_received(b"1a\r\n" + b"z" * 26 + b"\r\n0\r\n\r\n")
    assert b"".join(sink.out) == b"5\r\nhello\r\n1a\r\n" + b"z" * 26 + b"\r\n"
    assert sink.calls[-1] == ("done", True, 31)


def test_a_second_response_on_the_same_connection(up):
    conn, _, _, _ = up
    first = _serve(conn)
    conn.data_received(OK)
    second = _serve(conn)
    conn.data_received(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n")
    assert first.calls[-1] == ("done", True, 2)
    assert second.calls == [("head", 404, b"HTTP/1.1 404 Not Found\r\nContent-Length: 0"), ("done", True, 0)]
    assert conn.served == 2


def test_connection_close_from_the_upstream_ends_reuse(up):
    conn, _, _, _ = up
    sink = _serve(conn)
    conn.data_received(b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 0\r\n\r\n")
    assert sink.calls[-1] == ("done", False, 0)


# -- HEAD -----------------------------------------------------------------------------------
def test_a_head_response_ends_at_its_head_and_the_next_gets_a_fresh_parser(up):
    conn, _, _, _ = up
    sink = _serve(conn, head=True)
    conn.data_received(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n")
    assert sink.calls == [("head", 200, b"HTTP/1.1 200 OK\r\nContent-Length: 5"), ("done", True, 0)]
    sink = _serve(conn)
    conn.data_received(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello")
    assert sink.calls[-1] == ("done", True, 5) and sink.out == [b"hello"]


def test_a_body_after_a_head_response_makes_the_connection_unusable(up):
    conn, _, _, _ = up
    sink = _serve(conn, head=True)
    conn.data_received(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello")
    assert sink.calls[-1] == ("done", False, 0) and sink.out == []


def test_interim_responses_to_a_head_request_do_not_end_it(up):
    conn, _, _, _ = up
    sink = _serve(conn, head=True)
    conn.data_received(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n")
    assert sink.calls == [
        ("interim", b"HTTP/1.1 100 Continue"),
        ("head", 200, b"HTTP/1.1 200 OK\r\nContent-Length: 5"),
        ("done", True, 0),
    ]


# -- bytes nobody asked for, bad bytes ------------------------------------------------------
def test_a_second_response_in_the_same_read_makes_the_connection_unusable(up):
    conn, _, _, _ = up
    sink = _serve(conn)
    conn.data_received(OK + b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
    assert sink.calls == [("head", 200, HEAD), ("done", False, 2)] and sink.out == [b"ok"]


def test_garbage_after_a_complete_response_makes_the_connection_unusable(up):
    conn, _, _, _ = up
    sink = _serve(conn)
    conn.data_received(OK + b"\x00garbage")
    assert sink.calls == [("head", 200, HEAD), ("done", False, 2)]


def test_bytes_while_no_exchange_is_served_drop_the_connection(up):
    conn, transport, _, _ = up
    conn.data_received(b"HTTP/1.1 200 OK\r\n\r\n")
    assert conn.closed and transport.aborted


def test_a_malformed_response_fails_the_exchange_and_drops_the_connection(up):
    conn, transport, _, _ = up
    sink = _serve(conn)
    conn.data_received(b"HTTP/1.1 2x0 OK\r\n\r\n")
    assert sink.calls == [("failed", "bad_response")]
    assert conn.closed and transport.aborted and conn.sink is None


def test_a_response_head_longer_than_the_limit_is_a_bad_response(up):
    conn, transport, _, _ = up
    sink = _serve(conn)
    start = b"HTTP/1.1 200 OK\r\nX-Long: "
    conn.data_received(start + b"a" * (MAX_RESPONSE_HEAD - len(start)))  # exactly the limit: still waiting
    assert sink.calls == [("flush",)] and not conn.closed
    conn.data_received(b"a")
    assert sink.calls[-1] == ("failed", "bad_response") and transport.aborted


# -- switching protocols --------------------------------------------------------------------
def test_a_101_hands_over_the_bytes_after_it(up):
    conn, _, _, loop = up
    sink = _serve(conn)
    raw = b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: websocket"
    conn.data_received(raw + b"\r\n\r\nframe")
    assert sink.calls == [("head", 101, raw), ("switched", conn, b"frame")]
    assert conn.sink is None and conn._timer is None  # no read timeout on a tunnel
    loop.advance(3600)
    assert not conn.closed


def test_an_upgrade_after_a_complete_response_is_extra(up):
    conn, _, _, _ = up
    sink = _serve(conn)
    conn.data_received(OK + b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n")
    assert sink.calls[-1] == ("done", False, 2)


# -- timers -----------------------------------------------------------------------------------
def test_the_read_timeout_counts_from_the_last_byte_either_way(up):
    conn, transport, _, loop = up
    sink = _serve(conn, timeout=10.0)
    loop.advance(6.0)
    conn.write(b"body")  # the request is still being sent: the upstream is not late yet
    loop.advance(6.0)
    assert sink.calls == [] and not conn.closed
    conn.writelines([b"more"])
    loop.advance(9.0)
    conn.data_received(b"HTTP/1.1 200 OK\r\n")  # a response byte resets it too
    loop.advance(9.999)
    assert sink.calls == [("flush",)]
    loop.advance(0.001)  # exactly read_timeout after the last byte
    assert sink.calls[-1] == ("failed", "timeout") and transport.aborted


def test_a_slow_client_does_not_count_against_the_upstream(up):
    conn, _, _, loop = up
    sink = _serve(conn, timeout=5.0)
    conn.gate.pause(PEER_BACKPRESSURE)  # the client's buffer is full: reading the upstream is paused
    loop.advance(20.0)
    assert sink.calls == []
    conn.gate.resume(PEER_BACKPRESSURE)
    loop.advance(5.1)
    assert sink.calls == [("failed", "timeout")]


def test_bind_moves_the_timer_only_earlier(up):
    conn, _, _, loop = up
    _serve(conn, timeout=30.0)
    timer_at = conn._timer_at
    _serve(conn, timeout=60.0)
    assert conn._timer_at == timer_at
    _serve(conn, timeout=5.0)
    assert conn._timer_at == loop.now + 5.0


def test_an_idle_pooled_connection_expires_after_the_pool_idle_timeout():
    conn, transport, pool, loop = _connection(idle_timeout=30.0)
    pool.release(conn, True)
    assert pool.idle == [conn] and pool.budget.idle == 1 and conn.idle_since == loop.now
    loop.advance(29.999)
    assert not transport.closing
    loop.advance(0.001)
    assert transport.closing and not transport.aborted and pool.idle == [] and pool.budget.idle == 0


def test_an_earlier_timer_does_not_expire_a_pooled_connection_early():
    conn, transport, pool, loop = _connection(idle_timeout=30.0)
    sink = _serve(conn, timeout=5.0)  # its timer is due in 5 s
    conn.data_received(OK)
    loop.advance(1.0)
    pool.release(conn, True)
    loop.advance(10.0)  # the old timer fires while the connection idles in the pool
    assert sink.calls[-1] == ("done", True, 2) and not transport.closing and pool.idle == [conn]
    loop.advance(21.0)
    assert transport.closing and pool.idle == []


def test_a_pooled_connection_reused_before_expiry_keeps_serving():
    conn, transport, pool, loop = _connection(idle_timeout=30.0)
    pool.release(conn, True)
    loop.advance(10.0)
    assert pool.acquire() is conn
    conn.owner = Owner()
    sink = _serve(conn, timeout=100.0)
    loop.advance(25.0)  # the pool's expiry fires: the connection is busy, it is not expired
    assert not transport.closing and sink.calls == []


def test_a_connection_attached_to_an_idle_client_waits_for_that_client(up):
    conn, transport, _, loop = up
    conn.owner = Owner()
    sink = _serve(conn, timeout=5.0)
    conn.data_received(OK)
    loop.advance(3600.0)
    assert sink.calls == [("head", 200, HEAD), ("done", True, 2)] and not transport.closing


def test_parking_resumes_reading_paused_for_the_last_client(up):
    conn, transport, _pool, _ = up
    conn.gate.pause(PEER_BACKPRESSURE)
    assert not transport.reading
    conn.park()
    assert transport.reading and conn.gate.reasons == 0 and conn.sink is None and conn.owner is None


# -- the connection going away --------------------------------------------------------------
def test_lost_while_serving_tells_the_exchange_with_the_error(up):
    conn, _transport, _pool, _loop = up
    sink = _serve(conn)
    error = ConnectionResetError()
    conn.connection_lost(error)
    assert sink.calls == [("lost", conn, error)] and conn.closed and conn._timer is None


def test_lost_while_attached_to_an_idle_client_tells_that_client(up):
    conn, _, _, _ = up
    owner = Owner()
    conn.owner = owner
    conn.connection_lost(None)
    assert owner.gone == [conn] and conn.owner is None


def test_lost_while_pooled_leaves_the_pool():
    conn, _, pool, _ = _connection()
    pool.release(conn, True)
    conn.connection_lost(None)
    assert pool.idle == [] and pool.budget.idle == 0 and conn._timer is None


def test_lost_after_being_closed_is_not_counted_again():
    conn, _, pool, _ = _connection()
    pool.release(conn, True)
    pool.idle.remove(conn)  # as acquire() leaves it...
    conn.close()  # ...and closed by its client
    pool.budget.idle = 5
    conn.connection_lost(None)
    assert pool.budget.idle == 5


def test_abort_and_close(up):
    conn, transport, _, _ = up
    conn.sink, conn.owner = Sink(), Owner()  # type: ignore[assignment]
    conn.close()
    assert (conn.closed, conn.sink, conn.owner, transport.closing, transport.aborted) == (True, None, None, True, False)
    conn, transport, _, _ = _connection()
    conn.sink = Sink()  # type: ignore[assignment]
    conn.abort()
    assert (conn.closed, conn.sink, transport.aborted) == (True, None, True)


def test_usable():
    conn, transport, _, _ = _connection()
    assert conn.usable()
    transport.closing = True
    assert not conn.usable()
    conn, _, _, _ = _connection()
    conn.closed = True
    assert not conn.usable()
    assert not UpstreamConnection(conn.pool).usable()  # never connected


# -- the transport ----------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("peer", "label"),
    [
        (("127.0.0.1", 9000), "127.0.0.1:9000"),
        (("::1", 9000, 0, 0), "[::1]:9000"),
        ("/run/up.sock", "unix:/run/up.sock"),
        ("", "http://127.0.0.1:9000 (from host)"),  # an unnamed unix peer: the configured upstream
    ],
)
def test_the_peer_label_of_the_access_log(peer, label):
    conn, transport, _, _ = _connection(peer=peer)
    assert conn.peer_label == label
    assert transport.limits == (HIGH_WATER, LOW_WATER)
    assert conn.gate is not None and conn.gate.transport is transport


class RecordingSocket:
    family = socket.AF_INET

    def __init__(self, fail: bool = False) -> None:
        self.options: list[tuple[int, int, int]] = []
        self.fail = fail

    def setsockopt(self, level: int, option: int, value: int) -> None:
        if self.fail:
            raise OSError("not permitted")
        self.options.append((level, option, value))


@pytest.mark.parametrize("fail", [False, True])
def test_the_receive_buffer_of_an_upstream_socket_is_bounded(fail):
    loop = FakeLoop()
    pool = UpstreamPool(UPSTREAM, None, budget=FdBudget(limit=1000), loop=loop)  # type: ignore[arg-type]
    transport = RecordingTransport(loop, ("127.0.0.1", 9000), ("127.0.0.1", 1))
    sock = RecordingSocket(fail)
    transport.extra["socket"] = sock
    conn = UpstreamConnection(pool)
    conn.connection_made(transport)  # type: ignore[arg-type]  # a refused setsockopt is not an error
    assert sock.options == ([] if fail else [(socket.SOL_SOCKET, socket.SO_RCVBUF, UPSTREAM_RCVBUF)])
    assert conn.peer_label == "127.0.0.1:9000"


def test_the_upstreams_write_buffer_pauses_and_resumes_the_client(up):
    conn, _, _, loop = up
    client = FakeTransport(loop, ("10.0.0.7", 1), ("127.0.0.1", 8080))
    sink = _serve(conn, Sink(gate=ReadGate(client)))  # type: ignore[arg-type]
    conn.pause_writing()
    assert not client.reading and sink.client_gate.reasons == PEER_BACKPRESSURE
    conn.resume_writing()
    assert client.reading and sink.client_gate.reasons == 0
    _serve(conn, Sink(gate=None))
    conn.pause_writing()  # an exchange without a client gate: nothing to pause
    conn.resume_writing()
    conn.sink = None
    conn.pause_writing()
    conn.resume_writing()
    assert client.reading
