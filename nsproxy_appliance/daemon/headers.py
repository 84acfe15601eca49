"""Pure header logic of the proxy: what is forwarded, what is stripped, what is added.

No I/O here, so every rule is unit-tested on its own (tests/unit/test_http_headers.py). The
protocol in http.py calls these once per request and once per response head, so they work on
bytes and build each head with one join.

Choices (documented in docs/performance.md and the README):
- Every incoming copy of the tenant header is dropped, whatever its case, and also when it is
  spelled with underscores (X_Tenant_ID): CGI/WSGI-style servers map '_' and '-' to the same
  variable, so that spelling would spoof the tenant too. Then the header is set to the tenant id.
- X-Forwarded-For: nsproxy appends the client address it saw to the chain the client sent.
  Only the rightmost entry is written by nsproxy; everything left of it is the tenant's own claim.
- X-Forwarded-Proto and X-Forwarded-Host are replaced (nsproxy knows both for certain).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple

# Hop-by-hop headers (RFC 9110 7.6.1, plus the de-facto Proxy-Connection and Keep-Alive): they
# describe one connection and are never forwarded. Transfer-Encoding is re-applied by the proxy
# itself because it re-frames bodies.
HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
        b"proxy-authorization",
        b"proxy-authenticate",
    }
)

XFF = b"x-forwarded-for"
XFP = b"x-forwarded-proto"
XFH = b"x-forwarded-host"

# What to do with a header, by its name. Names are classified once and cached by their raw
# spelling (clients and upstreams repeat the same few), so the hot path does one dict lookup per
# header instead of lower-casing and several set lookups.
_PASS, _HOST, _CL, _TE, _EXPECT, _CONNECTION, _UPGRADE, _XFF, _DROP = range(9)
_KIND_CACHE_MAX = 1024
_REQUEST_SPECIAL = {
    b"host": _HOST,
    b"content-length": _CL,
    b"transfer-encoding": _TE,
    b"expect": _EXPECT,
    b"connection": _CONNECTION,
    b"upgrade": _UPGRADE,
    XFF: _XFF,
    XFP: _DROP,
    XFH: _DROP,
    **{name: _DROP for name in HOP_BY_HOP - {b"connection", b"transfer-encoding", b"upgrade"}},
}


# Connection tokens that need no extra work: they name headers dropped anyway (or the keep-alive
# state the proxy manages per side).
_CONNECTION_TOKENS_HANDLED = HOP_BY_HOP | {b"close"}


def normalise(name: bytes) -> bytes:
    """The form two header names share when a server could treat them as the same variable."""
    return name.lower().replace(b"_", b"-")


def _token_set(values: list[bytes]) -> frozenset[bytes]:
    return frozenset(t.strip().lower() for v in values for t in v.split(b",") if t.strip())


class HeaderValueError(ValueError):
    """A configured value (tenant id, header name) cannot be sent in an HTTP header."""


def _check_value(value: str, what: str) -> bytes:
    try:
        raw = value.encode("latin-1")
    except UnicodeEncodeError:
        raise HeaderValueError(f"{what} {value!r} is not latin-1") from None
    if any((c < 0x20 and c != 0x09) or c == 0x7F for c in raw):
        raise HeaderValueError(f"{what} {value!r} contains control characters")
    return raw


@dataclass(frozen=True)
class RequestPolicy:
    """The per-tenant constants of request rewriting, precomputed once per config generation."""

    tenant_header: bytes  # normalised name (lower case, '-' for '_')
    tenant_line: bytes  # b"X-Tenant-ID: acme\r\n", ready to append
    owned: frozenset[bytes]  # normalised names nsproxy sets itself: any incoming copy is dropped
    kinds: dict[bytes, int] = field(default_factory=dict, compare=False, repr=False)  # raw name -> _KIND

    def kind(self, name: bytes) -> int:
        """Classify a request header name (slow path; the result is cached in `kinds`)."""
        ln = name.lower()
        kind = _REQUEST_SPECIAL.get(ln)
        if kind is None:
            kind = _DROP if ln in self.owned or ln.replace(b"_", b"-") in self.owned else _PASS
        if len(self.kinds) < _KIND_CACHE_MAX:
            self.kinds[name] = kind
        return kind

    @classmethod
    def build(cls, header: str, tenant_id: str) -> RequestPolicy:
        name = _check_value(header, "tenant header")
        if not name or any(c in b' \t:()<>@,;"/[]?={}\\' for c in name):
            raise HeaderValueError(f"tenant header {header!r} is not a valid header name")
        value = _check_value(tenant_id, "tenant id")
        norm = normalise(name)
        return cls(
            tenant_header=norm,
            tenant_line=name + b": " + value + b"\r\n",
            owned=frozenset({norm, XFF, XFP, XFH}),
        )


class RequestHead(NamedTuple):
    head: bytes  # the complete head to send upstream, ending in CRLF CRLF
    content_length: int | None
    chunked: bool  # the body is chunked (re-chunked by the proxy)
    host: bytes | None


def rewrite_request(
    method: bytes,
    url: bytes,
    headers: list[tuple[bytes, bytes]],
    policy: RequestPolicy,
    client_ip: bytes,
    *,
    upgrade: bool = False,
    default_host: bytes = b"",
) -> RequestHead:
    """The head to send upstream for a client request (always HTTP/1.1, keep-alive).

    Drops hop-by-hop headers and those named in Connection, every copy of the headers nsproxy
    owns, then adds the tenant header and X-Forwarded-*. For upgrade requests Connection/Upgrade
    are kept (as `Connection: Upgrade`). Raises ValueError for a Content-Length that is not a
    number (llhttp has already rejected the other malformed shapes).
    """
    kinds = policy.kinds
    out = [method, b" ", url, b" HTTP/1.1\r\n"]
    host = xff = te = upgrade_value = None
    content_length = None
    named: frozenset[bytes] | None = None
    for name, value in headers:
        kind = kinds.get(name)
        if kind is None:
            kind = policy.kind(name)
        if kind == _PASS:
            out += (name, b": ", value, b"\r\n")
        elif kind == _DROP:
            continue
        elif kind == _HOST:
            if host is not None:
                raise ValueError("more than one Host header")
            host = value
            out += (name, b": ", value, b"\r\n")
        elif kind == _CL:
            content_length = int(value)
            out += (name, b": ", value, b"\r\n")
        elif kind == _TE:
            te = value
        elif kind == _EXPECT:
            out += (name, b": ", value, b"\r\n")
        elif kind == _CONNECTION:
            extra = _token_set([value]) - _CONNECTION_TOKENS_HANDLED
            if extra:
                named = extra if named is None else named | extra
        elif kind == _UPGRADE:
            upgrade_value = value
        elif kind == _XFF:
            xff = value if xff is None else xff + b", " + value
    if named:
        # Rare: Connection names end-to-end-looking headers; drop those too.
        out = out[:4] + [
            part
            for name, value in headers
            if kinds.get(name) in (_PASS, _HOST, _CL, _EXPECT) and name.lower() not in named
            for part in (name, b": ", value, b"\r\n")
        ]

    chunked = te is not None
    if chunked:
        out += (b"Transfer-Encoding: ", te, b"\r\n")
    if upgrade and upgrade_value is not None:
        out += (b"Connection: Upgrade\r\nUpgrade: ", upgrade_value, b"\r\n")
    if host is None and default_host:
        out += (b"Host: ", default_host, b"\r\n")
    out.append(policy.tenant_line)
    out += (b"X-Forwarded-For: ", client_ip if xff is None else xff + b", " + client_ip, b"\r\n")
    if host is not None:
        out += (b"X-Forwarded-Proto: http\r\nX-Forwarded-Host: ", host, b"\r\n\r\n")
    else:
        out.append(b"X-Forwarded-Proto: http\r\n\r\n")
    return RequestHead(b"".join(out), content_length, chunked, host)


# How the proxy frames a response body towards the client.
BODY_NONE = 0  # HEAD, 1xx, 204, 304: no body whatever the headers say
BODY_LENGTH = 1  # Content-Length: bytes pass through as they come
BODY_CHUNKED = 2  # re-chunked by the proxy (upstream chunked or close-delimited, client HTTP/1.1)
BODY_UNTIL_CLOSE = 3  # close-delimited towards the client (HTTP/1.0 client), connection closes
BODY_TUNNEL = 4  # 101 Switching Protocols: raw bytes both ways from here on


class ResponseHead(NamedTuple):
    head: bytes
    mode: int  # BODY_*
    keep_alive: bool  # the client connection stays open after this response
    until_eof: bool  # the upstream ends this body by closing its connection


_RESPONSE_KINDS: dict[bytes, int] = {}
_RESPONSE_SPECIAL = {
    b"content-length": _CL,
    b"connection": _CONNECTION,
    b"transfer-encoding": _TE,
    b"upgrade": _UPGRADE,
    **{name: _DROP for name in HOP_BY_HOP - {b"connection", b"transfer-encoding", b"upgrade"}},
}


def _response_kind(name: bytes) -> int:
    kind = _RESPONSE_SPECIAL.get(name.lower(), _PASS)
    if len(_RESPONSE_KINDS) < _KIND_CACHE_MAX:
        _RESPONSE_KINDS[name] = kind
    return kind


_STATUS_LINES: dict[tuple[int, bytes], bytes] = {}


def status_line(status: int, reason: bytes) -> bytes:
    key = (status, reason)
    line = _STATUS_LINES.get(key)
    if line is None:
        line = b"HTTP/1.1 %d %s\r\n" % (status, reason)
        if len(_STATUS_LINES) < 256:
            _STATUS_LINES[key] = line
    return line


def rewrite_response(
    status: int,
    reason: bytes,
    headers: list[tuple[bytes, bytes]],
    *,
    client_http11: bool,
    keep_alive: bool,
    bodiless: bool,
) -> ResponseHead:
    """The head to send the client for an upstream response, and how to frame its body.

    `keep_alive` is what the client asked for (and the proxy allows); it is turned off when the
    body can only be delimited by closing. `bodiless` is true for responses to HEAD.
    """
    te = upgrade_value = named = None
    has_length = False
    out = [status_line(status, reason)]
    kinds = _RESPONSE_KINDS
    for name, value in headers:
        kind = kinds.get(name)
        if kind is None:
            kind = _response_kind(name)
        if kind == _PASS:
            out += (name, b": ", value, b"\r\n")
        elif kind == _CL:
            has_length = True
            out += (name, b": ", value, b"\r\n")
        elif kind == _CONNECTION:
            extra = _token_set([value]) - _CONNECTION_TOKENS_HANDLED
            if extra:  # names other headers: rare
                named = extra if named is None else named | extra
        elif kind == _TE:
            te = value
        elif kind == _UPGRADE:
            upgrade_value = value
    if named:
        out = [out[0]] + [
            part
            for name, value in headers
            if kinds.get(name) in (_PASS, _CL) and name.lower() not in named
            for part in (name, b": ", value, b"\r\n")
        ]
        has_length = any(kinds.get(n) == _CL and n.lower() not in named for n, _ in headers)

    until_eof = False
    if status == 101:
        mode = BODY_TUNNEL
        keep_alive = True
        out.append(b"Connection: Upgrade\r\n")
        if upgrade_value is not None:
            out += (b"Upgrade: ", upgrade_value, b"\r\n")
        out.append(b"\r\n")
        return ResponseHead(b"".join(out), mode, keep_alive, False)
    if bodiless or status < 200 or status in (204, 304):
        mode = BODY_NONE
    elif te is not None or not has_length:
        until_eof = te is None
        if client_http11:
            mode = BODY_CHUNKED
            out += (b"Transfer-Encoding: ", te if te is not None else b"chunked", b"\r\n")
        else:
            mode = BODY_UNTIL_CLOSE
            keep_alive = False
    else:
        mode = BODY_LENGTH
    if status >= 200:
        if not keep_alive:
            out.append(b"Connection: close\r\n")
        elif not client_http11:
            out.append(b"Connection: keep-alive\r\n")
    out.append(b"\r\n")
    return ResponseHead(b"".join(out), mode, keep_alive, until_eof)


_REASONS = {
    400: b"Bad Request",
    408: b"Request Timeout",
    413: b"Content Too Large",
    431: b"Request Header Fields Too Large",
    502: b"Bad Gateway",
    503: b"Service Unavailable",
    504: b"Gateway Timeout",
    505: b"HTTP Version Not Supported",
}


def error_response(status: int, *, close: bool = True) -> bytes:
    """A small complete plain-text error response."""
    reason = _REASONS.get(status, b"Error")
    body = reason + b"\n"
    return b"".join(
        (
            status_line(status, reason),
            b"Content-Type: text/plain\r\nContent-Length: %d\r\n" % len(body),
            b"Connection: close\r\n\r\n" if close else b"\r\n",
            body,
        )
    )
