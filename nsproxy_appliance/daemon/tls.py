"""TLS in the daemon: termination on tenants' listeners, and the contexts for https upstreams.

Termination. A TLS listener has one `Terminator`: an ssl.SSLContext per certificate, all made with
the listener's settings (minimum version, client certificate verification, ALPN http/1.1), and a
base context given to the server whose sni_callback picks, on every handshake, the context of the
name the client asked for (the first certificate without a name, or for a name no other lists).
OpenSSL keeps what a handshake negotiates before that callback (the protocol version, whether a
client certificate is asked for) from the base context, so those settings are the listener's
socket identity (`socket_key`): changing them makes a new socket. Everything else (the
certificates, their names, the client CA) is `Terminator.update`: new contexts, swapped in one
assignment; the socket and the established connections are untouched, new handshakes see it.

Handshakes. The listener's protocol factory (`server_factory`) wraps each connection's HTTP
protocol in the event loop's own SSL protocol (uvloop's, in C), subclassed only to see the
handshake's start and end: `TlsServerProtocol` is its own handshake "waiter" (the object the SSL
protocol reports the outcome to), which is how a failed handshake is counted per tenant and reason
(uvloop logs nothing for them). A tenant's `HandshakeGate` admits connections against its
max_connections and the process's fd budget before the handshake (a handshaking connection holds
an fd), and lets at most MAX_HANDSHAKES_IN_FLIGHT of its handshakes compute at once: further ones
wait with reading paused (the client's hello stays in the kernel), so the loop spends at most that
many handshakes' CPU of one tenant per turn and a flood on one tenant cannot starve the others.
Every handshake is bounded by the tenant's tls.handshake_timeout, waiting included.

Upstreams. `client_context(upstream_tls)` is one SSLContext per distinct upstream TLS setting,
shared by the pools that use it (a context holds the trust store: a copy per tenant would cost
hundreds of KiB each). Pools keep a TLS session for resumption: asyncio and uvloop take no session
argument, but they call `context.wrap_bio` when a handshake starts, inside the contextvars context
in which the connection was dialled, so `ResumingContext.wrap_bio` offers the session the dialling
pool put in OFFERED_SESSION (UpstreamPool._open).
"""

from __future__ import annotations

import asyncio
import collections
import contextvars
import hashlib
import logging
import os
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..model import Listen, ListenTls, UpstreamTls

if TYPE_CHECKING:
    from .context import TenantContext

log = logging.getLogger("nsproxyd")

ALPN = ["http/1.1"]
MAX_HANDSHAKES_IN_FLIGHT = 16  # per tenant: handshakes computing at once; more wait their turn
_VERSIONS = {"1.2": ssl.TLSVersion.TLSv1_2, "1.3": ssl.TLSVersion.TLSv1_3}

# Why a handshake failed (nsproxy_tls_handshake_failures_total's reason label): a fixed list.
HANDSHAKE_FAILURE_REASONS = (
    "no_certificate",  # mutual TLS required and the client sent none
    "unknown_ca",  # the client's certificate does not chain to client_ca
    "bad_certificate",  # the client's certificate is expired or otherwise invalid
    "protocol_version",  # no TLS version both accept (e.g. a TLS 1.1 client, min_version 1.3)
    "no_shared_cipher",  # no cipher suite or signature algorithm both accept
    "client_rejected",  # the client refused nsproxy's certificate (its alert: unknown CA, bad certificate)
    "http_request",  # plain HTTP sent to a TLS listener
    "timeout",  # not complete within tls.handshake_timeout
    "closed",  # the client closed the connection during the handshake
    "other",
)
_BY_OPENSSL_REASON = {
    "PEER_DID_NOT_RETURN_A_CERTIFICATE": "no_certificate",
    "UNSUPPORTED_PROTOCOL": "protocol_version",
    "WRONG_VERSION_NUMBER": "protocol_version",
    "VERSION_TOO_LOW": "protocol_version",
    "TLSV1_ALERT_PROTOCOL_VERSION": "protocol_version",
    "NO_SHARED_CIPHER": "no_shared_cipher",
    "NO_SHARED_SIGNATURE_ALGORITHMS": "no_shared_cipher",
    "NO_SUITABLE_SIGNATURE_ALGORITHM": "no_shared_cipher",
    "TLSV1_ALERT_UNKNOWN_CA": "client_rejected",
    "SSLV3_ALERT_BAD_CERTIFICATE": "client_rejected",
    "SSLV3_ALERT_CERTIFICATE_UNKNOWN": "client_rejected",
    "TLSV1_ALERT_DECRYPT_ERROR": "client_rejected",
    "HTTP_REQUEST": "http_request",
    "HTTPS_PROXY_REQUEST": "http_request",
}
_UNKNOWN_CA_CODES = frozenset({2, 18, 19, 20, 21})  # X509_V_ERR_*: unable to get the issuer, self-signed


def failure_reason(exc: BaseException | None) -> str:
    """The HANDSHAKE_FAILURE_REASONS entry for what a failed server handshake raised."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        return "unknown_ca" if exc.verify_code in _UNKNOWN_CA_CODES else "bad_certificate"
    if isinstance(exc, ssl.SSLError):
        return _BY_OPENSSL_REASON.get(exc.reason or "", "other")
    if isinstance(exc, ConnectionAbortedError):  # the SSL protocol's handshake timeout
        return "timeout"
    if exc is None or isinstance(exc, ConnectionError | EOFError):
        return "closed"
    return "other"


class TlsSetupError(OSError):
    """A certificate, key or CA file cannot be loaded; str() names the file and why."""


# -- termination ------------------------------------------------------------------------------


def socket_key(listen: Listen) -> tuple[str, int, str]:
    """What a listening socket is: its address, and the TLS settings fixed before SNI is seen."""
    tls = listen.tls
    if tls is None:
        return listen.host, listen.port, "plain"
    auth = tls.client_auth if tls.client_ca is not None else "none"
    return listen.host, listen.port, f"tls {tls.min_version} client:{auth}"


@dataclass(frozen=True)
class CertificateInfo:
    """What /tenants and /metrics say about a certificate a listener serves."""

    serial: str  # uppercase hex
    not_after: float  # seconds since the epoch
    subject: str
    names: tuple[str, ...]  # the SNI names it is chosen for (empty: the default only)

    def to_json(self) -> dict[str, Any]:
        return {"serial": self.serial, "not_after": self.not_after, "subject": self.subject, "names": list(self.names)}


class Terminator:
    """The TLS contexts of one listener: the base context for its server, one per certificate."""

    def __init__(self, settings: ListenTls) -> None:
        self.settings = settings
        self.base = _server_context(settings)  # given to the server: its callback chooses per handshake
        self.base.sni_callback = self._choose
        self._default: ssl.SSLContext = self.base
        self._exact: dict[str, ssl.SSLContext] = {}
        self._wildcard: dict[str, ssl.SSLContext] = {}  # "example.com" for "*.example.com"
        self.certificates: tuple[CertificateInfo, ...] = ()
        self._stamp: tuple[Any, ...] = ()
        self.update(settings)

    def update(self, settings: ListenTls) -> None:
        """Load `settings`' files into new contexts and switch to them; raises TlsSetupError (and
        keeps the current ones) when a file cannot be loaded."""
        stamp = _stamp(settings)
        contexts = []
        infos = []
        for cert in settings.certificates:
            ctx = _server_context(settings)
            _load_chain(ctx, cert.cert, cert.key)
            contexts.append(ctx)
            infos.append(_info(cert.cert, cert.names))
        exact: dict[str, ssl.SSLContext] = {}
        wildcard: dict[str, ssl.SSLContext] = {}
        for cert, ctx in zip(settings.certificates, contexts, strict=True):
            for name in cert.names:
                if name.startswith("*."):
                    wildcard.setdefault(name[2:], ctx)
                else:
                    exact.setdefault(name, ctx)
        # One assignment each: a handshake in between sees a consistent old or new default.
        self._exact, self._wildcard, self._default = exact, wildcard, contexts[0]
        self.settings, self.certificates, self._stamp = settings, tuple(infos), stamp

    def files_changed(self) -> bool:
        """Whether a file it loaded was replaced or changed since (a SIGHUP after a rotation)."""
        return _stamp(self.settings) != self._stamp

    def _choose(self, sslobj: ssl.SSLObject, name: str | None, _base: ssl.SSLContext) -> None:
        ctx = self._default
        if name:
            name = name.lower().rstrip(".")
            found = self._exact.get(name)
            if found is None and "." in name:
                found = self._wildcard.get(name.partition(".")[2])
            if found is not None:
                ctx = found
        sslobj.context = ctx


def _server_context(settings: ListenTls) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = _VERSIONS[settings.min_version]
    ctx.set_alpn_protocols(ALPN)
    if settings.client_ca is not None:
        try:
            ctx.load_verify_locations(cafile=settings.client_ca)
        except (OSError, ssl.SSLError, ValueError) as e:
            raise TlsSetupError(f"cannot load client_ca {settings.client_ca}: {_reason(e)}") from None
        ctx.verify_mode = ssl.CERT_REQUIRED if settings.client_auth == "required" else ssl.CERT_OPTIONAL
    return ctx


def _load_chain(ctx: ssl.SSLContext, cert: str, key: str) -> None:
    try:
        ctx.load_cert_chain(cert, key)
    except (OSError, ssl.SSLError, ValueError) as e:
        raise TlsSetupError(f"cannot load certificate {cert} with key {key}: {_reason(e)}") from None


def _info(path: str, names: tuple[str, ...]) -> CertificateInfo:
    from cryptography import x509  # only when a TLS listener is loaded

    try:
        with open(path, "rb") as f:
            cert = x509.load_pem_x509_certificates(f.read())[0]
    except (OSError, ValueError) as e:
        raise TlsSetupError(f"cannot read certificate {path}: {_reason(e)}") from None
    return CertificateInfo(
        serial=f"{cert.serial_number:X}",
        not_after=cert.not_valid_after_utc.timestamp(),
        subject=cert.subject.rfc4514_string(),
        names=names,
    )


def _stamp(settings: ListenTls) -> tuple[Any, ...]:
    """What identifies the files' contents without reading them: inode, size, mtime, ctime."""
    paths = [p for c in settings.certificates for p in (c.cert, c.key)]
    if settings.client_ca is not None:
        paths.append(settings.client_ca)
    out: list[Any] = []
    for path in paths:
        try:
            st = os.stat(path)
            out.append((st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns))
        except OSError as e:
            out.append(e.errno)
    return tuple(out)


def _reason(e: BaseException) -> str:
    if isinstance(e, ssl.SSLError) and e.reason:
        return e.reason.lower().replace("_", " ")
    if isinstance(e, OSError) and e.strerror:
        return e.strerror
    return str(e) or type(e).__name__


# -- handshakes -------------------------------------------------------------------------------


class HandshakeGate:
    """A tenant's handshakes in progress: admission before the handshake, and a bound on how many
    compute at once (the others wait, reading paused, in arrival order)."""

    __slots__ = ("ctx", "in_flight", "queue", "waiting")

    def __init__(self, ctx: TenantContext) -> None:
        self.ctx = ctx
        self.in_flight = 0
        self.waiting = 0  # queued and still alive
        self.queue: collections.deque[Any] = collections.deque()  # (TlsServerProtocol, transport) waiting

    def admit(self) -> bool:
        """Whether a new connection may start a handshake (the same limits as a plain connection)."""
        ctx = self.ctx
        held = ctx.counters.active_connections + self.in_flight + self.waiting
        if held >= ctx.policy.max_connections or not ctx.budget.admit(held):
            ctx.counters.rejected_connections += 1
            return False
        ctx.budget.clients += 1  # a handshaking connection holds its fd; given back when it ends
        return True

    def start(self, proto: Any, transport: asyncio.Transport) -> bool:
        """True: the handshake may run now; False: it waits (reading paused) until release() wakes it."""
        if self.in_flight < MAX_HANDSHAKES_IN_FLIGHT:
            self.in_flight += 1
            return True
        transport.pause_reading()
        self.queue.append((proto, transport))
        self.waiting += 1
        return False

    def release(self, running: bool) -> None:
        """A handshake ended (done, failed, or gone while it waited)."""
        self.ctx.budget.clients -= 1
        if not running:
            self.waiting -= 1
            return
        self.in_flight -= 1
        queue = self.queue
        while queue and self.in_flight < MAX_HANDSHAKES_IN_FLIGHT:
            proto, transport = queue.popleft()
            if proto.state != _WAITING:
                continue  # it timed out or was closed while waiting
            self.waiting -= 1
            proto.state = _RUNNING
            self.in_flight += 1
            transport.resume_reading()


_REJECTED, _WAITING, _RUNNING, _DONE = range(4)


def _protocol_class(base: type) -> type:
    """A subclass of the loop's SSL protocol that is its own handshake waiter (see the docstring)."""

    class TlsServerProtocol(base):  # type: ignore[misc,valid-type,unused-ignore]  # base: the loop's own SSL class
        # No reference to the HTTP protocol: it holds the transport, which holds this protocol, and a
        # reference back would make every closed connection a cycle for the GC to find (a handshake
        # flood then left thousands of objects a collection, and 10-20 ms pauses of the loop).
        __slots__ = ("gate", "state")

        def __init__(self, loop: asyncio.AbstractEventLoop, app: Any, context: ssl.SSLContext, gate: HandshakeGate):
            self.gate = gate
            self.state = _REJECTED
            timeout = gate.ctx.tenant.tls.handshake_timeout
            super().__init__(loop, _Handover(self, app), context, self, True, None, ssl_handshake_timeout=timeout)

        def connection_made(self, transport: asyncio.Transport) -> None:
            gate = self.gate
            if not gate.admit():
                transport.abort()
                return
            self.state = _RUNNING if gate.start(self, transport) else _WAITING
            super().connection_made(transport)

        # -- the waiter's interface (what the SSL protocol calls when the handshake ends) ---------
        def cancelled(self) -> bool:
            return False

        def set_result(self, _result: object) -> None:
            self._ended(None)  # done (the handover already ran), or closed before the handshake began

        def set_exception(self, exc: BaseException) -> None:
            self._ended(exc)

        def _ended(self, exc: BaseException | None) -> None:
            state = self.state
            if state in (_REJECTED, _DONE):
                return
            self.state = _DONE
            self.gate.release(state == _RUNNING)
            self.gate.ctx.counters.tls_handshake_failure(failure_reason(exc))

        def handed_over(self) -> None:
            """The handshake succeeded: give the connection's fd back to the HTTP protocol's accounting."""
            state = self.state
            self.state = _DONE
            if state != _DONE:
                self.gate.release(state == _RUNNING)

    return TlsServerProtocol


class _Handover:
    """The SSL protocol's application protocol until the handshake is done: then the HTTP protocol
    takes the transport over (set_protocol) and sees connection_made as a plain connection would."""

    __slots__ = ("app", "tls")

    def __init__(self, tls: Any, app: Any) -> None:
        self.tls = tls
        self.app = app

    def connection_made(self, transport: asyncio.Transport) -> None:
        self.tls.handed_over()
        app = self.app
        transport.set_protocol(app)
        app.connection_made(transport)

    def connection_lost(self, exc: Exception | None) -> None:  # only before connection_made: never
        self.app.connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        self.app.data_received(data)

    def eof_received(self) -> bool | None:
        return self.app.eof_received()  # type: ignore[no-any-return,unused-ignore]  # app: any protocol


_CLASSES: dict[type, type] = {}


def server_factory(
    loop: asyncio.AbstractEventLoop, terminator: Terminator, gate: HandshakeGate, app_factory: Callable[[], Any]
) -> Callable[[], asyncio.Protocol]:
    """The protocol factory of a TLS listener: each connection's `app_factory()` protocol behind TLS."""
    base = _ssl_protocol_base(loop)
    cls = _CLASSES.get(base)
    if cls is None:
        cls = _CLASSES[base] = _protocol_class(base)

    def make() -> asyncio.Protocol:
        return cls(loop, app_factory(), terminator.base, gate)  # type: ignore[no-any-return,unused-ignore]  # made at run time

    return make


def _ssl_protocol_base(loop: asyncio.AbstractEventLoop) -> type:
    """The SSL protocol class of the loop's own transports (uvloop's in C, or asyncio's)."""
    if type(loop).__module__.startswith("uvloop"):
        import uvloop.loop

        ssl_protocol: type = uvloop.loop.SSLProtocol  # type: ignore[attr-defined]  # not in uvloop's stubs
        return ssl_protocol
    from asyncio.sslproto import SSLProtocol as AsyncioSSLProtocol

    return AsyncioSSLProtocol


# -- client certificates (mutual TLS) ----------------------------------------------------------

_CERT_LINES_MAX = 1024
_cert_lines: dict[tuple[bytes, str, str], bytes] = {}


def client_cert_lines(sslobj: ssl.SSLObject | None, subject_header: str, fingerprint_header: str) -> bytes:
    """The header lines carrying the verified client certificate upstream (b"" without one):
    the subject as an RFC 4514 string, every byte outside printable ASCII escaped as \\XX (so no
    certificate can inject a header), and the SHA-256 of the DER certificate in lowercase hex."""
    if sslobj is None:
        return b""
    der = sslobj.getpeercert(binary_form=True)
    if not der:
        return b""
    key = (der, subject_header, fingerprint_header)
    lines = _cert_lines.get(key)
    if lines is None:
        from cryptography import x509

        subject = _printable(x509.load_der_x509_certificate(der).subject.rfc4514_string())
        fingerprint = hashlib.sha256(der).hexdigest()
        lines = f"{subject_header}: {subject}\r\n{fingerprint_header}: {fingerprint}\r\n".encode("ascii")
        if len(_cert_lines) >= _CERT_LINES_MAX:
            _cert_lines.clear()
        _cert_lines[key] = lines
    return lines


def _printable(text: str) -> str:
    if text.isascii() and text.isprintable():
        return text
    return "".join(c if " " <= c <= "~" else "".join(f"\\{b:02X}" for b in c.encode("utf-8")) for c in text)


# -- https upstreams --------------------------------------------------------------------------

OFFERED_SESSION: contextvars.ContextVar[ssl.SSLSession | None] = contextvars.ContextVar(
    "nsproxy_offered_tls_session", default=None
)


class ResumingContext(ssl.SSLContext):
    """An SSLContext that offers the session in OFFERED_SESSION when a client handshake starts."""

    def wrap_bio(
        self,
        incoming: ssl.MemoryBIO,
        outgoing: ssl.MemoryBIO,
        server_side: bool = False,
        server_hostname: str | bytes | None = None,
        session: ssl.SSLSession | None = None,
    ) -> ssl.SSLObject:
        if session is None and not server_side:
            session = OFFERED_SESSION.get()
        return super().wrap_bio(incoming, outgoing, server_side, server_hostname, session)


_CLIENT_CONTEXTS_MAX = 256
_client_contexts: dict[UpstreamTls, ResumingContext] = {}


def client_context(settings: UpstreamTls) -> ResumingContext:
    """The shared context for https upstreams with `settings` (its digest changes with the files)."""
    ctx = _client_contexts.get(settings)
    if ctx is not None:
        return ctx
    ctx = ResumingContext(ssl.PROTOCOL_TLS_CLIENT)  # verifies the certificate and the host name
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.set_alpn_protocols(ALPN)
    try:
        if settings.ca is not None:
            ctx.load_verify_locations(cafile=settings.ca)
        else:
            ctx.load_default_certs(ssl.Purpose.SERVER_AUTH)
    except (OSError, ssl.SSLError, ValueError) as e:
        raise TlsSetupError(f"cannot load the upstream CA file {settings.ca}: {_reason(e)}") from None
    if settings.cert is not None and settings.key is not None:
        try:
            ctx.load_cert_chain(settings.cert, settings.key)
        except (OSError, ssl.SSLError, ValueError) as e:
            raise TlsSetupError(f"cannot load the upstream client certificate {settings.cert}: {_reason(e)}") from None
    if len(_client_contexts) >= _CLIENT_CONTEXTS_MAX:
        _client_contexts.clear()
    _client_contexts[settings] = ctx
    return ctx


def upstream_error_reason(exc: BaseException) -> str | None:
    """The upstream error reason of a failed https connection, or None when it is not about TLS."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        return "tls_verify_failed"
    if isinstance(exc, ssl.SSLError | TlsSetupError):
        return "tls_error"
    return None


def describe_upstream_error(exc: BaseException) -> str:
    """What /tenants and the log say about it, e.g. "certificate verify failed: self-signed certificate"."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"certificate verify failed: {exc.verify_message}"
    return _reason(exc)
