"""Error statuses of the proxy: upstream failures, limits, malformed and smuggling requests."""

from __future__ import annotations

import asyncio
import socket
import time

import pytest
from proxy_harness import curl, listening_socket, make_tenant, raw_request, read_head, serve_raw, split_responses

from nsproxy_appliance.model import Limits


def _one(data: bytes) -> tuple[int, dict[str, str], bytes]:
    responses = split_responses(data)
    assert len(responses) == 1, data
    return responses[0]


def _assert_error(data: bytes, status: int) -> None:
    got, headers, body = _one(data)
    assert got == status, data
    assert headers["connection"] == "close"
    assert len(body) < 100  # small


def test_upstream_refused_is_502(proxy):
    holder = socket.socket()  # bound, not listening: connections are refused, the port stays ours
    holder.bind(("127.0.0.1", 0))
    try:
        ctx, port = proxy.serve(make_tenant("acme", port=holder.getsockname()[1]))
        _assert_error(raw_request(port, b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"), 502)
        assert ctx.counters.upstream_errors == {"refused": 1}
        assert ctx.counters.requests_by_class["5xx"] == 1
    finally:
        holder.close()


def test_upstream_closing_without_response_is_502(proxy):
    async def hang_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_head(reader)
        writer.transport.abort()  # reset

    ctx, port = proxy.serve(make_tenant("acme", port=serve_raw(proxy, hang_up)))
    _assert_error(raw_request(port, b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"), 502)
    assert sum(ctx.counters.upstream_errors.values()) == 1


def test_upstream_connect_timeout_is_504(proxy):
    full = socket.socket()  # accept queue of one, filled: further SYNs are dropped, connect hangs
    full.bind(("127.0.0.1", 0))
    full.listen(0)
    filler = socket.create_connection(full.getsockname(), timeout=2)
    try:
        limits = Limits(connect_timeout=0.3)
        ctx, port = proxy.serve(make_tenant("acme", port=full.getsockname()[1], limits=limits))
        _assert_error(raw_request(port, b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"), 504)
        assert ctx.counters.upstream_errors == {"connect_timeout": 1}
    finally:
        filler.close()
        full.close()


def test_upstream_read_timeout_is_504(proxy):
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_head(reader)
        await asyncio.sleep(30)

    limits = Limits(read_timeout=0.3)
    ctx, port = proxy.serve(make_tenant("acme", port=serve_raw(proxy, silent), limits=limits))
    start = time.monotonic()
    _assert_error(raw_request(port, b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"), 504)
    assert time.monotonic() - start < 5
    assert ctx.counters.upstream_errors == {"timeout": 1}


def test_upstream_dying_mid_body_truncates_the_response(proxy):
    async def truncate(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_head(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n" + b"x" * 10)
        await writer.drain()
        writer.transport.abort()

    _, port = proxy.serve(make_tenant("acme", port=serve_raw(proxy, truncate)))
    result = curl(f"http://127.0.0.1:{port}/")
    assert result.returncode != 0  # the client sees a broken response, not a complete one


def test_malformed_request_is_400_and_closes(proxy, upstream):
    _, port = proxy.serve(make_tenant("acme", port=upstream.port))
    _assert_error(raw_request(port, b"\x16\x03\x01\x02\x00garbage\r\n\r\n"), 400)
    _assert_error(raw_request(port, b"GET /a b c HTTP/1.1\r\nHost: a\r\n\r\n"), 400)
    assert upstream.requests == 0


SMUGGLING = {
    "content-length-with-transfer-encoding": b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 6\r\n"
    b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\nX",
    "differing-duplicate-content-length": b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\n"
    b"Content-Length: 6\r\n\r\nXGET /",
    "bad-chunk-size": b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5g\r\nhello\r\n0\r\n\r\n",
    "chunk-size-overflow": b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"fffffffffffffffff1\r\nhello\r\n0\r\n\r\n",
    "obs-fold": b"GET / HTTP/1.1\r\nHost: a\r\nX-Folded: one\r\n two\r\n\r\n",
    "space-before-colon": b"GET / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding : chunked\r\n\r\n",
    "invalid-header-name": b"GET / HTTP/1.1\r\nHost: a\r\nX(bad): 1\r\n\r\n",
    "cr-in-value": b"GET / HTTP/1.1\r\nHost: a\r\nX-A: b\rX-Injected: 1\r\n\r\n",
    "nul-in-value": b"GET / HTTP/1.1\r\nHost: a\r\nX-A: b\x00c\r\n\r\n",
    "transfer-encoding-not-chunked-last": b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, gzip\r\n\r\n",
    "bare-lf": b"GET / HTTP/1.1\nHost: a\n\n",
    "duplicate-host": b"GET / HTTP/1.1\r\nHost: a\r\nhost: b\r\n\r\n",
}


@pytest.mark.parametrize("shape", sorted(SMUGGLING))
def test_smuggling_shapes_are_400_and_never_reach_the_upstream(proxy, upstream, shape):
    _, port = proxy.serve(make_tenant("acme", port=upstream.port))
    _assert_error(raw_request(port, SMUGGLING[shape]), 400)
    assert upstream.requests == 0


def test_headers_too_large_is_431(proxy, upstream):
    _, port = proxy.serve(make_tenant("acme", port=upstream.port, limits=Limits(max_header_bytes=2048)))
    _assert_error(raw_request(port, b"GET / HTTP/1.1\r\nHost: a\r\nX-Big: " + b"a" * 3000 + b"\r\n\r\n"), 431)
    many = b"".join(b"X-H%d: %s\r\n" % (i, b"v" * 50) for i in range(60))
    _assert_error(raw_request(port, b"GET / HTTP/1.1\r\nHost: a\r\n" + many + b"\r\n"), 431)
    # A head that never ends is refused as soon as it passes the limit, not at the timeout.
    start = time.monotonic()
    _assert_error(raw_request(port, b"GET / HTTP/1.1\r\nHost: a\r\nX-Endless: " + b"a" * 5000), 431)
    assert time.monotonic() - start < 5
    assert upstream.requests == 0


def test_body_over_limit_is_413(proxy, upstream):
    ctx, port = proxy.serve(make_tenant("acme", port=upstream.port, limits=Limits(max_body_bytes=1000)))
    _assert_error(raw_request(port, b"POST /echo HTTP/1.1\r\nHost: a\r\nContent-Length: 1001\r\n\r\n"), 413)
    chunk = b"200\r\n" + b"x" * 512 + b"\r\n"
    head = b"POST /echo HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
    _assert_error(raw_request(port, head + chunk + chunk + b"0\r\n\r\n"), 413)
    # At the limit is fine.
    result = curl("--data-binary", "x" * 1000, f"http://127.0.0.1:{port}/echo")
    assert b'"body_len": 1000' in result.stdout
    assert ctx.counters.requests_by_class["4xx"] == 2


def test_slowloris_head_is_408_and_closes(proxy, upstream):
    _, port = proxy.serve(make_tenant("acme", port=upstream.port, limits=Limits(header_timeout=0.4)))
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        start = time.monotonic()
        sock.sendall(b"GET / HTTP/1.1\r\n")
        data = b""
        for piece in (b"Host: a\r\n", b"X-1: 1\r\n", b"X-2: 2\r\n", b"X-3: 3\r\n", b"X-4: 4\r\n"):
            try:
                sock.sendall(piece)  # trickling bytes does not extend the deadline
            except OSError:
                break
            time.sleep(0.15)
        while chunk := sock.recv(65536):
            data += chunk
        elapsed = time.monotonic() - start
    _assert_error(data, 408)
    assert elapsed < 3
    assert upstream.requests == 0


def test_silent_connection_is_closed_after_header_timeout(proxy, upstream):
    _, port = proxy.serve(make_tenant("acme", port=upstream.port, limits=Limits(header_timeout=0.3)))
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    _assert_error(data, 408)


def test_tenant_at_its_connection_limit_does_not_affect_another(proxy, upstream):
    busy_ctx, busy_port = proxy.serve(make_tenant("busy", port=upstream.port, limits=Limits(max_connections=2)))
    other_ctx, other_port = proxy.serve(make_tenant("other", port=upstream.port, limits=Limits(max_connections=2)))
    held = [socket.create_connection(("127.0.0.1", busy_port), timeout=5) for _ in range(2)]
    try:
        deadline = time.monotonic() + 5
        while busy_ctx.counters.active_connections < 2:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        _assert_error(raw_request(busy_port, b"GET /echo HTTP/1.1\r\nHost: a\r\n\r\n"), 503)
        assert busy_ctx.counters.rejected_connections == 1
        for _ in range(5):  # the other tenant is served normally, meanwhile
            result = curl(f"http://127.0.0.1:{other_port}/echo")
            assert result.returncode == 0 and b"id-other" in result.stdout
        assert other_ctx.counters.rejected_connections == 0
    finally:
        for sock in held:
            sock.close()
    # Once the busy tenant's connections close it serves again.
    deadline = time.monotonic() + 5
    while busy_ctx.counters.active_connections:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    assert b"id-busy" in curl(f"http://127.0.0.1:{busy_port}/echo").stdout


def test_error_after_pipelined_requests_answers_those_first(proxy, upstream):
    _, port = proxy.serve(make_tenant("acme", port=upstream.port))
    requests = b"GET /sleep/0.2 HTTP/1.1\r\nHost: a\r\n\r\nGET /echo HTTP/1.1\r\nHost: a\r\n\r\nBAD\x01\r\n\r\n"
    data = raw_request(port, requests)
    statuses = [s for s, _, _ in split_responses(data)]
    assert statuses == [200, 200, 400]


def test_listening_socket_helper_binds_loopback():
    sock = listening_socket()
    try:
        assert sock.getsockname()[0] == "127.0.0.1"
    finally:
        sock.close()


def test_malformed_upstream_response_is_502(proxy):
    async def garbage(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_head(reader)
        writer.write(b"SPDY/9 what\r\n\r\n")
        await writer.drain()

    ctx, port = proxy.serve(make_tenant("acme", port=serve_raw(proxy, garbage)))
    _assert_error(raw_request(port, b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"), 502)
    assert ctx.counters.upstream_errors == {"bad_response": 1}


def test_unsupported_http_version_is_505(proxy, upstream):
    _, port = proxy.serve(make_tenant("acme", port=upstream.port))
    _assert_error(raw_request(port, b"GET / HTTP/2.0\r\nHost: a\r\n\r\n"), 505)
    assert upstream.requests == 0
