"""Certificates made in the test (cryptography): a CA, server certificates for SNI names, client
certificates for mutual TLS, written as PEM files (keys mode 0600) in a directory the test owns.

    pki = Pki(tmp_path / "pki")                      # a CA (ECDSA P-256 unless kind="rsa")
    files = pki.server("acme", ["acme.test"])        # CertFiles(cert, key, serial, not_after, ...)
    client = pki.client("client one")                 # for --cert/--key
    pki.ca_file                                       # the CA certificate, for --cacert / client_ca
"""

from __future__ import annotations

import datetime
import hashlib
import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

PrivateKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey


@dataclass(frozen=True)
class CertFiles:
    cert: str  # PEM chain file
    key: str  # PEM key file, mode 0600
    serial: str  # uppercase hex, as nsproxy reports it
    not_after: datetime.datetime
    subject: str  # RFC 4514
    sha256: str  # of the DER leaf certificate, lowercase hex (the client certificate header)


def new_key(kind: str = "ec") -> PrivateKey:
    return ec.generate_private_key(ec.SECP256R1()) if kind == "ec" else rsa.generate_private_key(65537, 2048)


def write_key(path: Path, key: PrivateKey, mode: int = 0o600) -> None:
    data = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.chmod(tmp, mode)
    os.replace(tmp, path)  # atomic: a daemon reading it sees the old or the new key


class Pki:
    """A test CA and the certificates it issues, in `directory`."""

    def __init__(self, directory: Path, kind: str = "ec", name: str = "nsproxy test CA") -> None:
        self.dir = directory
        directory.mkdir(parents=True, exist_ok=True)
        self.kind = kind
        self.key = new_key(kind)
        self.name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        now = datetime.datetime.now(datetime.UTC)
        self.cert = (
            x509.CertificateBuilder()
            .subject_name(self.name)
            .issuer_name(self.name)
            .public_key(self.key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=365))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(True, False, False, False, False, True, True, False, False), critical=True
            )  # digital_signature, key_cert_sign, crl_sign
            .sign(self.key, hashes.SHA256())
        )
        self.ca_file = str(directory / "ca.pem")
        Path(self.ca_file).write_bytes(self.cert.public_bytes(serialization.Encoding.PEM))

    def _issue(
        self,
        file_name: str,
        subject: x509.Name,
        *,
        dns: tuple[str, ...] = (),
        ips: tuple[str, ...] = (),
        client: bool = False,
        days: float = 30,
        not_before_days: float = -1,
        kind: str | None = None,
    ) -> CertFiles:
        key = new_key(kind or self.kind)
        now = datetime.datetime.now(datetime.UTC)
        not_after = now + datetime.timedelta(days=days)
        builder = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(self.name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now + datetime.timedelta(days=not_before_days))
            .not_valid_after(not_after)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH if client else ExtendedKeyUsageOID.SERVER_AUTH]),
                critical=False,
            )
        )
        alt: list[x509.GeneralName] = [x509.DNSName(n) for n in dns]
        alt += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in ips]
        if alt:
            builder = builder.add_extension(x509.SubjectAlternativeName(alt), critical=False)
        cert = builder.sign(self.key, hashes.SHA256())
        cert_path, key_path = self.dir / f"{file_name}.pem", self.dir / f"{file_name}.key"
        tmp = cert_path.with_name(cert_path.name + ".tmp")
        tmp.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        os.replace(tmp, cert_path)
        write_key(key_path, key)
        der = cert.public_bytes(serialization.Encoding.DER)
        return CertFiles(
            cert=str(cert_path),
            key=str(key_path),
            serial=f"{cert.serial_number:X}",
            not_after=cert.not_valid_after_utc,
            subject=cert.subject.rfc4514_string(),
            sha256=hashlib.sha256(der).hexdigest(),
        )

    def server(
        self,
        file_name: str,
        names: tuple[str, ...] | list[str] = ("localhost",),
        *,
        ips: tuple[str, ...] = ("127.0.0.1",),
        days: float = 30,
        not_before_days: float = -1,
        kind: str | None = None,
    ) -> CertFiles:
        """A server certificate for `names` (and `ips`), valid for `days` from now."""
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0] if names else file_name)])
        return self._issue(
            file_name, subject, dns=tuple(names), ips=ips, days=days, not_before_days=not_before_days, kind=kind
        )

    def client(self, common_name: str, file_name: str | None = None, *, organisation: str | None = None) -> CertFiles:
        """A client certificate (extended key usage clientAuth) with this subject."""
        attrs = [x509.NameAttribute(NameOID.COMMON_NAME, common_name)]
        if organisation is not None:
            attrs.append(x509.NameAttribute(NameOID.ORGANIZATION_NAME, organisation))
        return self._issue(
            file_name or f"client-{hashlib.sha1(common_name.encode()).hexdigest()[:8]}", x509.Name(attrs), client=True
        )
