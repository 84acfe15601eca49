"""Framing rules shared by both directions (daemon/framing.py): transfer codings, the chunked coding,
and the error responses nsproxy answers with itself. Exact bytes: they are what goes on the wire."""

from __future__ import annotations

import pytest
from fresh_caches import fresh_dataplane_caches  # noqa: F401  (fixture)

from nsproxy_appliance.daemon.framing import (
    LAST_CHUNK,
    REASONS,
    chunk,
    error_response,
    request_codings,
    transfer_codings,
)

pytestmark = pytest.mark.usefixtures("fresh_dataplane_caches")


@pytest.mark.parametrize(
    ("value", "codings"),
    [
        (b"chunked", (b"chunked",)),
        (b"CHUNKED", (b"chunked",)),
        (b"gzip, chunked", (b"gzip", b"chunked")),
        (b" x-gzip\t,\tdeflate ,compress,x-compress ", (b"x-gzip", b"deflate", b"compress", b"x-compress")),
        (b"chunked, chunked", (b"chunked", b"chunked")),  # well-formed; whether it is acceptable is the caller's rule
        (b"", None),
        (b"chunked,", None),
        (b",chunked", None),
        (b"chunked;q=1", None),
        (b"identity", None),
        (b"\x0bchunked", None),  # whitespace other than SP / HTAB is no optional whitespace
        (b"chunked\xa0", None),
    ],
)
def test_transfer_codings(value, codings):
    assert transfer_codings(value) == codings


@pytest.mark.parametrize(
    ("value", "forwarded"),
    [
        (b"chunked", b"chunked"),
        (b"Gzip,Chunked", b"gzip, chunked"),
        (b"gzip", None),  # not chunked last: the body length is undefined
        (b"chunked, gzip", None),
        (b"chunked, chunked", None),
        (b"gzip, chunked, chunked", None),
        (b"bogus, chunked", None),
    ],
)
def test_request_codings(value, forwarded):
    assert request_codings(value) == forwarded


@pytest.mark.parametrize("status", sorted(REASONS))
def test_error_responses_are_complete_small_and_close(status):
    reason = REASONS[status]
    allow = b"Allow: GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS, TRACE\r\n" if status == 405 else b""
    head = b"HTTP/1.1 %d %s\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n%sConnection: close\r\n\r\n" % (
        status,
        reason,
        len(reason) + 1,
        allow,
    )
    assert error_response(status) == head + reason + b"\n"
    assert error_response(status, head_only=True) == head  # the answer to a HEAD has no body
    assert error_response(status) == head + reason + b"\n"  # and the two are cached apart


def test_an_unknown_status_gets_a_generic_reason():
    assert error_response(599) == (
        b"HTTP/1.1 599 Error\r\nContent-Type: text/plain\r\nContent-Length: 6\r\nConnection: close\r\n\r\nError\n"
    )


def test_error_responses_are_built_once():
    first = error_response(502)
    assert error_response(502) is first


def test_chunk_pieces():
    assert chunk(b"hello") == (b"5\r\n", b"hello", b"\r\n")
    assert b"".join(chunk(b"x" * 26)) == b"1a\r\n" + b"x" * 26 + b"\r\n"
    assert LAST_CHUNK == b"0\r\n\r\n"
