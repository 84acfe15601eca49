"""Request rewriting (daemon/request_head.py) pinned exactly: every refusal's status and reason (the
access log records the reason), the managed header lines, and the caches behind them. Each test
builds its own policy and peer: a cache filled by another test would hide the rule under test."""

from __future__ import annotations

import pytest
from fresh_caches import fresh_dataplane_caches  # noqa: F401  (fixture)

from nsproxy_appliance.daemon import request_head
from nsproxy_appliance.daemon.request_head import (
    HeaderValueError,
    Peer,
    Refused,
    RequestIds,
    RequestPolicy,
    rewrite_request,
)

pytestmark = pytest.mark.usefixtures("fresh_dataplane_caches")

SUFFIX = (
    b"X-Request-ID: rid\r\nX-Tenant-ID: acme\r\nX-Forwarded-Proto: http\r\nX-Forwarded-Port: 8080\r\n"
    b"X-Real-IP: 10.0.0.7\r\nX-Forwarded-For: 10.0.0.7\r\n"
)


UNDERSCORE = "framing header spelled with '_': "


def _rewrite(headers, method=b"GET", *, http11=True, policy=None, peer=None):
    return rewrite_request(
        method,
        b"/p",
        headers,
        policy or RequestPolicy.build("X-Tenant-ID", "acme"),
        peer or Peer("10.0.0.7", 8080),
        http11=http11,
        default_host=b"10.0.0.1:8080",
        request_id=b"rid",
    )


def _refusal(headers, method=b"POST") -> tuple[int, str]:
    with pytest.raises(Refused) as err:
        _rewrite(headers, method)
    assert str(err.value) == err.value.reason  # the exception's message is the reason
    return err.value.status, err.value.reason


# -- refusals ---------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("headers", "method", "refusal"),
    [
        ([(b"Host", b"a"), (b"host", b"b")], b"GET", (400, "more than one Host header")),
        ([], b"GET", (400, "HTTP/1.1 request without Host")),
        ([(b"Host", b"a"), (b"Content_Length", b"5")], b"POST", (400, UNDERSCORE + "Content_Length")),
        ([(b"Host", b"a"), (b"TRANSFER_encoding", b"x")], b"POST", (400, UNDERSCORE + "TRANSFER_encoding")),
        ([(b"Host", b"a"), (b"Transfer-Encoding", b"gzip")], b"POST", (400, "unsupported Transfer-Encoding")),
        ([(b"Host", b"a"), (b"Transfer-Encoding", b"chunked")], b"GET", (400, "GET request with a body")),
        ([(b"Host", b"a"), (b"Transfer-Encoding", b"chunked")], b"HEAD", (400, "HEAD request with a body")),
        ([(b"Host", b"a"), (b"Content-Length", b"1")], b"GET", (400, "GET request with a body")),
        ([(b"Host", b"a"), (b"Content-Length", b"1")], b"HEAD", (400, "HEAD request with a body")),
    ],
)
def test_refusals_have_their_status_and_reason(headers, method, refusal):
    assert _refusal(headers, method) == refusal


def test_a_framing_header_spelled_with_underscores_is_refused_even_after_a_first_request():
    policy = RequestPolicy.build("X-Tenant-ID", "acme")
    headers = [(b"Host", b"a"), (b"content_length", b"5")]
    for _ in range(2):  # the second time the name's class comes from the policy's cache
        with pytest.raises(Refused, match=r"^framing header spelled with '_': content_length$"):
            _rewrite(headers, b"POST", policy=policy)


# -- the forwarded head, whole ----------------------------------------------------------------
def test_a_plain_request_forwards_exactly_this():
    head = _rewrite([(b"Host", b"shop"), (b"Accept", b"*/*")])
    assert head.head == (
        b"GET /p HTTP/1.1\r\nHost: shop\r\nAccept: */*\r\n"
        + SUFFIX
        + b'Forwarded: for=10.0.0.7;host="shop";proto=http\r\nX-Forwarded-Host: shop\r\n\r\n'
    )
    assert (head.content_length, head.chunked, head.host, head.websocket, head.client_request_id) == (
        None,
        False,
        b"shop",
        False,
        None,
    )


def test_an_http10_request_without_host_gets_the_listeners_and_no_forwarded_host():
    head = _rewrite([], http11=False)
    assert head.head == (
        b"GET /p HTTP/1.1\r\nHost: 10.0.0.1:8080\r\n" + SUFFIX + b"Forwarded: for=10.0.0.7;proto=http\r\n\r\n"
    )
    assert head.host is None


def test_an_empty_host_is_kept_and_left_out_of_forwarded():
    head = _rewrite([(b"Host", b"")])
    assert head.head.endswith(b"Forwarded: for=10.0.0.7;proto=http\r\nX-Forwarded-Host: \r\n\r\n")


def test_every_client_forwarded_and_x_forwarded_for_line_is_kept_in_order():
    headers = [
        (b"Host", b"a"),
        (b"Forwarded", b"for=1.1.1.1"),
        (b"forwarded", b"for=2.2.2.2;proto=https"),
        (b"X-Forwarded-For", b"1.1.1.1"),
        (b"X-FORWARDED-FOR", b"2.2.2.2"),
    ]
    head = _rewrite(headers).head
    assert b"\r\nX-Forwarded-For: 1.1.1.1, 2.2.2.2, 10.0.0.7\r\n" in head
    assert b'\r\nForwarded: for=1.1.1.1, for=2.2.2.2;proto=https, for=10.0.0.7;host="a";proto=http\r\n' in head


def test_the_client_request_id_is_reported_not_forwarded():
    head = _rewrite([(b"Host", b"a"), (b"x-request-id", b"mine")])
    assert head.client_request_id == b"mine" and b"mine" not in head.head


def test_quoting_in_forwarded_escapes_backslash_and_quote():
    head = _rewrite([(b"Host", b'a\\b"c')], peer=Peer("fd00::7", 80)).head
    assert b'\r\nForwarded: for="[fd00::7]";host="a\\\\b\\"c";proto=http\r\n' in head


def test_framing_is_forwarded_as_nsproxy_reads_it():
    head = _rewrite([(b"Host", b"a"), (b"Content-Length", b"007")], b"POST")
    assert b"\r\nContent-Length: 7\r\n" in head.head and head.content_length == 7 and not head.chunked
    head = _rewrite([(b"Host", b"a"), (b"Content-Length", b"0")], b"GET")
    assert b"\r\nContent-Length: 0\r\n" in head.head and head.content_length == 0
    head = _rewrite([(b"Host", b"a"), (b"transfer-encoding", b"GZIP, Chunked")], b"PUT")
    assert b"\r\nTransfer-Encoding: gzip, chunked\r\n" in head.head and head.chunked and head.content_length is None


# -- Connection and Upgrade -------------------------------------------------------------------
def test_connection_options_are_collected_from_every_connection_line():
    headers = [
        (b"Host", b"a"),
        (b"Connection", b"X-A,X-B"),
        (b"Connection", b"upgrade"),  # a bare token must not forget the options before it
        (b"Connection", b"close"),
        (b"X-A", b"1"),
        (b"X-B", b"2"),
        (b"X_A", b"3"),  # the same name to a CGI server
        (b"X-Keep", b"4"),
    ]
    head = _rewrite(headers).head
    assert b"X-A" not in head and b"X_A" not in head and b"X-B" not in head and b"\r\nX-Keep: 4\r\n" in head


def test_a_websocket_upgrade_needs_the_upgrade_token_in_any_connection_line():
    headers = [(b"Host", b"a"), (b"Connection", b"keep-alive"), (b"Connection", b"Upgrade"), (b"Upgrade", b"websocket")]
    head = _rewrite(headers)
    assert head.websocket is True
    assert head.head.startswith(b"GET /p HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n")
    headers = [(b"Host", b"a"), (b"Connection", b"X-A"), (b"connection", b"upgrade"), (b"Upgrade", b" WebSocket\t")]
    assert _rewrite(headers).websocket is True


@pytest.mark.parametrize(
    "upgrades",
    [
        [b"h2c", b"websocket"],  # two Upgrade lines are one list: not exactly websocket
        [b"websocket", b"h2c"],
        [b"Xwebsocket"],
        [b"websocket2"],
        [b"web socket"],
    ],
)
def test_anything_but_exactly_websocket_is_a_plain_request(upgrades):
    headers = [(b"Host", b"a"), (b"Connection", b"upgrade")] + [(b"Upgrade", u) for u in upgrades]
    head = _rewrite(headers)
    assert head.websocket is False and b"pgrade" not in head.head


def test_no_upgrade_header_is_no_websocket():
    assert _rewrite([(b"Host", b"a"), (b"Connection", b"upgrade")]).websocket is False


# -- the policy -------------------------------------------------------------------------------
def test_policy_lines():
    policy = RequestPolicy.build("X_Org-Id", "o 1\t")
    assert policy.tenant_header == b"x-org-id"
    assert policy.tenant_line == b"X_Org-Id: o 1\t\r\n"
    assert RequestPolicy.build("X-Org", "\xe9t\xe9").tenant_line == b"X-Org: \xe9t\xe9\r\n"  # latin-1 is sendable


@pytest.mark.parametrize(
    ("header", "tenant_id", "message"),
    [
        ("X Bad", "a", "tenant header 'X Bad' is not a valid header name"),
        ("X:Bad", "a", "tenant header 'X:Bad' is not a valid header name"),
        ("", "a", "tenant header '' is not a valid header name"),
        ("X-\u20ac", "a", "tenant header 'X-\u20ac' is not latin-1"),
        ("X-Ok", "a\u20ac", "tenant id 'a\u20ac' is not latin-1"),
        ("X-Ok", "a\nb", "tenant id 'a\\nb' contains control characters"),
        ("X-Ok", "a\x1fb", "tenant id 'a\\x1fb' contains control characters"),
        ("X-Ok", "a\x7f", "tenant id 'a\\x7f' contains control characters"),
        ("X-\x00", "a", "tenant header 'X-\\x00' contains control characters"),
    ],
)
def test_policy_refuses_what_cannot_be_sent_with_a_message_naming_it(header, tenant_id, message):
    with pytest.raises(HeaderValueError) as err:
        RequestPolicy.build(header, tenant_id)
    assert str(err.value) == message


def test_header_names_are_classified_once_per_policy_and_the_cache_is_bounded():
    policy = RequestPolicy.build("X-Tenant-ID", "acme")
    _rewrite([(b"Host", b"a"), (b"X-Tenant-ID", b"x"), (b"X-Other", b"1")], policy=policy)
    assert policy.kinds == {
        b"Host": request_head._HOST,
        b"X-Tenant-ID": request_head._DROP,
        b"X-Other": request_head._PASS,
    }
    many = [(b"Host", b"a")] + [(b"X-N%d" % i, b"1") for i in range(2 * request_head._KIND_CACHE_MAX)]
    head = _rewrite(many, policy=policy).head
    assert len(policy.kinds) == request_head._KIND_CACHE_MAX  # a client cannot grow it without end
    assert head.count(b"\r\nX-N") == 2 * request_head._KIND_CACHE_MAX  # uncached names still pass


@pytest.mark.parametrize(
    ("name", "kind"),
    [
        (b"x_tenant_id", "_DROP"),
        (b"X_Forwarded_For", "_DROP"),  # managed: only nsproxy's spelling goes upstream
        (b"x-real-ip", "_DROP"),
        (b"X-Forwarded-For", "_XFF"),
        (b"Forwarded", "_FORWARDED"),
        (b"X-Request-Id", "_REQUEST_ID"),
        (b"Content-Length", "_CL"),
        (b"content_length", "_BAD"),
        (b"Transfer-Encoding", "_TE"),
        (b"Connection", "_CONNECTION"),
        (b"Upgrade", "_UPGRADE"),
        (b"Keep-Alive", "_DROP"),
        (b"X_Custom", "_PASS"),
    ],
)
def test_classification(name, kind):
    assert RequestPolicy.build("X-Tenant-ID", "a").kind(name) == getattr(request_head, kind)


def test_headers_nominated_by_connection_pass_even_when_the_name_cache_is_full():
    """A client that sends many distinct header names fills its tenant's name cache; a later
    request of another client, whose Connection header nominates one header, must still forward
    every other header (and the Host) it sent."""
    policy = RequestPolicy.build("X-Tenant-ID", "acme")
    _rewrite([(b"Host", b"a")] + [(b"X-Junk-%d" % i, b"1") for i in range(request_head._KIND_CACHE_MAX)], policy=policy)
    headers = [(b"HOST", b"shop"), (b"Connection", b"X-Private"), (b"X-Private", b"1"), (b"X-Keep", b"yes")]
    head = _rewrite(headers, policy=policy).head
    assert head.startswith(b"GET /p HTTP/1.1\r\nHOST: shop\r\nX-Keep: yes\r\n"), head


# -- the peer ---------------------------------------------------------------------------------
def test_peer_lines():
    v4 = Peer("10.0.0.7", 8080)
    assert (v4.client_ip, v4.forwarded_for, v4.proto) == (b"10.0.0.7", b"10.0.0.7", b"http")
    assert v4.fixed_lines == b"X-Forwarded-Proto: http\r\nX-Forwarded-Port: 8080\r\nX-Real-IP: 10.0.0.7\r\n"
    v6 = Peer("fd00::7", 80, b"https")
    assert (v6.client_ip, v6.forwarded_for) == (b"fd00::7", b'"[fd00::7]"')
    assert v6.fixed_lines == b"X-Forwarded-Proto: https\r\nX-Forwarded-Port: 80\r\nX-Real-IP: fd00::7\r\n"
    assert v4.suffixes == {} and v6.suffixes == {}


def test_peers_are_shared_per_address_port_and_proto_and_the_cache_is_bounded():
    peer = Peer.of("10.0.0.7", 8080)
    assert Peer.of("10.0.0.7", 8080) is peer
    assert peer.fixed_lines == Peer("10.0.0.7", 8080).fixed_lines
    other = Peer.of("10.0.0.7", 8081, b"https")
    assert other is not peer and other.fixed_lines == Peer("10.0.0.7", 8081, b"https").fixed_lines
    assert Peer.of("10.0.0.8", 8080) is not peer
    for i in range(request_head._PEER_CACHE_MAX - 3):
        Peer.of(f"10.1.{i // 256}.{i % 256}", 80)
    assert len(request_head._PEERS) == request_head._PEER_CACHE_MAX
    Peer.of("10.2.0.1", 80)
    assert len(request_head._PEERS) == 1  # full: cleared whole, then the new one


def test_the_suffix_is_cached_only_without_client_chains():
    policy = RequestPolicy.build("X-Tenant-ID", "acme")
    peer = Peer("10.0.0.7", 8080)
    chained = peer.suffix(policy, b"a", b"1.1.1.1", None)
    assert b"X-Forwarded-For: 1.1.1.1, 10.0.0.7\r\n" in chained and peer.suffixes == {}
    assert b"Forwarded: for=9.9.9.9, for=" in peer.suffix(policy, b"a", None, b"for=9.9.9.9")
    assert peer.suffixes == {}
    plain = peer.suffix(policy, b"a", None, None)
    assert b"1.1.1.1" not in plain and peer.suffixes == {(policy, b"a"): plain}
    assert peer.suffix(policy, b"a", None, None) is plain  # reused, not rebuilt
    assert b"1.1.1.1" in peer.suffix(policy, b"a", b"1.1.1.1", None)  # a chain is never served from the cache
    assert b"for=9.9.9.9, " in peer.suffix(policy, b"a", None, b"for=9.9.9.9")


def test_the_suffix_cache_is_bounded():
    policy = RequestPolicy.build("X-Tenant-ID", "acme")
    peer = Peer("10.0.0.7", 8080)
    for i in range(request_head._SUFFIX_CACHE_MAX):
        peer.suffix(policy, b"h%d" % i, None, None)
    assert len(peer.suffixes) == request_head._SUFFIX_CACHE_MAX
    peer.suffix(policy, b"one-more", None, None)
    assert list(peer.suffixes) == [(policy, b"one-more")]


# -- request ids ------------------------------------------------------------------------------
def test_request_ids_count_from_one_after_a_random_prefix():
    ids = RequestIds()
    assert len(ids.prefix) == 12 and int(ids.prefix, 16) >= 0
    assert [ids.next(), ids.next()] == [ids.prefix + b"0000000001", ids.prefix + b"0000000002"]
    assert ids.count == 2


def test_a_managed_header_name_that_cannot_be_sent_is_named_as_such():
    with pytest.raises(HeaderValueError) as err:
        RequestPolicy.build("X-Tenant-ID", "acme", managed=("X Cert",))
    assert str(err.value) == "managed header 'X Cert' is not a valid header name"


def test_client_copies_of_the_other_managed_headers_are_stripped_in_every_spelling():
    policy = RequestPolicy.build("X-Tenant-ID", "acme", managed=("X-Client-Cert",))
    assert policy.managed == frozenset({b"x-client-cert"})
    head = _rewrite([(b"Host", b"a"), (b"x-client-cert", b"forged"), (b"X_Client_Cert", b"forged")], policy=policy).head
    assert b"forged" not in head


def test_a_cached_name_is_not_classified_again(monkeypatch):
    policy = RequestPolicy.build("X-Tenant-ID", "acme")
    headers = [(b"Host", b"a"), (b"X-Other", b"1"), (b"X-Tenant-ID", b"x")]
    first = _rewrite(headers, policy=policy).head

    def classify(self: RequestPolicy, name: bytes) -> int:
        raise AssertionError(f"{name!r} classified again")

    monkeypatch.setattr(RequestPolicy, "kind", classify)
    assert _rewrite(headers, policy=policy).head == first


def test_a_header_named_close_is_not_nominated_by_the_close_option():
    headers = [(b"Host", b"a"), (b"Connection", b"close, X-A"), (b"Close", b"1"), (b"X-A", b"2")]
    head = _rewrite(headers).head
    assert b"\r\nClose: 1\r\n" in head and b"X-A" not in head
