"""The typed model shared by the applier and the daemon.

Everything here is a frozen dataclass built from a validated manifest (see manifest.py).
Nothing in this module touches the kernel or the filesystem.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

NETNS_RUN_DIR = "/run/netns"
IFNAMSIZ_MAX = 15  # kernel IFNAMSIZ is 16 including the trailing NUL


@dataclass(frozen=True)
class Limits:
    """Per-tenant data-plane limits; every value has a default a user can override."""

    header_timeout: float = 10.0  # seconds to receive a complete request head (slowloris guard)
    idle_timeout: float = 60.0  # seconds a keep-alive client connection may sit idle
    connect_timeout: float = 5.0  # seconds to connect to the upstream
    read_timeout: float = 60.0  # seconds to wait for upstream response bytes
    body_timeout: float = 60.0  # seconds to receive the whole request body once its head arrived (slow-body guard)
    max_header_bytes: int = 65536  # request line + headers
    max_body_bytes: int = 100 * 1024 * 1024  # request body
    max_connections: int = 1024  # concurrent client connections per tenant

    @classmethod
    def field_names(cls) -> tuple[str, ...]:
        return tuple(cls.__dataclass_fields__)


@dataclass(frozen=True)
class Upstream:
    """Where a tenant's requests go.

    kind "http": host/port over TCP, connected from the host netns (from_ns="host") or from
    inside the tenant's netns (from_ns="tenant"). kind "unix": a unix socket path in the host.
    """

    kind: Literal["http", "unix"]
    host: str = ""
    port: int = 0
    path: str = ""  # unix socket path
    from_ns: Literal["host", "tenant"] = "host"
    url: str = ""  # the URL as written, for display
    tls: UpstreamTls | None = None  # set for https:// URLs (HTTP/1.1 over TLS)

    def describe(self) -> str:
        if self.kind == "unix":
            return f"unix:{self.path}"
        return f"{self.url} (from {self.from_ns})"


@dataclass(frozen=True)
class UpstreamTls:
    """How nsproxy verifies an https:// upstream and what it presents to it."""

    ca: str | None = None  # PEM file of the CAs to trust; None: the system's trust store
    cert: str | None = None  # client certificate chain (PEM), with `key`
    key: str | None = None
    server_hostname: str | None = None  # SNI and the name verified; None: the URL's host
    digest: str = ""  # SHA-256 of the files' contents when the applier checked them ("": not read)


@dataclass(frozen=True)
class Link:
    """A link nsproxy owns inside a tenant netns (today: dummy links)."""

    name: str
    kind: Literal["dummy"] = "dummy"
    addresses: tuple[str, ...] = ()  # CIDR strings, normalised ("169.254.169.254/32")
    mtu: int | None = None


@dataclass(frozen=True)
class NetnsRef:
    """A tenant's network namespace.

    Named namespaces live at /run/netns/<name>; nsproxy creates them when missing and may
    delete them once it owns them. External ones (given by path) are never created or deleted.
    """

    path: str
    name: str | None = None  # set for named namespaces

    @property
    def external(self) -> bool:
        return self.name is None

    @classmethod
    def named(cls, name: str) -> NetnsRef:
        return cls(path=f"{NETNS_RUN_DIR}/{name}", name=name)

    @staticmethod
    def name_at(path: str) -> str | None:
        """The name of a named namespace's path (/run/netns/<name>); None for any other path."""
        head, sep, name = path.rpartition("/")
        return name if sep and head == NETNS_RUN_DIR and name else None

    @staticmethod
    def label_of(path: str) -> str:
        """How messages name the namespace at `path`: its name, or path:<path>."""
        name = NetnsRef.name_at(path)
        return name if name is not None else f"path:{path}"

    def describe(self) -> str:
        return self.name if self.name is not None else f"path:{self.path}"


TLS_VERSIONS = ("1.2", "1.3")  # ListenTls.min_version
CLIENT_AUTH = ("required", "optional")  # ListenTls.client_auth


@dataclass(frozen=True)
class Certificate:
    """A certificate chain and its private key (PEM files) a TLS listener serves."""

    cert: str
    key: str
    names: tuple[str, ...] = ()  # SNI names it is chosen for (lowercase; "*.example.com" matches one label)
    digest: str = ""  # SHA-256 of both files' contents when the applier checked them ("": not read)


@dataclass(frozen=True)
class ListenTls:
    """TLS termination on one listener: the first certificate is the default, the others are chosen by SNI."""

    certificates: tuple[Certificate, ...]
    client_ca: str | None = None  # PEM file of the CAs client certificates must chain to (mutual TLS)
    client_auth: Literal["required", "optional"] = "required"  # with client_ca: must a client present one?
    min_version: Literal["1.2", "1.3"] = "1.2"
    client_ca_digest: str = ""  # SHA-256 of client_ca's contents when the applier checked it


@dataclass(frozen=True)
class Listen:
    host: str  # an IP literal, without brackets
    port: int
    tls: ListenTls | None = None  # None: plain HTTP

    @property
    def family(self) -> int:
        # host is an IP literal (the manifest checked it): only IPv6 ones have a colon. Cheaper than
        # ipaddress, which showed at 10,000 tenants' start-up.
        return 6 if ":" in self.host else 4

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


@dataclass(frozen=True)
class TenantTls:
    """A tenant's TLS settings, for all its TLS listeners (defaults.tls merged with its own `tls`)."""

    handshake_timeout: float = 10.0  # seconds a client has to complete the TLS handshake
    # Headers carrying a mutual-TLS client's certificate upstream; nsproxy manages them (client copies
    # are stripped on every listener of the tenant, like the tenant header).
    subject_header: str = "X-Client-Cert-Subject"  # the subject, RFC 4514
    fingerprint_header: str = "X-Client-Cert-SHA256"  # SHA-256 of the DER certificate, lowercase hex


@dataclass(frozen=True)
class Tenant:
    name: str
    netns: NetnsRef
    listen: tuple[Listen, ...]
    upstream: Upstream
    tenant_id: str
    tenant_header: str
    links: tuple[Link, ...] = ()
    limits: Limits = field(default_factory=Limits)
    tls: TenantTls = field(default_factory=TenantTls)


LOG_FORMATS = ("text", "json")  # DaemonSettings.log_format: "time nsproxyd[pid] LEVEL message key=value", or JSON lines


@dataclass(frozen=True)
class DaemonSettings:
    """Process-wide daemon settings from the manifest's optional `daemon:` section."""

    access_log: str = "stdout"  # "stdout", "off", or a file path
    log_format: str = "text"  # the daemon's own log: one of LOG_FORMATS
    admin_listen: str | None = None  # optional host-netns TCP address for the admin API
    drain_timeout: float = 30.0  # seconds in-flight requests get when a listener is removed


@dataclass(frozen=True)
class Manifest:
    version: int
    tenants: tuple[Tenant, ...]
    daemon: DaemonSettings = field(default_factory=DaemonSettings)
    source: str = "<memory>"
    # "FILE:LINE:COL: $.path: message" lines that do not make the manifest invalid (a certificate
    # that expires soon); the plan shows them
    warnings: tuple[str, ...] = field(default=(), compare=False)

    def tenant(self, name: str) -> Tenant:
        for t in self.tenants:
            if t.name == name:
                return t
        raise KeyError(name)
