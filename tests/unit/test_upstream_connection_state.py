"""What an upstream connection (daemon/upstream.py UpstreamConnection) keeps between its exchanges,
socket-free: the TLS session it hands its pool (once, after its first response) and the one timer
it arms when it is parked in the pool (for the idle expiry, not earlier)."""

from __future__ import annotations

import types
from typing import Any

from protocol_fakes import FakeLoop, FakeTransport

from nsproxy_appliance.daemon.fdbudget import FdBudget
from nsproxy_appliance.daemon.flow_control import ReadGate
from nsproxy_appliance.daemon.upstream import UpstreamConnection, UpstreamPool
from nsproxy_appliance.model import Upstream, UpstreamTls

HTTP = Upstream(kind="http", host="127.0.0.1", port=9000, url="http://127.0.0.1:9000")
HTTPS = Upstream(kind="http", host="up.test", port=443, url="https://up.test", tls=UpstreamTls(ca="/ca.pem"))
OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


class Sink:
    """An UpstreamSink that keeps only how each response ended."""

    client_gate: ReadGate | None = None

    def __init__(self) -> None:
        self.out: list[bytes] = []
        self.done: list[tuple[bool, int]] = []

    def upstream_interim(self, raw: bytes) -> None:
        raise AssertionError("no interim response is sent here")

    def upstream_head(self, status: int, raw: bytes) -> bool:
        return False

    def upstream_flush(self) -> None:
        pass

    def upstream_done(self, keep_alive: bool, body_bytes: int) -> None:
        self.done.append((keep_alive, body_bytes))

    def upstream_failed(self, reason: str) -> None:
        raise AssertionError(f"failed: {reason}")

    def upstream_lost(self, conn: UpstreamConnection, exc: Exception | None) -> None:
        raise AssertionError("lost")

    def upstream_switched(self, conn: UpstreamConnection, rest: bytes) -> None:
        raise AssertionError("switched")


Connection = tuple[UpstreamConnection, FakeTransport, UpstreamPool, FakeLoop]


def _connection(upstream: Upstream = HTTP, **pool_kw: Any) -> Connection:
    loop = FakeLoop()
    pool = UpstreamPool(upstream, None, budget=FdBudget(limit=1000), loop=loop, **pool_kw)  # type: ignore[arg-type]  # the fake loop
    conn = UpstreamConnection(pool)
    transport = FakeTransport(loop, ("127.0.0.1", upstream.port), ("127.0.0.1", 50000))
    transport.protocol = conn
    conn.connection_made(transport)  # type: ignore[arg-type]  # the fake transport
    return conn, transport, pool, loop


def _respond(conn: UpstreamConnection, *, timeout: float = 10.0) -> Sink:
    sink = Sink()
    conn.bind(sink, no_body=False, read_timeout=timeout)
    conn.data_received(OK)
    assert sink.done == [(True, 2)]
    return sink


# -- the TLS session -----------------------------------------------------------------------------
def test_a_tls_connection_hands_its_pool_the_session_after_its_first_response_only():
    conn, transport, pool, _ = _connection(HTTPS)
    ssl_object = types.SimpleNamespace(session="s1")
    transport.extra["ssl_object"] = ssl_object  # type: ignore[assignment]  # what a TLS transport has
    assert pool.tls_session is None
    _respond(conn)
    assert pool.tls_session == "s1"
    ssl_object.session = "s2"  # a later ticket on the same connection
    _respond(conn)
    _respond(conn)
    assert pool.tls_session == "s1" and conn.served == 3


# -- the timer of a parked connection ------------------------------------------------------------
def test_parking_moves_the_timer_to_the_idle_expiry():
    conn, _, pool, loop = _connection(idle_timeout=30.0)
    _respond(conn, timeout=300.0)  # its read timeout is further off than the idle expiry
    loop.advance(1.0)
    pool.release(conn, True)
    assert conn._timer is not None and conn._timer_at == loop.now + 30.0


def test_parking_a_fresh_connection_arms_its_timer_for_the_idle_expiry():
    conn, _, pool, loop = _connection(idle_timeout=30.0)
    assert conn._timer is None
    pool.release(conn, True)
    assert conn._timer is not None and conn._timer_at == loop.now + 30.0


# -- a pooled connection that breaks off by itself -------------------------------------------------
def test_a_pooled_connection_that_gets_unasked_bytes_leaves_the_pool_and_the_fd_budget():
    """An upstream that answers an idle keep-alive connection with `408` and closes: the connection
    aborts itself, and must not stay in the pool (or in the shared fd budget) as a phantom."""
    conn, transport, pool, loop = _connection()
    pool.release(conn, True)
    assert pool.idle == [conn] and pool.budget.idle == 1
    conn.data_received(b"HTTP/1.1 408 Request Timeout\r\nConnection: close\r\n\r\n")
    loop.run_ready()
    assert transport.aborted and conn.closed
    assert pool.idle == [] and pool.budget.idle == 0
