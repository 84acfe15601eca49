"""Hypothesis strategies for hostile request byte streams: mostly-valid HTTP/1.1 with adversarial pieces.

Grammar: request-line, Host, a framing (none, Content-Length, chunked, both), a body (possibly a
smuggled request), extra headers drawn from the corpus' dangerous names and values, separator and
line-ending mutations, 1-3 pipelined requests, trailing bytes, and random write splits.

Bodies always match the framing the header *claims* (or are longer than it), never shorter: a
stream then never leaves the proxy waiting for body bytes after the half-close, so one example costs
milliseconds, not a timeout. Forged tenant values are always `victim`, which must then never show up
in any header the upstream parses.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from cases import SMUGGLE
from hypothesis import strategies as st

VICTIM = "victim"
TENANT_NAMES = ["X-Tenant-ID", "x-tenant-id", "X_Tenant_ID", "X-TENANT_ID", "x_tenant-id"]
OTHER_NAMES = [
    "Connection",
    "Upgrade",
    "Host",
    "X-Forwarded-For",
    "X_Forwarded_For",
    "X-Forwarded-Host",
    "X-Forwarded-Port",
    "X-Forwarded-Proto",
    "Forwarded",
    "X-Real-IP",
    "X_Real_IP",
    "Expect",
    "TE",
    "Trailer",
    "Keep-Alive",
    "Proxy-Connection",
    "HTTP2-Settings",
    "X-A",
    "Accept",
]
OTHER_VALUES = [
    "close",
    "keep-alive",
    "upgrade",
    "Upgrade",
    "Content-Length",
    "close, Content-Length",
    "Transfer-Encoding",
    "Host",
    "X-Tenant-ID",
    "X-Forwarded-For",
    "websocket",
    "h2c",
    "100-continue",
    "trailers",
    "",
    "h",
    "6.6.6.6",
    "for=6.6.6.6;host=evil",
    "a\x00b",
    "caf\xe9",
    "a\x0bb",
    *["*/*", "1", "text/html"] * 3,
]
TE_VALUES = [
    "chunked",
    "chunked",
    "chunked",
    "Chunked",
    "\tchunked",
    "chunked ",
    "gzip, chunked",
    "chunked\x0b",
    "\xa0chunked",
    "xchunked",
    "chunked;x",
    "chunked, gzip",
    "identity, chunked",
    "foo, chunked",
    ",chunked",
    "chunked, chunked",
]
TE_NAMES = ["Transfer-Encoding"] * 6 + ["transfer-encoding", "Transfer_Encoding", "Transfer-Encoding "]
CL_NAMES = ["Content-Length"] * 6 + ["content-length", "Content_Length", "Content-Length "]
SEPARATORS = [": "] * 40 + [":", ":\t", " : ", ": \t"]
EOLS = ["\r\n"] * 100 + ["\n", "\r", "\r\n "]
METHODS = ["GET"] * 16 + ["POST"] * 16 + ["PUT", "HEAD", "DELETE", "OPTIONS", "PATCH", "CONNECT", "get", "PRI"]
TARGETS = ["/"] * 30 + ["/a?b=c", "*", "http://h/x", "/%2e%2e/", "/\x01", "/a b", "h:443"]
VERSIONS = ["HTTP/1.1"] * 48 + ["HTTP/1.0"] * 8 + ["HTTP/2.0", "HTTP/0.9", "http/1.1", "HTTP/1.2"]
BODIES = [b"", b"hello", SMUGGLE, b"0\r\n\r\n" + SMUGGLE, b"x" * 300]


@dataclass
class Stream:
    writes: list[bytes]  # the byte stream, split into separate writes
    methods: list[str]  # method of each request, in order (HEAD answers have no body)

    def __repr__(self) -> str:
        return f"Stream(methods={self.methods}, data={b''.join(self.writes)!r}, splits={len(self.writes)})"


def _enc(text: str) -> bytes:
    return text.encode("latin-1")


def _pick(options: list) -> st.SearchStrategy:  # type: ignore[type-arg]
    return st.sampled_from(options)


# Strategies built once (building them per draw costs more than the whole stream's I/O).
_SEP, _EOL = _pick(SEPARATORS), _pick(EOLS)
_TENANT_NAME, _OTHER_NAME, _OTHER_VALUE = _pick(TENANT_NAMES), _pick(OTHER_NAMES), _pick(OTHER_VALUES)
_TE_NAME, _TE_VALUE, _CL_NAME = _pick(TE_NAMES), _pick(TE_VALUES), _pick(CL_NAMES)
_METHOD, _TARGET, _VERSION, _BODY = _pick(METHODS), _pick(TARGETS), _pick(VERSIONS), _pick(BODIES)
_FRAMING = _pick(["none"] * 4 + ["cl"] * 4 + ["chunked"] * 3 + ["both"])
_CL_SHORT = _pick([0] * 6 + [3])
_CL_FORM = _pick(["%d"] * 6 + [" %d ", "0%d", "+%d", "%d, %d"])
_CHUNK_FORM = _pick(["%x"] * 12 + ["%X", "000%x", "%x;ext=1", '%x;q="a b"', "%x ", "0x%x", "-%x"])
_CHUNK_END = _pick([b"\r\n"] * 20 + [b"\n", b"XX"])
_LAST_CHUNK = _pick([b"0\r\n", b"000\r\n", b"0;x=y\r\n"])
_TRAILING = _pick([SMUGGLE, b"\r\n", b"garbage\r\n\r\n", SMUGGLE[:20]])
_BOOL = st.booleans()
_ORIGIN_FORM_LINE = re.compile(rb"[A-Z]+ (/[\x21-\x7e]*|\*) HTTP/1\.[01]\r\n")
_HOST = st.integers(0, 9)  # 0: no Host header
_TAIL = st.integers(0, 7)  # 0: trailing bytes after the last request
_CUTS2, _CUTS3 = st.lists(st.integers(1, 1 << 20), max_size=2), st.lists(st.integers(1, 1 << 20), max_size=3)


def _split(data: bytes, points: list[int]) -> list[bytes]:
    """`data` cut at the given points (taken modulo its length)."""
    cuts = sorted({p % len(data) for p in points if len(data) > 1} - {0})
    return [data[a:b] for a, b in zip([0, *cuts], [*cuts, len(data)], strict=True) if data[a:b]]


@st.composite
def header_line(draw: st.DrawFn) -> bytes:
    if draw(_BOOL):
        name, value = draw(_TENANT_NAME), VICTIM
    else:
        name, value = draw(_OTHER_NAME), draw(_OTHER_VALUE)
    return _enc(name + draw(_SEP) + value + draw(_EOL))


_HEADERS = st.lists(header_line(), max_size=4)
_TRAILERS = st.lists(header_line(), max_size=2)


@st.composite
def chunked_body(draw: st.DrawFn, content: bytes) -> bytes:
    """`content` in 1-3 chunks (size forms and chunk ends mutated), a last chunk, 0-2 trailers."""
    out = []
    for piece in _split(content, draw(_CUTS2)) if content else []:
        out.append(_enc(draw(_CHUNK_FORM) % len(piece)) + b"\r\n" + piece + draw(_CHUNK_END))
    out.append(draw(_LAST_CHUNK))
    out += draw(_TRAILERS)
    out.append(b"\r\n")
    return b"".join(out)


@st.composite
def request(draw: st.DrawFn) -> tuple[bytes, str, bool]:
    """(bytes, method, misframed): misframed when its Content-Length is shorter than its body."""
    method = draw(_METHOD)
    line = _enc(f"{method} {draw(_TARGET)} {draw(_VERSION)}{draw(_EOL)}")
    headers = [b"Host: h\r\n"] if draw(_HOST) else []
    headers += draw(_HEADERS)
    content = draw(_BODY)
    framing = draw(_FRAMING)
    body = b""
    misframed = False
    if framing in ("cl", "both"):
        length = len(content) - min(draw(_CL_SHORT), len(content))  # never longer than the body
        misframed = length < len(content)
        form = draw(_CL_FORM)
        value = form % ((length, length) if form.count("%d") == 2 else length)
        headers.append(_enc(draw(_CL_NAME) + ": " + value + "\r\n"))
        body = content
    if framing in ("chunked", "both"):
        headers.append(_enc(draw(_TE_NAME) + ": " + draw(_TE_VALUE) + "\r\n"))
        body = draw(chunked_body(content))
    if len(headers) > 1 and draw(_BOOL):
        headers.append(headers.pop(0))  # Host last, framing first: order matters to some parsers
    if method == "HEAD" and not _ORIGIN_FORM_LINE.fullmatch(line):
        method = "HEAD?"  # the proxy need not know the method of a line it cannot parse
    return line + b"".join(headers) + b"\r\n" + body, method, misframed


_REQUESTS = st.lists(request(), min_size=1, max_size=3)


@st.composite
def streams(draw: st.DrawFn) -> Stream:
    reqs = draw(_REQUESTS)
    data = b"".join(r for r, _, _ in reqs)
    methods, shifted = [], False
    for _, method, misframed in reqs:
        # After a misframed body the request boundaries are not the generated ones.
        methods.append("HEAD?" if shifted and method == "HEAD" else method)
        shifted = shifted or misframed
    if draw(_TAIL) == 0:
        data += draw(_TRAILING)
    return Stream(writes=_split(data, draw(_CUTS3)), methods=methods)
