"""The response-side corpus: a malicious upstream's answers and what the contract says the client gets.

Contract "Responses" section: malformed -> 502 if nothing was relayed yet, else the client connection
is aborted; framing towards the client is always correct; unsolicited / wrong 101 -> 502; bytes after
a complete response are never relayed and that upstream connection is never reused; 1xx only to
HTTP/1.1 clients; hop-by-hop response headers stripped.
"""

from __future__ import annotations

from collections.abc import Callable

from cases import (
    GET,
    SMUGGLE,
    Case,
    H,
    Outcome,
    S,
    case,
    client_body_is,
    client_header_is,
    client_lacks_headers,
    post_cl,
    separate_upstream_connections,
    upstream_heads,
)
from client import ABORTED, Wait
from recording_upstream import Chunked, CloseDelimited, Raw, Responder, Sequence, WebSocket, response

EVIL = b"3v1l!"  # bytes a malicious upstream tries to slip to the client
GET10 = b"GET / HTTP/1.0\r\n\r\n"
WS = H("GET /ws HTTP/1.1", "Host: h", "Connection: Upgrade", "Upgrade: websocket")


def _raw(data: bytes, **kw) -> Callable[[], Responder]:  # type: ignore[no-untyped-def]
    return lambda: Raw(data, **kw)


def _bad(id: str, data: bytes, *, request: bytes = GET, may_abort: bool = False, **kw) -> Case:  # type: ignore[no-untyped-def]
    """Malformed response: 502 (or, if part was relayed already, an aborted connection); EVIL never relayed."""
    allowed = S(502, ABORTED) if may_abort else S(502)
    return case(
        id,
        request,
        [allowed],
        None,
        responder=_raw(data, close=True),
        client_markers=(EVIL,),
        allow_truncated=may_abort,
        **kw,
    )


def _then_second(first: Responder) -> Callable[[], Responder]:
    return lambda: Sequence(first, Responder())


def _extra_after(id: str, first: bytes, request: bytes = GET, methods: tuple[str, ...] = ()) -> Case:
    """The upstream sends more than one response: the extra is never relayed, the connection never reused."""
    return case(
        id,
        [request, Wait(responses=1), GET],
        [S(200, 204, 304), 200],
        2,
        responder=_then_second(Raw(first)),
        client_markers=(EVIL,),
        methods=methods,
        checks=(separate_upstream_connections,),
    )


def _interim_is(statuses: list[int]):  # type: ignore[no-untyped-def]
    def check(o: Outcome) -> None:
        got = [m.status for m in o.client.interim]
        assert got == statuses, (
            f"interim responses {got[:10]}... ({len(got)}), expected {statuses[:10]} ({len(statuses)})"
        )

    return check


def _framing_is(framing: str):  # type: ignore[no-untyped-def]
    def check(o: Outcome) -> None:
        assert o.final().framing == framing, f"client framing {o.final().framing}, expected {framing}"

    return check


FLOOD = b"HTTP/1.1 100 Continue\r\n\r\n" * 500 + response(body=b"ok\n")

RESPONSE_CASES: list[Case] = [
    # 101 (contract: unsolicited or non-websocket -> 502)
    _bad(
        "resp/unsolicited-101",
        b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n" + EVIL,
    ),
    _bad(
        "resp/unsolicited-101-h2c",
        b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\r\n" + EVIL,
    ),
    case("resp/101-wrong-upgrade", WS + EVIL, [502], 1, responder=lambda: WebSocket(upgrade="h2c"), markers=(EVIL,)),
    case("resp/101-without-upgrade", WS + EVIL, [502], 1, responder=lambda: WebSocket(upgrade=None), markers=(EVIL,)),
    # framing conflicts
    _bad("resp/duplicate-content-length", b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\n" + EVIL),
    _bad("resp/different-content-lengths", b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 2\r\n\r\n" + EVIL),
    _bad("resp/content-length-list", b"HTTP/1.1 200 OK\r\nContent-Length: 5, 5\r\n\r\n" + EVIL),
    _bad("resp/content-length-negative", b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n" + EVIL),
    _bad("resp/content-length-plus", b"HTTP/1.1 200 OK\r\nContent-Length: +5\r\n\r\n" + EVIL),
    _bad(
        "resp/cl-and-te",
        b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n5\r\n" + EVIL + b"\r\n0\r\n\r\n",
    ),
    _bad(
        "resp/te-unknown-coding",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: foo, chunked\r\n\r\n5\r\n" + EVIL + b"\r\n0\r\n\r\n",
    ),
    _bad(
        "resp/te-chunked-param",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked;x=1\r\n\r\n5\r\n" + EVIL + b"\r\n0\r\n\r\n",
    ),
    _bad("resp/te-nbsp", b"HTTP/1.1 200 OK\r\nTransfer-Encoding: \xa0chunked\r\n\r\n5\r\n" + EVIL + b"\r\n0\r\n\r\n"),
    # bad chunks: 502, or an aborted connection if the head was relayed; nothing after the fault
    _bad(
        "resp/bad-chunk-size",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\nzz\r\n" + EVIL,
        may_abort=True,
    ),
    _bad(
        "resp/chunk-size-overflow",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nfffffffffffffffffff\r\n" + EVIL,
        may_abort=True,
    ),
    _bad(
        "resp/chunk-data-without-crlf",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nokXX" + EVIL,
        may_abort=True,
    ),
    _bad(
        "resp/chunk-bare-lf",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\nok\r\n0\r\n\r\n" + EVIL,
        may_abort=True,
    ),
    # response splitting / header injection
    _bad(
        "resp/bare-cr-in-header", b"HTTP/1.1 200 OK\r\nX-A: a\rSet-Cookie: evil=1\r\nContent-Length: 5\r\n\r\n" + EVIL
    ),
    _bad("resp/bare-lf-lines", b"HTTP/1.1 200 OK\nContent-Length: 5\n\n" + EVIL),
    _bad("resp/reason-bare-cr", b"HTTP/1.1 200 OK\rSet-Cookie: evil=1\r\nContent-Length: 5\r\n\r\n" + EVIL),
    case(
        "resp/reason-with-nul",
        GET,
        [S(200, 502)],
        None,
        responder=_raw(b"HTTP/1.1 200 O\x00K\r\nContent-Length: 2\r\n\r\nok"),
    ),
    case(
        "resp/reason-with-control-chars",
        GET,
        [S(200, 502)],
        None,
        responder=_raw(b"HTTP/1.1 200 OK\x1b[2J\x7f\r\nContent-Length: 2\r\n\r\nok"),
    ),
    _bad(
        "resp/header-obs-fold", b"HTTP/1.1 200 OK\r\nX-A: a\r\n Set-Cookie: evil=1\r\nContent-Length: 5\r\n\r\n" + EVIL
    ),
    _bad("resp/header-space-before-colon", b"HTTP/1.1 200 OK\r\nContent-Length : 5\r\n\r\n" + EVIL),
    _bad("resp/header-nul", b"HTTP/1.1 200 OK\r\nX-A: a\x00b\r\nContent-Length: 5\r\n\r\n" + EVIL),
    _bad("resp/status-four-digits", b"HTTP/1.1 2000 OK\r\nContent-Length: 5\r\n\r\n" + EVIL),
    _bad("resp/status-letters", b"HTTP/1.1 2x0 OK\r\nContent-Length: 5\r\n\r\n" + EVIL),
    _bad("resp/http09-style", b"just a body, no status line " + EVIL),
    # framing towards the client
    case(
        "resp/chunked-relayed",
        GET,
        [200],
        1,
        responder=Chunked,
        checks=(client_body_is(b"abcde"), _framing_is("chunked")),
    ),
    case(
        "resp/te-gzip-chunked-relayed",
        GET,
        [200],
        1,
        responder=_raw(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n"),
        checks=(client_header_is("transfer-encoding", ["gzip, chunked"]), client_body_is(b"abc")),
    ),
    case(
        "resp/te-gzip-close-delimited-http11",
        GET,
        [200],
        1,
        responder=_raw(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\ngzipped-bytes", close=True),
        checks=(client_header_is("transfer-encoding", ["gzip, chunked"]), client_body_is(b"gzipped-bytes")),
    ),
    case(
        "resp/te-gzip-close-delimited-http10",
        GET10,
        [502],
        1,
        responder=_raw(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\ngzipped-bytes", close=True),
    ),
    case(
        "resp/close-delimited-http11",
        GET,
        [200],
        1,
        responder=CloseDelimited,
        checks=(client_body_is(b"close-delimited body"), _framing_is("chunked")),
    ),
    case(
        "resp/close-delimited-http10",
        GET10,
        [200],
        1,
        responder=CloseDelimited,
        checks=(client_body_is(b"close-delimited body"), _framing_is("close")),
    ),
    case(
        "resp/connection-nominates-content-length",
        GET,
        [200],
        1,
        responder=_raw(b"HTTP/1.1 200 OK\r\nConnection: Content-Length\r\nContent-Length: 2\r\n\r\nok"),
        checks=(client_body_is(b"ok"),),
    ),
    case(
        "resp/hop-by-hop-stripped",
        GET,
        [200],
        1,
        responder=_raw(
            b"HTTP/1.1 200 OK\r\nConnection: X-Secret\r\nX-Secret: 1\r\nKeep-Alive: timeout=5\r\n"
            b"Proxy-Authenticate: Basic\r\nProxy-Connection: keep-alive\r\nTrailer: X-T\r\nUpgrade: h2c\r\n"
            b"X-Kept: 1\r\nContent-Length: 2\r\n\r\nok"
        ),
        checks=(
            client_lacks_headers(
                "x-secret", "keep-alive", "proxy-authenticate", "proxy-connection", "trailer", "upgrade"
            ),
            client_header_is("x-kept", ["1"]),
        ),
    ),
    # more than one response for one request
    _extra_after("resp/second-response-after-first", response(body=b"ok") + response(body=EVIL)),
    _extra_after("resp/extra-bytes-after-response", response(body=b"ok") + EVIL),
    _extra_after("resp/204-with-body", b"HTTP/1.1 204 No Content\r\nContent-Length: 5\r\n\r\n" + EVIL),
    _extra_after("resp/304-with-body", b"HTTP/1.1 304 Not Modified\r\nContent-Length: 5\r\n\r\n" + EVIL),
    _extra_after(
        "resp/head-response-with-body",
        b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n" + EVIL,
        request=H("HEAD / HTTP/1.1", "Host: h"),
        methods=("HEAD", "GET"),
    ),
    _extra_after(
        "resp/head-response-with-chunked-body",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\n" + EVIL + b"\r\n0\r\n\r\n",
        request=H("HEAD / HTTP/1.1", "Host: h"),
        methods=("HEAD", "GET"),
    ),
    # 1xx
    case("resp/100-flood", GET, [200], 1, responder=_raw(FLOOD), checks=(client_body_is(b"ok\n"),)),
    case(
        "resp/103-early-hints",
        GET,
        [200],
        1,
        responder=_raw(b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\n\r\n" + response(body=b"ok")),
        checks=(_interim_is([103]),),
    ),
    case("resp/1xx-to-http10-client", GET10, [200], 1, responder=_raw(FLOOD), checks=(_interim_is([]),)),
    # the upstream does not wait for, or hangs up on, the request body
    case(
        "resp/early-response-before-body",
        [post_cl(body=SMUGGLE)[: -len(SMUGGLE)], Wait(responses=1), SMUGGLE],
        [200],
        None,
        responder=_raw(response(body=b"early"), at="head"),
        checks=(upstream_heads(1),),
    ),
    case(
        "resp/upstream-closes-mid-request-body",
        [post_cl(body=b"x" * 200_000)[:-150_000], b"x" * 150_000],
        [S(502, ABORTED)],
        None,
        responder=_raw(b"", at="head", abort=True),
        checks=(upstream_heads(1),),
    ),
    case(
        "resp/upstream-closes-mid-response-body",
        GET,
        [ABORTED],
        1,
        responder=_raw(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly-part", close=True),
        allow_truncated=True,
    ),
    case(
        "resp/response-to-smuggled-looking-body",
        post_cl(body=SMUGGLE),
        [200],
        1,
        responder=_raw(response(body=b"ok")),
        checks=(upstream_heads(1),),
    ),
]
