"""Response rewriting and framing (daemon/response_head.py, daemon/framing.py)."""

from __future__ import annotations

import pytest

from nsproxy_appliance.daemon.framing import BodyMode, error_response, request_codings, transfer_codings
from nsproxy_appliance.daemon.response_head import BadResponse, interim_head, rewrite_response


def _raw(*lines: bytes, status: bytes = b"HTTP/1.1 200 OK") -> bytes:
    return b"\r\n".join((status, *lines))


def _response(raw, status=200, **kw):
    args = {"client_http11": True, "keep_alive": True, "bodiless": False} | kw
    return rewrite_response(raw, status, **args)


def _lines(head: bytes) -> list[bytes]:
    assert head.endswith(b"\r\n\r\n")
    return head[:-4].split(b"\r\n")


def test_response_with_length_passes_through_minus_hop_by_hop():
    raw = _raw(b"Content-Length: 3", b"Connection: keep-alive, X-Hop", b"X-Hop: 1", b"Keep-Alive: timeout=5", b"X-B: 2")
    resp = _response(raw)
    assert resp.mode == BodyMode.LENGTH and resp.keep_alive
    assert _lines(resp.head) == [b"HTTP/1.1 200 OK", b"Content-Length: 3", b"X-B: 2"]


def test_connection_cannot_nominate_the_framing_away():
    resp = _response(_raw(b"Connection: Content-Length", b"Content-Length: 3"))
    assert b"Content-Length: 3" in _lines(resp.head) and resp.mode == BodyMode.LENGTH


def test_chunked_and_close_delimited_responses():
    resp = _response(_raw(b"Transfer-Encoding: chunked"))
    assert resp.mode == BodyMode.CHUNKED and b"Transfer-Encoding: chunked" in _lines(resp.head) and not resp.until_eof
    resp = _response(_raw(b"X: 1"))
    assert resp.mode == BodyMode.CHUNKED and resp.until_eof and resp.keep_alive
    resp = _response(_raw(b"X: 1"), client_http11=False)
    assert resp.mode == BodyMode.UNTIL_CLOSE and not resp.keep_alive and b"Connection: close" in _lines(resp.head)


def test_transfer_codings_before_chunked_are_kept_and_a_non_chunked_final_one_is_closed_with_chunked():
    resp = _response(_raw(b"Transfer-Encoding: gzip, chunked"))
    assert _lines(resp.head)[1:] == [b"Transfer-Encoding: gzip, chunked"] and not resp.until_eof
    resp = _response(_raw(b"Transfer-Encoding: gzip"))
    assert resp.until_eof and resp.mode == BodyMode.CHUNKED
    assert _lines(resp.head)[1:] == [b"Transfer-Encoding: gzip, chunked"]
    with pytest.raises(BadResponse):
        _response(_raw(b"Transfer-Encoding: gzip"), client_http11=False)
    with pytest.raises(BadResponse):
        _response(_raw(b"Transfer-Encoding: bogus, chunked"))


def test_http10_upstream_status_line_becomes_http11_and_http10_clients_get_keep_alive():
    resp = _response(_raw(b"Content-Length: 0", status=b"HTTP/1.0 200 OK"), client_http11=False)
    assert _lines(resp.head) == [b"HTTP/1.1 200 OK", b"Content-Length: 0", b"Connection: keep-alive"]


@pytest.mark.parametrize(("status", "bodiless"), [(204, False), (304, False), (200, True), (103, False)])
def test_bodiless_responses(status, bodiless):
    resp = _response(_raw(b"Content-Length: 10", b"Transfer-Encoding: chunked"), status, bodiless=bodiless)
    assert resp.mode == BodyMode.NONE
    assert not any(ln.lower().startswith(b"transfer-encoding") for ln in _lines(resp.head))


def test_switching_protocols_keeps_upgrade():
    raw = _raw(b"Connection: Upgrade", b"Upgrade: websocket", b"Sec-WebSocket-Accept: x", status=b"HTTP/1.1 101 S")
    resp = _response(raw, 101)
    assert resp.upgrade == b"websocket"
    lines = _lines(resp.head)
    assert b"Upgrade: websocket" in lines and b"Connection: Upgrade" in lines and b"Sec-WebSocket-Accept: x" in lines
    with pytest.raises(BadResponse):
        _response(_raw(b"X: 1", status=b"HTTP/1.1 101 S"), 101)


def test_interim_heads_lose_hop_by_hop_lines():
    assert interim_head(_raw(b"Link: </a>", b"Connection: x", status=b"HTTP/1.1 103 Early")) == (
        b"HTTP/1.1 103 Early\r\nLink: </a>\r\n\r\n"
    )


def test_transfer_coding_rules():
    assert transfer_codings(b"chunked") == (b"chunked",)
    assert transfer_codings(b"GZip ,\tchunked") == (b"gzip", b"chunked")
    assert transfer_codings(b"chunked;q=1") is None and transfer_codings(b"") is None
    assert request_codings(b"gzip, chunked") == b"gzip, chunked"
    assert request_codings(b"chunked, chunked") is None and request_codings(b"gzip") is None


def test_error_response_is_small_and_closes():
    data = error_response(502)
    head, body = data.split(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 502 Bad Gateway") and b"Connection: close" in head
    assert b"Content-Length: %d" % len(body) in head
    assert b"Allow: " in error_response(405)
