"""The manifest's TLS fields: their forms and errors, and the checks of the files they name (plan and
apply load with check_files=True; `nsproxy validate` without), each reported at the field naming the
file; warnings (a certificate expiring soon) in Manifest.warnings."""

from __future__ import annotations

import datetime
import os
import re
import shutil
import tempfile
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from support.tlscerts import CertFiles, Pki, new_key, write_key

from nsproxy_appliance import manifest
from nsproxy_appliance.manifest import ManifestError
from nsproxy_appliance.manifest.tlsfiles import DaemonUser
from nsproxy_appliance.model import Certificate, ListenTls, TenantTls, UpstreamTls


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    return Pki(tmp_path / "pki")


def doc(
    listen_tls: str = "", upstream: str = "http://127.0.0.1:9000", tenant_extra: str = "", defaults: str = ""
) -> str:
    """A one-tenant manifest with a TLS listener at line 8 (`tls:` at 8:9)."""
    return textwrap.dedent(
        f"""\
        version: 1
        defaults:{defaults or " {}"}
        tenants:
          - name: acme
            listen:
              - "127.0.0.1:8080"
              - address: "127.0.0.1:8443"
                tls: {listen_tls}
            upstream: {upstream}
        """
    ) + textwrap.indent(tenant_extra, "    ")


def certs(files: CertFiles, **more: str) -> str:
    extra = "".join(f", {k}: {v}" for k, v in more.items())
    return f"{{certificates: [{{cert: {files.cert}, key: {files.key}}}]{extra}}}"


def errors(text: str, check_files: bool = True) -> list[str]:
    with pytest.raises(ManifestError) as info:
        manifest.parse(text, "t.yaml", check_files=check_files)
    return info.value.errors


def one_error(text: str, where: str, *fragments: str) -> None:
    """Exactly one error, at line 8 and the JSON path `where` (the column depends on the file names)."""
    found = errors(text)
    assert len(found) == 1, found
    assert re.match(rf"t\.yaml:8:\d+: {re.escape(where)}: ", found[0]), found
    for fragment in fragments:
        assert fragment in found[0], found


# ---- forms ----------------------------------------------------------------------------------------


def test_tls_listener_and_https_upstream_forms():
    text = (Path(__file__).parent / "data" / "tls-example.yaml").read_text()
    m = manifest.parse(text, "t.yaml")
    acme, globex = m.tenants
    plain, tls = acme.listen
    assert plain.tls is None and str(tls) == "127.0.0.1:8443"
    assert tls.tls == ListenTls(
        certificates=(
            Certificate("/etc/nsproxy/tls/acme.pem", "/etc/nsproxy/tls/acme.key"),
            Certificate("/etc/nsproxy/tls/api.pem", "/etc/nsproxy/tls/api.key", ("api.acme.test", "*.apps.acme.test")),
        ),
        client_ca="/etc/nsproxy/tls/clients.pem",
        client_auth="optional",
        min_version="1.3",
    )
    assert acme.upstream.tls == UpstreamTls(
        ca="/etc/ssl/internal-ca.pem",
        cert="/etc/nsproxy/tls/up.pem",
        key="/etc/nsproxy/tls/up.key",
        server_hostname="api.internal",
    )
    assert acme.upstream.port == 8443 and acme.upstream.from_ns == "tenant"
    # the tenant's tls merged over defaults.tls, field by field
    assert acme.tls == TenantTls(handshake_timeout=2.5, subject_header="X-SSL-Client-DN")
    assert globex.tls == TenantTls(handshake_timeout=5.0)
    assert globex.upstream.tls == UpstreamTls() and globex.upstream.url == "https://api.internal:8443"  # system store
    assert globex.listen[0].tls is not None and globex.listen[0].tls.min_version == "1.2"
    assert m.warnings == ()


def test_https_urls_default_to_port_443_and_the_system_store():
    from nsproxy_appliance.manifest import fields

    up = fields.upstream_url("https://api.example.com")
    assert (up.host, up.port, up.tls) == ("api.example.com", 443, UpstreamTls())
    assert fields.upstream_url("http://api.example.com").tls is None


def test_yaml_numbers_for_min_version_are_read_as_versions():
    m = manifest.parse(doc("{certificates: [{cert: /c.pem, key: /k.pem}], min_version: 1.3}"), "t.yaml")
    assert m.tenants[0].listen[1].tls.min_version == "1.3"


@pytest.mark.parametrize(
    ("listen_tls", "where", "fragment"),
    [
        ("{certificates: []}", "8:29", "at least 1"),
        ("{}", "8:14", "missing required field 'certificates'"),
        ("{certificates: [{cert: /c.pem}]}", "8:30", "missing required field 'key'"),
        ("{certificates: [{cert: c.pem, key: /k}]}", "8:37", "not absolute"),
        ("{certificates: [{cert: /c, key: /k}], min_version: '1.1'}", "8:65", "expected one of: 1.2, 1.3"),
        ("{certificates: [{cert: /c, key: /k}], client_auth: optional}", "8:65", "add client_ca"),
        ("{certificates: [{cert: /c, key: /k}], client_auth: sometimes, client_ca: /ca}", "8:65", "required, optional"),
        ("{certificates: [{cert: /c, key: /k}], sni: x}", "8:52", "unknown field 'sni'"),
        ("{certificates: [{cert: /c, key: /k, names: [bad_name]}]}", "8:58", "expected a host name"),
        ("{certificates: [{cert: /c, key: /k, names: ['a.*.test']}]}", "8:58", "expected a host name"),
        (
            "{certificates: [{cert: /c, key: /k, names: [a.test]}, {cert: /d, key: /e, names: [A.test]}]}",
            "8:96",
            "already listed by certificate 1",
        ),
    ],
)
def test_listener_tls_errors(listen_tls, where, fragment):
    found = errors(doc(listen_tls), check_files=False)
    assert len(found) == 1, found
    assert found[0].startswith(f"t.yaml:{where}: ") and fragment in found[0], found


def test_a_listener_object_needs_tls():
    found = errors(doc("{}").replace("        tls: {}\n", "").replace('address: "127.0.0.1:8443"', "{address: x}"))
    assert found and all("listen[1]" in e for e in found), found


@pytest.mark.parametrize(
    ("upstream", "where", "fragment"),
    [
        ("{url: 'http://a', tls: {}}", "9:38", "https upstreams only"),
        ("{url: 'https://a', tls: {key: /k}}", "9:45", "key needs cert"),
        ("{url: 'https://a', tls: {server_hostname: 'a b'}}", "9:57", "expected a host name"),
        ("{url: 'https://a', tls: {verify: false}}", "9:40", "unknown field 'verify'"),
        ("'https://a:0'", "9:15", "port 0 is out of range"),
    ],
)
def test_upstream_tls_errors(upstream, where, fragment):
    found = errors(doc("{certificates: [{cert: /c, key: /k}]}", upstream=upstream), check_files=False)
    assert len(found) == 1, found
    assert found[0].startswith(f"t.yaml:{where}: ") and fragment in found[0], found


@pytest.mark.parametrize(
    ("tenant_extra", "where", "fragment"),
    [
        ("tls: {client_cert_headers: {subject: X-Tenant-ID}}\n", "10:42", "also a client certificate header"),
        ("tls: {client_cert_headers: {subject: X-Forwarded-For}}\n", "10:42", "manages itself"),
        ("tls: {client_cert_headers: {subject: X-A, fingerprint: x_a}}\n", "10:32", "give them different names"),
        ("tls: {client_cert_headers: {subject: 'X A'}}\n", "10:42", "a space is not allowed"),
        ("tls: {handshake_timeout: 0}\n", "10:30", "handshake_timeout must be > 0"),
    ],
)
def test_tenant_tls_settings_errors(tenant_extra, where, fragment):
    found = errors(doc("{certificates: [{cert: /c, key: /k}]}", tenant_extra=tenant_extra), check_files=False)
    assert len(found) == 1, found
    assert found[0].startswith(f"t.yaml:{where}: ") and fragment in found[0], found


# ---- the files ------------------------------------------------------------------------------------


def test_validate_does_not_read_the_files_plan_and_apply_do(pki):
    text = doc("{certificates: [{cert: /nonexistent/c.pem, key: /nonexistent/c.key}]}")
    assert manifest.parse(text, "t.yaml").tenants[0].listen[1].tls.certificates[0].digest == ""
    found = errors(text)
    assert found == [
        "t.yaml:8:37: $.tenants[0].listen[1].tls.certificates[0].cert: cannot read certificate file "
        "/nonexistent/c.pem: No such file or directory",
        "t.yaml:8:62: $.tenants[0].listen[1].tls.certificates[0].key: cannot read key file /nonexistent/c.key: "
        "No such file or directory",
    ]


def test_good_files_give_a_digest_that_follows_their_contents(pki):
    files = pki.server("acme")
    first = manifest.parse(doc(certs(files)), "t.yaml", check_files=True)
    digest = first.tenants[0].listen[1].tls.certificates[0].digest
    assert len(digest) == 16
    assert manifest.parse(doc(certs(files)), "t.yaml", check_files=True) == first
    pki.server("acme")  # rotated: new files at the same paths
    again = manifest.parse(doc(certs(files)), "t.yaml", check_files=True)
    assert again.tenants[0].listen[1].tls.certificates[0].digest != digest
    assert again.tenants[0].listen[0] == first.tenants[0].listen[0]


def test_key_readable_by_others(pki):
    files = pki.server("acme")
    os.chmod(files.key, 0o640)
    one_error(
        doc(certs(files)), "$.tenants[0].listen[1].tls.certificates[0].key", "has mode 0640", f"chmod 600 {files.key}"
    )


def test_key_of_another_certificate(pki):
    files, other = pki.server("acme"), pki.server("other")
    text = doc(f"{{certificates: [{{cert: {files.cert}, key: {other.key}}}]}}")
    one_error(
        text,
        "$.tenants[0].listen[1].tls.certificates[0].key",
        f"key {other.key} is not the key of certificate {files.cert}",
        f"serial {files.serial}",
    )


def test_not_pem_and_encrypted_keys(pki, tmp_path):
    files = pki.server("acme")
    Path(files.cert).write_bytes(b"\x00\x01 nothing here")
    one_error(doc(certs(files)), "$.tenants[0].listen[1].tls.certificates[0].cert", "holds no PEM certificate")
    files = pki.server("acme")
    Path(files.cert).write_text("-----BEGIN CERTIFICATE-----\nnope\n-----END CERTIFICATE-----\n")
    one_error(doc(certs(files)), "$.tenants[0].listen[1].tls.certificates[0].cert", "a PEM certificate does not parse")
    files = pki.server("acme")
    key = serialization.load_pem_private_key(Path(files.key).read_bytes(), None)
    encrypted = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.BestAvailableEncryption(b"pw")
    )
    Path(files.key).write_bytes(encrypted)
    one_error(doc(certs(files)), "$.tenants[0].listen[1].tls.certificates[0].key", "is encrypted")
    one_error(
        doc(f"{{certificates: [{{cert: {files.cert}, key: {tmp_path}}}]}}"),
        "$.tenants[0].listen[1].tls.certificates[0].key",
        "is not a regular file",
    )


def test_expired_not_yet_valid_and_expiring_soon(pki):
    expired = pki.server("old", days=-1, not_before_days=-30)
    one_error(doc(certs(expired)), "$.tenants[0].listen[1].tls.certificates[0].cert", "expired on")
    future = pki.server("future", days=60, not_before_days=2)
    one_error(doc(certs(future)), "$.tenants[0].listen[1].tls.certificates[0].cert", "is not valid before")
    soon = pki.server("soon", days=5)
    m = manifest.parse(doc(certs(soon)), "t.yaml", check_files=True)  # a warning, not an error
    assert len(m.warnings) == 1
    assert re.match(
        r"t\.yaml:8:\d+: \$\.tenants\[0\]\.listen\[1\]\.tls\.certificates\[0\]\.cert: certificate ", m.warnings[0]
    )
    assert "expires in 4 days" in m.warnings[0] and f"serial {soon.serial}" in m.warnings[0]
    assert not manifest.parse(doc(certs(pki.server("fine", days=20))), "t.yaml", check_files=True).warnings


def test_the_chain_must_be_in_order(pki, tmp_path):
    # an intermediate CA between the root and the certificate
    now = datetime.datetime.now(datetime.UTC)
    inter_key = new_key()
    inter_name = x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, "intermediate")])
    intermediate = (
        x509.CertificateBuilder()
        .subject_name(inter_name)
        .issuer_name(pki.name)
        .public_key(inter_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=100))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .sign(pki.key, hashes.SHA256())
    )
    leaf_key = new_key()
    leaf = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, "acme")]))
        .issuer_name(inter_name)
        .public_key(leaf_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=50))
        .sign(inter_key, hashes.SHA256())
    )
    pem = [c.public_bytes(serialization.Encoding.PEM) for c in (leaf, intermediate)]
    chain, key = tmp_path / "chain.pem", tmp_path / "chain.key"
    write_key(key, leaf_key)
    chain.write_bytes(pem[0] + pem[1])
    files = f"{{certificates: [{{cert: {chain}, key: {key}}}]}}"
    assert manifest.parse(doc(files), "t.yaml", check_files=True).tenants[0].listen[1].tls is not None
    chain.write_bytes(pem[0] + pki.cert.public_bytes(serialization.Encoding.PEM))  # the wrong issuer
    one_error(
        doc(files),
        "$.tenants[0].listen[1].tls.certificates[0].cert",
        "not in order: certificate 2 does not issue certificate 1",
    )


def test_sni_names_the_certificate_does_not_cover_are_warnings(pki):
    files = pki.server("api", ["api.acme.test", "*.apps.acme.test"])
    text = doc(
        f"{{certificates: [{{cert: {files.cert}, key: {files.key}, "
        "names: [api.acme.test, x.apps.acme.test, other.test]}]}"
    )
    m = manifest.parse(text, "t.yaml", check_files=True)
    assert len(m.warnings) == 1
    assert m.warnings[0].endswith(
        f"$.tenants[0].listen[1].tls.certificates[0].names[2]: certificate {files.cert} does not "
        "cover other.test: clients asking for it will not accept it"
    )


def test_client_ca_and_upstream_files(pki, tmp_path):
    files = pki.server("acme")
    one_error(
        doc(certs(files, client_ca=str(tmp_path / "none.pem"))),
        "$.tenants[0].listen[1].tls.client_ca",
        "cannot read CA certificate file",
    )
    ok = manifest.parse(doc(certs(files, client_ca=pki.ca_file)), "t.yaml", check_files=True)
    assert len(ok.tenants[0].listen[1].tls.client_ca_digest) == 16

    client = pki.client("nsproxy")
    upstream = f"{{url: 'https://api.test', tls: {{ca: {pki.ca_file}, cert: {client.cert}, key: {client.key}}}}}"
    m = manifest.parse(doc(certs(files), upstream=upstream), "t.yaml", check_files=True)
    assert m.tenants[0].upstream.tls.digest.count("-") == 1
    os.chmod(client.key, 0o604)
    found = errors(doc(certs(files), upstream=upstream))
    assert len(found) == 1 and "$.tenants[0].upstream.tls.key: key file" in found[0] and "mode 0604" in found[0]


def test_a_shared_certificate_is_read_once_and_reported_for_each_tenant(pki, monkeypatch):
    from nsproxy_appliance.manifest import tlsfiles

    files = pki.server("shared")
    reads = []
    real = tlsfiles.read
    monkeypatch.setattr(tlsfiles, "read", lambda path, *a, **k: reads.append(path) or real(path, *a, **k))
    tenants = "".join(
        f"  - name: t{i}\n    listen: [{{address: '127.0.0.1:8443', tls: {certs(files)}}}]\n" for i in range(20)
    )
    text = f"version: 1\ndefaults: {{upstream: 'http://127.0.0.1:9'}}\ntenants:\n{tenants}"
    assert len(manifest.parse(text, "t.yaml", check_files=True).tenants) == 20
    assert sorted(reads) == sorted([files.cert, files.key])
    os.chmod(files.key, 0o644)
    reads.clear()
    found = errors(text)
    assert len(found) == 20 and all("mode 0644" in e for e in found)


# ---- read as the daemon's user (plan runs as root, nsproxyd does not) ----------------------------

NOBODY = DaemonUser("nobody", 65534, 65534)


@pytest.fixture
def open_pki() -> Iterator[Pki]:
    """A Pki in a fresh directory every user may search (tmp_path's parents are root's 0700)."""
    root = tempfile.mkdtemp(prefix="nsproxy-tls-", dir="/var/tmp")
    os.chmod(root, 0o755)
    try:
        pki = Pki(Path(root) / "pki")
        os.chmod(pki.dir, 0o755)
        yield pki
    finally:
        shutil.rmtree(root, ignore_errors=True)


def reader_errors(text: str, reader: DaemonUser) -> list[str]:
    with pytest.raises(ManifestError) as info:
        manifest.parse(text, "t.yaml", check_files=True, reader=reader)
    return info.value.errors


@pytest.mark.root
def test_a_key_root_owns_is_an_error_when_the_daemon_runs_as_another_user(open_pki):
    files = open_pki.server("acme")
    os.chmod(files.cert, 0o644)
    os.chmod(open_pki.ca_file, 0o644)
    found = reader_errors(doc(certs(files)), NOBODY)
    assert len(found) == 1, found
    assert re.match(r"t\.yaml:8:\d+: \$\.tenants\[0\]\.listen\[1\]\.tls\.certificates\[0\]\.key: ", found[0]), found
    assert f"key file {files.key} cannot be read by nobody (uid 65534), the user nsproxyd runs as: " in found[0]
    assert "Permission denied" in found[0] and f"chown nobody {files.key}" in found[0]
    # the same files with a root daemon, and with the key given to the daemon's user: no error
    assert manifest.parse(doc(certs(files)), "t.yaml", check_files=True).tenants[0].name == "acme"
    os.chown(files.key, NOBODY.uid, NOBODY.gid)
    assert manifest.parse(doc(certs(files)), "t.yaml", check_files=True, reader=NOBODY).tenants[0].name == "acme"


@pytest.mark.root
def test_a_certificate_and_a_ca_bundle_the_daemons_user_cannot_read_are_errors_at_their_fields(open_pki):
    files = open_pki.server("acme")
    os.chown(files.key, NOBODY.uid, NOBODY.gid)
    os.chmod(files.cert, 0o600)  # root's only
    os.chmod(open_pki.ca_file, 0o600)
    found = reader_errors(doc(certs(files, client_ca=open_pki.ca_file)), NOBODY)
    assert len(found) == 2, found
    cert_error = next(e for e in found if ".certificates[0].cert: " in e)
    ca_error = next(e for e in found if ".client_ca: " in e)
    assert f"certificate file {files.cert} cannot be read by nobody" in cert_error
    assert "let nobody read it" in cert_error
    assert f"CA certificate file {open_pki.ca_file} cannot be read by nobody" in ca_error


@pytest.mark.root
def test_a_directory_the_daemons_user_cannot_search_is_found(open_pki):
    files = open_pki.server("acme")
    os.chown(files.key, NOBODY.uid, NOBODY.gid)
    os.chmod(files.cert, 0o644)
    os.chmod(open_pki.dir, 0o700)  # the files are readable, the directory holding them is not searchable
    found = reader_errors(doc(certs(files)), NOBODY)
    assert len(found) == 2 and all("Permission denied" in e for e in found), found


@pytest.mark.root
def test_files_the_daemons_unit_hides_are_errors(pki):
    hidden = DaemonUser("nobody", 65534, 65534, hidden=(str(pki.dir.parent),))
    files = pki.server("acme")
    found = reader_errors(doc(certs(files)), hidden)
    assert len(found) == 2, found
    assert all(f"its unit hides {pki.dir.parent} from it" in e for e in found), found
    # a sibling's name is not inside it: tried as the user (root's 0700 tmp_path: denied)
    sibling = DaemonUser("nobody", 65534, 65534, hidden=(str(pki.dir) + "x",))
    assert sibling.cannot_read(files.key) == "Permission denied"
