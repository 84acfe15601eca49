"""Pure header rewriting rules (daemon/headers.py)."""

from __future__ import annotations

import pytest

from nsproxy_appliance.daemon.headers import (
    BODY_CHUNKED,
    BODY_LENGTH,
    BODY_NONE,
    BODY_TUNNEL,
    BODY_UNTIL_CLOSE,
    HeaderValueError,
    RequestPolicy,
    error_response,
    rewrite_request,
    rewrite_response,
)

POLICY = RequestPolicy.build("X-Tenant-ID", "acme")


def _lines(head: bytes) -> list[bytes]:
    assert head.endswith(b"\r\n\r\n")
    return head[:-4].split(b"\r\n")


def _request(headers, **kw):
    return rewrite_request(b"GET", b"/p?q=1", headers, POLICY, b"10.0.0.7", **kw)


def test_request_line_is_http11_and_host_kept():
    head = _request([(b"Host", b"shop.test")]).head
    lines = _lines(head)
    assert lines[0] == b"GET /p?q=1 HTTP/1.1"
    assert lines[1] == b"Host: shop.test"
    assert b"X-Tenant-ID: acme" in lines
    assert b"X-Forwarded-For: 10.0.0.7" in lines
    assert b"X-Forwarded-Proto: http" in lines
    assert b"X-Forwarded-Host: shop.test" in lines


@pytest.mark.parametrize("name", [b"X-Tenant-ID", b"x-tenant-id", b"X-TENANT-ID", b"X_Tenant_Id", b"x_tenant-ID"])
def test_tenant_header_spellings_are_dropped(name):
    lines = _lines(_request([(b"Host", b"a"), (name, b"evil"), (name, b"evil2")]).head)
    assert [ln for ln in lines if ln.lower().replace(b"_", b"-").startswith(b"x-tenant-id")] == [b"X-Tenant-ID: acme"]


def test_connection_named_and_hop_by_hop_headers_are_dropped():
    headers = [
        (b"Host", b"a"),
        (b"Connection", b"keep-alive, X-Private"),
        (b"connection", b"X-Other"),
        (b"X-Private", b"1"),
        (b"X-Other", b"1"),
        (b"Keep-Alive", b"300"),
        (b"Proxy-Connection", b"keep-alive"),
        (b"TE", b"trailers"),
        (b"Trailer", b"X-Sum"),
        (b"Proxy-Authorization", b"secret"),
        (b"Upgrade", b"websocket"),
        (b"X-Keep", b"yes"),
    ]
    lines = _lines(_request(headers).head)
    names = {ln.split(b":")[0].lower() for ln in lines[1:]}
    assert names == {b"host", b"x-keep", b"x-tenant-id", b"x-forwarded-for", b"x-forwarded-proto", b"x-forwarded-host"}


def test_upgrade_request_keeps_upgrade():
    lines = _lines(
        _request([(b"Host", b"a"), (b"Connection", b"Upgrade"), (b"Upgrade", b"websocket")], upgrade=True).head
    )
    assert b"Connection: Upgrade" in lines and b"Upgrade: websocket" in lines


def test_x_forwarded_for_chain_is_appended_and_others_replaced():
    headers = [
        (b"Host", b"a"),
        (b"X-Forwarded-For", b"1.1.1.1"),
        (b"x-forwarded-for", b"2.2.2.2, 3.3.3.3"),
        (b"X-Forwarded-Proto", b"https"),
        (b"X_Forwarded_Host", b"evil"),
    ]
    lines = _lines(_request(headers).head)
    assert b"X-Forwarded-For: 1.1.1.1, 2.2.2.2, 3.3.3.3, 10.0.0.7" in lines
    assert [ln for ln in lines if b"proto" in ln.lower()] == [b"X-Forwarded-Proto: http"]
    assert [ln for ln in lines if b"forwarded-host" in ln.lower().replace(b"_", b"-")] == [b"X-Forwarded-Host: a"]


def test_body_framing_is_reported():
    head = _request([(b"Host", b"a"), (b"Content-Length", b"12")])
    assert head.content_length == 12 and not head.chunked and b"Content-Length: 12" in head.head
    head = _request([(b"Host", b"a"), (b"Transfer-Encoding", b"chunked")])
    assert head.chunked and b"Transfer-Encoding: chunked" in _lines(head.head)


def test_missing_host_gets_a_default():
    lines = _lines(_request([], default_host=b"localhost").head)
    assert b"Host: localhost" in lines
    assert not any(ln.startswith(b"X-Forwarded-Host") for ln in lines)


@pytest.mark.parametrize(("header", "tenant_id"), [("X Bad", "a"), ("X-Ok", "a\r\nX-Evil: 1"), ("", "a")])
def test_policy_rejects_unsendable_config(header, tenant_id):
    with pytest.raises(HeaderValueError):
        RequestPolicy.build(header, tenant_id)


def _response(status, headers, **kw):
    args = {"client_http11": True, "keep_alive": True, "bodiless": False} | kw
    return rewrite_response(status, b"OK", headers, **args)


def test_response_with_length_passes_through():
    resp = _response(200, [(b"Content-Length", b"3"), (b"Connection", b"keep-alive, X-Hop"), (b"X-Hop", b"1")])
    assert resp.mode == BODY_LENGTH and resp.keep_alive
    assert _lines(resp.head) == [b"HTTP/1.1 200 OK", b"Content-Length: 3"]


def test_chunked_and_close_delimited_responses():
    resp = _response(200, [(b"Transfer-Encoding", b"chunked")])
    assert resp.mode == BODY_CHUNKED and b"Transfer-Encoding: chunked" in resp.head and not resp.until_eof
    resp = _response(200, [])
    assert resp.mode == BODY_CHUNKED and resp.until_eof and resp.keep_alive
    resp = _response(200, [], client_http11=False)
    assert resp.mode == BODY_UNTIL_CLOSE and not resp.keep_alive and b"Connection: close" in resp.head


def test_http10_keep_alive_is_announced():
    resp = _response(200, [(b"Content-Length", b"0")], client_http11=False)
    assert b"Connection: keep-alive" in resp.head and resp.keep_alive


@pytest.mark.parametrize(("status", "bodiless"), [(204, False), (304, False), (200, True), (100, False)])
def test_bodiless_responses(status, bodiless):
    resp = _response(status, [(b"Content-Length", b"10"), (b"Transfer-Encoding", b"chunked")], bodiless=bodiless)
    assert resp.mode == BODY_NONE
    assert b"Transfer-Encoding" not in resp.head


def test_switching_protocols_keeps_upgrade():
    resp = _response(101, [(b"Connection", b"Upgrade"), (b"Upgrade", b"websocket"), (b"Sec-WebSocket-Accept", b"x")])
    assert resp.mode == BODY_TUNNEL
    lines = _lines(resp.head)
    assert b"Upgrade: websocket" in lines and b"Connection: Upgrade" in lines and b"Sec-WebSocket-Accept: x" in lines


def test_error_response_is_small_and_closes():
    data = error_response(502)
    head, body = data.split(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 502 Bad Gateway") and b"Connection: close" in head
    assert b"Content-Length: %d" % len(body) in head


def test_duplicate_host_is_refused():
    with pytest.raises(ValueError):
        _request([(b"Host", b"a"), (b"host", b"b")])


def test_classification_cache_keeps_per_policy_owned_names_apart():
    other = RequestPolicy.build("X-Org", "o1")
    headers = [(b"Host", b"a"), (b"X-Org", b"spoof"), (b"X-Tenant-ID", b"spoof")]
    mine = _lines(_request(headers).head)
    theirs = _lines(rewrite_request(b"GET", b"/", headers, other, b"10.0.0.7").head)
    assert b"X-Org: spoof" in mine and b"X-Tenant-ID: acme" in mine and b"X-Tenant-ID: spoof" not in mine
    assert b"X-Tenant-ID: spoof" in theirs and b"X-Org: o1" in theirs and b"X-Org: spoof" not in theirs
