"""The whole ResponseHead rewrite_response returns (daemon/response_head.py), field by field: the
head a client gets, how its body is framed, whether the connection stays open, whether the body
ends at the upstream's close. Exact, because each field decides what the client can parse."""

from __future__ import annotations

import pytest

from nsproxy_appliance.daemon.framing import BodyMode
from nsproxy_appliance.daemon.response_head import BadResponse, ResponseHead, interim_head, rewrite_response

OK = b"HTTP/1.1 200 OK"


def _raw(*lines: bytes, status: bytes = OK) -> bytes:
    return b"\r\n".join((status, *lines))


def _rewrite(raw: bytes, status: int = 200, *, http11: bool = True, keep_alive: bool = True, head: bool = False):
    return rewrite_response(raw, status, client_http11=http11, keep_alive=keep_alive, bodiless=head)


def test_content_length_passes_through_and_the_connection_stays_open():
    assert _rewrite(_raw(b"Content-Length: 3", b"X: 1")) == ResponseHead(
        b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nX: 1\r\n\r\n", BodyMode.LENGTH, True, False, None
    )


def test_the_client_asked_to_close():
    assert _rewrite(_raw(b"Content-Length: 3"), keep_alive=False) == ResponseHead(
        b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nConnection: close\r\n\r\n", BodyMode.LENGTH, False, False, None
    )


def test_chunked_upstream_to_an_http10_client_is_close_delimited():
    assert _rewrite(_raw(b"Transfer-Encoding: chunked", b"X: 1"), http11=False) == ResponseHead(
        b"HTTP/1.1 200 OK\r\nX: 1\r\nConnection: close\r\n\r\n", BodyMode.UNTIL_CLOSE, False, False, None
    )


def test_close_delimited_upstream_to_an_http11_client_is_rechunked():
    assert _rewrite(_raw(b"X: 1")) == ResponseHead(
        b"HTTP/1.1 200 OK\r\nX: 1\r\nTransfer-Encoding: chunked\r\n\r\n", BodyMode.CHUNKED, True, True, None
    )


def test_transfer_encoding_lines_are_joined_in_order():
    resp = _rewrite(_raw(b"Transfer-Encoding: gzip", b"X: 1", b"Transfer-Encoding: chunked"))
    assert resp == ResponseHead(
        b"HTTP/1.1 200 OK\r\nX: 1\r\nTransfer-Encoding: gzip, chunked\r\n\r\n", BodyMode.CHUNKED, True, False, None
    )


@pytest.mark.parametrize(
    "te",
    [
        b"chunked, gzip",  # chunked not last
        b"chunked, chunked",
        b"gzip, chunked, chunked",
        b"chunkedX",  # nothing but SP / HTAB is trimmed off a coding
        b"bogus",
    ],
)
def test_transfer_codings_nsproxy_cannot_frame_are_bad_responses(te):
    with pytest.raises(BadResponse, match="unsupported Transfer-Encoding"):
        _rewrite(_raw(b"Transfer-Encoding: " + te))


def test_codings_cannot_reach_an_http10_client():
    with pytest.raises(BadResponse, match=r"^transfer codings for an HTTP/1.0 client$"):
        _rewrite(_raw(b"Transfer-Encoding: gzip, chunked"), http11=False)


def test_trailing_whitespace_of_framing_values_is_not_part_of_them():
    resp = _rewrite(_raw(b"Transfer-Encoding: gzip \t", b"Transfer-Encoding: chunked  "))
    assert resp.head == b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n"


def test_every_line_a_connection_option_nominates_is_cut_wherever_it_is():
    raw = _raw(b"Connection: X-A", b"X-A: 1", b"X-Keep: 1", b"connection: x-b,x-c", b"X-C: 3", b"X-B: 2")
    assert _rewrite(raw).head == b"HTTP/1.1 200 OK\r\nX-Keep: 1\r\nTransfer-Encoding: chunked\r\n\r\n"


def test_a_nominated_last_line_is_cut_to_its_end():
    raw = _raw(b"Content-Length: 0", b"Connection: X-Last", b"X-Last: 1")
    assert _rewrite(raw).head == b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"


def test_a_connection_option_cannot_cut_the_framing():
    raw = _raw(b"Connection: transfer-encoding, content-length", b"Transfer-Encoding: chunked")
    resp = _rewrite(raw)
    assert resp.mode == BodyMode.CHUNKED and resp.head == b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"


def test_switching_protocols():
    raw = _raw(b"Connection: upgrade", b"Upgrade: websocket \t", b"Sec-WebSocket-Accept: x", status=b"HTTP/1.1 101 S")
    assert _rewrite(raw, 101, keep_alive=False) == ResponseHead(
        b"HTTP/1.1 101 S\r\nSec-WebSocket-Accept: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
        BodyMode.NONE,
        True,
        False,
        b"websocket",
    )
    odd = _rewrite(_raw(b"Upgrade: websocketX", status=b"HTTP/1.1 101 S"), 101)
    assert odd.upgrade == b"websocketX"  # reported as sent: http.py refuses anything but websocket
    with pytest.raises(BadResponse, match=r"^101 without Upgrade$"):
        _rewrite(_raw(b"X: 1", status=b"HTTP/1.1 101 S"), 101)


@pytest.mark.parametrize(
    "status_line",
    [b"HTTP/1.1 200 O\x01K", b"HTTP/1.1 200 OK\x7f", b"HTTP/1.1 200 OK\x1f"],
)
def test_control_characters_in_the_status_line_are_a_bad_response(status_line):
    with pytest.raises(BadResponse, match=r"^control characters in the status line$"):
        _rewrite(status_line)  # a lone status line: checked to its very last byte
    with pytest.raises(BadResponse):
        _rewrite(_raw(b"Content-Length: 0", status=status_line))


def test_a_tab_in_the_reason_phrase_is_allowed():
    assert _rewrite(b"HTTP/1.1 200 O\tK\r\nContent-Length: 0").head.startswith(b"HTTP/1.1 200 O\tK\r\n")


def test_interim_heads_from_an_http10_upstream_become_http11():
    assert interim_head(b"HTTP/1.0 100 Continue") == b"HTTP/1.1 100 Continue\r\n\r\n"
    assert interim_head(b"HTTP/1.1 103 Early Hints\r\nLink: </s>\r\nKeep-Alive: 5") == (
        b"HTTP/1.1 103 Early Hints\r\nLink: </s>\r\n\r\n"
    )


def test_an_unsupported_transfer_encoding_is_named_without_trailing_blanks():
    raw = _raw(b"Transfer-Encoding: \tbogus", b"Transfer-Encoding: chunked \t ")
    with pytest.raises(BadResponse) as err:
        _rewrite(raw)
    assert str(err.value) == "unsupported Transfer-Encoding b'bogus,chunked'"
