"""The head nsproxy sends a client for an upstream's response, and how it frames the body.

Works on the raw head bytes (llhttp has already validated them: CRLF line ends, token names with
no space before the colon, no obs-fold), so a response head is neither split into Python header
objects nor rebuilt: one lower-cased copy is searched for the few names that matter here (framing
and hop-by-hop) and only their lines are cut out. Pure functions (tests/unit/test_response_head.py).
"""

from __future__ import annotations

import re
from typing import NamedTuple

from .framing import CHUNKED, BodyMode, transfer_codings

# A header line of one of the names that matter: "\r\n" name ":" value, up to the next "\r\n".
_SPECIAL_LINE = re.compile(
    rb"\r\n(connection|keep-alive|proxy-connection|proxy-authenticate|te|trailer|transfer-encoding|upgrade"
    rb"|content-length|http2-settings):[ \t]*([^\r]*)"
)
_HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"proxy-authenticate",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
        b"http2-settings",
    }
)
_ANY_LINE = re.compile(rb"\r\n([^:\r]+):")
_CONTROL = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")  # CTLs but HTAB (RFC 9112 §4: reason-phrase)
_NOMINATES_NOTHING = frozenset({b"close", b"keep-alive", b"upgrade"})
HTTP11 = b"HTTP/1.1"


class BadResponse(Exception):
    """The upstream's response cannot be relayed with correct framing (answered 502)."""


class ResponseHead(NamedTuple):
    head: bytes  # the complete head for the client, ending in CRLF CRLF
    mode: BodyMode
    keep_alive: bool  # the client connection stays open after this response
    until_eof: bool  # the upstream ends this body by closing its connection
    upgrade: bytes | None  # the Upgrade value of a 101


def _cut(raw: bytes, spans: list[tuple[int, int]]) -> list[bytes]:
    parts, at = [], 0
    for start, end in spans:
        parts.append(raw[at:start])
        at = end
    parts.append(raw[at:])
    return parts


def rewrite_response(raw: bytes, status: int, *, client_http11: bool, keep_alive: bool, bodiless: bool) -> ResponseHead:
    """`raw`: the response head as received, without its final CRLF CRLF. `keep_alive`: what the
    client asked for (and the proxy allows). `bodiless`: the request was HEAD."""
    line_end = raw.find(b"\r\n")
    if _CONTROL.search(raw, 0, line_end if line_end >= 0 else len(raw)):
        raise BadResponse("control characters in the status line")  # llhttp lets them pass in the reason
    lower = raw.lower()
    spans: list[tuple[int, int]] = []
    has_length = False
    te = upgrade = None
    nominated: set[bytes] = set()
    for m in _SPECIAL_LINE.finditer(lower):
        name = m.group(1)
        if name == b"content-length":
            has_length = True
            continue
        spans.append(m.span())
        if name == b"transfer-encoding":
            value = raw[m.start(2) : m.end(2)].rstrip(b" \t")
            te = value if te is None else te + b"," + value
        elif name == b"connection":
            value = m.group(2).rstrip(b" \t")
            if value not in _NOMINATES_NOTHING:
                nominated |= {t.strip(b" \t") for t in value.split(b",")} - _NOMINATES_NOTHING - {b""}
        elif name == b"upgrade":
            upgrade = raw[m.start(2) : m.end(2)].rstrip(b" \t")
    if nominated:
        nominated -= {b"content-length", b"transfer-encoding"}  # framing is never removable
        spans += [(m.start(), _line_end(raw, m.end())) for m in _ANY_LINE.finditer(lower) if m.group(1) in nominated]
        spans = sorted(set(spans))
    parts = _cut(raw, spans)
    if not raw.startswith(HTTP11):  # an HTTP/1.0 upstream: the client talks to nsproxy, an HTTP/1.1 server
        parts[0] = HTTP11 + parts[0][8:]

    until_eof = False
    if status == 101:
        if upgrade is None:
            raise BadResponse("101 without Upgrade")
        parts.append(b"\r\nConnection: Upgrade\r\nUpgrade: " + upgrade + b"\r\n\r\n")
        return ResponseHead(b"".join(parts), BodyMode.NONE, True, False, upgrade)
    if bodiless or status < 200 or status in (204, 304):
        mode = BodyMode.NONE
    elif has_length:
        mode = BodyMode.LENGTH
    else:
        codings: tuple[bytes, ...] = ()
        if te is None:
            until_eof = True
        else:
            parsed = transfer_codings(te)
            if parsed is None or parsed.count(CHUNKED) > 1 or CHUNKED in parsed[:-1]:
                raise BadResponse(f"unsupported Transfer-Encoding {te!r}")
            until_eof = parsed[-1] != CHUNKED  # RFC 9112 §6.3: not chunked last: read until close
            codings = parsed if not until_eof else (*parsed, CHUNKED)
        if client_http11:
            mode = BodyMode.CHUNKED
            parts.append(b"\r\nTransfer-Encoding: " + b", ".join(codings or (CHUNKED,)))
        elif len(codings) > 1:  # gzip etc. cannot be carried to an HTTP/1.0 client
            raise BadResponse("transfer codings for an HTTP/1.0 client")
        else:
            mode = BodyMode.UNTIL_CLOSE
            keep_alive = False
    if status >= 200:
        if not keep_alive:
            parts.append(b"\r\nConnection: close")
        elif not client_http11:
            parts.append(b"\r\nConnection: keep-alive")
    parts.append(b"\r\n\r\n")
    return ResponseHead(b"".join(parts), mode, keep_alive, until_eof, None)


def _line_end(raw: bytes, at: int) -> int:
    end = raw.find(b"\r\n", at)
    return len(raw) if end < 0 else end


def interim_head(raw: bytes) -> bytes:
    """A 1xx head (100 Continue, 103 Early Hints) for an HTTP/1.1 client, hop-by-hop lines cut."""
    spans = [m.span() for m in _SPECIAL_LINE.finditer(raw.lower()) if m.group(1) in _HOP_BY_HOP]
    parts = _cut(raw, spans)
    if not raw.startswith(HTTP11):
        parts[0] = HTTP11 + parts[0][8:]
    parts.append(b"\r\n\r\n")
    return b"".join(parts)
