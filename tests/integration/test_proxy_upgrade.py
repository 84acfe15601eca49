"""Upgrade through the proxy: after the upstream's 101 the proxy tunnels bytes both ways."""

from __future__ import annotations

import asyncio

import aiohttp
from proxy_harness import make_tenant, raw_request


def test_websocket_echo_through_the_proxy(proxy, upstream):
    ctx, port = proxy.serve(make_tenant("acme", port=upstream.port))

    async def run() -> list:
        got = []
        async with aiohttp.ClientSession() as session, session.ws_connect(f"http://127.0.0.1:{port}/ws") as ws:
            for i in range(20):
                await ws.send_str(f"hello {i}")
                got.append((await ws.receive(timeout=5)).data)
            big = bytes(range(256)) * 4096  # 1 MiB frame: flows through back-pressure intact
            await ws.send_bytes(big)
            echoed = await ws.receive(timeout=10)
            got.append(echoed.data == big)
        return got

    got = asyncio.run(run())
    assert got[:20] == [f"upstream:hello {i}" for i in range(20)]
    assert got[20] is True
    assert ctx.counters.requests_by_class["1xx"] == 1  # the 101


def test_refused_upgrade_is_an_ordinary_response_and_closes(proxy, upstream):
    _, port = proxy.serve(make_tenant("acme", port=upstream.port))
    data = raw_request(
        port,
        b"GET /echo HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
    )
    head = data.split(b"\r\n\r\n", 1)[0]
    assert head.startswith(b"HTTP/1.1 200 ")
    assert b"Connection: close" in head
