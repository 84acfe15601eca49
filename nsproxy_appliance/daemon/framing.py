"""Message framing rules shared by both directions: transfer codings, body modes, error responses.

Pure functions on bytes (unit-tested in tests/unit/test_framing.py). The proxy re-frames every
message it forwards, so the only framing an upstream or a client ever sees from nsproxy is the
one nsproxy itself used to read the body (RFC 9112 §6).
"""

from __future__ import annotations

from enum import IntEnum

# Transfer codings nsproxy understands well enough to forward (IANA HTTP Transfer Coding Registry,
# minus "trailers", which is a TE value, not a coding). Anything else is refused: a coding the
# proxy does not know is one a strict and a lenient peer may frame differently.
KNOWN_CODINGS = frozenset({b"chunked", b"gzip", b"deflate", b"compress", b"x-gzip", b"x-compress"})
CHUNKED = b"chunked"
_OWS = b" \t"  # RFC 9110 §5.6.3: optional whitespace is SP / HTAB, nothing else


def transfer_codings(value: bytes) -> tuple[bytes, ...] | None:
    """The codings of a Transfer-Encoding value, lower-cased; None if any element is not a bare known
    coding (parameters, empty elements, unknown names, whitespace other than SP/HTAB)."""
    if value == CHUNKED:  # nearly every message: skip the split
        return (CHUNKED,)
    codings = []
    for element in value.split(b","):
        coding = element.strip(_OWS).lower()
        if coding not in KNOWN_CODINGS:
            return None
        codings.append(coding)
    return tuple(codings)


def request_codings(value: bytes) -> bytes | None:
    """The Transfer-Encoding to forward for a request, or None when the request must be refused.

    RFC 9112 §6.3: a request's codings must end in exactly one chunked; anything else leaves the
    body length undefined, so a request carrying it is answered 400 and the connection closed.
    """
    codings = transfer_codings(value)
    if codings is None or codings[-1] != CHUNKED or codings.count(CHUNKED) != 1:
        return None
    return b", ".join(codings)


class BodyMode(IntEnum):
    """How the proxy frames a response body towards the client."""

    NONE = 0  # HEAD, 1xx, 204, 304: no body whatever the headers say
    LENGTH = 1  # Content-Length: bytes pass through as they come
    CHUNKED = 2  # re-chunked by the proxy (upstream chunked or close-delimited, client HTTP/1.1)
    UNTIL_CLOSE = 3  # close-delimited towards an HTTP/1.0 client; the connection closes after it


REASONS = {
    400: b"Bad Request",
    405: b"Method Not Allowed",
    408: b"Request Timeout",
    413: b"Content Too Large",
    431: b"Request Header Fields Too Large",
    502: b"Bad Gateway",
    503: b"Service Unavailable",
    504: b"Gateway Timeout",
    505: b"HTTP Version Not Supported",
}

_ERROR_RESPONSES: dict[tuple[int, bool], bytes] = {}


def error_response(status: int, *, head_only: bool = False) -> bytes:
    """A small complete plain-text response that closes the connection (no body for a HEAD)."""
    key = (status, head_only)
    cached = _ERROR_RESPONSES.get(key)
    if cached is not None:
        return cached
    reason = REASONS.get(status, b"Error")
    body = reason + b"\n"
    extra = b"Allow: GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS, TRACE\r\n" if status == 405 else b""
    response = b"HTTP/1.1 %d %s\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n%sConnection: close\r\n\r\n%s" % (
        status,
        reason,
        len(body),
        extra,
        b"" if head_only else body,
    )
    _ERROR_RESPONSES[key] = response
    return response


def chunk(data: bytes) -> tuple[bytes, bytes, bytes]:
    """The pieces of one chunk of the chunked coding (for writelines/join, without copying data)."""
    return (b"%x\r\n" % len(data), data, b"\r\n")


LAST_CHUNK = b"0\r\n\r\n"
