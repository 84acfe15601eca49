"""Helpers for the TLS tests: tenants with TLS listeners, clients over TLS from inside a netns, and
an HTTPS echo upstream (the quickstart echo behind the standard library's ssl)."""

from __future__ import annotations

import contextlib
import dataclasses
import socket
import ssl
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from daemon_harness import CountingEchoHandler, Echo, echo_module, read_response
from support import Response, split_response
from support.tlscerts import CertFiles

from nsproxy_appliance import model, netns


def tls_listen(
    host: str,
    port: int,
    *certs: tuple[CertFiles, tuple[str, ...]] | CertFiles,
    client_ca: str | None = None,
    client_auth: str = "required",
    min_version: str = "1.2",
) -> model.Listen:
    """A TLS Listen serving `certs` (the first is the default; (files, names) pairs carry SNI names)."""
    certificates = []
    for c in certs:
        files, names = c if isinstance(c, tuple) else (c, ())
        certificates.append(model.Certificate(cert=files.cert, key=files.key, names=tuple(names)))
    tls = model.ListenTls(
        certificates=tuple(certificates),
        client_ca=client_ca,
        client_auth=client_auth,  # type: ignore[arg-type]
        min_version=min_version,  # type: ignore[arg-type]
    )
    return model.Listen(host, port, tls)


def with_listen(tenant: model.Tenant, *listens: model.Listen, **changes: Any) -> model.Tenant:
    return dataclasses.replace(tenant, listen=(*tenant.listen, *listens), **changes)


@dataclass
class TlsResult:
    response: Response | None
    serial: str | None  # the serial of the certificate the server presented (uppercase hex)
    version: str | None
    alpn: str | None
    error: BaseException | None = None


def client_context(
    cafile: str | None, cert: CertFiles | None = None, *, max_version: ssl.TLSVersion | None = None
) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    if cafile is not None:
        ctx.load_verify_locations(cafile)
    else:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    ctx.set_alpn_protocols(["http/1.1"])
    if cert is not None:
        ctx.load_cert_chain(cert.cert, cert.key)
    if max_version is not None:
        ctx.maximum_version = max_version
        ctx.minimum_version = min(ctx.minimum_version, max_version)
    return ctx


def connect_tls(
    ns_path: str | None,
    host: str,
    port: int,
    ctx: ssl.SSLContext,
    server_name: str | None,
    timeout: float = 10.0,
) -> ssl.SSLSocket:
    """A TLS connection from inside the netns at `ns_path`; `server_name` None sends no SNI."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    raw = netns.socket_in(ns_path, family)
    raw.settimeout(timeout)
    try:
        raw.connect((host, port))
        if server_name is None:
            ctx.check_hostname = False
        return ctx.wrap_socket(raw, server_hostname=server_name)
    except BaseException:
        raw.close()
        raise


def serial_of(sock: ssl.SSLSocket) -> str:
    from cryptography import x509

    der = sock.getpeercert(binary_form=True)
    assert der
    return f"{x509.load_der_x509_certificate(der).serial_number:X}"


def tls_get(
    ns_path: str | None,
    port: int,
    ctx: ssl.SSLContext,
    *,
    server_name: str | None = "localhost",
    host: str = "127.0.0.1",
    path: str = "/",
    headers: dict[str, str] | None = None,
) -> TlsResult:
    """One HTTPS GET (Connection: close); a failed handshake is returned as `error`."""
    try:
        sock = connect_tls(ns_path, host, port, ctx, server_name)
    except (ssl.SSLError, OSError) as e:
        return TlsResult(None, None, None, None, e)
    with sock:
        serial, version, alpn = serial_of(sock), sock.version(), sock.selected_alpn_protocol()
        hdrs = {"Host": server_name or host, "Connection": "close", **(headers or {})}
        head = f"GET {path} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in hdrs.items()) + "\r\n"
        try:
            sock.sendall(head.encode())
            return TlsResult(read_response(sock), serial, version, alpn)
        except (ssl.SSLError, OSError, ValueError) as e:
            # TLS 1.3: a refused client certificate shows after the client's side of the handshake,
            # as an alert or a connection closed without a response
            return TlsResult(None, serial, version, alpn, e)


class TlsKeepAlive:
    """One persistent HTTPS connection; responses must carry Content-Length."""

    def __init__(self, ns_path: str, port: int, ctx: ssl.SSLContext, server_name: str = "localhost") -> None:
        self.sock = connect_tls(ns_path, "127.0.0.1", port, ctx, server_name)
        self.serial = serial_of(self.sock)
        self.buf = b""

    def get(self, path: str = "/") -> Response:
        self.sock.sendall(f"GET {path} HTTP/1.1\r\nHost: ka\r\n\r\n".encode())
        while True:
            try:
                response, self.buf = split_response(self.buf)
                return response
            except ValueError:  # not complete yet
                chunk = self.sock.recv(65536)
                if not chunk:
                    raise ConnectionError("closed by the proxy") from None
                self.buf += chunk

    def close(self) -> None:
        self.sock.close()


# ---- an HTTPS upstream ------------------------------------------------------------------------


@dataclass
class TlsEcho(Echo):
    """The echo upstream behind TLS; records per connection whether its TLS session was resumed and
    which client certificate it presented."""

    resumed: list[bool] = field(default_factory=list)
    client_subjects: list[str | None] = field(default_factory=list)
    close_after_each: bool = False

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"


class _TlsEchoHandler(CountingEchoHandler):
    def setup(self) -> None:
        server: Any = self.server
        conn = self.request
        try:
            conn.do_handshake()
        except (ssl.SSLError, OSError):
            self.close_connection = True
            raise
        server.echo.resumed.append(conn.session_reused)
        peer = conn.getpeercert()
        subject = dict(x[0] for x in peer["subject"]).get("commonName") if peer else None
        server.echo.client_subjects.append(subject)
        super().setup()

    def end_headers(self) -> None:
        if self.server.echo.close_after_each:  # type: ignore[attr-defined]
            self.send_header("Connection", "close")
            self.close_connection = True
        super().end_headers()

    def handle(self) -> None:
        with contextlib.suppress(ssl.SSLError, ConnectionError):
            super().handle()


class _TlsServer(echo_module.TCPServer):
    def __init__(self, ctx: ssl.SSLContext) -> None:
        self.ctx = ctx
        super().__init__(("127.0.0.1", 0), _TlsEchoHandler)

    def get_request(self) -> tuple[socket.socket, Any]:
        sock, addr = super().get_request()
        return self.ctx.wrap_socket(sock, server_side=True, do_handshake_on_connect=False), addr

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # refused handshakes are expected in these tests


@contextlib.contextmanager
def run_tls_echo(server_cert: CertFiles, *, client_ca: str | None = None) -> Iterator[TlsEcho]:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(server_cert.cert, server_cert.key)
    if client_ca is not None:
        ctx.load_verify_locations(client_ca)
        ctx.verify_mode = ssl.CERT_REQUIRED
    server = _TlsServer(ctx)
    server.requests = 0  # type: ignore[attr-defined]
    echo = TlsEcho(server.server_address[1], server)
    server.echo = echo  # type: ignore[attr-defined]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield echo
    finally:
        server.shutdown()
        server.server_close()
