"""Request rewriting rules (daemon/request_head.py): what the upstream receives for a client head."""

from __future__ import annotations

import pytest

from nsproxy_appliance.daemon.request_head import (
    MANAGED_HEADERS,
    PROTECTED,
    Action,
    HeaderValueError,
    Peer,
    Refused,
    RequestPolicy,
    rewrite_request,
)

POLICY = RequestPolicy.build("X-Tenant-ID", "acme")
PEER = Peer.of("10.0.0.7", 8080)


def _lines(head: bytes) -> list[bytes]:
    assert head.endswith(b"\r\n\r\n")
    return head[:-4].split(b"\r\n")


def _request(headers, method=b"GET", http11=True, policy=POLICY, peer=PEER):
    return rewrite_request(
        method, b"/p?q=1", headers, policy, peer, http11=http11, default_host=b"10.0.0.1:8080", request_id=b"rid-1"
    )


def _named(lines: list[bytes], name: bytes) -> list[bytes]:
    """Every line whose header name, read the way a CGI server reads it, is `name`."""
    return [ln for ln in lines[1:] if ln.split(b":")[0].lower().replace(b"_", b"-") == name]


def test_request_line_is_http11_and_host_kept():
    lines = _lines(_request([(b"Host", b"shop.test")]).head)
    assert lines[0] == b"GET /p?q=1 HTTP/1.1"
    assert lines[1] == b"Host: shop.test"
    assert _named(lines, b"x-tenant-id") == [b"X-Tenant-ID: acme"]
    assert _named(lines, b"x-forwarded-for") == [b"X-Forwarded-For: 10.0.0.7"]
    assert _named(lines, b"x-forwarded-proto") == [b"X-Forwarded-Proto: http"]
    assert _named(lines, b"x-forwarded-host") == [b"X-Forwarded-Host: shop.test"]
    assert _named(lines, b"x-forwarded-port") == [b"X-Forwarded-Port: 8080"]
    assert _named(lines, b"x-real-ip") == [b"X-Real-IP: 10.0.0.7"]
    assert _named(lines, b"forwarded") == [b'Forwarded: for=10.0.0.7;host="shop.test";proto=http']
    assert _named(lines, b"x-request-id") == [b"X-Request-ID: rid-1"]


def test_the_clients_request_id_is_replaced_and_reported():
    head = _request([(b"Host", b"a"), (b"X-Request-ID", b"theirs"), (b"x_request_id", b"theirs2")])
    assert _named(_lines(head.head), b"x-request-id") == [b"X-Request-ID: rid-1"]
    assert head.client_request_id == b"theirs"


def test_request_ids_are_unique_and_short():
    from nsproxy_appliance.daemon.request_head import RequestIds

    ids = RequestIds()
    seen = {ids.next() for _ in range(1000)}
    assert len(seen) == 1000 and all(len(i) == 22 for i in seen)
    assert RequestIds().prefix != ids.prefix


@pytest.mark.parametrize("name", [b"X-Tenant-ID", b"x-tenant-id", b"X-TENANT-ID", b"X_Tenant_Id", b"x_tenant-ID"])
def test_tenant_header_spellings_are_dropped(name):
    lines = _lines(_request([(b"Host", b"a"), (name, b"evil"), (name, b"evil2")]).head)
    assert _named(lines, b"x-tenant-id") == [b"X-Tenant-ID: acme"]


def test_hop_by_hop_and_connection_nominated_headers_are_dropped():
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
        (b"HTTP2-Settings", b"AAMAAABkAAQAAP__"),
        (b"X-Keep", b"yes"),
    ]
    lines = _lines(_request(headers).head)
    names = {ln.split(b":")[0].lower() for ln in lines[1:]}
    managed = {h.name.lower().encode() for h in MANAGED_HEADERS}
    assert names == {b"host", b"x-keep", b"x-tenant-id"} | managed


@pytest.mark.parametrize(
    "option",
    [b"Content-Length", b"content_length", b"Host", b"X-Forwarded-For", b"Forwarded", b"X-Real-IP", b"X-Tenant-ID"],
)
def test_a_connection_option_cannot_remove_framing_or_identity(option):
    head = _request([(b"Host", b"a"), (b"Connection", b"close, " + option), (b"Content-Length", b"5")], method=b"POST")
    lines = _lines(head.head)
    assert head.content_length == 5 and b"Content-Length: 5" in lines
    assert _named(lines, b"host") == [b"Host: a"]
    assert _named(lines, b"x-tenant-id") == [b"X-Tenant-ID: acme"]
    assert len(_named(lines, b"x-forwarded-for")) == 1 and len(_named(lines, b"forwarded")) == 1


def test_protected_names_cover_every_managed_header():
    assert {h.name.lower().encode() for h in MANAGED_HEADERS} <= PROTECTED
    assert {b"host", b"content-length", b"transfer-encoding"} <= PROTECTED


def test_appended_chains_keep_the_clients_entries_and_end_with_nsproxys():
    headers = [
        (b"Host", b"a"),
        (b"X-Forwarded-For", b"1.1.1.1"),
        (b"x-forwarded-for", b"2.2.2.2, 3.3.3.3"),
        (b"X_Forwarded_For", b"9.9.9.9"),
        (b"Forwarded", b"for=1.1.1.1"),
        (b"X-Forwarded-Proto", b"https"),
        (b"X_Forwarded_Host", b"evil"),
        (b"X-Forwarded-Port", b"1"),
        (b"X-Real-IP", b"6.6.6.6"),
    ]
    lines = _lines(_request(headers).head)
    assert _named(lines, b"x-forwarded-for") == [b"X-Forwarded-For: 1.1.1.1, 2.2.2.2, 3.3.3.3, 10.0.0.7"]
    assert _named(lines, b"forwarded") == [b'Forwarded: for=1.1.1.1, for=10.0.0.7;host="a";proto=http']
    assert _named(lines, b"x-forwarded-proto") == [b"X-Forwarded-Proto: http"]
    assert _named(lines, b"x-forwarded-host") == [b"X-Forwarded-Host: a"]
    assert _named(lines, b"x-forwarded-port") == [b"X-Forwarded-Port: 8080"]
    assert _named(lines, b"x-real-ip") == [b"X-Real-IP: 10.0.0.7"]


def test_managed_header_table_actions():
    assert {h.name: h.action for h in MANAGED_HEADERS} == {
        "X-Forwarded-For": Action.APPEND,
        "X-Forwarded-Proto": Action.REPLACE,
        "X-Forwarded-Host": Action.REPLACE,
        "X-Forwarded-Port": Action.REPLACE,
        "Forwarded": Action.APPEND,
        "X-Real-IP": Action.REPLACE,
        "X-Request-ID": Action.REPLACE,
    }


def test_ipv6_client_is_quoted_in_forwarded():
    lines = _lines(_request([(b"Host", b'we"ird')], peer=Peer.of("fd00::7", 80)).head)
    assert _named(lines, b"forwarded") == [b'Forwarded: for="[fd00::7]";host="we\\"ird";proto=http']


def test_body_framing_is_re_applied():
    head = _request([(b"Host", b"a"), (b"Content-Length", b"012")], method=b"POST")
    assert head.content_length == 12 and not head.chunked and b"Content-Length: 12" in _lines(head.head)
    head = _request([(b"Host", b"a"), (b"Transfer-Encoding", b"chunked")], method=b"POST")
    assert head.chunked and _named(_lines(head.head), b"transfer-encoding") == [b"Transfer-Encoding: chunked"]
    head = _request([(b"Host", b"a"), (b"Transfer-Encoding", b"GZIP"), (b"Transfer-Encoding", b"\tchunked ")], b"PUT")
    assert _named(_lines(head.head), b"transfer-encoding") == [b"Transfer-Encoding: gzip, chunked"]


@pytest.mark.parametrize(
    "value",
    [
        b"chunked, gzip",
        b"chunked;x=1",
        b"foo, chunked",
        b"\xa0chunked",
        b"\x0bchunked",
        b"chunked, chunked",
        b",chunked",
    ],
)
def test_transfer_encodings_nsproxy_does_not_fully_understand_are_refused(value):
    with pytest.raises(Refused) as err:
        _request([(b"Host", b"a"), (b"Transfer-Encoding", value)], method=b"POST")
    assert err.value.status == 400


@pytest.mark.parametrize("name", [b"Content_Length", b"transfer_encoding", b"CONTENT_length"])
def test_framing_headers_with_underscores_are_refused(name):
    with pytest.raises(Refused) as err:
        _request([(b"Host", b"a"), (name, b"5")], method=b"POST")
    assert err.value.status == 400


@pytest.mark.parametrize("method", [b"GET", b"HEAD"])
def test_get_and_head_with_a_body_are_refused(method):
    for framing in ((b"Content-Length", b"3"), (b"Transfer-Encoding", b"chunked")):
        with pytest.raises(Refused):
            _request([(b"Host", b"a"), framing], method=method)
    assert _request([(b"Host", b"a"), (b"Content-Length", b"0")], method=method).content_length == 0


def test_host_rules():
    with pytest.raises(Refused):
        _request([(b"Host", b"a"), (b"host", b"b")])
    with pytest.raises(Refused):
        _request([])  # HTTP/1.1 without Host (RFC 9112 §3.2)
    lines = _lines(_request([], http11=False).head)
    assert _named(lines, b"host") == [b"Host: 10.0.0.1:8080"]
    assert _named(lines, b"x-forwarded-host") == []


def test_websocket_upgrade_is_recognised_and_other_upgrades_are_plain():
    ws = _request([(b"Host", b"a"), (b"Connection", b"keep-alive, Upgrade"), (b"Upgrade", b"WebSocket")])
    assert ws.websocket
    assert b"Connection: Upgrade" in _lines(ws.head) and b"Upgrade: websocket" in _lines(ws.head)
    h2c = _request([(b"Host", b"a"), (b"Connection", b"Upgrade, HTTP2-Settings"), (b"Upgrade", b"h2c")])
    assert not h2c.websocket
    assert not _named(_lines(h2c.head), b"upgrade") and not _named(_lines(h2c.head), b"connection")
    post = _request([(b"Host", b"a"), (b"Connection", b"Upgrade"), (b"Upgrade", b"websocket")], method=b"POST")
    assert not post.websocket


@pytest.mark.parametrize(("header", "tenant_id"), [("X Bad", "a"), ("X-Ok", "a\r\nX-Evil: 1"), ("", "a")])
def test_policy_rejects_unsendable_config(header, tenant_id):
    with pytest.raises(HeaderValueError):
        RequestPolicy.build(header, tenant_id)


def test_classification_cache_keeps_per_policy_owned_names_apart():
    other = RequestPolicy.build("X-Org", "o1")
    headers = [(b"Host", b"a"), (b"X-Org", b"spoof"), (b"X-Tenant-ID", b"spoof")]
    mine = _lines(_request(headers).head)
    theirs = _lines(_request(headers, policy=other).head)
    assert b"X-Org: spoof" in mine and b"X-Tenant-ID: acme" in mine and b"X-Tenant-ID: spoof" not in mine
    assert b"X-Tenant-ID: spoof" in theirs and b"X-Org: o1" in theirs and b"X-Org: spoof" not in theirs


# ---- TLS listeners: the scheme and a mutual-TLS client's certificate ----------------------------------

CERT_LINES = b"X-Client-Cert-Subject: CN=svc\r\nX-Client-Cert-SHA256: ab12\r\n"
TLS_POLICY = RequestPolicy.build("X-Tenant-ID", "acme", managed=("X-Client-Cert-Subject", "X-Client-Cert-SHA256"))


def test_a_tls_connection_says_https():
    lines = _lines(_request([(b"Host", b"shop")], peer=Peer.of("10.0.0.7", 8443, b"https")).head)
    assert _named(lines, b"x-forwarded-proto") == [b"X-Forwarded-Proto: https"]
    assert _named(lines, b"forwarded") == [b'Forwarded: for=10.0.0.7;host="shop";proto=https']
    assert _named(lines, b"x-forwarded-port") == [b"X-Forwarded-Port: 8443"]


@pytest.mark.parametrize(
    "name", [b"X-Client-Cert-Subject", b"x-client-cert-subject", b"X_Client_Cert_Subject", b"x-client-cert-sha256"]
)
def test_client_certificate_headers_are_nsproxys_only(name):
    forged = [(b"Host", b"a"), (name, b"CN=admin")]
    with_cert = _lines(_request(forged, policy=TLS_POLICY, peer=Peer.of("10.0.0.7", 8443, b"https", CERT_LINES)).head)
    assert _named(with_cert, b"x-client-cert-subject") == [b"X-Client-Cert-Subject: CN=svc"]
    assert _named(with_cert, b"x-client-cert-sha256") == [b"X-Client-Cert-SHA256: ab12"]
    # without a client certificate (a plain listener, or optional client auth): none at all
    plain = _lines(_request(forged, policy=TLS_POLICY).head)
    assert _named(plain, b"x-client-cert-subject") == [] and _named(plain, b"x-client-cert-sha256") == []


def test_peers_with_other_schemes_or_certificates_are_not_shared():
    plain, tls = Peer.of("10.0.0.9", 443), Peer.of("10.0.0.9", 443, b"https")
    one, other = Peer.of("10.0.0.9", 443, b"https", CERT_LINES), Peer.of("10.0.0.9", 443, b"https", b"X-A: b\r\n")
    assert len({id(plain), id(tls), id(one), id(other)}) == 4
    assert Peer.of("10.0.0.9", 443, b"https", CERT_LINES) is one


def test_managed_header_names_must_be_sendable():
    with pytest.raises(HeaderValueError):
        RequestPolicy.build("X-Tenant-ID", "acme", managed=("X Bad",))
