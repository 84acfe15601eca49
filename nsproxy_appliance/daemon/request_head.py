"""The head nsproxy sends upstream for a client's request: what is kept, stripped, replaced, added.

Pure functions on bytes (unit-tested in tests/unit/test_request_head.py); http.py calls
`rewrite_request` once per request with the headers llhttp parsed. Every rule here exists to keep
one promise: the upstream sees exactly one tenant header, the tenant's own, on every request it
parses, and a framing it can parse the same way nsproxy did.

- Names are compared case-insensitively AND with '_' read as '-': CGI/WSGI-style servers map both
  spellings to one variable, so `X_Tenant_ID` would spoof the tenant just like `X-Tenant-ID`.
- The headers nsproxy manages are listed once, in MANAGED_HEADERS (the docs' table is this one).
- Framing is re-applied, never trusted: the forwarded head carries exactly the framing nsproxy used
  to read the body (Content-Length, or Transfer-Encoding ending in chunked). Hop-by-hop headers and
  the headers a Connection option nominates are dropped, except that a Connection option can never
  remove what framing and identity rest on (PROTECTED).
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from enum import StrEnum
from typing import NamedTuple

from .framing import request_codings


class Refused(Exception):
    """The request cannot be forwarded: answer `status` and close the connection."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


class Action(StrEnum):
    SET = "strip every copy, set one"
    APPEND = "keep the client's list, append nsproxy's entry"
    REPLACE = "strip every copy, set nsproxy's value"


@dataclass(frozen=True)
class ManagedHeader:
    name: str  # the spelling nsproxy sends
    action: Action
    value: str  # what nsproxy puts in it (for the docs)


# The headers nsproxy owns on every forwarded request (besides the tenant header, which is per
# tenant and always Action.SET). Client copies in any case or '_' spelling are handled as listed:
# APPEND keeps only copies spelled exactly with '-' (in any case); '_' spellings are dropped.
MANAGED_HEADERS = (
    ManagedHeader("X-Forwarded-For", Action.APPEND, "the client's address as seen in its namespace"),
    ManagedHeader("X-Forwarded-Proto", Action.REPLACE, "`http`, or `https` on a TLS listener"),
    ManagedHeader("X-Forwarded-Host", Action.REPLACE, "the request's Host (omitted without one)"),
    ManagedHeader("X-Forwarded-Port", Action.REPLACE, "the port of the listener the client connected to"),
    ManagedHeader("Forwarded", Action.APPEND, '`for=<client>;host="<Host>";proto=http` (or `https`; RFC 7239)'),
    ManagedHeader("X-Real-IP", Action.REPLACE, "the client's address"),
    ManagedHeader("X-Request-ID", Action.REPLACE, "a new id per request (the client's value is only logged)"),
)


def normalise(name: bytes) -> bytes:
    """The form two header names share when a server could treat them as the same variable."""
    return name.lower().replace(b"_", b"-")


# Hop-by-hop (RFC 9110 §7.6.1, plus the de-facto Keep-Alive, Proxy-Connection and the h2c upgrade's
# HTTP2-Settings): they describe one connection and are never forwarded. Transfer-Encoding and
# Upgrade are re-applied by nsproxy where they apply.
HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
        b"http2-settings",
        b"proxy-authorization",
        b"proxy-authenticate",
    }
)

# What a Connection option can never remove: framing, routing and identity.
PROTECTED = frozenset(
    {b"host", b"content-length", b"transfer-encoding"} | {normalise(h.name.encode()) for h in MANAGED_HEADERS}
)

# Classification of a request header name (cached per raw spelling in RequestPolicy.kinds).
_PASS, _HOST, _CL, _TE, _CONNECTION, _UPGRADE, _XFF, _FORWARDED, _DROP, _BAD, _REQUEST_ID = range(11)
_KIND_CACHE_MAX = 1024
_SPECIAL = {
    b"host": _HOST,
    b"content-length": _CL,
    b"transfer-encoding": _TE,
    b"connection": _CONNECTION,
    b"upgrade": _UPGRADE,
    b"x-forwarded-for": _XFF,
    b"forwarded": _FORWARDED,
    b"x-request-id": _REQUEST_ID,
    **dict.fromkeys(HOP_BY_HOP - {b"connection", b"transfer-encoding", b"upgrade"}, _DROP),
}
_MANAGED_NORMALISED = frozenset(normalise(h.name.encode()) for h in MANAGED_HEADERS)
_FRAMING = frozenset({b"content-length", b"transfer-encoding"})
_CONNECTION_SIMPLE = frozenset({b"keep-alive", b"close", b"upgrade"})  # tokens that nominate nothing


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


@dataclass(frozen=True, eq=False)  # compared (and hashed) by identity: one per tenant config version
class RequestPolicy:
    """The per-tenant constants of request rewriting, precomputed once per config version."""

    tenant_header: bytes  # normalised name
    tenant_line: bytes  # b"X-Tenant-ID: acme\r\n", ready to append
    # normalised names of the other per-tenant headers nsproxy sets (the client certificate ones):
    # client copies are stripped, like the tenant header's
    managed: frozenset[bytes] = frozenset()
    kinds: dict[bytes, int] = field(default_factory=dict, compare=False, repr=False)  # raw name -> kind

    def kind(self, name: bytes) -> int:
        """Classify a request header name (slow path; the result is cached in `kinds`)."""
        norm = normalise(name)
        lower = name.lower()
        if norm == self.tenant_header or norm in self.managed:
            kind = _DROP
        elif norm in _FRAMING and lower != norm:
            kind = _BAD  # Content_Length, Transfer_Encoding: smuggling attempts, never forwarded
        elif lower != norm and norm in _MANAGED_NORMALISED:
            kind = _DROP  # X_Forwarded_For and friends: only nsproxy's own spelling goes upstream
        else:
            kind = _SPECIAL.get(lower, _PASS)
            if kind == _PASS and norm in _MANAGED_NORMALISED:
                kind = _DROP  # replaced by nsproxy's value
        if len(self.kinds) < _KIND_CACHE_MAX:
            self.kinds[name] = kind
        return kind

    @classmethod
    def build(cls, header: str, tenant_id: str, managed: tuple[str, ...] = ()) -> RequestPolicy:
        name = _header_name(header, "tenant header")
        value = _check_value(tenant_id, "tenant id")
        others = frozenset(normalise(_header_name(h, "managed header")) for h in managed)
        return cls(tenant_header=normalise(name), tenant_line=name + b": " + value + b"\r\n", managed=others)


def _header_name(header: str, what: str) -> bytes:
    name = _check_value(header, what)
    if not name or any(c in b' \t:()<>@,;"/[]?={}\\' for c in name):
        raise HeaderValueError(f"{what} {header!r} is not a valid header name")
    return name


class Peer:
    """Per-connection facts the managed headers carry, encoded once when the client connects.

    `suffixes` caches, per (policy, Host), the block of managed header lines that ends every head
    forwarded for this connection when the client sent no X-Forwarded-For / Forwarded of its own:
    keep-alive clients repeat the same Host, so most requests reuse it as is.
    """

    __slots__ = ("client_ip", "fixed_lines", "forwarded_for", "proto", "suffixes")

    def __init__(self, client_ip: str, listen_port: int, proto: bytes = b"http", cert_lines: bytes = b"") -> None:
        ip = client_ip.encode()
        self.client_ip = ip
        self.forwarded_for = b'"[' + ip + b']"' if b":" in ip else ip  # the RFC 7239 node
        self.proto = proto
        # the REPLACE headers that do not depend on the request (and a mutual-TLS client's certificate)
        self.fixed_lines = b"X-Forwarded-Proto: %s\r\nX-Forwarded-Port: %d\r\nX-Real-IP: %s\r\n%s" % (
            proto,
            listen_port,
            ip,
            cert_lines,
        )
        self.suffixes: dict[tuple[RequestPolicy, bytes | None], bytes] = {}

    @classmethod
    def of(cls, client_ip: str, listen_port: int, proto: bytes = b"http", cert_lines: bytes = b"") -> Peer:
        """The shared Peer of a client address and listener port (and scheme, and client certificate
        lines): a client that opens a connection per request reuses the encoded lines and the suffix
        cache of its earlier connections."""
        key = (client_ip, listen_port, proto, cert_lines)
        peer = _PEERS.get(key)
        if peer is None:
            if len(_PEERS) >= _PEER_CACHE_MAX:
                _PEERS.clear()
            peer = _PEERS[key] = cls(client_ip, listen_port, proto, cert_lines)
        return peer

    def suffix(self, policy: RequestPolicy, host: bytes | None, xff: bytes | None, forwarded: bytes | None) -> bytes:
        """The managed header lines (and the end of the head) for one request."""
        if xff is None and forwarded is None:
            key = (policy, host)
            cached = self.suffixes.get(key)
            if cached is not None:
                return cached
        ip = self.client_ip
        own = b"for=" + self.forwarded_for + (b";host=" + _quoted(host) if host else b"") + b";proto=" + self.proto
        lines = [
            policy.tenant_line,
            self.fixed_lines,
            b"X-Forwarded-For: " + (ip if xff is None else xff + b", " + ip) + b"\r\n",
            b"Forwarded: " + (own if forwarded is None else forwarded + b", " + own) + b"\r\n",
            b"X-Forwarded-Host: " + host + b"\r\n\r\n" if host is not None else b"\r\n",
        ]
        suffix = b"".join(lines)
        if xff is None and forwarded is None:
            if len(self.suffixes) >= _SUFFIX_CACHE_MAX:
                self.suffixes.clear()
            self.suffixes[(policy, host)] = suffix
        return suffix


_SUFFIX_CACHE_MAX = 16
_PEER_CACHE_MAX = 4096  # distinct (client, port) pairs remembered; cleared whole when full
_PEERS: dict[tuple[str, int, bytes, bytes], Peer] = {}


class RequestHead(NamedTuple):
    head: bytes  # the complete head to send upstream, ending in CRLF CRLF
    content_length: int | None
    chunked: bool  # the body is chunked (re-chunked by the proxy)
    host: bytes | None
    websocket: bool  # a WebSocket upgrade request (forwarded with Connection: Upgrade)
    client_request_id: bytes | None  # the client's own X-Request-ID (never forwarded: logged)


class RequestIds:
    """X-Request-ID values: a random per-process prefix and a counter (unique, and cheap per request)."""

    def __init__(self) -> None:
        self.prefix = secrets.token_hex(6).encode()
        self.count = 0

    def next(self) -> bytes:
        self.count += 1
        return b"%s%010x" % (self.prefix, self.count)


REQUEST_IDS = RequestIds()


def _quoted(value: bytes) -> bytes:
    return b'"' + value.replace(b"\\", b"\\\\").replace(b'"', b'\\"') + b'"'


def _tokens(value: bytes) -> set[bytes]:
    return {t.strip(b" \t").lower() for t in value.split(b",")} - {b""}


def rewrite_request(
    method: bytes,
    url: bytes,
    headers: list[tuple[bytes, bytes]],
    policy: RequestPolicy,
    peer: Peer,
    *,
    http11: bool,
    default_host: bytes,
    request_id: bytes,
) -> RequestHead:
    """The head to send upstream for a client request (always HTTP/1.1, keep-alive).

    Raises Refused for requests the contract turns away (docs/security-model.md, "The framing
    contract"). `default_host` is used for an HTTP/1.0 request without Host.
    """
    kinds = policy.kinds
    out = [method, b" ", url, b" HTTP/1.1\r\n"]
    host = xff = forwarded = te = upgrade_value = client_request_id = None
    content_length: int | None = None
    connection: set[bytes] | None = None
    for name, value in headers:
        kind = kinds.get(name)
        if kind is None:
            kind = policy.kind(name)
        if kind == _PASS:
            out += (name, b": ", value, b"\r\n")
        elif kind == _HOST:
            if host is not None:
                raise Refused(400, "more than one Host header")
            host = value
            out += (name, b": ", value, b"\r\n")
        elif kind == _CL:
            content_length = int(value)  # llhttp accepted it: digits only, one value
        elif kind == _TE:
            te = value if te is None else te + b"," + value
        elif kind == _CONNECTION:
            lowered = value.lower()
            if lowered not in _CONNECTION_SIMPLE:
                tokens = _tokens(lowered)
                connection = tokens if connection is None else connection | tokens
            elif lowered == b"upgrade":
                connection = {b"upgrade"} if connection is None else connection | {b"upgrade"}
        elif kind == _UPGRADE:
            upgrade_value = value if upgrade_value is None else upgrade_value + b", " + value
        elif kind == _XFF:
            xff = value if xff is None else xff + b", " + value
        elif kind == _FORWARDED:
            forwarded = value if forwarded is None else forwarded + b", " + value
        elif kind == _REQUEST_ID:
            client_request_id = value
        elif kind == _BAD:
            raise Refused(400, f"framing header spelled with '_': {name.decode('latin-1')}")
        # _DROP: hop-by-hop, or managed by nsproxy

    if host is None and http11:
        raise Refused(400, "HTTP/1.1 request without Host")
    websocket = False
    if connection:
        websocket = (
            b"upgrade" in connection
            and method == b"GET"
            and (upgrade_value or b"").strip(b" \t").lower() == (b"websocket")
        )
        nominated = {normalise(t) for t in connection} - PROTECTED - {b"keep-alive", b"close", b"upgrade"}
        if nominated:
            # Rare: Connection names end-to-end headers; rebuild without them.
            out = out[:4] + [
                part
                for name, value in headers
                if policy.kind(name) in (_PASS, _HOST) and normalise(name) not in nominated
                for part in (name, b": ", value, b"\r\n")
            ]
    chunked = te is not None
    if chunked:
        codings = request_codings(te)  # type: ignore[arg-type]  # chunked: te is set
        if codings is None:
            raise Refused(400, "unsupported Transfer-Encoding")
        if method in (b"GET", b"HEAD"):
            raise Refused(400, f"{method.decode()} request with a body")
        out += (b"Transfer-Encoding: ", codings, b"\r\n")
    elif content_length is not None:
        if content_length and method in (b"GET", b"HEAD"):
            raise Refused(400, f"{method.decode()} request with a body")
        out.append(b"Content-Length: %d\r\n" % content_length)
    if websocket:
        out.append(b"Connection: Upgrade\r\nUpgrade: websocket\r\n")
    if host is None:
        out += (b"Host: ", default_host, b"\r\n")
    out += (b"X-Request-ID: ", request_id, b"\r\n")
    out.append(peer.suffix(policy, host, xff, forwarded))
    # tuple.__new__: a NamedTuple's own constructor is a Python function, and this runs per request
    return tuple.__new__(RequestHead, (b"".join(out), content_length, chunked, host, websocket, client_request_id))
