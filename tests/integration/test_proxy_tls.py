"""HTTPS against the real daemon: TLS termination per listener (SNI, mutual TLS, minimum version,
rotation without dropping connections, failed handshakes counted per tenant and reason, a bound on
slow handshakes) and https upstreams (verification, server_hostname, client certificates, session
resumption). Certificates are made in the test; clients connect from inside tenant namespaces."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import signal
import socket
import ssl
import threading
import time
from pathlib import Path

import pytest
from daemon_harness import (
    admin,
    curl_in,
    echoed_headers,
    get_in,
    log_text,
    tenant,
    tenants_by_name,
    wait_until,
    write_config,
)
from support import header_values
from support.tlscerts import Pki
from tls_harness import (
    TlsKeepAlive,
    client_context,
    connect_tls,
    run_tls_echo,
    tls_get,
    tls_listen,
    with_listen,
)

from nsproxy_appliance import daemon_control, model, netns

pytestmark = pytest.mark.root


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    return Pki(tmp_path / "pki")


def serve(paths, tenants: list[model.Tenant], **daemon) -> str:
    generation = write_config(paths, tenants, **daemon)
    daemon_control.ensure_daemon(paths, generation, timeout=30)
    return generation


def listeners_of(paths, name: str) -> list[dict]:
    return tenants_by_name(paths)[name]["listeners"]


def metric_lines(paths, name: str) -> list[str]:
    _, text = admin(paths, "GET", "/metrics")
    text = text if isinstance(text, str) else text.decode()
    return [line for line in text.splitlines() if line.startswith(name)]


def failures(paths, name: str) -> dict[str, int]:
    return tenants_by_name(paths)[name]["counters"]["tls_handshake_failures"]


# ---- termination ----------------------------------------------------------------------------------


def test_https_listener_next_to_a_plain_one(daemon_launcher, make_netns, unique, echo, pki):
    paths = daemon_launcher
    ns = unique("tls")
    path = make_netns(ns)
    server = pki.server("acme", ["localhost"])
    t = with_listen(tenant("acme", ns, 8080, echo), tls_listen("127.0.0.1", 8443, server))
    serve(paths, [t])

    # curl from inside the tenant's namespace, verifying against the test CA
    out = curl_in(ns, "https://localhost:8443/hello", "--cacert", pki.ca_file, "-H", "X-Forwarded-Proto: ftp")
    assert out.returncode == 0, out.stderr
    pairs = json.loads(out.stdout)["headers"]
    seen = {k.lower(): v for k, v in pairs}
    assert seen["x-forwarded-proto"] == "https"
    assert seen["x-forwarded-port"] == "8443"
    assert header_values(pairs, "X-Tenant-ID") == ["acme"]  # the whole list: one copy, the tenant's own
    assert "proto=https" in seen["forwarded"]

    result = tls_get(path, 8443, client_context(pki.ca_file))
    assert result.error is None and result.response.status == 200
    assert result.alpn == "http/1.1" and result.serial == server.serial
    plain = get_in(path, "127.0.0.1", 8080, "/plain")
    assert echoed_headers(plain)["x-forwarded-proto"] == ["http"]

    (plain_report, tls_report) = listeners_of(paths, "acme")
    assert "tls" not in plain_report
    assert tls_report["listening"] and tls_report["error"] is None
    assert tls_report["tls"]["certificates"][0]["serial"] == server.serial
    assert tls_report["tls"]["certificates"][0]["not_after"] == pytest.approx(server.not_after.timestamp())
    expiry = metric_lines(paths, "nsproxy_tls_certificate_expiry_seconds{")
    assert expiry == [
        f'nsproxy_tls_certificate_expiry_seconds{{tenant="acme",listener="127.0.0.1:8443",serial="{server.serial}"}} '
        f"{server.not_after.timestamp()!r}"
    ]


def test_sni_picks_the_certificate_and_the_first_is_the_default(daemon_launcher, make_netns, unique, echo, pki):
    paths = daemon_launcher
    ns = unique("sni")
    path = make_netns(ns)
    default = pki.server("default", ["localhost", "default.test"])
    api = pki.server("api", ["api.acme.test"])
    wild = pki.server("wild", ["*.apps.acme.test"])
    listen = tls_listen("127.0.0.1", 8443, default, (api, ("api.acme.test",)), (wild, ("*.apps.acme.test",)))
    serve(paths, [with_listen(tenant("acme", ns, 8080, echo), listen)])
    ctx = client_context(pki.ca_file)
    assert tls_get(path, 8443, ctx, server_name="api.acme.test").serial == api.serial
    assert tls_get(path, 8443, ctx, server_name="API.Acme.Test").serial == api.serial  # names are case-insensitive
    assert tls_get(path, 8443, ctx, server_name="x.apps.acme.test").serial == wild.serial
    assert tls_get(path, 8443, ctx, server_name="localhost").serial == default.serial
    unverified = client_context(None)
    assert tls_get(path, 8443, unverified, server_name="other.test").serial == default.serial
    assert tls_get(path, 8443, unverified, server_name="a.b.apps.acme.test").serial == default.serial  # one label only
    assert tls_get(path, 8443, unverified, server_name=None).serial == default.serial  # no SNI at all
    served = [c["serial"] for c in listeners_of(paths, "acme")[1]["tls"]["certificates"]]
    assert served == [default.serial, api.serial, wild.serial]


def test_tenants_on_one_address_each_serve_their_own_certificate(daemon_launcher, make_netns, unique, echo, pki):
    paths = daemon_launcher
    names = [unique("a"), unique("b")]
    ns_paths = [make_netns(n) for n in names]
    certs = [pki.server(f"tenant{i}", ["localhost"]) for i in range(2)]
    tenants = [tenant(f"tenant{i}", names[i], 8080, echo, tenant_id=f"id-{i}", extra_listen=()) for i in range(2)]
    tenants = [with_listen(t, tls_listen("127.0.0.1", 8443, certs[i])) for i, t in enumerate(tenants)]
    serve(paths, tenants)
    for i in range(2):
        result = tls_get(ns_paths[i], 8443, client_context(pki.ca_file))
        assert result.serial == certs[i].serial
        assert header_values(result.response.json()["headers"], "X-Tenant-ID") == [f"id-{i}"]


def test_min_version_and_the_handshake_failures_counted_by_reason(daemon_launcher, make_netns, unique, echo, pki):
    paths = daemon_launcher
    ns = unique("v13")
    path = make_netns(ns)
    other_ns = unique("other")
    other_path = make_netns(other_ns)
    server = pki.server("acme", ["localhost"])
    strict = with_listen(tenant("strict", ns, 8080, echo), tls_listen("127.0.0.1", 8443, server, min_version="1.3"))
    other = with_listen(tenant("other", other_ns, 8080, echo), tls_listen("127.0.0.1", 8443, server))
    serve(paths, [strict, other])

    old = tls_get(path, 8443, client_context(pki.ca_file, max_version=ssl.TLSVersion.TLSv1_2))
    assert isinstance(old.error, ssl.SSLError)
    assert tls_get(path, 8443, client_context(pki.ca_file)).version == "TLSv1.3"
    # the other tenant accepts TLS 1.2 (the default minimum)
    assert (
        tls_get(other_path, 8443, client_context(pki.ca_file, max_version=ssl.TLSVersion.TLSv1_2)).version == "TLSv1.2"
    )
    # plain HTTP to a TLS port, and a client that does not trust nsproxy's certificate
    with netns.socket_in(path, socket.AF_INET) as sock:
        sock.settimeout(5)
        sock.connect(("127.0.0.1", 8443))
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        with pytest.raises(ConnectionError):
            while sock.recv(1024):
                pass
            raise ConnectionResetError
    untrusting = client_context(Pki(Path(pki.dir) / "elsewhere").ca_file)
    assert isinstance(tls_get(path, 8443, untrusting).error, ssl.SSLCertVerificationError)
    wait_until(
        lambda: failures(paths, "strict") == {"protocol_version": 1, "http_request": 1, "client_rejected": 1},
        10,
        "the strict tenant's handshake failures",
    )
    assert failures(paths, "other") == {}  # counted for the tenant whose listener it was, only
    lines = metric_lines(paths, "nsproxy_tls_handshake_failures_total{")
    assert 'nsproxy_tls_handshake_failures_total{tenant="strict",reason="protocol_version"} 1' in lines
    assert not [line for line in lines if 'tenant="other"' in line]


def test_a_stalled_handshake_is_cut_at_the_handshake_timeout(daemon_launcher, make_netns, unique, echo, pki):
    paths = daemon_launcher
    ns = unique("slow")
    path = make_netns(ns)
    t = with_listen(
        tenant("slow", ns, 8080, echo),
        tls_listen("127.0.0.1", 8443, pki.server("slow", ["localhost"])),
        tls=model.TenantTls(handshake_timeout=0.5),
    )
    serve(paths, [t])
    with netns.socket_in(path, socket.AF_INET) as sock:
        sock.settimeout(10)
        sock.connect(("127.0.0.1", 8443))
        began = time.monotonic()
        assert sock.recv(1024) == b""  # nothing sent: the daemon closes it
        assert time.monotonic() - began < 5
    wait_until(lambda: failures(paths, "slow") == {"timeout": 1}, 10, "a timeout counted")
    assert tls_get(path, 8443, client_context(pki.ca_file)).response.status == 200


# ---- mutual TLS -----------------------------------------------------------------------------------


def test_mutual_tls_required(daemon_launcher, make_netns, unique, echo, pki):
    paths = daemon_launcher
    ns = unique("mtls")
    path = make_netns(ns)
    clients = Pki(Path(pki.dir) / "clients", name="client CA")
    strangers = Pki(Path(pki.dir) / "strangers", name="stranger CA")
    listen = tls_listen("127.0.0.1", 8443, pki.server("acme", ["localhost"]), client_ca=clients.ca_file)
    serve(paths, [with_listen(tenant("acme", ns, 8080, echo), listen)])

    good = clients.client("service one", organisation='Acme, "Inc"')
    forged = {"X-Client-Cert-Subject": "CN=admin", "x_client_cert_sha256": "00"}
    result = tls_get(path, 8443, client_context(pki.ca_file, good), headers=forged)
    assert result.error is None and result.response.status == 200
    seen = echoed_headers(result.response)
    assert seen["x-client-cert-subject"] == [good.subject] == ['O=Acme\\, \\"Inc\\",CN=service one']
    assert seen["x-client-cert-sha256"] == [good.sha256]
    assert "x_client_cert_sha256" not in seen
    # the plain listener strips them too: no client can forge them on any listener of the tenant
    plain = echoed_headers(get_in(path, "127.0.0.1", 8080, headers=forged))
    assert "x-client-cert-subject" not in plain and "x_client_cert_sha256" not in plain

    assert tls_get(path, 8443, client_context(pki.ca_file)).error is not None  # no certificate
    assert tls_get(path, 8443, client_context(pki.ca_file, strangers.client("intruder"))).error is not None
    wait_until(lambda: failures(paths, "acme") == {"no_certificate": 1, "unknown_ca": 1}, 10, "mTLS refusals counted")
    assert echo.requests == 2  # the refused clients never reached the upstream


def test_mutual_tls_optional(daemon_launcher, make_netns, unique, echo, pki):
    paths = daemon_launcher
    ns = unique("mtlso")
    path = make_netns(ns)
    clients = Pki(Path(pki.dir) / "clients", name="client CA")
    listen = tls_listen(
        "127.0.0.1", 8443, pki.server("acme", ["localhost"]), client_ca=clients.ca_file, client_auth="optional"
    )
    t = with_listen(
        tenant("acme", ns, 8080, echo),
        listen,
        tls=model.TenantTls(subject_header="X-SSL-Client-DN", fingerprint_header="X-SSL-Client-Fingerprint"),
    )
    serve(paths, [t])
    anonymous = tls_get(path, 8443, client_context(pki.ca_file), headers={"X-SSL-Client-DN": "CN=admin"})
    seen = echoed_headers(anonymous.response)
    assert "x-ssl-client-dn" not in seen and "x-ssl-client-fingerprint" not in seen
    client = clients.client("svc")
    seen = echoed_headers(tls_get(path, 8443, client_context(pki.ca_file, client)).response)
    assert seen["x-ssl-client-dn"] == ["CN=svc"] and seen["x-ssl-client-fingerprint"] == [client.sha256]


# ---- rotation -------------------------------------------------------------------------------------


def test_rotation_keeps_established_connections(daemon_launcher, make_netns, unique, echo, pki):
    paths = daemon_launcher
    ns = unique("rot")
    path = make_netns(ns)
    first = pki.server("acme", ["localhost"])
    t = with_listen(tenant("acme", ns, 8080, echo), tls_listen("127.0.0.1", 8443, first))
    serve(paths, [t])
    ctx = client_context(pki.ca_file)
    long_lived = TlsKeepAlive(path, 8443, ctx)
    assert long_lived.get("/1").status == 200 and long_lived.serial == first.serial

    # 1. new files at the same paths, and a SIGHUP: the same config, the files changed
    second = pki.server("acme", ["localhost"])
    assert second.cert == first.cert and second.serial != first.serial
    pid = daemon_control.status(paths).pid
    os.kill(pid, signal.SIGHUP)
    wait_until(lambda: tls_get(path, 8443, ctx).serial == second.serial, 10, "new handshakes see the new certificate")
    assert listeners_of(paths, "acme")[1]["tls"]["certificates"][0]["serial"] == second.serial
    assert long_lived.get("/2").status == 200  # the connection made before it is still served

    # 2. a new config (what nsproxy-apply writes after a rotation: the file digest in it changed)
    third = pki.server("acme-3", ["localhost"])
    rotated = dataclasses.replace(t, listen=(t.listen[0], tls_listen("127.0.0.1", 8443, third)))
    serve(paths, [rotated])
    assert tls_get(path, 8443, ctx).serial == third.serial
    assert long_lived.get("/3").status == 200
    expiry = metric_lines(paths, "nsproxy_tls_certificate_expiry_seconds{")
    assert len(expiry) == 1 and f'serial="{third.serial}"' in expiry[0]
    long_lived.close()

    # 3. a file that cannot be loaded: the listener keeps serving what it had, and says so
    Path(third.cert).write_text("not a certificate\n")
    os.kill(pid, signal.SIGHUP)
    wait_until(lambda: listeners_of(paths, "acme")[1]["error"], 10, "the listener reports the bad file")
    report = tenants_by_name(paths)["acme"]
    assert "still serving" in report["listeners"][1]["error"] and report["state"] == "failed"
    assert tls_get(path, 8443, ctx).serial == third.serial


# ---- isolation: a handshake flood -----------------------------------------------------------------


def test_a_handshake_flood_on_one_tenant_leaves_another_served(daemon_launcher, make_netns, unique, echo, pki):
    paths = daemon_launcher
    flood_ns, calm_ns = unique("flood"), unique("calm")
    flood_path, calm_path = make_netns(flood_ns), make_netns(calm_ns)
    cert = pki.server("rsa", ["localhost"], kind="rsa")  # RSA: the costlier handshake
    flood = with_listen(
        tenant("flood", flood_ns, 8080, echo),
        tls_listen("127.0.0.1", 8443, cert),
        limits=model.Limits(max_connections=64),
    )
    calm = with_listen(tenant("calm", calm_ns, 8080, echo), tls_listen("127.0.0.1", 8443, cert))
    serve(paths, [flood, calm])
    stop = threading.Event()
    flooded = [0]

    def flooder() -> None:
        ctx = client_context(None)
        while not stop.is_set():
            try:
                connect_tls(flood_path, "127.0.0.1", 8443, ctx, None, timeout=5).close()
                flooded[0] += 1
            except OSError:
                pass

    threads = [threading.Thread(target=flooder) for _ in range(8)]
    for thread in threads:
        thread.start()
    try:
        wait_until(lambda: flooded[0] > 50, 20, "the flood under way")
        calm_client = TlsKeepAlive(calm_path, 8443, client_context(pki.ca_file))
        statuses = [calm_client.get(f"/{i}").status for i in range(200)]
        fresh = [tls_get(calm_path, 8443, client_context(pki.ca_file)).response.status for _ in range(20)]
        calm_client.close()
    finally:
        stop.set()
        for thread in threads:
            thread.join(10)
    assert statuses == [200] * 200 and fresh == [200] * 20
    calm_report = tenants_by_name(paths)["calm"]
    assert calm_report["counters"]["tls_handshake_failures"] == {}
    assert calm_report["counters"]["rejected_connections"] == 0


# ---- https upstreams ------------------------------------------------------------------------------


def https_tenant(name: str, ns: str, url: str, tls: model.UpstreamTls) -> model.Tenant:
    base = tenant(name, ns, 8080, "http://127.0.0.1:9")
    host, port = re.match(r"https://(.+):(\d+)$", url).groups()  # type: ignore[union-attr]
    return dataclasses.replace(base, upstream=model.Upstream(kind="http", host=host, port=int(port), url=url, tls=tls))


def test_https_upstream_verified_with_a_ca_file(daemon_launcher, make_netns, unique, pki):
    paths = daemon_launcher
    ns = unique("up")
    path = make_netns(ns)
    with run_tls_echo(pki.server("upstream", ["api.internal"], ips=("127.0.0.1",))) as upstream:
        ok = https_tenant("ok", ns, upstream.url, model.UpstreamTls(ca=pki.ca_file))
        serve(paths, [ok])
        resp = get_in(path, "127.0.0.1", 8080, "/over-tls")
        assert resp.status == 200 and resp.json()["path"] == "/over-tls"
        assert header_values(resp.json()["headers"], "X-Tenant-ID") == ["ok"]
        assert tenants_by_name(paths)["ok"]["upstream_tls"]["last_error"] is None


def test_https_upstream_verification_failure_is_a_502_that_says_why(daemon_launcher, make_netns, unique, pki, tmp_path):
    paths = daemon_launcher
    ns = unique("bad")
    path = make_netns(ns)
    log_file = str(tmp_path / "access.log")
    with run_tls_echo(pki.server("upstream", ["api.internal"], ips=())) as upstream:
        # the system store does not know the test CA; and the certificate does not name 127.0.0.1
        system = https_tenant("system", ns, upstream.url, model.UpstreamTls())
        serve(paths, [system], access_log=log_file)
        resp = get_in(path, "127.0.0.1", 8080, "/x")
        assert resp.status == 502
        report = tenants_by_name(paths)["system"]
        assert report["counters"]["upstream_errors"] == {"tls_verify_failed": 1}
        assert "certificate verify failed" in report["upstream_tls"]["last_error"]
        wait_until(lambda: "upstream_tls_verify_failed" in Path(log_file).read_text(), 10, "the access log record")
        assert "TLS failed: certificate verify failed" in log_text(paths)
        assert upstream.requests == 0

        # the right CA, and server_hostname naming what the certificate says: served
        fixed = https_tenant(
            "system", ns, upstream.url, model.UpstreamTls(ca=pki.ca_file, server_hostname="api.internal")
        )
        serve(paths, [fixed], access_log=log_file)
        assert get_in(path, "127.0.0.1", 8080, "/y").status == 200
        assert tenants_by_name(paths)["system"]["upstream_tls"]["last_error"] is None


def test_https_upstream_client_certificate_and_session_resumption(daemon_launcher, make_netns, unique, pki):
    paths = daemon_launcher
    ns = unique("mup")
    path = make_netns(ns)
    clients = Pki(Path(pki.dir) / "clients", name="client CA")
    nsproxy_cert = clients.client("nsproxy")
    with run_tls_echo(pki.server("upstream", ["localhost"]), client_ca=clients.ca_file) as upstream:
        upstream.close_after_each = True  # every request needs a new upstream connection
        t = https_tenant(
            "mtls", ns, upstream.url, model.UpstreamTls(ca=pki.ca_file, cert=nsproxy_cert.cert, key=nsproxy_cert.key)
        )
        serve(paths, [t])
        for i in range(4):
            assert get_in(path, "127.0.0.1", 8080, f"/{i}").status == 200
        assert upstream.client_subjects == ["nsproxy"] * 4
        assert upstream.resumed[0] is False
        assert all(upstream.resumed[1:]), upstream.resumed  # the pool offered its session again
