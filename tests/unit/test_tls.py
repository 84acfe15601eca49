"""daemon/tls.py without sockets: certificate choice by SNI (handshakes over memory BIOs), rotation,
the reasons of failed handshakes, the handshake gate's admission and queue, the client certificate
header lines, and session resumption for upstreams."""

from __future__ import annotations

import contextlib
import os
import ssl
from pathlib import Path

import pytest
from protocol_fakes import FakeSSLObject
from support import tenant
from support.tlscerts import Pki

from nsproxy_appliance.daemon import tls
from nsproxy_appliance.daemon.context import TenantContext
from nsproxy_appliance.daemon.fdbudget import FdBudget
from nsproxy_appliance.model import Certificate, Limits, Listen, ListenTls, UpstreamTls


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    return Pki(tmp_path / "pki")


def handshake(server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext, name: str | None, session=None):
    """A full TLS handshake between two SSLObjects over memory BIOs; (client, server) objects."""
    s_in, s_out, c_in, c_out = ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO()
    server = server_ctx.wrap_bio(s_in, s_out, server_side=True)
    client = client_ctx.wrap_bio(c_in, c_out, server_hostname=name, session=session)
    done = {"client": False, "server": False}
    for _ in range(20):
        for side, obj in (("client", client), ("server", server)):
            if not done[side]:
                try:
                    obj.do_handshake()
                    done[side] = True
                except ssl.SSLWantReadError:
                    pass
        s_in.write(c_out.read())
        c_in.write(s_out.read())
        if all(done.values()):
            # let the client read the server's session tickets (TLS 1.3 sends them after the handshake)
            with contextlib.suppress(ssl.SSLWantReadError):
                client.read(1)
            return client, server
    raise AssertionError("the handshake did not finish")


def served_serial(server_ctx: ssl.SSLContext, name: str | None) -> str:
    client_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    client_ctx.check_hostname = False
    client_ctx.verify_mode = ssl.CERT_NONE
    client, _ = handshake(server_ctx, client_ctx, name)
    from cryptography import x509

    return f"{x509.load_der_x509_certificate(client.getpeercert(binary_form=True)).serial_number:X}"


def settings(*certs, **kw) -> ListenTls:
    return ListenTls(certificates=tuple(Certificate(c.cert, c.key, names) for c, names in certs), **kw)


def test_sni_chooses_exact_names_then_wildcards_then_the_default(pki):
    default, api, wild = pki.server("d"), pki.server("api", ["api.test"]), pki.server("w", ["*.apps.test"])
    terminator = tls.Terminator(settings((default, ()), (api, ("api.test",)), (wild, ("*.apps.test",))))
    base = terminator.base
    assert served_serial(base, "api.test") == api.serial
    assert served_serial(base, "API.TEST.") == api.serial
    assert served_serial(base, "x.apps.test") == wild.serial
    assert served_serial(base, "x.y.apps.test") == default.serial
    assert served_serial(base, "apps.test") == default.serial
    assert served_serial(base, None) == default.serial
    assert [c.serial for c in terminator.certificates] == [default.serial, api.serial, wild.serial]
    assert terminator.certificates[1].names == ("api.test",)


def test_update_swaps_the_certificates_and_a_bad_file_keeps_the_old_ones(pki):
    first = pki.server("a")
    terminator = tls.Terminator(settings((first, ())))
    base = terminator.base
    assert not terminator.files_changed()
    second = pki.server("a")  # new files at the same paths
    assert terminator.files_changed()
    terminator.update(terminator.settings)
    assert not terminator.files_changed()
    assert served_serial(base, None) == second.serial  # the server's context is the same object
    Path(second.key).write_text("garbage")
    with pytest.raises(tls.TlsSetupError, match=f"cannot load certificate {second.cert}"):
        terminator.update(terminator.settings)
    assert served_serial(base, None) == second.serial
    assert terminator.certificates[0].serial == second.serial


def test_listener_settings_are_in_the_base_context(pki):
    clients = Pki(pki.dir / "clients")
    cert = pki.server("a")
    required = tls.Terminator(settings((cert, ()), client_ca=clients.ca_file, min_version="1.3"))
    assert required.base.minimum_version == ssl.TLSVersion.TLSv1_3
    assert required.base.verify_mode == ssl.CERT_REQUIRED
    optional = tls.Terminator(settings((cert, ()), client_ca=clients.ca_file, client_auth="optional"))
    assert optional.base.verify_mode == ssl.CERT_OPTIONAL
    with pytest.raises(tls.TlsSetupError, match="cannot load client_ca /nonexistent"):
        tls.Terminator(settings((cert, ()), client_ca="/nonexistent"))


def test_socket_key_is_what_sni_cannot_change(pki):
    a = Certificate("/a.pem", "/a.key")
    b = Certificate("/b.pem", "/b.key", ("b.test",))
    plain = Listen("127.0.0.1", 443)
    one = Listen("127.0.0.1", 443, ListenTls((a,)))
    assert tls.socket_key(plain) != tls.socket_key(one)
    assert tls.socket_key(one) == tls.socket_key(Listen("127.0.0.1", 443, ListenTls((b, a), client_ca_digest="x")))
    assert tls.socket_key(one) != tls.socket_key(Listen("127.0.0.1", 443, ListenTls((a,), min_version="1.3")))
    assert tls.socket_key(one) != tls.socket_key(Listen("127.0.0.1", 443, ListenTls((a,), client_ca="/ca.pem")))
    # client_auth means nothing without client_ca
    assert tls.socket_key(one) == tls.socket_key(Listen("127.0.0.1", 443, ListenTls((a,), client_auth="optional")))


def test_failure_reasons():
    def ssl_error(reason: str) -> ssl.SSLError:
        e = ssl.SSLError(1, reason)
        e.reason = reason  # what _ssl sets from OpenSSL's error queue
        return e

    verify = ssl.SSLCertVerificationError(1, "certificate verify failed")
    verify.verify_code = 20
    expired = ssl.SSLCertVerificationError(1, "certificate verify failed")
    expired.verify_code = 10
    cases = {
        "no_certificate": ssl_error("PEER_DID_NOT_RETURN_A_CERTIFICATE"),
        "protocol_version": ssl_error("UNSUPPORTED_PROTOCOL"),
        "http_request": ssl_error("HTTP_REQUEST"),
        "client_rejected": ssl_error("TLSV1_ALERT_UNKNOWN_CA"),
        "no_shared_cipher": ssl_error("NO_SHARED_CIPHER"),
        "other": ssl_error("SOMETHING_NEW"),
        "unknown_ca": verify,
        "bad_certificate": expired,
        "timeout": ConnectionAbortedError("SSL handshake is taking longer than 10 seconds"),
        "closed": ConnectionResetError(),
    }
    for reason, exc in cases.items():
        assert tls.failure_reason(exc) == reason, exc
        assert reason in tls.HANDSHAKE_FAILURE_REASONS
    assert tls.failure_reason(None) == "closed"
    assert tls.upstream_error_reason(verify) == "tls_verify_failed"
    assert tls.upstream_error_reason(ssl_error("WRONG_VERSION_NUMBER")) == "tls_error"
    assert tls.upstream_error_reason(tls.TlsSetupError("x")) == "tls_error"
    assert tls.upstream_error_reason(ConnectionRefusedError()) is None


# ---- the handshake gate ---------------------------------------------------------------------------


class FakeTransport:
    def __init__(self) -> None:
        self.paused = False

    def pause_reading(self) -> None:
        self.paused = True

    def resume_reading(self) -> None:
        self.paused = False


class FakeProto:
    def __init__(self) -> None:
        self.state = 0


def gate_for(max_connections: int = 1024, fd_limit: int = 10_000) -> tls.HandshakeGate:
    import dataclasses

    t = dataclasses.replace(tenant("acme"), limits=Limits(max_connections=max_connections))
    return tls.HandshakeGate(TenantContext(tenant=t, budget=FdBudget(limit=fd_limit)))


def test_the_gate_bounds_handshakes_in_flight_and_wakes_the_next_in_order(monkeypatch):
    monkeypatch.setattr(tls, "MAX_HANDSHAKES_IN_FLIGHT", 2)
    gate = gate_for()
    conns = [(FakeProto(), FakeTransport()) for _ in range(4)]
    started = []
    for proto, transport in conns:
        assert gate.admit()
        running = gate.start(proto, transport)
        proto.state = tls._RUNNING if running else tls._WAITING
        started.append(running)
    assert started == [True, True, False, False]
    assert [t.paused for _, t in conns] == [False, False, True, True]
    assert gate.in_flight == 2 and gate.waiting == 2 and gate.ctx.budget.clients == 4

    conns[3][0].state = tls._DONE  # the last one timed out while it waited
    gate.release(running=False)
    gate.release(running=True)  # the first handshake ended: the third starts
    assert conns[2][0].state == tls._RUNNING and not conns[2][1].paused
    assert gate.in_flight == 2 and gate.waiting == 0 and gate.ctx.budget.clients == 2
    gate.release(running=True)  # nothing waits any more (the timed-out one is skipped)
    assert gate.in_flight == 1 and not gate.queue


def test_the_gate_admits_against_the_tenants_limit_and_the_fd_budget():
    gate = gate_for(max_connections=2)
    assert gate.admit() and gate.start(FakeProto(), FakeTransport())
    gate.ctx.counters.active_connections = 1  # one connection past its handshake
    assert not gate.admit()
    assert gate.ctx.counters.rejected_connections == 1

    tight = gate_for(fd_limit=64 + 32 + 4)  # just room for the headroom: only quiet tenants get in
    admitted = 0
    while tight.admit():
        tight.start(FakeProto(), FakeTransport())
        admitted += 1
    assert 0 < admitted < 64
    assert tight.ctx.counters.rejected_connections == 1


# ---- client certificate headers -------------------------------------------------------------------


def test_client_certificate_lines_escape_what_could_inject_a_header(pki):
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    hostile = pki.client("evil\r\nX-Tenant-ID: other", organisation="Ünïcode")
    der = x509.load_pem_x509_certificate(Path(hostile.cert).read_bytes()).public_bytes(serialization.Encoding.DER)
    lines = tls.client_cert_lines(FakeSSLObject(der), "X-Client-Cert-Subject", "X-Client-Cert-SHA256")  # type: ignore[arg-type]
    subject, fingerprint = lines.decode("ascii").split("\r\n")[:2]
    assert subject == "X-Client-Cert-Subject: O=\\C3\\9Cn\\C3\\AFcode,CN=evil\\0D\\0AX-Tenant-ID: other"
    assert fingerprint == f"X-Client-Cert-SHA256: {hostile.sha256}"
    assert lines.count(b"\r\n") == 2
    assert tls.client_cert_lines(FakeSSLObject(None), "A", "B") == b""  # type: ignore[arg-type]
    assert tls.client_cert_lines(None, "A", "B") == b""


# ---- upstream sessions ----------------------------------------------------------------------------


def test_the_upstream_context_offers_the_pools_session(pki, tmp_path):
    server_cert = pki.server("up", ["up.test"])
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(server_cert.cert, server_cert.key)
    ctx = tls.client_context(UpstreamTls(ca=pki.ca_file, digest="d1"))
    assert tls.client_context(UpstreamTls(ca=pki.ca_file, digest="d1")) is ctx  # shared by equal settings
    assert tls.client_context(UpstreamTls(ca=pki.ca_file, digest="d2")) is not ctx  # rotated files: a new one
    first, _ = handshake(server_ctx, ctx, "up.test")
    assert not first.session_reused and first.selected_alpn_protocol() is None  # the server offers no ALPN
    token = tls.OFFERED_SESSION.set(first.session)
    try:
        second, _ = handshake(server_ctx, ctx, "up.test")
    finally:
        tls.OFFERED_SESSION.reset(token)
    assert second.session_reused
    third, _ = handshake(server_ctx, ctx, "up.test")  # nothing offered outside the dialling pool's context
    assert not third.session_reused
    with pytest.raises(tls.TlsSetupError, match="cannot load the upstream CA file /nonexistent"):
        tls.client_context(UpstreamTls(ca="/nonexistent"))
    assert os.path.exists(pki.ca_file)
