"""The suite's own referee: the strict RFC 9112 parser and the recording upstream catch what they must.

If these fail, every other hostile test could pass for the wrong reason (a lenient referee).
Socket-free for the parser; the recorder is checked over real loopback sockets.
"""

from __future__ import annotations

import socket

import pytest
from client import exchange
from recording_upstream import Raw, recording_upstream
from strict_http import parse_all

GOOD = b"GET / HTTP/1.1\r\nHost: h\r\nX-Tenant-ID: t\r\n\r\n"
GZIP_CHUNKED_EXT_TRAILER = (
    b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: gzip, chunked\r\n\r\n"
    + b'5;a="b c"\r\nhello\r\n0\r\nT: 1\r\n\r\n'
)


@pytest.mark.parametrize(
    "data",
    [
        GOOD,
        b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\n\r\nhello",
        GZIP_CHUNKED_EXT_TRAILER,
        b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding:\tchunked\r\n\r\n0005\r\nhello\r\n0\r\n\r\n",
        b"GET / HTTP/1.0\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: h\r\nX-A: caf\xe9\tb\r\n\r\n",
    ],
    ids=["get", "content-length", "gzip-chunked-ext-trailer", "htab-te-leading-zeros", "http10-no-host", "obs-text"],
)
def test_valid_requests_parse(data: bytes) -> None:
    p = parse_all("request", data)
    assert p.violation is None
    assert len(p.messages) == 1 and p.messages[0].complete


def test_chunked_body_and_trailers_are_decoded() -> None:
    p = parse_all(
        "request", b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n3;x\r\nabc\r\n0\r\nT: 1\r\n\r\n"
    )
    assert p.messages[0].body == b"abc"
    assert p.messages[0].trailers == [("T", "1")]


@pytest.mark.parametrize(
    "data",
    [
        b"GET / HTTP/1.1\nHost: h\n\n",
        b"GET / HTTP/1.1\r\nHost: h\rX: 1\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: h\r\nX: a\r\n b\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost : h\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: h\r\nX: a\x00\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: h\r\nX: a\x7f\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: h\r\nX\xe9: a\r\n\r\n",
        b"GET  / HTTP/1.1\r\nHost: h\r\n\r\n",
        b"GET / HTTP/2.0\r\nHost: h\r\n\r\n",
        b"GET / HTTP/1.1\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\nhello",
        b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: +5\r\n\r\nhello",
        b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: h\r\nContent_Length: 5\r\n\r\nhello",
        b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked, gzip\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: gzip\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked;x\r\n\r\n0\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: ,chunked\r\n\r\n0\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n5 \r\nhello\r\n0\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n0x5\r\nhello\r\n0\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhelloXX",
        b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n5\nhello\r\n0\r\n\r\n",
        b'POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n5;a="b\rc"\r\nhello\r\n0\r\n\r\n',
        b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n" + b"f" * 20 + b"\r\n",
        b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n0\r\nT: a\r\n b\r\n\r\n",
    ],
    ids=lambda d: repr(d[:70]),
)
def test_malformed_requests_are_violations(data: bytes) -> None:
    assert parse_all("request", data).violation is not None


@pytest.mark.parametrize(
    ("data", "method", "framing"),
    [
        (b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok", "GET", "length"),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\nzzz", "GET", "close"),
        (b"HTTP/1.1 200 OK\r\n\r\nuntil close", "GET", "close"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n", "HEAD", "none"),
        (b"HTTP/1.1 204 No Content\r\n\r\n", "GET", "none"),
    ],
)
def test_response_framing(data: bytes, method: str, framing: str) -> None:
    p = parse_all("response", data, method_of=lambda _i: method)
    assert p.violation is None
    assert p.messages[-1].complete and p.messages[-1].framing == framing


@pytest.mark.parametrize(
    "data",
    [
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 2\r\n\r\nok",
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\nok",
        b"HTTP/1.1 200 O\x00K\r\nContent-Length: 0\r\n\r\n",
        b"HTTP/1.1 2000 OK\r\n\r\n",
        b"HTTP/1.1 200 OK\nContent-Length: 0\n\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokHTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nabc",  # cut
        b"HTTP/1.1 204 No Content\r\nContent-Length: 3\r\n\r\nabc",
    ],
    ids=lambda d: repr(d[:60]),
)
def test_malformed_responses(data: bytes) -> None:
    p = parse_all("response", data)
    assert p.violation is not None or any(not m.complete for m in p.messages)


def test_101_switches_to_tunnel() -> None:
    p = parse_all("response", b"HTTP/1.1 101 Switching\r\nUpgrade: websocket\r\n\r\nraw bytes")
    assert p.tunnel and p.rest == b"raw bytes" and p.violation is None


def test_recorder_flags_pipelining_and_keeps_ordered_header_lists() -> None:
    with recording_upstream() as up:
        two = GOOD + b"GET /2 HTTP/1.1\r\nHost: h\r\nx-tenant-id: a\r\nX_Tenant_ID: b\r\n\r\n"

        def connect() -> socket.socket:
            return socket.create_connection(("127.0.0.1", up.port), timeout=5)

        exchange(connect, [two])
        rec = up.take()
        assert any("pipelined" in v for v in rec.violations), rec.describe()
        assert rec.requests[0].message.values("x-tenant-id") == ["t"]
        second = [s.message for s in rec.requests if s.message.target == "/2"]
        assert not second or second[0].values("x-tenant-id", fuzzy=True) == ["a", "b"]


def test_recorder_flags_unparseable_framing_and_answers_as_told() -> None:
    with recording_upstream() as up:
        up.set_responder(Raw(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhi"))

        def connect() -> socket.socket:
            return socket.create_connection(("127.0.0.1", up.port), timeout=5)

        ok = exchange(connect, [GOOD])
        assert ok.statuses == [200] and ok.finals[0].body == b"hi"
        exchange(connect, [b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: xchunked\r\n\r\n"])
        rec = up.take()
        assert len(rec.requests) == 1
        assert any("unparseable framing" in v for v in rec.violations), rec.describe()
