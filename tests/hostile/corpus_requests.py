"""The request-side framing corpus: hostile client byte streams and what the contract says happens.

Sources: RFC 9112 (message syntax), RFC 9110 (fields, Connection), Kettle "HTTP Desync Attacks"
(2019) and "HTTP/1.1 must die" (2025), Linhart et al. "HTTP Request Smuggling" (2005), and the TE
obfuscation lists of the smuggler tools. Contract rule numbers (R1..R14) refer to
shared/briefs/dataplane-contract.md; docs/hostile-suite.md lists the families.
"""

from __future__ import annotations

from cases import (
    GET,
    HELLO_CHUNKED,
    MARK,
    MARKH,
    SMUG,
    SMUGGLE,
    VICTIM,
    Case,
    H,
    Outcome,
    S,
    body_is,
    case,
    either,
    forwarded,
    header_absent,
    header_is,
    no_trailers,
    post_cl,
    post_te,
    raw_lacks,
    rejected,
    upstream_heads,
)
from client import ABORTED, Wait
from recording_upstream import Hold, WebSocket

SMUGGLED_AFTER_CHUNKED = HELLO_CHUNKED + SMUGGLE


def _ip(o: Outcome) -> list[str]:
    return [o.target.client_ip]


def _port(o: Outcome) -> list[str]:
    return [str(o.target.port)]


def forwarded_elements(values: list[str]) -> list[dict[str, str]]:
    """RFC 7239 Forwarded values as elements of {param: value}, quoted-strings unquoted."""
    elements: list[dict[str, str]] = []
    pairs: dict[str, str] = {}
    key, buf, quoted, escape = None, "", False, False
    for ch in ",".join(values) + ",":
        if quoted:
            if escape:
                buf, escape = buf + ch, False
            elif ch == "\\":
                escape = True
            elif ch == '"':
                quoted = False
            else:
                buf += ch
        elif ch == '"':
            quoted = True
        elif ch == "=" and key is None:
            key, buf = buf.strip().lower(), ""
        elif ch in ";,":
            if key is not None:
                pairs[key] = buf.strip()
            key, buf = None, ""
            if ch == "," and pairs:
                elements.append(pairs)
                pairs = {}
        else:
            buf += ch
    return elements


def _forwarded_last(o: Outcome) -> None:
    """R8: Forwarded ends with nsproxy's own element for this client (token or quoted values alike)."""
    elements = forwarded_elements(o.only().values("forwarded"))
    want = {"for": o.target.client_ip, "host": "h", "proto": "http"}
    assert elements and elements[-1] == want, f"Forwarded elements {elements!r}, expected last {want!r}"


def _te_forwarded(value: str):  # type: ignore[no-untyped-def]
    return header_is("transfer-encoding", [value], fuzzy=False)


def _cl_forwarded(n: int):  # type: ignore[no-untyped-def]
    def check(o: Outcome) -> None:
        values = o.only().values("content-length", fuzzy=True)
        assert len(values) == 1 and values[0].isdigit() and int(values[0]) == n, f"Content-Length {values!r}"

    return check


def _host_names_listener(o: Outcome) -> None:
    """R3: an HTTP/1.0 request without Host is forwarded with a Host naming the listener address."""
    hosts = o.only().values("host")
    assert len(hosts) == 1, hosts
    host = hosts[0].rsplit(":", 1)[0] if hosts[0].count(":") == 1 else hosts[0]
    assert host.strip("[]") == o.target.client_ip, f"Host {hosts!r} does not name the listener"


# ---- CL.TE / TE.CL: both framings present (R5: 400) -------------------------------------------

_CLTE_BODY = b"0\r\n\r\n" + SMUGGLE
_TECL_BODY = b"%x\r\n" % len(SMUGGLE) + SMUGGLE + b"\r\n0\r\n\r\n"


def _clte(id: str, te_line: str | bytes, body: bytes = _CLTE_BODY, cl: int | None = None, first: str = "cl") -> Case:
    te = te_line.encode("latin-1") if isinstance(te_line, str) else te_line
    cl_line = b"Content-Length: %d" % (len(body) if cl is None else cl)
    lines = [cl_line, te] if first == "cl" else [te, cl_line]
    return rejected(id, b"\r\n".join([b"POST /a HTTP/1.1", b"Host: h", MARKH.encode(), *lines]) + b"\r\n\r\n" + body)


CL_TE = [
    _clte("cl-te/classic", "Transfer-Encoding: chunked"),
    _clte("cl-te/te-first", "Transfer-Encoding: chunked", first="te"),
    _clte("te-cl/classic", "Transfer-Encoding: chunked", body=_TECL_BODY, cl=4, first="te"),
    _clte("te-cl/cl-first", "Transfer-Encoding: chunked", body=_TECL_BODY, cl=4),
    _clte("cl-te/te-uppercase", "Transfer-Encoding: CHUNKED"),
    _clte("cl-te/te-lowercase-name", "transfer-encoding: chunked"),
    _clte("cl-te/te-xchunked", "Transfer-Encoding: xchunked"),
    _clte("cl-te/te-identity", "Transfer-Encoding: identity"),
    _clte("cl-te/te-vertical-tab", b"Transfer-Encoding: \x0bchunked"),
    _clte("cl-te/te-nbsp", b"Transfer-Encoding: \xa0chunked"),
    _clte("cl-te/te-param", "Transfer-Encoding: chunked;x"),
    _clte("cl-te/te-space-before-colon", "Transfer-Encoding : chunked"),
    _clte("cl-te/te-folded", "Transfer-Encoding:\r\n chunked"),
    _clte("cl-te/te-underscore", "Transfer_Encoding: chunked"),
    rejected(
        "cl-te/cl-underscore",
        post_te("chunked", body=_CLTE_BODY, extra=[f"Content_Length: {len(_CLTE_BODY)}"]),
    ),
    _clte("cl-te/cl-zero", "Transfer-Encoding: chunked", cl=0),
    _clte("cl-te/gzip-chunked", "Transfer-Encoding: gzip, chunked"),
]

# ---- Transfer-Encoding obfuscations (R4) ------------------------------------------------------


def _te_ok(id: str, *te_lines: str | bytes, want: str = "chunked") -> Case:
    return forwarded(id, post_te(*te_lines), _te_forwarded(want), body_is(b"hello"))


def _te_bad(id: str, *te_lines: str | bytes, **kw) -> Case:  # type: ignore[no-untyped-def]
    return rejected(id, post_te(*te_lines, body=SMUGGLED_AFTER_CHUNKED), **kw)


TE = [
    _te_ok("te/plain", "chunked"),
    _te_ok("te/uppercase", "CHUNKED"),
    _te_ok("te/mixed-case", "ChUnKeD"),
    _te_ok("te/htab-before", "\tchunked"),
    _te_ok("te/space-after", "chunked "),
    either("te/htab-after", post_te("chunked\t"), _te_forwarded("chunked"), body_is(b"hello")),
    _te_ok("te/two-spaces", "  chunked"),
    _te_ok("te/lowercase-name", b"transfer-encoding: chunked"),
    _te_ok("te/uppercase-name", b"TRANSFER-ENCODING: chunked"),
    _te_ok("te/gzip-chunked", "gzip, chunked", want="gzip, chunked"),
    _te_ok("te/gzip-chunked-no-space", "gzip,chunked", want="gzip, chunked"),
    _te_ok("te/gzip-chunked-ows", "gzip \t, chunked", want="gzip, chunked"),
    _te_ok("te/codings-uppercase", "GZIP, Chunked", want="gzip, chunked"),
    _te_ok("te/x-gzip", "x-gzip, chunked", want="x-gzip, chunked"),
    _te_ok("te/deflate", "deflate, chunked", want="deflate, chunked"),
    _te_ok("te/compress", "compress, chunked", want="compress, chunked"),
    _te_ok("te/x-compress", "x-compress, chunked", want="x-compress, chunked"),
    _te_ok("te/two-codings", "deflate, gzip, chunked", want="deflate, gzip, chunked"),
    _te_ok("te/two-lines", "gzip", "chunked", want="gzip, chunked"),
    _te_bad("te/vertical-tab", b"\x0bchunked"),
    _te_bad("te/vertical-tab-after", b"chunked\x0b"),
    _te_bad("te/form-feed", b"\x0cchunked"),
    _te_bad("te/nbsp-before", b"\xa0chunked"),
    _te_bad("te/nbsp-after", b"chunked\xa0"),
    _te_bad("te/nul-after", b"chunked\x00"),
    _te_bad("te/bare-cr-inside", b"chu\rnked"),
    _te_bad("te/param", "chunked;x"),
    _te_bad("te/param-q", "chunked; q=1"),
    _te_bad("te/param-on-gzip", "gzip;q=1, chunked"),
    _te_bad("te/xchunked", "xchunked"),
    _te_bad("te/chunkedx", "chunkedx"),
    _te_bad("te/chunk", "chunk"),
    _te_bad("te/quoted", '"chunked"'),
    _te_bad("te/identity", "identity"),
    _te_bad("te/identity-chunked", "identity, chunked"),
    _te_bad("te/unknown-then-chunked", "foo, chunked"),
    _te_bad("te/unknown-then-chunked-pooled", "foo, chunked", warm=True),
    _te_bad("te/gzip-only", "gzip"),
    _te_bad("te/chunked-then-gzip", "chunked, gzip"),
    _te_bad("te/chunked-twice", "chunked, chunked"),
    _te_bad("te/chunked-twice-lines", "chunked", "chunked"),
    _te_bad("te/chunked-then-unknown-line", "chunked", "x"),
    _te_bad("te/leading-comma", ",chunked"),
    _te_bad("te/trailing-comma", "chunked,"),
    _te_bad("te/double-comma", "gzip,,chunked"),
    _te_bad("te/empty", ""),
    _te_bad("te/space-before-colon", b"Transfer-Encoding : chunked"),
    _te_bad("te/htab-before-colon", b"Transfer-Encoding\t: chunked"),
    _te_bad("te/nbsp-in-name", b"Transfer-Encoding\xa0: chunked"),
    _te_bad("te/leading-space-name", b"X-A: 1\r\n Transfer-Encoding: chunked"),
    _te_bad("te/folded", b"Transfer-Encoding:\r\n chunked"),
    _te_bad("te/folded-list", b"Transfer-Encoding: gzip,\r\n chunked"),
    _te_bad("te/bare-lf-line", b"Transfer-Encoding: chunked\nX-A: 1"),
    _te_bad("te/underscore", b"Transfer_Encoding: chunked"),
    _te_bad("te/underscore-lower", b"transfer_encoding: chunked"),
    _te_bad("te/underscore-upper", b"TRANSFER_ENCODING: chunked"),
    _te_bad("te/underscore-with-cl", b"Transfer_Encoding: chunked\r\nContent-Length: 5"),
    # Not Transfer-Encoding at all: no body, so the chunked bytes are a (bad) next request.
    case(
        "te/x-prefixed-name-is-not-te",
        post_te(b"X-Transfer-Encoding: chunked", body=b"0\r\n\r\n" + SMUGGLE),
        [200, 400],
        1,
        markers=(SMUG,),
        half_close=False,
        closes=True,
    ),
]

# ---- chunk-size edge cases (R1, R4, R12) ------------------------------------------------------


def _chunk_ok(id: str, body: bytes, want: bytes = b"hello", *checks) -> Case:  # type: ignore[no-untyped-def]
    return forwarded(id, post_te("chunked", body=body), body_is(want), no_trailers, *checks)


def _chunk_bad(id: str, body: bytes, **kw) -> Case:  # type: ignore[no-untyped-def]
    """A body that turns out malformed after a valid head (R12): 400, the upstream completes nothing.

    The head may legitimately have been forwarded already, so only what follows the fault is a marker.
    """
    kw.setdefault("markers", (SMUG,))
    return rejected(id, post_te("chunked", body=body + SMUGGLE), **kw)


CHUNKS = [
    _chunk_ok("chunk/leading-zeros", b"0005\r\nhello\r\n0\r\n\r\n"),
    either(
        "chunk/hundred-leading-zeros",
        post_te("chunked", body=b"0" * 100 + b"5\r\nhello\r\n0\r\n\r\n"),
        body_is(b"hello"),
    ),
    _chunk_ok("chunk/uppercase-hex", b"A\r\nhellohello\r\n0\r\n\r\n", b"hellohello"),
    _chunk_ok("chunk/last-chunk-zeros", b"5\r\nhello\r\n000\r\n\r\n"),
    _chunk_ok("chunk/extension", b"5;foo=bar\r\nhello\r\n0\r\n\r\n", b"hello", raw_lacks(b"foo=bar")),
    _chunk_ok("chunk/extension-quoted", b'5;foo="b a;r"\r\nhello\r\n0\r\n\r\n', b"hello", raw_lacks(b"b a;r")),
    _chunk_ok("chunk/extension-name-only", b"5;foo\r\nhello\r\n0;bar\r\n\r\n", b"hello", raw_lacks(b"foo")),
    _chunk_ok("chunk/one-byte-chunks", b"".join(b"1\r\n%c\r\n" % c for c in b"hello") + b"0\r\n\r\n"),
    _chunk_ok("chunk/trailer-tenant", b"5\r\nhello\r\n0\r\nX-Tenant-ID: victim\r\n\r\n", b"hello", raw_lacks(VICTIM)),
    either(
        "chunk/trailer-framing-fields",
        post_te("chunked", body=b"5\r\nhello\r\n0\r\nContent-Length: 99\r\nTransfer-Encoding: x\r\n\r\n"),
        body_is(b"hello"),
        no_trailers,
    ),
    _chunk_ok("chunk/trailer-host", b"5\r\nhello\r\n0\r\nHost: evil\r\n\r\n", b"hello", raw_lacks(b"evil")),
    forwarded(
        "chunk/byte-by-byte-writes",
        [bytes([b]) for b in post_te("chunked", body=b"5;x=y\r\nhello\r\n0\r\nX-T: 1\r\n\r\n")],
        body_is(b"hello"),
        no_trailers,
        timeout=20.0,
    ),
    _chunk_bad("chunk/size-overflow", b"ffffffffffffffffff\r\nhello\r\n0\r\n\r\n"),
    _chunk_bad("chunk/negative", b"-5\r\nhello\r\n0\r\n\r\n"),
    _chunk_bad("chunk/plus", b"+5\r\nhello\r\n0\r\n\r\n"),
    _chunk_bad("chunk/0x-prefix", b"0x5\r\nhello\r\n0\r\n\r\n"),
    _chunk_bad("chunk/leading-space", b" 5\r\nhello\r\n0\r\n\r\n"),
    _chunk_bad("chunk/trailing-space", b"5 \r\nhello\r\n0\r\n\r\n"),
    _chunk_bad("chunk/trailing-tab", b"5\t\r\nhello\r\n0\r\n\r\n"),
    _chunk_bad("chunk/empty-size", b"\r\nhello\r\n0\r\n\r\n"),
    _chunk_bad("chunk/empty-extension", b"5;\r\nhello\r\n0\r\n\r\n"),
    _chunk_bad("chunk/extension-quoted-cr", b'5;a="b\rc"\r\nhello\r\n0\r\n\r\n'),
    _chunk_bad("chunk/extension-bare-lf", b"5;a\nb\r\nhello\r\n0\r\n\r\n"),
    _chunk_bad("chunk/extension-obs-text", b"5;a=\xe9\r\nhello\r\n0\r\n\r\n"),
    _chunk_bad("chunk/size-bare-lf", b"5\nhello\r\n0\r\n\r\n"),
    _chunk_bad("chunk/data-bare-lf", b"5\r\nhello\n0\r\n\r\n"),
    _chunk_bad("chunk/data-without-crlf", b"5\r\nhelloXX0\r\n\r\n"),
    _chunk_bad("chunk/data-longer-than-size", b"3\r\nhello\r\n0\r\n\r\n"),
    _chunk_bad("chunk/trailer-folded", b"5\r\nhello\r\n0\r\nX-A: a\r\n b\r\n\r\n"),
    _chunk_bad("chunk/trailer-bare-lf", b"5\r\nhello\r\n0\r\nX-A: a\n\r\n"),
    _chunk_bad("chunk/trailer-nul", b"5\r\nhello\r\n0\r\nX-A: a\x00\r\n\r\n"),
    # The head is certainly forwarded first (pooled connection, separate write): R12.
    rejected(
        "chunk/bad-size-after-head-forwarded",
        [post_te("chunked", body=b""), Wait(), b"5\r\nhello\r\nzz\r\n" + SMUGGLE],
        warm=True,
        markers=(SMUG,),
    ),
]

# ---- Connection-nominated headers (R9) --------------------------------------------------------


def _conn(id: str, connection: str, data: bytes | None = None, *checks, **kw) -> Case:  # type: ignore[no-untyped-def]
    send = data if data is not None else H("GET / HTTP/1.1", "Host: h", f"Connection: {connection}")
    return forwarded(id, send, *checks, **kw)


CONNECTION = [
    _conn(
        "conn/content-length",
        "",
        post_cl("Connection: Content-Length", body=SMUGGLE),
        _cl_forwarded(len(SMUGGLE)),
        body_is(SMUGGLE),
        upstream_heads(1),
    ),
    _conn(
        "conn/close-content-length",
        "",
        post_cl("Connection: close, Content-Length", body=SMUGGLE),
        _cl_forwarded(len(SMUGGLE)),
        body_is(SMUGGLE),
        upstream_heads(1),
        half_close=False,
        closes=True,
    ),
    _conn(
        "conn/content-length-lowercase-ows",
        "",
        post_cl("Connection:  keep-alive ,content-length ", body=SMUGGLE),
        _cl_forwarded(len(SMUGGLE)),
        body_is(SMUGGLE),
    ),
    _conn(
        "conn/content-length-second-line",
        "",
        post_cl("Connection: keep-alive", "Connection: CONTENT-LENGTH", body=SMUGGLE),
        _cl_forwarded(len(SMUGGLE)),
        body_is(SMUGGLE),
    ),
    _conn(
        "conn/transfer-encoding",
        "",
        post_te("chunked", extra=["Connection: Transfer-Encoding"]),
        _te_forwarded("chunked"),
        body_is(b"hello"),
    ),
    _conn("conn/host", "Host", None, header_is("host", ["h"])),
    _conn("conn/close-host", "close, Host", None, header_is("host", ["h"]), half_close=False, closes=True),
    _conn(
        "conn/tenant-header",
        "",
        H("GET / HTTP/1.1", "Host: h", "Connection: X-Tenant-ID", "X-Tenant-ID: victim"),
        markers=(VICTIM,),
    ),
    _conn(
        "conn/tenant-header-underscore",
        "",
        H("GET / HTTP/1.1", "Host: h", "Connection: x_tenant_id", "X_Tenant_ID: victim"),
        markers=(VICTIM,),
    ),
    _conn(
        "conn/x-forwarded-for",
        "",
        H("GET / HTTP/1.1", "Host: h", "Connection: X-Forwarded-For", "X-Forwarded-For: 6.6.6.6"),
        header_is("x-forwarded-for", lambda o: [f"6.6.6.6, {o.target.client_ip}"], fuzzy=True),
    ),
    _conn("conn/x-forwarded-proto", "X-Forwarded-Proto", None, header_is("x-forwarded-proto", ["http"])),
    _conn("conn/x-forwarded-host", "X-Forwarded-Host", None, header_is("x-forwarded-host", ["h"])),
    _conn("conn/x-forwarded-port", "X-Forwarded-Port", None, header_is("x-forwarded-port", _port)),
    _conn("conn/forwarded", "Forwarded", None, _forwarded_last),
    _conn("conn/x-real-ip", "X-Real-IP", None, header_is("x-real-ip", _ip)),
    _conn(
        "conn/custom-hop-by-hop",
        "",
        H("GET / HTTP/1.1", "Host: h", "Connection: X-Secret", "X-Secret: 1", "X-Kept: 1"),
        header_absent("x-secret", "connection"),
        header_is("x-kept", ["1"]),
    ),
    _conn(
        "conn/hop-by-hop-set",
        "",
        H(
            "GET / HTTP/1.1",
            "Host: h",
            "Connection: keep-alive",
            "Keep-Alive: timeout=5",
            "Proxy-Connection: keep-alive",
            "TE: trailers",
            "Trailer: X-T",
            "HTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA",
            "Proxy-Authorization: Basic YTpi",
            "Upgrade: h2c",
        ),
        header_absent(
            "connection",
            "keep-alive",
            "proxy-connection",
            "te",
            "trailer",
            "http2-settings",
            "proxy-authorization",
            "upgrade",
        ),
    ),
]

# ---- managed headers (R8) ---------------------------------------------------------------------

MANAGED = [
    forwarded(
        "managed/defaults",
        GET,
        header_is("x-forwarded-for", _ip),
        header_is("x-forwarded-proto", ["http"]),
        header_is("x-forwarded-host", ["h"]),
        header_is("x-forwarded-port", _port),
        header_is("x-real-ip", _ip),
        _forwarded_last,
        header_is("host", ["h"]),
    ),
    forwarded(
        "managed/forwarded-appended",
        H("GET / HTTP/1.1", "Host: h", "Forwarded: for=6.6.6.6;host=evil"),
        _forwarded_last,
        lambda o: _assert_first_forwarded(o, {"for": "6.6.6.6", "host": "evil"}),
    ),
    forwarded(
        "managed/x-forwarded-port",
        H("GET / HTTP/1.1", "Host: h", "X-Forwarded-Port: 443"),
        header_is("x-forwarded-port", _port),
    ),
    forwarded(
        "managed/x-forwarded-port-underscore",
        H("GET / HTTP/1.1", "Host: h", "X_Forwarded_Port: 443"),
        header_is("x-forwarded-port", _port),
    ),
    forwarded("managed/x-real-ip", H("GET / HTTP/1.1", "Host: h", "X-Real-IP: 6.6.6.6"), header_is("x-real-ip", _ip)),
    forwarded(
        "managed/x-real-ip-underscore",
        H("GET / HTTP/1.1", "Host: h", "X_Real_IP: 6.6.6.6"),
        header_is("x-real-ip", _ip),
    ),
    forwarded(
        "managed/x-real-ip-twice",
        H("GET / HTTP/1.1", "Host: h", "X-Real-IP: 6.6.6.6", "x-real-ip: 7.7.7.7"),
        header_is("x-real-ip", _ip),
    ),
    forwarded(
        "managed/x-forwarded-proto",
        H("GET / HTTP/1.1", "Host: h", "X-Forwarded-Proto: https", "X_Forwarded_Proto: https"),
        header_is("x-forwarded-proto", ["http"]),
    ),
    forwarded(
        "managed/x-forwarded-host",
        H("GET / HTTP/1.1", "Host: h", "X-Forwarded-Host: evil", "X_Forwarded_Host: evil"),
        header_is("x-forwarded-host", ["h"]),
        raw_lacks(b"evil"),
    ),
    forwarded(
        "managed/x-forwarded-for-chain",
        H("GET / HTTP/1.1", "Host: h", "X-Forwarded-For: 6.6.6.6", "x-forwarded-for: 7.7.7.7"),
        header_is("x-forwarded-for", lambda o: [f"6.6.6.6, 7.7.7.7, {o.target.client_ip}"]),
    ),
    forwarded(
        "managed/x-forwarded-for-underscore-dropped",
        H("GET / HTTP/1.1", "Host: h", "X_Forwarded_For: 6.6.6.6"),
        header_is("x-forwarded-for", _ip),
        raw_lacks(b"6.6.6.6"),
    ),
]


def _assert_first_forwarded(o: Outcome, element: dict[str, str]) -> None:
    elements = forwarded_elements(o.only().values("forwarded"))
    assert elements[:1] == [element], f"the client's Forwarded element was not kept first: {elements!r}"


# ---- Upgrade, h2c, CONNECT (R10) --------------------------------------------------------------

WS_HEAD = H("GET /ws HTTP/1.1", "Host: h", "Connection: Upgrade", "Upgrade: websocket", "Sec-WebSocket-Version: 13")


def _tunnel_is(data: bytes):  # type: ignore[no-untyped-def]
    def check(o: Outcome) -> None:
        got = b"".join(bytes(t) for t in o.up.tunnel.values())
        assert got == data, f"tunnel bytes upstream {got!r}, expected {data!r}"

    return check


def _plain_then_second(id: str, head: bytes, *checks, **kw) -> Case:  # type: ignore[no-untyped-def]
    """R10: served as a plain HTTP/1.1 request; the pipelined request after it is parsed and forwarded."""
    return case(
        id,
        head + SMUGGLE,
        [200, 200],
        2,
        markers=(VICTIM,),
        checks=(header_absent("upgrade", "http2-settings", "connection"), *checks),
        **kw,
    )


UPGRADE = [
    case(
        "upgrade/websocket-refused-trailing-request",
        WS_HEAD + SMUGGLE,
        [200],
        1,
        markers=(SMUG,),
        half_close=False,
        closes=True,
    ),
    case(
        "upgrade/websocket-refused-trailing-request-split",
        [WS_HEAD, SMUGGLE],
        [200],
        1,
        markers=(SMUG,),
        half_close=False,
        closes=True,
    ),
    case(
        "upgrade/websocket-refused-trailing-request-pipelined",
        GET + WS_HEAD + SMUGGLE,
        [200, 200],
        2,
        markers=(SMUG,),
        half_close=False,
        closes=True,
    ),
    case(
        "upgrade/websocket-accepted-flushes-held-bytes",
        WS_HEAD + SMUGGLE,
        [101],
        1,
        responder=lambda: WebSocket(close_after=len(SMUGGLE)),
        timeout=5.0,
        checks=(
            _tunnel_is(SMUGGLE),
            header_is("upgrade", ["websocket"]),
            lambda o: _assert_token(o.only().values("connection"), "upgrade"),
        ),
    ),
    case(
        "upgrade/websocket-mixed-case",
        H("GET /ws HTTP/1.1", "Host: h", "Connection: keep-alive, UPGRADE", "Upgrade:  WebSocket "),
        [101],
        1,
        responder=WebSocket,
        checks=(header_is("upgrade", ["websocket"]),),
    ),
    case(
        "upgrade/websocket-101-wrong-upgrade",
        WS_HEAD + SMUGGLE,
        [502],
        1,
        responder=lambda: WebSocket(upgrade="h2c"),
        markers=(SMUG,),
        checks=(_tunnel_is(b""),),
    ),
    case(
        "upgrade/websocket-101-without-upgrade",
        WS_HEAD + SMUGGLE,
        [502],
        1,
        responder=lambda: WebSocket(upgrade=None),
        markers=(SMUG,),
        checks=(_tunnel_is(b""),),
    ),
    case(
        "upgrade/websocket-held-bytes-over-64k",
        WS_HEAD + b"x" * (70 * 1024) + SMUGGLE,
        [S(ABORTED, 400)],
        S(0, 1),
        responder=Hold,
        markers=(SMUG,),
        allow_unanswered=1,
        half_close=False,
        closes=True,
        checks=(_tunnel_is(b""),),
    ),
    _plain_then_second(
        "upgrade/h2c",
        H(
            "GET / HTTP/1.1",
            "Host: h",
            "Connection: Upgrade, HTTP2-Settings",
            "Upgrade: h2c",
            "HTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA",
        ),
    ),
    case(
        "upgrade/h2c-upstream-answers-101",
        H("GET / HTTP/1.1", "Host: h", "Connection: Upgrade, HTTP2-Settings", "Upgrade: h2c", "HTTP2-Settings: AAMA")
        + b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
        [502, S(400, 505, ABORTED)],
        1,
        responder=lambda: WebSocket(upgrade="h2c", always=True),
        markers=(b"PRI *",),
        checks=(_tunnel_is(b""),),
    ),
    _plain_then_second("upgrade/without-connection-upgrade", H("GET / HTTP/1.1", "Host: h", "Upgrade: websocket")),
    _plain_then_second(
        "upgrade/connection-upgrade-without-upgrade", H("GET / HTTP/1.1", "Host: h", "Connection: Upgrade")
    ),
    _plain_then_second(
        "upgrade/post-websocket",
        H("POST / HTTP/1.1", "Host: h", "Connection: Upgrade", "Upgrade: websocket", "Content-Length: 0"),
    ),
    _plain_then_second(
        "upgrade/websocket-in-a-list", H("GET / HTTP/1.1", "Host: h", "Connection: Upgrade", "Upgrade: websocket, h2c")
    ),
    _plain_then_second("upgrade/tls", H("GET / HTTP/1.1", "Host: h", "Connection: Upgrade", "Upgrade: TLS/1.2")),
    rejected("upgrade/connect", H("CONNECT h:443 HTTP/1.1", "Host: h:443", MARKH) + SMUGGLE, 405),
    case(
        "upgrade/connect-pipelined",
        GET + H("CONNECT h:443 HTTP/1.1", "Host: h:443", MARKH) + SMUGGLE,
        [200, 405],
        1,
        markers=(MARK, SMUG),
        half_close=False,
        closes=True,
    ),
    rejected("upgrade/connect-lowercase", H("connect h:443 HTTP/1.1", "Host: h:443", MARKH) + SMUGGLE, S(400, 405)),
]


def _assert_token(values: list[str], token: str) -> None:
    tokens = [t.strip().lower() for v in values for t in v.split(",")]
    assert token in tokens, f"Connection {values!r} lacks {token!r}"


# ---- line endings, folding, control characters (R1) -------------------------------------------

LINES = [
    rejected("lines/bare-lf-everywhere", b"GET / HTTP/1.1\nHost: h\nX-Marker: m4rk3r\n\n"),
    rejected("lines/bare-lf-request-line", b"GET / HTTP/1.1\nHost: h\r\nX-Marker: m4rk3r\r\n\r\n"),
    rejected("lines/bare-lf-header", b"GET / HTTP/1.1\r\nHost: h\nX-Marker: m4rk3r\r\n\r\n"),
    rejected("lines/bare-lf-end-of-head", b"GET / HTTP/1.1\r\nHost: h\r\nX-Marker: m4rk3r\r\n\n"),
    rejected("lines/bare-cr-line-end", b"GET / HTTP/1.1\rHost: h\r\nX-Marker: m4rk3r\r\n\r\n"),
    rejected(
        "lines/bare-cr-in-value",
        b"GET / HTTP/1.1\r\nHost: h\r\nX-A: a\rX-Tenant-ID: victim\r\n" + MARKH.encode() + b"\r\n\r\n",
    ),
    rejected("lines/obs-fold", H("GET / HTTP/1.1", "Host: h", MARKH, "X-A: a", " b")),
    rejected("lines/obs-fold-htab", H("GET / HTTP/1.1", "Host: h", MARKH, "X-A: a", "\tb")),
    rejected("lines/obs-fold-tenant", H("GET / HTTP/1.1", "Host: h", MARKH, "X-Tenant-ID: a", " victim")),
    rejected("lines/obs-fold-host", H("GET / HTTP/1.1", "Host: h", " evil", MARKH)),
    rejected("lines/leading-space-first-header", H("GET / HTTP/1.1", " Host: h", MARKH)),
    rejected("lines/nul-in-name", H("GET / HTTP/1.1", "Host: h", MARKH, b"X-A\x00: b")),
    rejected("lines/nul-in-value", H("GET / HTTP/1.1", "Host: h", MARKH, b"X-A: a\x00b")),
    rejected("lines/soh-in-value", H("GET / HTTP/1.1", "Host: h", MARKH, b"X-A: a\x01b")),
    rejected("lines/esc-in-value", H("GET / HTTP/1.1", "Host: h", MARKH, b"X-A: a\x1bb")),
    rejected("lines/del-in-value", H("GET / HTTP/1.1", "Host: h", MARKH, b"X-A: a\x7fb")),
    rejected("lines/vt-in-value", H("GET / HTTP/1.1", "Host: h", MARKH, b"X-A: a\x0bb")),
    rejected("lines/obs-text-in-name", H("GET / HTTP/1.1", "Host: h", MARKH, b"X-\xe9: b")),
    rejected("lines/nbsp-in-name", H("GET / HTTP/1.1", "Host: h", MARKH, b"X-A\xa0: b")),
    rejected("lines/space-in-name", H("GET / HTTP/1.1", "Host: h", MARKH, "X A: b")),
    rejected("lines/separator-in-name", H("GET / HTTP/1.1", "Host: h", MARKH, "X(A): b")),
    rejected("lines/space-before-colon", H("GET / HTTP/1.1", "Host : h", MARKH)),
    rejected("lines/htab-before-colon", H("GET / HTTP/1.1", "Host\t: h", MARKH)),
    rejected("lines/empty-name", H("GET / HTTP/1.1", "Host: h", MARKH, ": v")),
    rejected("lines/no-colon", H("GET / HTTP/1.1", "Host: h", MARKH, "X-A")),
    forwarded("lines/htab-in-value", H("GET / HTTP/1.1", "Host: h", "X-A: a\tb"), header_is("x-a", ["a\tb"])),
    case("lines/obs-text-in-value", H("GET / HTTP/1.1", "Host: h", b"X-A: caf\xe9"), [S(200, 400)], S(0, 1)),
    case("lines/empty-line-before-request", b"\r\n" + GET, [S(200, 400)], S(0, 1)),
    forwarded("lines/large-header-within-limit", H("GET / HTTP/1.1", "Host: h", "X-Big: " + "a" * 60000)),
    rejected("lines/head-over-max-header-bytes", H("GET / HTTP/1.1", "Host: h", MARKH, "X-Big: " + "a" * 70000), 431),
]

# ---- request line and version (R2, R3) --------------------------------------------------------

REQUEST_LINE = [
    rejected("reqline/http09", b"GET /m4rk3r\r\n\r\n", S(400, 505)),
    rejected("reqline/http2-version", H("GET / HTTP/2.0", "Host: h", MARKH), S(400, 505)),
    rejected("reqline/http12-version", H("GET / HTTP/1.2", "Host: h", MARKH), S(400, 505)),
    rejected("reqline/http3-version", H("GET / HTTP/3.0", "Host: h", MARKH), S(400, 505)),
    rejected("reqline/lowercase-version", H("GET / http/1.1", "Host: h", MARKH)),
    rejected(
        "reqline/http2-preface",
        b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + H("GET / HTTP/1.1", "Host: h", MARKH),
        S(400, 505),
    ),
    rejected("reqline/tab-separator", H("GET\t/ HTTP/1.1", "Host: h", MARKH)),
    rejected("reqline/trailing-space", H("GET / HTTP/1.1 ", "Host: h", MARKH)),
    rejected("reqline/lowercase-method", H("get / HTTP/1.1", "Host: h", MARKH)),
    rejected("reqline/unknown-method", H("FOO / HTTP/1.1", "Host: h", MARKH)),
    rejected("reqline/target-control-char", H("GET /\x01 HTTP/1.1", "Host: h", MARKH)),
    rejected("reqline/target-obs-text", H(b"GET /\xe9 HTTP/1.1", "Host: h", MARKH)),
    rejected("reqline/target-with-space", H("GET /a b HTTP/1.1", "Host: h", MARKH)),
    case("reqline/two-spaces", H("GET  / HTTP/1.1", "Host: h"), None, S(0, 1)),
    case("reqline/absolute-form", H("GET http://victim.example/x HTTP/1.1", "Host: h"), None, S(0, 1)),
    case("reqline/absolute-form-with-userinfo", H("GET http://a@victim.example/ HTTP/1.1", "Host: h"), None, S(0, 1)),
    case("reqline/asterisk-options", H("OPTIONS * HTTP/1.1", "Host: h"), None, S(0, 1)),
    case("reqline/asterisk-get", H("GET * HTTP/1.1", "Host: h"), None, S(0, 1)),
    case("reqline/authority-form-get", H("GET victim.example:80 HTTP/1.1", "Host: h"), None, S(0, 1)),
    forwarded("reqline/http10-without-host", b"GET / HTTP/1.0\r\n\r\n", _host_names_listener),
    forwarded("reqline/http10-with-host", H("GET / HTTP/1.0", "Host: h"), header_is("host", ["h"])),
    rejected("reqline/http11-without-host", H("GET / HTTP/1.1", MARKH)),
    rejected("reqline/two-hosts", H("GET / HTTP/1.1", "Host: h", "Host: evil", MARKH)),
    rejected("reqline/two-hosts-case", H("GET / HTTP/1.1", "Host: h", "host: evil", MARKH)),
    rejected("reqline/http10-two-hosts", H("GET / HTTP/1.0", "Host: h", "Host: evil", MARKH)),
]

# ---- Content-Length (R5, R6) ------------------------------------------------------------------


def _cl_bad(id: str, value: str | bytes, status: int | frozenset[int] = 400, body: bytes = b"hello") -> Case:
    line = value if isinstance(value, bytes) else f"Content-Length: {value}".encode()
    return rejected(id, H("POST /a HTTP/1.1", "Host: h", MARKH, line, body=body + SMUGGLE), status)


CONTENT_LENGTH = [
    _cl_bad("cl/huge", "99999999999999999999", S(400, 413)),
    _cl_bad("cl/over-max-body-bytes", str(100 * 1024 * 1024 + 1), 413),
    _cl_bad("cl/negative", "-1"),
    _cl_bad("cl/plus-sign", "+5"),
    _cl_bad("cl/list-same", "5, 5"),
    _cl_bad("cl/list-different", "5, 6"),
    _cl_bad("cl/space-inside", "5 5"),
    _cl_bad("cl/hex", "0x5"),
    _cl_bad("cl/decimal", "5.0"),
    _cl_bad("cl/empty", ""),
    _cl_bad("cl/nbsp", b"Content-Length: \xa05"),
    _cl_bad("cl/two-lines-same", b"Content-Length: 5\r\nContent-Length: 5"),
    _cl_bad("cl/two-lines-different", b"Content-Length: 5\r\nContent-Length: 50"),
    _cl_bad("cl/space-before-colon", b"Content-Length : 5"),
    _cl_bad("cl/underscore", b"Content_Length: 5"),
    _cl_bad("cl/underscore-lower", b"content_length: 5"),
    _cl_bad("cl/underscore-zero", b"Content_Length: 0"),
    _cl_bad("cl/underscore-and-dash", b"Content-Length: 5\r\nContent_Length: 50"),
    forwarded(
        "cl/leading-ows", H("POST /a HTTP/1.1", "Host: h", "Content-Length:   5", body=b"hello"), _cl_forwarded(5)
    ),
    forwarded(
        "cl/trailing-ows", H("POST /a HTTP/1.1", "Host: h", "Content-Length: 5\t", body=b"hello"), _cl_forwarded(5)
    ),
    forwarded(
        "cl/leading-zeros", H("POST /a HTTP/1.1", "Host: h", "Content-Length: 005", body=b"hello"), _cl_forwarded(5)
    ),
    forwarded(
        "cl/body-longer-than-length",
        post_cl(body=b"hello") + SMUGGLE,
        n=2,
        markers=(VICTIM,),
    ),
    forwarded(
        "cl/body-in-many-writes",
        [H("POST /a HTTP/1.1", "Host: h", "Content-Length: 10"), *(bytes([c]) for c in b"0123456789")],
        body_is(b"0123456789"),
    ),
]

# ---- GET / HEAD with a body (R7) --------------------------------------------------------------

GET_BODY = [
    rejected(
        "get-body/get-content-length",
        H("GET / HTTP/1.1", "Host: h", MARKH, f"Content-Length: {len(SMUGGLE)}", body=SMUGGLE),
    ),
    rejected(
        "get-body/head-content-length",
        H("HEAD / HTTP/1.1", "Host: h", MARKH, f"Content-Length: {len(SMUGGLE)}", body=SMUGGLE),
        methods=("HEAD",),
    ),
    rejected(
        "get-body/get-chunked",
        H("GET / HTTP/1.1", "Host: h", MARKH, "Transfer-Encoding: chunked", body=HELLO_CHUNKED + SMUGGLE),
    ),
    rejected(
        "get-body/head-chunked",
        H("HEAD / HTTP/1.1", "Host: h", MARKH, "Transfer-Encoding: chunked", body=HELLO_CHUNKED + SMUGGLE),
        methods=("HEAD",),
    ),
    forwarded("get-body/get-content-length-zero", H("GET / HTTP/1.1", "Host: h", "Content-Length: 0")),
    forwarded(
        "get-body/head-content-length-zero", H("HEAD / HTTP/1.1", "Host: h", "Content-Length: 0"), methods=("HEAD",)
    ),
    case(
        "get-body/pipelined-after-good",
        GET + H("GET / HTTP/1.1", "Host: h", MARKH, f"Content-Length: {len(SMUGGLE)}", body=SMUGGLE),
        [200, 400],
        1,
        markers=(MARK, SMUG),
        half_close=False,
        closes=True,
    ),
    forwarded(
        "get-body/options-with-body",
        H("OPTIONS / HTTP/1.1", "Host: h", "Content-Length: 5", body=b"hello"),
        body_is(b"hello"),
    ),
    forwarded(
        "get-body/delete-with-body",
        H("DELETE / HTTP/1.1", "Host: h", "Content-Length: 5", body=b"hello"),
        body_is(b"hello"),
    ),
]

# ---- pipelining (R11) -------------------------------------------------------------------------

BAD_TE = post_te("foo, chunked", body=SMUGGLED_AFTER_CHUNKED)
BAD_FOLD = H("GET / HTTP/1.1", "Host: h", MARKH, "X-A: a", " b")

PIPELINE = [
    forwarded("pipeline/ten-good", GET * 10, n=10),
    forwarded("pipeline/ten-good-byte-by-byte", [bytes([b]) for b in GET * 3], n=3, timeout=20.0),
    case("pipeline/bad-te-second", GET + BAD_TE, [200, 400], 1, markers=(MARK, SMUG), half_close=False, closes=True),
    case(
        "pipeline/bad-fold-third",
        GET + GET + BAD_FOLD + GET,
        [200, 200, 400],
        2,
        markers=(MARK,),
        half_close=False,
        closes=True,
    ),
    case(
        "pipeline/bad-version-second",
        GET + H("GET / HTTP/2.0", "Host: h", MARKH),
        [200, S(400, 505)],
        1,
        markers=(MARK,),
        half_close=False,
        closes=True,
    ),
    case(
        "pipeline/post-then-bad",
        post_cl(body=b"hello") + BAD_TE,
        [200, 400],
        1,
        markers=(MARK, SMUG),
        half_close=False,
        closes=True,
    ),
    case(
        "pipeline/no-host-second",
        GET + H("GET / HTTP/1.1", MARKH),
        [200, 400],
        1,
        markers=(MARK,),
        half_close=False,
        closes=True,
    ),
    case(
        "pipeline/underscore-cl-second",
        GET + H("POST / HTTP/1.1", "Host: h", MARKH, "Content_Length: 5", body=b"hello"),
        [200, 400],
        1,
        markers=(MARK,),
        half_close=False,
        closes=True,
    ),
    forwarded("pipeline/head-then-get", H("HEAD / HTTP/1.1", "Host: h") + GET, n=2, methods=("HEAD", "GET")),
    forwarded("pipeline/chunked-then-get", post_te("chunked") + GET, n=2),
    forwarded(
        "pipeline/expect-100-continue",
        [H("POST /a HTTP/1.1", "Host: h", "Expect: 100-continue", "Content-Length: 5"), Wait(interim=1), b"hello"],
        body_is(b"hello"),
        lambda o: _assert_interim(o, [100]),
    ),
]


def _assert_interim(o: Outcome, statuses: list[int]) -> None:
    got = [m.status for m in o.client.interim]
    assert got == statuses, f"interim responses {got}, expected {statuses}"


# ---- the tenant header in every spelling (R8) -------------------------------------------------


def _tenant(id: str, *lines: str | bytes, version: str = "HTTP/1.1") -> Case:
    return forwarded(id, H(f"GET / {version}", "Host: h", *lines), markers=(VICTIM,))


TENANT = [
    _tenant("tenant/exact", "X-Tenant-ID: victim"),
    _tenant("tenant/lowercase", "x-tenant-id: victim"),
    _tenant("tenant/uppercase", "X-TENANT-ID: victim"),
    _tenant("tenant/underscores", "X_Tenant_ID: victim"),
    _tenant("tenant/underscores-lowercase", "x_tenant_id: victim"),
    _tenant("tenant/mixed-separators", "X-Tenant_ID: victim"),
    _tenant("tenant/twice", "X-Tenant-ID: victim", "X-Tenant-ID: victim"),
    _tenant("tenant/three-spellings", "X-Tenant-ID: victim", "x_tenant_id: victim", "X-TENANT_ID: victim"),
    _tenant("tenant/empty-value", "X-Tenant-ID:", "X-Tenant-ID: victim"),
    _tenant("tenant/list-value", "X-Tenant-ID: victim, id-acme"),
    _tenant("tenant/htab-value", "X-Tenant-ID:\tvictim\t"),
    _tenant("tenant/own-id-claimed", "X-Tenant-ID: id-acme", "X-Tenant-ID: victim"),
    _tenant("tenant/after-body-headers-order", "X-A: 1", "X-Tenant-ID: victim", "X-B: 2"),
    _tenant("tenant/http10", "X-Tenant-ID: victim", version="HTTP/1.0"),
    _tenant("tenant/nominated-by-connection", "Connection: X-Tenant-ID", "X-Tenant-ID: victim"),
    forwarded(
        "tenant/in-chunked-trailer",
        post_te("chunked", body=b"5\r\nhello\r\n0\r\nX-Tenant-ID: victim\r\nX_Tenant_ID: victim\r\n\r\n"),
        no_trailers,
        markers=(VICTIM,),
    ),
    forwarded(
        "tenant/similar-name-passes",
        H("GET / HTTP/1.1", "Host: h", "X-Tenant-IDx: other"),
        header_is("x-tenant-idx", ["other"]),
    ),
    rejected(
        "tenant/space-before-colon",
        H("GET / HTTP/1.1", "Host: h", MARKH, "X-Tenant-ID : victim"),
        markers=(MARK, VICTIM),
    ),
    rejected(
        "tenant/htab-before-colon",
        H("GET / HTTP/1.1", "Host: h", MARKH, "X-Tenant-ID\t: victim"),
        markers=(MARK, VICTIM),
    ),
    rejected(
        "tenant/folded-value",
        H("GET / HTTP/1.1", "Host: h", MARKH, "X-Tenant-ID: a", " victim"),
        markers=(MARK, VICTIM),
    ),
    rejected(
        "tenant/leading-space-line",
        H("GET / HTTP/1.1", "Host: h", MARKH, " X-Tenant-ID: victim"),
        markers=(MARK, VICTIM),
    ),
    rejected(
        "tenant/nul-in-name", H("GET / HTTP/1.1", "Host: h", MARKH, b"X-Tenant-ID\x00: victim"), markers=(MARK, VICTIM)
    ),
    rejected(
        "tenant/greek-iota-lookalike",
        H("GET / HTTP/1.1", "Host: h", MARKH, "X-Tenant-\u0399d: victim".encode()),
        markers=(MARK, VICTIM),
    ),
    rejected(
        "tenant/bare-lf-line",
        b"GET / HTTP/1.1\r\nHost: h\r\nX-Marker: m4rk3r\r\nX-Tenant-ID: victim\n\r\n",
        markers=(MARK, VICTIM),
    ),
    rejected(
        "tenant/bare-cr-line",
        b"GET / HTTP/1.1\r\nHost: h\r\nX-Marker: m4rk3r\r\nX-A: 1\rX-Tenant-ID: victim\r\n\r\n",
        markers=(MARK, VICTIM),
    ),
]

REQUEST_CASES: list[Case] = [
    *CL_TE,
    *TE,
    *CHUNKS,
    *CONNECTION,
    *MANAGED,
    *UPGRADE,
    *LINES,
    *REQUEST_LINE,
    *CONTENT_LENGTH,
    *GET_BODY,
    *PIPELINE,
    *TENANT,
]
