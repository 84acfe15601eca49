"""The TLS sections of a manifest → the model: listeners' termination, https upstreams' settings,
and the tenants' TLS settings (defaults.tls merged with a tenant's own).

The Builder (build.py) calls a TlsReader for each section the schema accepted. Given a FileChecker
(plan and apply: tlsfiles.py), the reader also checks the files each section names and reports
what is wrong at the field naming the file; without one (`nsproxy validate`) only the manifest
itself is checked.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol, TypeVar

from ..model import Certificate, ListenTls, TenantTls, Upstream, UpstreamTls
from . import fields
from .problems import JsonPath
from .tlsfiles import Checked, FileChecker, covers

T = TypeVar("T")


class Report(Protocol):
    """What the reader needs of the Builder."""

    def error(self, path: JsonPath, message: str) -> None: ...

    def warning(self, path: JsonPath, message: str) -> None: ...

    def rejected(self, path: JsonPath) -> bool: ...

    def parse(self, path: JsonPath, value: Any, parser: Callable[..., T], *args: Any) -> T | None: ...


class TlsReader:
    def __init__(self, report: Report, files: FileChecker | None) -> None:
        self.report = report
        self.files = files

    # -- a TLS listener ------------------------------------------------------------------------
    def listen_tls(self, path: JsonPath, raw: Any) -> ListenTls | None:
        """The listener's `tls` section; None when anything in it is invalid (already reported)."""
        report = self.report
        if not isinstance(raw, dict) or report.rejected(path):
            return None
        ok = True
        certificates: list[Certificate] = []
        named_by: dict[str, int] = {}  # SNI name -> index of the certificate listing it
        raw_certs = raw.get("certificates")
        for k, raw_cert in enumerate(raw_certs if isinstance(raw_certs, list) else []):
            cert_path = (*path, "certificates", k)
            certificate = self._certificate(cert_path, raw_cert, named_by, k)
            if certificate is None:
                ok = False
            else:
                certificates.append(certificate)
        client_ca, ca_digest = None, ""
        if "client_ca" in raw:
            client_ca = report.parse((*path, "client_ca"), raw["client_ca"], fields.absolute_path, "client_ca path")
            if client_ca is None:
                ok = False
            elif self.files is not None:
                checked = self.files.ca_bundle(client_ca)
                ok &= self._findings(checked, {"ca": (*path, "client_ca")})
                ca_digest = checked.digest
        if "client_auth" in raw and "client_ca" not in raw:
            report.error(
                (*path, "client_auth"),
                "client_auth applies to mutual TLS only: add client_ca (the CA file client certificates must chain to)",
            )
            ok = False
        if not ok or not certificates:
            return None
        return ListenTls(
            certificates=tuple(certificates),
            client_ca=client_ca,
            client_auth="optional" if raw.get("client_auth") == "optional" else "required",
            min_version="1.3" if str(raw.get("min_version", "1.2")) == "1.3" else "1.2",  # YAML reads 1.3 as a number
            client_ca_digest=ca_digest,
        )

    def _certificate(self, path: JsonPath, raw: Any, named_by: dict[str, int], index: int) -> Certificate | None:
        report = self.report
        if not isinstance(raw, dict) or report.rejected(path):
            return None
        cert = report.parse((*path, "cert"), raw.get("cert"), fields.absolute_path, "cert path")
        key = report.parse((*path, "key"), raw.get("key"), fields.absolute_path, "key path")
        ok = cert is not None and key is not None
        names: list[str] = []
        raw_names = raw.get("names", [])
        for n, value in enumerate(raw_names if isinstance(raw_names, list) else []):
            name_path = (*path, "names", n)
            name = report.parse(name_path, value, fields.dns_name, "certificate name")
            if name is None:
                ok = False
            elif name in named_by:
                where = "this certificate" if named_by[name] == index else f"certificate {named_by[name] + 1}"
                report.error(name_path, f"name {name} is already listed by {where} of this listener")
                ok = False
            else:
                named_by[name] = index
                names.append(name)
        digest = ""
        if ok and self.files is not None:
            assert cert is not None and key is not None
            checked = self.files.certificate(cert, key)
            ok = self._findings(checked, {"cert": (*path, "cert"), "key": (*path, "key")})
            digest = checked.digest
            if ok:
                for n, name in enumerate(names):
                    if not covers(checked.chain[0], name):
                        report.warning(
                            (*path, "names", n),
                            f"certificate {cert} does not cover {name}: clients asking for it will not accept it",
                        )
        if not ok:
            return None
        assert cert is not None and key is not None
        return Certificate(cert=cert, key=key, names=tuple(names), digest=digest)

    # -- an https upstream ---------------------------------------------------------------------
    def upstream_tls(self, path: JsonPath, raw: Any, upstream: Upstream) -> UpstreamTls | None:
        """The `tls` section of an upstream (`upstream` is what its url gave); None when invalid."""
        report = self.report
        if not isinstance(raw, dict) or report.rejected(path):
            return None
        if upstream.tls is None:
            report.error(path, f"tls applies to https upstreams only; the url is {upstream.url}: use https://")
            return None
        values: dict[str, Any] = {}
        ok = True
        for name in ("ca", "cert", "key"):
            if name in raw:
                values[name] = report.parse((*path, name), raw[name], fields.absolute_path, f"{name} path")
                ok &= values[name] is not None
        for present, missing in (("cert", "key"), ("key", "cert")):
            if present in raw and missing not in raw:
                report.error((*path, present), f"{present} needs {missing}: a client certificate is a cert and its key")
                ok = False
        if "server_hostname" in raw:
            hostname = report.parse(
                (*path, "server_hostname"), raw["server_hostname"], fields.dns_name, "server_hostname"
            )
            if hostname is not None and hostname.startswith("*."):
                report.error((*path, "server_hostname"), f"server_hostname {hostname!r} cannot be a wildcard")
                hostname = None
            values["server_hostname"] = hostname
            ok &= hostname is not None
        if not ok:
            return None
        digests = []
        if self.files is not None:
            if values.get("ca"):
                checked = self.files.ca_bundle(values["ca"])
                ok &= self._findings(checked, {"ca": (*path, "ca")})
                digests.append(checked.digest)
            if values.get("cert") and values.get("key"):
                checked = self.files.certificate(values["cert"], values["key"])
                ok &= self._findings(checked, {"cert": (*path, "cert"), "key": (*path, "key")})
                digests.append(checked.digest)
        if not ok:
            return None
        return UpstreamTls(**values, digest="-".join(digests))

    # -- a tenant's TLS settings ---------------------------------------------------------------
    def settings(self, path: JsonPath, raw: Any, base: TenantTls | None) -> TenantTls | None:
        """`raw` merged field by field over `base`; None when anything is invalid."""
        report = self.report
        if raw is None or base is None:
            return base
        if not isinstance(raw, dict) or report.rejected(path):
            return None
        values: dict[str, Any] = {}
        if "handshake_timeout" in raw:
            values["handshake_timeout"] = report.parse(
                (*path, "handshake_timeout"), raw["handshake_timeout"], fields.seconds, "handshake_timeout"
            )
        headers = raw.get("client_cert_headers")
        if isinstance(headers, dict):
            for key, attr in (("subject", "subject_header"), ("fingerprint", "fingerprint_header")):
                if key in headers:
                    values[attr] = report.parse(
                        (*path, "client_cert_headers", key), headers[key], fields.header_name, f"{key} header name"
                    )
        if any(v is None for v in values.values()):
            return None
        merged = TenantTls(**{**vars(base), **values})
        if merged.subject_header.lower().replace("_", "-") == merged.fingerprint_header.lower().replace("_", "-"):
            report.error(
                (*path, "client_cert_headers"),
                f"the subject and fingerprint headers are both {merged.subject_header}; give them different names",
            )
            return None
        return merged

    def _findings(self, checked: Checked, paths: dict[str, JsonPath]) -> bool:
        """Report what the file checks found, each at the field naming its file; False on an error."""
        for finding in checked.findings:
            where = paths.get(finding.field)
            if where is None:
                continue
            if finding.level == "error":
                self.report.error(where, finding.message)
            else:
                self.report.warning(where, finding.message)
        return checked.ok
