"""A client connection's set-up and per-read bookkeeping (daemon/http.py, ProxyProtocol), socket-free:
what connection_made takes from the listener and the peer (scheme, client address, a mutual-TLS
client's certificate lines, all of it sent upstream), the header timer it arms, the HTTP version
read off the request line (and only off it, however reads split a pipelined head), the byte
counter of every flush, and the rounding of the access log's times."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httptools
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from fresh_caches import fresh_dataplane_caches  # noqa: F401  (fixture)
from protocol_fakes import FakeLoop, FakePool, FakeSSLObject, FakeTransport, Wire, tenant
from support.tlscerts import Pki

from nsproxy_appliance.daemon.context import TenantContext
from nsproxy_appliance.daemon.fdbudget import FdBudget
from nsproxy_appliance.daemon.framing import error_response
from nsproxy_appliance.daemon.http import Exchange, ProxyProtocol
from nsproxy_appliance.model import Certificate, Listen, ListenTls

pytestmark = pytest.mark.usefixtures("fresh_dataplane_caches")

GET = b"GET /%s HTTP/1.1\r\nHost: a\r\n\r\n"
OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
CHUNKED_OK = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n"
OK_TO_HTTP10 = b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nok"  # CHUNKED_OK as an HTTP/1.0 client gets it
TLS = ListenTls(certificates=(Certificate("/c.pem", "/k.pem", ()),))
MTLS = ListenTls(certificates=TLS.certificates, client_ca="/clients.pem")


class CountingParser(httptools.HttpRequestParser):
    """The real parser, counting the calls of get_http_version (which formats a str every time)."""

    def __init__(self, protocol: ProxyProtocol) -> None:
        super().__init__(protocol)
        self.asked = 0

    def get_http_version(self) -> str:
        self.asked += 1
        return str(super().get_http_version())


class ConnWire(Wire):
    """A Wire with an access log, an optional listener address and the client transport's extra info."""

    def __init__(self, *, listen: Listen | None = None, extra: dict[str, Any] | None = None, **limits: Any) -> None:
        self.loop = FakeLoop()
        self.log: list[dict[str, Any]] = []
        self.ctx = TenantContext(tenant=tenant(**limits), access_log=self.log.append, budget=FdBudget(limit=10_000))
        self.pool = FakePool(self.ctx, self.loop)
        self.ctx.pool = self.pool
        self.ctx.policy.pool = self.pool
        self.proto = ProxyProtocol(self.ctx, self.loop, listen)  # type: ignore[arg-type]  # the fake loop
        self.client = FakeTransport(self.loop, ("10.0.0.7", 40000), ("10.1.1.1", 8443))
        self.client.extra.update(extra or {})
        self.client.protocol = self.proto
        self.proto.connection_made(self.client)  # type: ignore[arg-type]  # a fake transport


def _managed(head: bytes) -> list[bytes]:
    """The lines of a forwarded head, but the X-Request-ID (new per request)."""
    return [line for line in head.split(b"\r\n") if not line.startswith(b"X-Request-ID: ")]


def _forwarded(proto: bytes, port: int, cert_lines: list[bytes]) -> list[bytes]:
    """What the upstream gets for GET /a from 10.0.0.7 on a listener `port` speaking `proto`."""
    return [
        b"GET /a HTTP/1.1",
        b"Host: a",
        b"X-Tenant-ID: acme-id",
        b"X-Forwarded-Proto: " + proto,
        b"X-Forwarded-Port: %d" % port,
        b"X-Real-IP: 10.0.0.7",
        *cert_lines,
        b"X-Forwarded-For: 10.0.0.7",
        b'Forwarded: for=10.0.0.7;host="a";proto=' + proto,
        b"X-Forwarded-Host: a",
        b"",
        b"",
    ]


def _pending(loop: FakeLoop) -> list[float]:
    """When the loop's live timers are due."""
    return sorted(handle.when for _, _, handle in loop._timers if not handle.cancelled)


# -- what connection_made takes from the listener and the peer ---------------------------------
@pytest.mark.parametrize(
    "listen",
    [Listen("10.1.1.1", 8443, TLS), Listen("0.0.0.0", 8443, TLS)],  # a wildcard: its address from the socket
    ids=["address", "wildcard"],
)
def test_a_tls_listener_tells_the_upstream_https_and_the_client_address(listen: Listen) -> None:
    wire = ConnWire(listen=listen)
    wire.send(GET % b"a")
    assert _managed(wire.upstream.data()) == _forwarded(b"https", 8443, [])
    wire.respond(OK)
    assert wire.client.data() == OK
    entry = wire.log[0]
    assert (entry["client"], entry["client_port"], entry["listener"]) == ("10.0.0.7", 40000, "10.1.1.1:8443")


def test_a_plain_listener_tells_the_upstream_http() -> None:
    wire = ConnWire(listen=Listen("0.0.0.0", 8080))
    wire.send(GET % b"a")
    assert _managed(wire.upstream.data()) == _forwarded(b"http", 8443, [])  # the port the socket is bound to


def test_a_mutual_tls_client_certificate_goes_upstream_as_two_lines(tmp_path: Path) -> None:
    client = Pki(tmp_path / "pki").client("client one")
    der = x509.load_pem_x509_certificate(Path(client.cert).read_bytes()).public_bytes(serialization.Encoding.DER)
    wire = ConnWire(listen=Listen("10.1.1.1", 8443, MTLS), extra={"ssl_object": FakeSSLObject(der)})
    wire.send(GET % b"a")
    lines = [f"X-Client-Cert-Subject: {client.subject}".encode(), f"X-Client-Cert-SHA256: {client.sha256}".encode()]
    assert _managed(wire.upstream.data()) == _forwarded(b"https", 8443, lines)


def test_a_tls_listener_without_client_ca_sends_no_certificate_lines(tmp_path: Path) -> None:
    """Even when the handshake happened to carry a certificate: only a client_ca makes it trusted."""
    client = Pki(tmp_path / "pki").client("client one")
    der = x509.load_pem_x509_certificate(Path(client.cert).read_bytes()).public_bytes(serialization.Encoding.DER)
    wire = ConnWire(listen=Listen("10.1.1.1", 8443, TLS), extra={"ssl_object": FakeSSLObject(der)})
    wire.send(GET % b"a")
    assert _managed(wire.upstream.data()) == _forwarded(b"https", 8443, [])


def test_a_mutual_tls_listener_whose_client_sent_no_certificate_sends_no_lines() -> None:
    wire = ConnWire(listen=Listen("10.1.1.1", 8443, MTLS), extra={"ssl_object": FakeSSLObject(None)})
    wire.send(GET % b"a")
    assert _managed(wire.upstream.data()) == _forwarded(b"https", 8443, [])


# -- the header timer ----------------------------------------------------------------------------
def test_the_header_timer_is_due_header_timeout_after_connecting_and_a_partial_head_keeps_it() -> None:
    wire = ConnWire(header_timeout=5.0)
    assert _pending(wire.loop) == [1005.0]
    wire.loop.advance(1.0)
    wire.send(b"GET /a HTTP/1.1\r\nHo")
    assert _pending(wire.loop) == [1005.0]  # the deadline counts from the connection, not from the read
    wire.loop.advance(3.9)
    assert wire.client.data() == b""
    wire.loop.advance(0.1)
    assert wire.client.data() == error_response(408) and wire.client.closing


# -- the HTTP version, off the request line ------------------------------------------------------
@pytest.mark.parametrize(
    "request_bytes",
    [
        b"POST /a HTTP/1.0\r\nHost: a\r\nContent-Length: 10\r\n\r\nHTTP/1.1\r\n",  # a body line ending so
        b"GET /a HTTP/1.0\r\nX-A: HTTP/1.1XX\r\nXX-B: 1\r\nHost: a\r\n\r\n",  # a header line ending so
    ],
    ids=["body", "header"],
)
def test_the_http_version_is_the_request_lines_whatever_follows_in_the_read(request_bytes: bytes) -> None:
    wire = ConnWire()
    wire.send(request_bytes)
    wire.respond(CHUNKED_OK)
    assert wire.client.data() == OK_TO_HTTP10  # no chunked body for an HTTP/1.0 client
    assert wire.log[0]["http_version"] == "1.0"


@pytest.mark.parametrize(
    ("second", "third"),
    [
        (b"abcGET /b HTTP/1.0\r", b"\nX-A: HTTP/1.1\r\nHost: b\r\n\r\n"),  # the read starts with the LF
        (b"abcGET /b HTTP/1.0\r\nH", b"ost: abcdefgh\r\n\r\n"),  # ... inside a header line
        (b"abcGET /b HTTP/1.0\r\n", b"X-A: http/1.1\r\nHost: b\r\n\r\n"),  # ... with a header line
        (b"abcGET /b HTTP/1.0\r\nX-A: ", b"HTTP/1.1\r\nHost: b\r\n\r\n"),  # ... a value that looks like one
    ],
    ids=["lf", "mid-header", "header", "value"],
)
def test_a_pipelined_head_split_after_a_body_keeps_its_request_lines_version(second: bytes, third: bytes) -> None:
    """The second head begins in the read that ends the first request's body and ends in the next."""
    wire = ConnWire()
    wire.send(b"POST /a HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\n")
    wire.send(second)
    wire.send(third)
    wire.respond(OK)
    wire.respond(CHUNKED_OK)
    assert wire.client.data() == OK + OK_TO_HTTP10
    assert [(entry["path"], entry["http_version"], entry["status"]) for entry in wire.log] == [
        ("/a", "1.1", 200),
        ("/b", "1.0", 200),
    ]


@pytest.mark.parametrize("split", [20, 60, 100, 130], ids=lambda n: f"at-{n}")
def test_a_pipelined_head_that_begins_after_a_body_is_held_to_max_header_bytes(split: int) -> None:
    """Its first bytes come in the read that ends the body before it: they count towards the limit
    as much as a head that begins a read (which 431s at once, below)."""
    head = b"GET /b HTTP/1.1\r\nHost: b\r\nX-Long: " + b"v" * 100 + b"\r\n\r\n"
    alone = ConnWire(max_header_bytes=64)
    alone.send(head)
    assert alone.client.data() == error_response(431)
    wire = ConnWire(max_header_bytes=64)
    wire.send(b"POST /a HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\n")
    wire.send(b"abc" + head[:split])
    wire.send(head[split:])
    wire.respond(OK)
    assert wire.client.data() == OK + error_response(431)
    assert wire.upstream.data().count(b"GET /b") == 0


@pytest.mark.parametrize(("value_bytes", "refused_at_once"), [(51, False), (52, True)], ids=["at-limit", "over"])
def test_what_a_head_begun_after_a_body_has_parsed_counts_at_once(value_bytes: int, refused_at_once: bool) -> None:
    """A head that began after the body before it, cut just after a header line: the URL and that
    header count at once (1 + 2 + 6 + value + 4 against max_header_bytes 64), so one over the limit
    is refused without waiting for more; the 431 follows the response to the request before it."""
    wire = ConnWire(max_header_bytes=64)
    wire.send(b"POST /a HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\n")
    wire.send(b"abcGET /b HTTP/1.1\r\nX-Long: " + b"v" * value_bytes + b"\r\nX")
    wire.respond(OK)
    assert wire.client.data() == (OK + error_response(431) if refused_at_once else OK)
    wire.send(b"-B: 1\r\n\r\n")  # complete: its exact size is over the limit either way
    assert wire.client.data() == (b"" if refused_at_once else error_response(431))
    assert wire.client.closing
    assert wire.upstream.data().count(b"GET /b") == 0


def test_a_read_that_begins_with_crlf_takes_the_version_from_the_parser() -> None:
    """The first CRLF of a read that begins with one is at 0: not a request line's end, whatever
    the read's last bytes look like (here the start of a bad next request, `HTTP/1.1`)."""
    wire = ConnWire()
    wire.send(GET % b"a")
    wire.respond(OK)
    wire.send(b"\r\nGET /b HTTP/1.1\r\nHost: b\r\n\r\nHTTP/1.1")
    wire.respond(OK)
    assert wire.client.data() == OK + OK + error_response(400)
    assert [(entry["path"], entry["http_version"], entry["status"]) for entry in wire.log][:2] == [
        ("/a", "1.1", 200),
        ("/b", "1.1", 200),
    ]


def test_a_head_split_after_a_whole_request_in_the_same_read_is_not_charged_for_that_request() -> None:
    """The read holds all of POST /a (a 200-byte body) and the start of GET /b: only /b's own bytes
    count towards its limit."""
    wire = ConnWire(max_header_bytes=64)
    wire.send(b"POST /a HTTP/1.1\r\nHost: a\r\nContent-Length: 200\r\n\r\n" + b"x" * 200 + b"GET /b HTTP/1.1\r\nHo")
    wire.send(b"st: b\r\n\r\n")
    wire.respond(OK)
    wire.respond(OK)
    assert wire.client.data() == OK + OK
    assert [(entry["path"], entry["status"]) for entry in wire.log] == [("/a", 200), ("/b", 200)]


def test_the_http_version_is_read_off_the_request_line_without_asking_the_parser() -> None:
    """httptools formats a str per get_http_version call: a read that starts with the request line
    (the first of a read, or the one after an h2c upgrade request) does without it."""
    wire = ConnWire()
    parser = CountingParser(wire.proto)
    wire.proto.parser = parser
    wire.send(
        b"GET /a HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\r\nGET /b HTTP/1.0\r\nHost: a\r\n\r\n"
    )
    wire.respond(OK)
    wire.respond(CHUNKED_OK)
    assert wire.client.data() == OK + OK_TO_HTTP10
    assert [(entry["path"], entry["http_version"]) for entry in wire.log] == [("/a", "1.1"), ("/b", "1.0")]
    assert parser.asked == 0


# -- what flush() counts, and the access log's times -------------------------------------------
def test_every_flush_adds_to_bytes_out() -> None:
    wire = ConnWire()
    wire.send(GET % b"a")
    wire.respond(OK)
    wire.send(b"BAD /\r\n\r\n")  # answered with a 400 by _fail, which flushes
    assert wire.client.data() == OK + error_response(400)
    assert wire.ctx.counters.bytes_out == len(OK) + len(error_response(400))


def test_the_access_log_rounds_times_to_the_microsecond() -> None:
    wire = ConnWire()
    ex = Exchange(wire.proto, b"/a")
    ex.connect_time = 0.123456789
    ex.first_byte_time = 0.987654321
    wire.proto._log(ex, 200, 1.234567891)
    entry = wire.log[0]
    times = (entry["duration"], entry["upstream_connect_time"], entry["upstream_first_byte_time"])
    assert times == (1.234568, 0.123457, 0.987654)
