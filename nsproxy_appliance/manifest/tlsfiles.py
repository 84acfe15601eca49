"""Checks of the TLS files a manifest names (certificates, keys, CA bundles), for plan and apply.

`nsproxy validate` runs without them (no root, the files are usually not there in CI); nsproxy-apply
and `nsproxy plan` read every file once per run and report, for the field that names it: a file that
is missing or unreadable, PEM that does not parse, a chain out of order, a key that is not the
certificate's, a certificate that expired or is not valid yet, a key file others may read, a file the user nsproxyd
runs as cannot read (tried as that user: the daemon reads them itself, after dropping root). A
certificate that expires within EXPIRY_WARNING is a warning, not an error. What was read is summed
up in a digest: the runtime config carries it, so replacing a file changes that tenant's config
entry, which is how the plan shows a rotation and the daemon picks it up.
"""

from __future__ import annotations

import datetime
import hashlib
import os
import stat
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:  # cryptography costs ~0.1 s to import: only manifests with TLS files pay for it
    from cryptography import x509
    from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes

EXPIRY_WARNING = datetime.timedelta(days=14)
MAX_FILE_BYTES = 1 << 20  # a CA bundle of a few hundred certificates is a few hundred KiB
DIGEST_CHARS = 16  # of the SHA-256, in hex: a change marker, like the config generation

Level = Literal["error", "warning"]
Field = Literal["cert", "key", "ca"]


@dataclass(frozen=True)
class Finding:
    field: Field  # which of the files the message is about (the manifest field that names it)
    level: Level
    message: str


@dataclass
class Checked:
    """The outcome of checking one certificate and key, or one CA bundle."""

    digest: str = ""
    findings: list[Finding] = field(default_factory=list)
    chain: list[x509.Certificate] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not any(f.level == "error" for f in self.findings)


class FileError(Exception):
    """A file cannot be used; str() says why."""


@dataclass(frozen=True)
class DaemonUser:
    """The user nsproxyd reads the TLS files as, when that is not root."""

    name: str
    uid: int
    gid: int
    groups: tuple[int, ...] = ()  # supplementary groups: none when nsproxy-apply starts it (privilege.drop)
    hidden: tuple[str, ...] = ()  # directories its systemd unit hides from it (PrivateTmp=, ProtectHome=)

    def cannot_read(self, path: str) -> str | None:
        """Why this user cannot open `path` (strerror), or None. Tried in a child that becomes the
        user: permission bits, ACLs, the directories above and any LSM all answer as for nsproxyd."""
        real = os.path.realpath(path)
        for top in self.hidden:
            if real == top or real.startswith(top + "/"):
                return f"its unit hides {top} from it (PrivateTmp=, ProtectHome=); keep TLS files in /etc/nsproxy"
        pid = os.fork()
        if pid == 0:  # pragma: no cover (the child; its exit status is the answer)
            code = 255
            try:
                os.setgroups(list(self.groups))
                os.setresgid(self.gid, self.gid, self.gid)
                os.setresuid(self.uid, self.uid, self.uid)
                os.close(os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC))
                code = 0
            except OSError as e:
                code = e.errno or 255
            finally:
                os._exit(code)
        code = os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
        if code == 0:
            return None
        return os.strerror(code) if 0 < code < 255 else f"the check as {self.name} failed (status {code})"


class FileChecker:
    """Reads and checks TLS files, each once per run (many tenants may share one certificate).
    `reader`: the daemon's user, who must be able to read them too (None: the daemon runs as root)."""

    def __init__(self, now: datetime.datetime | None = None, reader: DaemonUser | None = None) -> None:
        self.now = now or datetime.datetime.now(datetime.UTC)
        self.reader = reader
        self._pairs: dict[tuple[str, str], Checked] = {}
        self._bundles: dict[str, Checked] = {}
        self._unreadable: dict[str, str | None] = {}

    # -- a certificate chain and its key -------------------------------------------------------
    def certificate(self, cert_path: str, key_path: str) -> Checked:
        key = (cert_path, key_path)
        if key not in self._pairs:
            self._pairs[key] = self._certificate(cert_path, key_path)
        return self._pairs[key]

    def _certificate(self, cert_path: str, key_path: str) -> Checked:
        out = Checked()
        chain = cert_data = key_data = None
        private_key: PrivateKeyTypes | None = None
        try:
            cert_data = read(cert_path, "certificate")
            chain = parse_chain(cert_data, cert_path)
            self._check_reader(cert_path, "certificate")
        except FileError as e:
            out.findings.append(Finding("cert", "error", str(e)))
        try:
            key_data = read(key_path, "key", private=True)
            private_key = parse_key(key_data, key_path)
            self._check_reader(key_path, "key")
        except FileError as e:
            out.findings.append(Finding("key", "error", str(e)))
        if chain is None:
            return out
        out.chain = chain
        out.findings += [Finding("cert", level, message) for level, message in self._chain_findings(chain, cert_path)]
        if private_key is not None and not _same_public_key(private_key, chain[0]):
            message = f"key {key_path} is not the key of certificate {cert_path} ({describe(chain[0])})"
            out.findings.append(Finding("key", "error", message))
        if cert_data is not None and key_data is not None:
            out.digest = digest(cert_data, key_data)
        return out

    def _chain_findings(self, chain: list[x509.Certificate], path: str) -> list[tuple[Level, str]]:
        found: list[tuple[Level, str]] = []
        for i, cert in enumerate(chain):
            which = f"certificate {path}" if i == 0 else f"certificate {i + 1} of the chain in {path}"
            after, before = cert.not_valid_after_utc, cert.not_valid_before_utc
            if after <= self.now:
                found.append(("error", f"{which} ({describe(cert)}) expired on {_day(after)}"))
            elif before > self.now:
                found.append(("error", f"{which} ({describe(cert)}) is not valid before {_day(before)}"))
            elif i == 0 and after - self.now <= EXPIRY_WARNING:
                days = (after - self.now).days
                found.append(("warning", f"{which} ({describe(cert)}) expires in {days} days, on {_day(after)}"))
        for i in range(len(chain) - 1):
            issued, issuer = chain[i], chain[i + 1]
            try:
                issued.verify_directly_issued_by(issuer)
            except Exception as e:  # InvalidSignature, ValueError, TypeError (unsupported key types)
                reason = "its issuer is not that certificate's subject" if issued.issuer != issuer.subject else str(e)
                found.append(
                    (
                        "error",
                        f"the chain in {path} is not in order: certificate {i + 2} does not issue certificate {i + 1} "
                        f"({reason}); list the certificate first, then each CA certificate that issues the one before",
                    )
                )
                break
        return found

    # -- a CA bundle ---------------------------------------------------------------------------
    def ca_bundle(self, path: str) -> Checked:
        if path not in self._bundles:
            out = Checked()
            try:
                data = read(path, "CA certificate")
                out.chain = parse_chain(data, path)
                self._check_reader(path, "CA certificate")
                out.digest = digest(data)
            except FileError as e:
                out.findings.append(Finding("ca", "error", str(e)))
            self._bundles[path] = out
        return self._bundles[path]

    def _check_reader(self, path: str, what: str) -> None:
        """FileError when the daemon's user cannot read a file root could (plan runs as root)."""
        user = self.reader
        if user is None:
            return
        if path not in self._unreadable:
            self._unreadable[path] = user.cannot_read(path)
        reason = self._unreadable[path]
        if reason is None:
            return
        fix = (
            f"make {user.name} its owner (chown {user.name} {path}; the mode stays 600)"
            if what == "key"
            else f"let {user.name} read it"
        )
        raise FileError(
            f"{what} file {path} cannot be read by {user.name} (uid {user.uid}), the user nsproxyd runs as: "
            f"{reason}; {fix}, and let it search the directories above it"
        )


def read(path: str, what: str, *, private: bool = False) -> bytes:
    """The file's bytes (bounded); a key must be accessible by its owner only."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as e:
        raise FileError(f"cannot read {what} file {path}: {e.strerror or e}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise FileError(f"{what} file {path} is not a regular file")
        if private and st.st_mode & 0o077:
            raise FileError(
                f"key file {path} has mode {stat.S_IMODE(st.st_mode):04o}: its group or others may access it; "
                f"make it readable by its owner only (chmod 600 {path}), the user nsproxyd runs as"
            )
        if st.st_size > MAX_FILE_BYTES:
            raise FileError(f"{what} file {path} is larger than {MAX_FILE_BYTES // 1024} KiB")
        with os.fdopen(os.dup(fd), "rb") as f:
            data = f.read(MAX_FILE_BYTES + 1)
    except OSError as e:
        raise FileError(f"cannot read {what} file {path}: {e.strerror or e}") from None
    finally:
        os.close(fd)
    if len(data) > MAX_FILE_BYTES:
        raise FileError(f"{what} file {path} is larger than {MAX_FILE_BYTES // 1024} KiB")
    return data


def parse_chain(data: bytes, path: str) -> list[x509.Certificate]:
    if b"-----BEGIN CERTIFICATE-----" not in data:
        raise FileError(f"{path} holds no PEM certificate (-----BEGIN CERTIFICATE-----)")
    from cryptography import x509

    try:
        return x509.load_pem_x509_certificates(data)
    except ValueError as e:
        raise FileError(f"{path}: a PEM certificate does not parse: {_short(e)}") from None


def parse_key(data: bytes, path: str) -> PrivateKeyTypes:
    if b"PRIVATE KEY-----" not in data:
        raise FileError(f"{path} holds no PEM private key (-----BEGIN PRIVATE KEY-----)")
    from cryptography.hazmat.primitives import serialization

    try:
        return serialization.load_pem_private_key(data, password=None)
    except TypeError:
        raise FileError(
            f"key {path} is encrypted: nsproxy needs it unencrypted (and readable by its owner only)"
        ) from None
    except Exception as e:  # ValueError, UnsupportedAlgorithm: whatever cryptography refuses
        raise FileError(f"key {path} does not parse: {_short(e)}") from None


def digest(*parts: bytes) -> str:
    h = hashlib.sha256()
    for part in parts:
        h.update(len(part).to_bytes(8, "big"))
        h.update(part)
    return h.hexdigest()[:DIGEST_CHARS]


def describe(cert: x509.Certificate) -> str:
    """How messages name a certificate: its subject and serial."""
    return f"subject {cert.subject.rfc4514_string() or '(empty)'}, serial {cert.serial_number:X}"


def covers(cert: x509.Certificate, name: str) -> bool:
    """Whether a client asking for `name` (SNI) would accept `cert` (its DNS names, wildcards by one label)."""
    from cryptography import x509

    try:
        ext = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
        names = [n.lower() for n in ext.value.get_values_for_type(x509.DNSName)]
    except x509.ExtensionNotFound:
        names = [str(a.value).lower() for a in cert.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)]
    for have in names:
        if have == name:
            return True
        if have.startswith("*.") and not name.startswith("*.") and name.partition(".")[2] == have[2:]:
            return True
    return False


def _same_public_key(key: PrivateKeyTypes, cert: x509.Certificate) -> bool:
    from cryptography.hazmat.primitives import serialization

    spki = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    try:
        return key.public_key().public_bytes(*spki) == cert.public_key().public_bytes(*spki)
    except Exception:  # a key type cryptography cannot compare: let the daemon's OpenSSL decide
        return True


def _day(when: datetime.datetime) -> str:
    return when.strftime("%Y-%m-%d %H:%M UTC")


def _short(e: Exception) -> str:
    text = str(e).splitlines()[0] if str(e) else type(e).__name__
    return text[:200]
