"""The WebSocket tunnel (daemon/tunnel.py), socket-free: bytes both ways with their counters,
back-pressure, half-close, and the accounting when either side goes (the connection counts as one
of its tenant's until the tunnel ends, once)."""

from __future__ import annotations

from typing import Any

import pytest
from protocol_fakes import FakeLoop, FakeTransport, Wire, tenant

from nsproxy_appliance.daemon.context import TenantContext
from nsproxy_appliance.daemon.fdbudget import FdBudget
from nsproxy_appliance.daemon.flow_control import HIGH_WATER, LOW_WATER
from nsproxy_appliance.daemon.tunnel import Tunnel


class RecordingTransport(FakeTransport):
    def __init__(self, loop: FakeLoop, peer: tuple[str, int]) -> None:
        super().__init__(loop, peer, ("127.0.0.1", 1))
        self.limits: tuple[int, int] | None = None
        self.eof_ok = True

    def set_write_buffer_limits(self, high: int, low: int) -> None:
        self.limits = (high, low)

    def can_write_eof(self) -> bool:
        return self.eof_ok


@pytest.fixture
def tunnel() -> tuple[Tunnel, RecordingTransport, RecordingTransport, TenantContext, FakeLoop]:
    loop = FakeLoop()
    ctx = TenantContext(tenant=tenant(), budget=FdBudget(limit=1000))
    ctx.counters.active_connections = 1  # the client connection the tunnel takes over
    ctx.budget.clients = 1
    client, upstream = RecordingTransport(loop, ("10.0.0.7", 1)), RecordingTransport(loop, ("127.0.0.1", 9000))
    client.pause_reading()  # the HTTP side had paused both
    upstream.pause_reading()
    return Tunnel(ctx, client, upstream), client, upstream, ctx, loop  # type: ignore[arg-type]


def test_the_tunnel_takes_over_both_transports(tunnel):
    tun, client, upstream, ctx, _ = tunnel
    assert client.protocol is tun.client and upstream.protocol is tun.upstream
    assert tun.client.peer is tun.upstream and tun.upstream.peer is tun.client
    assert tun.client.tunnel is tun and tun.upstream.tunnel is tun
    assert client.limits == upstream.limits == (HIGH_WATER, LOW_WATER)
    assert client.reading and upstream.reading
    assert ctx.connections == {tun}
    assert not (tun.done or tun.client.eof or tun.upstream.eof)


def test_bytes_cross_and_are_counted_by_direction(tunnel):
    _tun, client, upstream, ctx, _ = tunnel
    client.protocol.data_received(b"ping!")
    client.protocol.data_received(b"ping")
    upstream.protocol.data_received(b"pong")
    upstream.protocol.data_received(b"pong")
    assert upstream.data() == b"ping!ping" and client.data() == b"pongpong"
    assert (ctx.counters.bytes_in, ctx.counters.bytes_out) == (9, 8)


def test_nothing_is_written_to_a_closing_side(tunnel):
    _tun, client, upstream, ctx, _ = tunnel
    upstream.closing = True
    client.protocol.data_received(b"late")
    assert upstream.written == [] and ctx.counters.bytes_in == 0


def test_a_full_write_buffer_pauses_the_other_side(tunnel):
    _tun, client, upstream, _, _ = tunnel
    upstream.protocol.pause_writing()
    assert not client.reading and upstream.reading
    upstream.protocol.resume_writing()
    assert client.reading
    client.protocol.pause_writing()
    assert not upstream.reading
    upstream.closing = True
    client.protocol.resume_writing()  # never resume a side that is going away
    assert not upstream.reading


def test_a_half_close_is_passed_on_and_the_second_one_closes(tunnel):
    tun, client, upstream, _, _loop = tunnel
    assert client.protocol.eof_received() is True  # keep the transport: the other direction goes on
    assert tun.client.eof and upstream.eof_written and not client.closing and not upstream.closing
    upstream.protocol.data_received(b"rest")
    assert client.data() == b"rest"
    assert upstream.protocol.eof_received() is None
    assert client.closing and upstream.closing


def test_a_half_close_the_other_side_cannot_pass_on_closes_both(tunnel):
    _tun, client, upstream, _, _ = tunnel
    upstream.eof_ok = False
    assert client.protocol.eof_received() is None
    assert client.closing and upstream.closing and not upstream.eof_written


def test_when_either_side_goes_both_close_and_the_connection_is_accounted_once(tunnel):
    tun, client, upstream, ctx, loop = tunnel
    client.peer_closes()
    loop.run_ready()  # both connection_lost calls run
    assert client.closing and upstream.closing and tun.done
    assert ctx.counters.active_connections == 0 and ctx.budget.clients == 0
    assert ctx.connections == set()
    tun.client.connection_lost(None)  # a late second report changes nothing
    assert ctx.counters.active_connections == 0 and ctx.budget.clients == 0


def test_drain_leaves_a_tunnel_alone_and_abort_drops_both(tunnel):
    tun, client, upstream, _, _ = tunnel
    tun.begin_drain()
    assert not client.closing and not upstream.closing
    tun.abort()
    assert client.aborted and upstream.aborted


def test_a_tunnel_made_by_the_proxy_is_counted_until_it_ends():
    wire = Wire()
    wire.send(b"GET /ws HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n")
    upstream = wire.upstream
    wire.respond(b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n")
    (tun,) = wire.ctx.connections
    assert isinstance(tun, Tunnel) and wire.proto not in wire.ctx.connections
    clients_before: Any = wire.ctx.budget.clients
    upstream.peer_closes()
    wire.loop.run_ready()
    assert wire.client.closing and wire.ctx.counters.active_connections == 0
    assert wire.ctx.budget.clients == clients_before - 1 and wire.ctx.connections == set()
