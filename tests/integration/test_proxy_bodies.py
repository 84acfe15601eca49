"""Body framing through the proxy: chunked both ways, close-delimited, Expect: 100-continue."""

from __future__ import annotations

import asyncio
import hashlib
import json
import socket
import subprocess

import aiohttp
from proxy_harness import make_tenant, raw_request, read_head, serve_raw, split_responses


def test_chunked_request_body_is_streamed_and_rechunked(proxy, upstream):
    _, port = proxy.serve(make_tenant("acme", port=upstream.port))
    chunks = [b"a" * 10, b"b" * 70000, b"c"]
    body = b"".join(b"%x\r\n%s\r\n" % (len(c), c) for c in chunks) + b"0\r\nX-Trailer: t\r\n\r\n"
    request = b"POST /upload HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n" + body
    [(status, _, resp)] = split_responses(raw_request(port, request))
    got = json.loads(resp)
    assert status == 200
    assert got["chunked"] is True  # still chunked towards the upstream
    assert got["size"] == sum(map(len, chunks))
    assert got["sha256"] == hashlib.sha256(b"".join(chunks)).hexdigest()


def test_chunked_response_reaches_the_client_chunked(proxy, upstream):
    _, port = proxy.serve(make_tenant("acme", port=upstream.port))
    data = raw_request(port, b"GET /bytes/200000?chunked=1 HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
    head = data.split(b"\r\n\r\n", 1)[0].lower()
    assert b"transfer-encoding: chunked" in head
    [(status, _, body)] = split_responses(data)
    assert status == 200 and body == (bytes(range(256)) * 1024)[:200000]


def test_close_delimited_response_is_chunked_for_http11_clients(proxy):
    async def old_server(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_head(reader)
        writer.write(b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\n" + b"until-close " * 1000)
        await writer.drain()
        writer.close()

    _, port = proxy.serve(make_tenant("acme", port=serve_raw(proxy, old_server)))
    data = raw_request(
        port, b"GET /1 HTTP/1.1\r\nHost: a\r\n\r\nGET /2 HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"
    )
    responses = split_responses(data)
    # The client connection survived the first close-delimited body: it was re-framed as chunked.
    assert [(s, h.get("transfer-encoding"), b) for s, h, b in responses] == [
        (200, "chunked", b"until-close " * 1000)
    ] * 2


def test_close_delimited_response_stays_close_delimited_for_http10(proxy):
    async def old_server(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_head(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nraw body")
        writer.close()

    _, port = proxy.serve(make_tenant("acme", port=serve_raw(proxy, old_server)))
    data = raw_request(port, b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
    head, body = data.split(b"\r\n\r\n", 1)
    assert b"Connection: close" in head and b"Transfer-Encoding" not in head
    assert body == b"raw body"


def test_expect_100_continue_is_relayed(proxy, upstream):
    _, port = proxy.serve(make_tenant("acme", port=upstream.port))
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(b"POST /upload HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n")
        interim = sock.recv(65536)
        # The upstream's 100 arrives before any body byte was sent.
        assert interim.startswith(b"HTTP/1.1 100 Continue\r\n"), interim
        sock.sendall(b"hello")
        data = interim.split(b"\r\n\r\n", 1)[1]
        while b'"sha256"' not in data:
            chunk = sock.recv(65536)
            assert chunk
            data += chunk
    assert b'"size": 5' in data
    assert b"HTTP/1.1 200 OK" in data


def test_curl_upload_with_expect_100_continue(proxy, upstream):
    _, port = proxy.serve(make_tenant("acme", port=upstream.port))
    payload = b"z" * 2_000_000
    proc = subprocess.run(
        [
            "curl",
            "-sS",
            "-v",
            "--max-time",
            "20",
            "-H",
            "Expect: 100-continue",
            "--data-binary",
            "@-",
            f"http://127.0.0.1:{port}/upload",
        ],
        input=payload,
        capture_output=True,
        timeout=30,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert b"HTTP/1.1 100 Continue" in proc.stderr
    assert json.loads(proc.stdout)["size"] == len(payload)


def test_interim_responses_are_not_sent_to_http10_clients(proxy):
    async def early(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_head(reader)
        writer.write(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        await writer.drain()

    _, port = proxy.serve(make_tenant("acme", port=serve_raw(proxy, early)))
    data = raw_request(port, b"GET / HTTP/1.0\r\n\r\n")
    assert data.startswith(b"HTTP/1.1 200 OK\r\n")
    assert data.endswith(b"\r\n\r\nok")


def test_aiohttp_client_streams_a_body_both_ways(proxy, upstream):
    _, port = proxy.serve(make_tenant("acme", port=upstream.port))

    async def gen():
        for i in range(50):
            yield bytes([i]) * 10000

    async def run() -> tuple[dict, int]:
        async with aiohttp.ClientSession() as session:
            async with session.post(f"http://127.0.0.1:{port}/upload", data=gen()) as resp:
                up = await resp.json()
            async with session.get(f"http://127.0.0.1:{port}/bytes/3000000") as resp:
                size = 0
                async for chunk in resp.content.iter_any():
                    size += len(chunk)
            return up, size

    up, size = asyncio.run(run())
    assert up["size"] == 500000 and up["chunked"] is True
    assert size == 3000000
