"""Connection handling: keep-alive both sides, pipelining, HTTP/1.0, bodiless responses, drain."""

from __future__ import annotations

import asyncio
import json
import socket
import time

import aiohttp
from proxy_harness import curl, make_tenant, raw_request, split_responses

from nsproxy_appliance.model import Limits


def test_upstream_connections_are_reused_across_client_connections(proxy, upstream):
    ctx, port = proxy.serve(make_tenant("acme", port=upstream.port))
    urls = [f"http://127.0.0.1:{port}/echo?{i}" for i in range(20)]
    for _ in range(3):  # three client connections, sequentially
        result = curl(*urls, "-o", "/dev/null")
        assert result.returncode == 0, result.stderr
    assert upstream.requests == 60
    assert len(upstream.peers) == 1  # one pooled upstream connection served all 60 requests
    assert ctx.pool.opened == 1


def test_concurrent_clients_share_a_bounded_pool(proxy, upstream):
    ctx, port = proxy.serve(make_tenant("acme", port=upstream.port))

    async def run() -> list[int]:
        async with aiohttp.ClientSession() as session:

            async def one(i: int) -> int:
                async with session.get(f"http://127.0.0.1:{port}/echo?{i}") as resp:
                    await resp.read()
                    return resp.status

            statuses = []
            for _ in range(5):
                statuses += await asyncio.gather(*(one(i) for i in range(10)))
            return statuses

    assert asyncio.run(run()) == [200] * 50
    assert len(upstream.peers) <= 10
    assert ctx.counters.requests_by_class["2xx"] == 50


def test_pipelined_requests_are_answered_in_order(proxy, upstream):
    _, port = proxy.serve(make_tenant("acme", port=upstream.port))
    # The first request is slow upstream: later answers must still wait for it.
    requests = b"GET /sleep/0.3 HTTP/1.1\r\nHost: a\r\n\r\n" + b"".join(
        b"GET /echo/%d HTTP/1.1\r\nHost: a\r\n\r\n" % i for i in range(5)
    )
    requests += b"POST /echo/body HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello"
    requests += b"GET /echo/last HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"
    responses = split_responses(raw_request(port, requests))
    assert [status for status, _, _ in responses] == [200] * 8
    assert responses[0][2] == b"slept\n"
    paths = [json.loads(body)["path"] for _, _, body in responses[1:]]
    assert paths == ["/echo/0", "/echo/1", "/echo/2", "/echo/3", "/echo/4", "/echo/body", "/echo/last"]
    assert json.loads(responses[6][2])["body_len"] == 5


def test_http10_client_without_keep_alive_gets_a_closed_connection(proxy, upstream):
    _, port = proxy.serve(make_tenant("acme", port=upstream.port))
    data = raw_request(port, b"GET /echo HTTP/1.0\r\nHost: a\r\n\r\n")  # returns once the proxy closes
    [(status, headers, body)] = split_responses(data)
    assert status == 200
    assert headers["connection"] == "close"
    assert json.loads(body)["version"] == "1.1"  # upstream side always speaks HTTP/1.1


def test_http10_keep_alive_and_chunked_upstream_is_converted(proxy, upstream):
    _, port = proxy.serve(make_tenant("acme", port=upstream.port))
    # Keep-alive asked and possible (Content-Length): the connection stays open for a second one.
    data = raw_request(
        port,
        b"GET /echo HTTP/1.0\r\nConnection: keep-alive\r\n\r\n"
        b"GET /bytes/3000?chunked=1 HTTP/1.0\r\nConnection: keep-alive\r\n\r\n",
    )
    first_head, rest = data.split(b"\r\n\r\n", 1)
    assert b"Connection: keep-alive" in first_head
    length_line = next(ln for ln in first_head.split(b"\r\n") if ln.lower().startswith(b"content-length"))
    length = int(length_line.split(b":")[1])
    second = rest[length:]
    head2, body2 = second.split(b"\r\n\r\n", 1)
    # A chunked upstream body cannot be chunked to an HTTP/1.0 client: it is sent close-delimited.
    assert b"transfer-encoding" not in head2.lower()
    assert b"Connection: close" in head2
    assert len(body2) == 3000


def test_http10_without_host_gets_one(proxy, upstream):
    _, port = proxy.serve(make_tenant("acme", port=upstream.port))
    [(status, _, body)] = split_responses(raw_request(port, b"GET /echo HTTP/1.0\r\n\r\n"))
    assert status == 200
    assert any(k.lower() == "host" for k, _ in json.loads(body)["headers"])


def test_head_204_304_have_no_body_and_keep_the_connection(proxy, upstream):
    _, port = proxy.serve(make_tenant("acme", port=upstream.port))
    data = raw_request(
        port,
        b"HEAD /echo/head HTTP/1.1\r\nHost: a\r\n\r\n"
        b"GET /status/204 HTTP/1.1\r\nHost: a\r\n\r\n"
        b"GET /status/304 HTTP/1.1\r\nHost: a\r\n\r\n"
        b"GET /echo/after HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
    )
    parts = data.split(b"\r\n\r\n")
    assert parts[0].startswith(b"HTTP/1.1 200 ")
    assert b"Content-Length: " in parts[0]
    assert parts[1].startswith(b"HTTP/1.1 204 ")
    assert parts[2].startswith(b"HTTP/1.1 304 ")
    assert parts[3].startswith(b"HTTP/1.1 200 ")
    assert json.loads(parts[4])["path"] == "/echo/after"  # nothing leaked between the responses
    assert len(upstream.peers) == 1  # and the upstream connection survived the HEAD


def test_body_sent_after_a_head_response_is_dropped_with_its_connection(proxy, upstream):
    # This aiohttp route streams its body even for HEAD (an upstream bug): the bytes must not reach the
    # client as a response, and the connection that carried them must not be reused.
    _, port = proxy.serve(make_tenant("acme", port=upstream.port))
    data = raw_request(
        port,
        b"HEAD /bytes/5000 HTTP/1.1\r\nHost: a\r\n\r\nGET /echo/after HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
    )
    head, rest = data.split(b"\r\n\r\n", 1)  # the HEAD response: a head only
    assert head.startswith(b"HTTP/1.1 200 ") and b"Content-Length: 5000" in head
    [(status, _, body)] = split_responses(rest)
    assert status == 200 and json.loads(body)["path"] == "/echo/after"
    assert len(upstream.peers) == 2


def test_idle_keep_alive_connection_is_closed_after_idle_timeout(proxy, upstream):
    _, port = proxy.serve(make_tenant("acme", port=upstream.port, limits=Limits(idle_timeout=0.3)))
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(b"GET /echo HTTP/1.1\r\nHost: a\r\n\r\n")
        start = time.monotonic()
        data = b""
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
        elapsed = time.monotonic() - start
    assert data.startswith(b"HTTP/1.1 200 ")
    assert 0.2 < elapsed < 4.5  # closed by the idle timer, not by the 5 s client timeout


def _read_to_eof(sock: socket.socket) -> bytes:
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    return data


def test_drain_finishes_the_in_flight_request_then_closes(proxy, upstream):
    """Draining: a request in flight is answered (Connection: close); a kept-alive idle connection
    closes at once; one accepted whose first request has not arrived yet gets that request served
    (its client already sent it, as far as it knows)."""
    ctx, port = proxy.serve(make_tenant("acme", port=upstream.port))
    with (
        socket.create_connection(("127.0.0.1", port), timeout=5) as busy,
        socket.create_connection(("127.0.0.1", port), timeout=5) as idle,
        socket.create_connection(("127.0.0.1", port), timeout=5) as fresh,
    ):
        idle.sendall(b"GET /echo HTTP/1.1\r\nHost: a\r\n\r\n")
        assert idle.recv(65536).startswith(b"HTTP/1.1 200 ")
        busy.sendall(b"GET /sleep/0.3 HTTP/1.1\r\nHost: a\r\n\r\n")
        deadline = time.monotonic() + 5
        while len(ctx.connections) < 3 or not any(c._active for c in list(ctx.connections)):
            assert time.monotonic() < deadline
            time.sleep(0.01)
        proxy.call_sync(lambda: [c.begin_drain() for c in list(ctx.connections)])
        assert idle.recv(100) == b""  # the idle connection closed at once
        fresh.sendall(b"GET /echo HTTP/1.1\r\nHost: a\r\n\r\n")
        [(fresh_status, fresh_headers, _)] = split_responses(_read_to_eof(fresh))
        data = _read_to_eof(busy)
    [(status, headers, body)] = split_responses(data)
    assert status == 200 and body == b"slept\n"
    assert headers["connection"] == "close"
    assert fresh_status == 200 and fresh_headers["connection"] == "close"


def test_request_on_a_pooled_connection_the_upstream_dropped_is_retried_once(proxy):
    from proxy_harness import read_head, serve_raw

    connections = []

    async def one_request_per_connection(reader, writer) -> None:
        connections.append(writer)
        await read_head(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nok\n")  # keep-alive...
        await writer.drain()
        await read_head(reader)  # ...but the next request on it finds the connection closing
        writer.transport.abort()

    _, port = proxy.serve(make_tenant("acme", port=serve_raw(proxy, one_request_per_connection)))
    result = curl(f"http://127.0.0.1:{port}/a", f"http://127.0.0.1:{port}/b")
    assert result.returncode == 0, result.stderr
    assert result.stdout == b"ok\nok\n"
    assert len(connections) == 2  # the second request went out again on a fresh connection
