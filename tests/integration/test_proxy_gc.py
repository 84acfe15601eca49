"""A closed client connection is freed by reference counting, plain or TLS: none of its objects are
left for the cyclic garbage collector. Under a TLS handshake flood (bench/exhaustion_bench.py,
tls_handshake_flood) every closed connection was such a cycle (the TLS protocol held the HTTP
protocol, which holds the transport, which holds the TLS protocol; and each request's Exchange
held its protocol, which kept the last one): 45,000 objects for the collector over 8 s, collections
of 13-20 ms that stalled every tenant, and the daemon's RSS doubled.

Real sockets and the real protocols (tests/proxy_harness.py's in-process loop, the TLS listener
made as listeners.py makes it); the collector is off while the connections run, then every
unreachable object it finds is kept (gc.DEBUG_SAVEALL) and none may be one of the data plane's."""

from __future__ import annotations

import contextlib
import gc
import socket
import ssl
import time
from collections.abc import Iterator
from pathlib import Path

from proxy_harness import ProxyHarness, listening_socket, make_tenant
from support.tlscerts import Pki

from nsproxy_appliance.daemon import tls
from nsproxy_appliance.daemon.context import TenantContext
from nsproxy_appliance.daemon.http import Exchange, ProxyProtocol, protocol_factory
from nsproxy_appliance.model import Certificate, Listen, ListenTls

CONNECTIONS = 40
REQUEST = b"GET /echo/gc HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n"


@contextlib.contextmanager
def collector_off_then_saving() -> Iterator[list[object]]:
    """The collector off inside the block; on leaving it, one collection that keeps what it found
    (given to the caller as the yielded list)."""
    found: list[object] = []
    gc.collect()
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield found
        gc.set_debug(gc.DEBUG_SAVEALL)
        gc.collect()
        found.extend(gc.garbage)
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
        if was_enabled:
            gc.enable()


def ours(found: list[object]) -> dict[str, int]:
    kinds: dict[str, int] = {}
    tls_protocol = tuple(tls._CLASSES.values())
    for obj in found:
        if isinstance(obj, ProxyProtocol | Exchange | tls._Handover) or (
            tls_protocol and isinstance(obj, tls_protocol)
        ):
            name = type(obj).__name__
            kinds[name] = kinds.get(name, 0) + 1
    return kinds


def request(port: int, wrap: ssl.SSLContext | None = None) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        sock: socket.socket = wrap.wrap_socket(raw, server_hostname="localhost") if wrap else raw
        sock.sendall(REQUEST)
        got = b""
        while chunk := sock.recv(65536):
            got += chunk
        return got


def wait_closed(proxy: ProxyHarness, ctx: TenantContext) -> None:
    deadline = time.monotonic() + 10
    while proxy.call_sync(lambda: ctx.counters.active_connections) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert proxy.call_sync(lambda: ctx.counters.active_connections) == 0


def test_closed_plain_connections_leave_no_cycles(proxy, upstream):
    ctx, port = proxy.serve(make_tenant(port=upstream.port))
    with collector_off_then_saving() as found:
        for _ in range(CONNECTIONS):
            assert request(port).startswith(b"HTTP/1.1 200 ")
        wait_closed(proxy, ctx)
    assert ours(found) == {}


def test_closed_tls_connections_leave_no_cycles(proxy, upstream, tmp_path: Path):
    pki = Pki(tmp_path / "pki")
    server = pki.server("acme", ["localhost"])
    listen = Listen("127.0.0.1", 0, ListenTls(certificates=(Certificate(server.cert, server.key),)))
    ctx = TenantContext(tenant=make_tenant(port=upstream.port))
    sock = listening_socket()
    port = sock.getsockname()[1]

    async def start() -> None:
        loop = proxy.loop
        factory = tls.server_factory(loop, tls.Terminator(listen.tls), tls.HandshakeGate(ctx), protocol_factory(ctx))
        server_ = await loop.create_server(factory, sock=sock)
        proxy._servers.append(server_)

    proxy.call(start())
    client = ssl.create_default_context(cafile=pki.ca_file)
    with collector_off_then_saving() as found:
        for _ in range(CONNECTIONS):
            assert request(port, client).startswith(b"HTTP/1.1 200 ")
        wait_closed(proxy, ctx)
    assert ours(found) == {}
