"""Validated data → model.Manifest, with the checks a JSON Schema cannot express.

The builder runs even when the schema found errors, so one run reports everything: a field the
schema already rejected is skipped (never reported twice), and a tenant with such a field takes
part in the cross-tenant checks with what could be read.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from ..model import DaemonSettings, Limits, Link, Listen, Manifest, NetnsRef, Tenant, TenantTls, Upstream
from . import fields
from .problems import JsonPath, Problem
from .tls import TlsReader
from .tlsfiles import FileChecker
from .yamlsource import Source

T = TypeVar("T")

IPV6_MIN_MTU = 1280
_LOOPBACK_V4 = ipaddress.ip_network("127.0.0.0/8")


@dataclass
class _Draft:
    """What could be read of one tenant; `complete` is False when any field was invalid."""

    index: int
    name: str | None = None
    netns: NetnsRef | None = None
    netns_path: JsonPath = ()
    links: list[tuple[JsonPath, Link]] = field(default_factory=list)
    links_complete: bool = True
    listen: list[tuple[JsonPath, Listen]] = field(default_factory=list)
    upstream: Upstream | None = None
    tenant_id: str | None = None
    tenant_header: str | None = None
    limits: Limits | None = None
    tls: TenantTls | None = None
    complete: bool = True


class Builder:
    def __init__(self, source: Source, schema_problems: list[Problem], files: FileChecker | None = None):
        self.source = source
        self.data = source.data
        self.problems: list[Problem] = []
        self.warnings: list[Problem] = []  # what does not make the manifest invalid (a certificate expiring soon)
        self.tls = TlsReader(self, files)  # with `files`, the TLS files the manifest names are checked too
        self._bad_paths = {p.path for p in schema_problems}
        self._bad_prefixes = {p.path[:i] for p in schema_problems for i in range(len(p.path) + 1)}

    # -- helpers ---------------------------------------------------------------------------
    def error(self, path: JsonPath, message: str) -> None:
        line, column = self.source.position(path)
        self.problems.append(Problem(line, column, path, message))

    def warning(self, path: JsonPath, message: str) -> None:
        line, column = self.source.position(path)
        self.warnings.append(Problem(line, column, path, message))

    def rejected(self, path: JsonPath) -> bool:
        """True when the schema reported an error at `path` or below it."""
        return path in self._bad_prefixes

    def parse(self, path: JsonPath, value: Any, parser: Callable[..., T], *args: Any) -> T | None:
        try:
            return parser(value, *args)
        except fields.FieldError as e:
            self.error(path, str(e))
            return None

    # -- the manifest ----------------------------------------------------------------------
    def build(self) -> Manifest | None:
        data = self.data if isinstance(self.data, dict) else {}
        raw_defaults = data.get("defaults")
        defaults: dict[str, Any] = raw_defaults if isinstance(raw_defaults, dict) else {}
        default_header, header_known = self._default_header(defaults)
        default_upstream, upstream_known = self._default_upstream(defaults)
        default_limits = self._limits(("defaults", "limits"), defaults.get("limits"), Limits())
        default_tls = self.tls.settings(("defaults", "tls"), defaults.get("tls"), TenantTls())
        daemon = self._daemon(data.get("daemon"))

        drafts: list[_Draft] = []
        tenants = data.get("tenants")
        if isinstance(tenants, list):
            for i, raw in enumerate(tenants):
                if isinstance(raw, dict):
                    drafts.append(
                        self._tenant(i, raw, default_header, default_upstream, upstream_known, default_limits)
                    )
                    drafts[-1].tls = self.tls.settings(("tenants", i, "tls"), raw.get("tls"), default_tls)
                    drafts[-1].complete &= drafts[-1].tls is not None
                    self._check_cert_headers(drafts[-1], raw)
        self._check_names(drafts)
        self._check_netns_owners(drafts)
        self._check_listen_on_links(drafts)
        self._check_collisions(drafts)

        bad_defaults = default_limits is None or default_tls is None
        if self.problems or self._bad_paths or not header_known or bad_defaults or daemon is None:
            return None
        return Manifest(
            version=data["version"],
            tenants=tuple(self._tenant_model(d) for d in drafts),
            daemon=daemon,
        )

    def _default_header(self, defaults: dict[str, Any]) -> tuple[str, bool]:
        path = ("defaults", "tenant_header")
        if "tenant_header" not in defaults:
            return fields.DEFAULT_TENANT_HEADER, True
        if self.rejected(path):
            return fields.DEFAULT_TENANT_HEADER, False
        header = self.parse(path, defaults["tenant_header"], fields.tenant_header)
        return (header or fields.DEFAULT_TENANT_HEADER), header is not None

    def _default_upstream(self, defaults: dict[str, Any]) -> tuple[Upstream | None, bool]:
        """(upstream or None, known): known is False when defaults.upstream is set but invalid."""
        path = ("defaults", "upstream")
        if "upstream" not in defaults:
            return None, True
        if self.rejected(path):
            return None, False
        upstream = self._upstream(path, defaults["upstream"])
        return upstream, upstream is not None

    def _daemon(self, raw: Any) -> DaemonSettings | None:
        if raw is None:
            return DaemonSettings()
        if not isinstance(raw, dict) or self.rejected(("daemon",)):
            return None
        values: dict[str, Any] = {}
        if raw.get("access_log") is False:  # YAML 1.1 reads a bare `off` as false
            values["access_log"] = "off"
        elif "access_log" in raw:
            values["access_log"] = self.parse(("daemon", "access_log"), raw["access_log"], fields.access_log)
        if "admin_listen" in raw:
            listen = self.parse(("daemon", "admin_listen"), raw["admin_listen"], fields.listen)
            values["admin_listen"] = str(listen) if listen is not None else None
        if "drain_timeout" in raw:
            values["drain_timeout"] = self.parse(
                ("daemon", "drain_timeout"), raw["drain_timeout"], fields.seconds, "drain_timeout"
            )
        if "log_format" in raw:  # the schema's enum checked it (else the daemon section is rejected)
            values["log_format"] = str(raw["log_format"])
        if any(v is None for v in values.values()):
            return None
        return DaemonSettings(**values)

    def _limits(self, path: JsonPath, raw: Any, base: Limits | None) -> Limits | None:
        """`raw` merged field by field over `base`; None when anything is invalid."""
        if raw is None or base is None:
            return base
        if not isinstance(raw, dict) or self.rejected(path):
            return None
        values: dict[str, Any] = {}
        for f in dataclasses.fields(Limits):
            if f.name not in raw:
                continue
            value = raw[f.name]
            if f.type in ("float", float):
                value = self.parse((*path, f.name), value, fields.seconds, f.name)
                if value is None:
                    return None
            else:
                value = int(value)  # JSON Schema counts 2.0 as an integer
            values[f.name] = value
        return dataclasses.replace(base, **values)

    def _upstream(self, path: JsonPath, raw: Any) -> Upstream | None:
        if isinstance(raw, str):
            return self.parse(path, raw, fields.upstream_url)
        if isinstance(raw, dict) and "url" in raw:
            upstream = self.parse((*path, "url"), raw["url"], fields.upstream_url, raw.get("from", "host"))
            if upstream is None or "tls" not in raw:
                return upstream
            tls = self.tls.upstream_tls((*path, "tls"), raw["tls"], upstream)
            return dataclasses.replace(upstream, tls=tls) if tls is not None else None
        if isinstance(raw, dict) and "unix" in raw:
            return self.parse((*path, "unix"), raw["unix"], fields.unix_socket)
        return None

    # -- one tenant ------------------------------------------------------------------------
    def _tenant(
        self,
        i: int,
        raw: dict[str, Any],
        default_header: str,
        default_upstream: Upstream | None,
        upstream_known: bool,
        default_limits: Limits | None,
    ) -> _Draft:
        base: JsonPath = ("tenants", i)
        d = _Draft(index=i, complete=not self.rejected(base))

        def readable(key: str) -> bool:
            return key in raw and not self.rejected((*base, key))

        if readable("name"):
            d.name = self.parse((*base, "name"), raw["name"], fields.tenant_name)
        # netns (default: the tenant name)
        if "netns" not in raw:
            d.netns_path = (*base, "name")
            d.netns = NetnsRef.named(d.name) if d.name else None
        elif readable("netns"):
            d.netns_path = (*base, "netns")
            if isinstance(raw["netns"], str):
                name = self.parse(d.netns_path, raw["netns"], fields.netns_name)
                d.netns = NetnsRef.named(name) if name else None
            else:
                d.netns_path = (*base, "netns", "path")
                path = self.parse(d.netns_path, raw["netns"]["path"], fields.absolute_path, "netns path")
                d.netns = NetnsRef(path=os.path.normpath(path), name=None) if path else None

        # Lists are read item by item, so one bad item does not hide the others' errors.
        if isinstance(raw.get("links"), list):
            self._links(d, base, raw["links"])
        elif "links" in raw:
            d.links_complete = False

        for j, value in enumerate(raw["listen"] if isinstance(raw.get("listen"), list) else []):
            item = (*base, "listen", j)
            listen = None if self.rejected(item) else self._listener(item, value)
            if listen is not None:
                d.listen.append(listen)
            else:
                d.complete = False

        if "upstream" in raw:
            d.upstream = self._upstream((*base, "upstream"), raw["upstream"]) if readable("upstream") else None
        elif default_upstream is not None:
            d.upstream = default_upstream
        elif upstream_known:
            self.error(
                base,
                "tenant has no upstream and defaults.upstream is not set: "
                'add upstream: "http://HOST:PORT" to the tenant or to defaults',
            )

        if "tenant_id" in raw:
            d.tenant_id = (
                self.parse((*base, "tenant_id"), raw["tenant_id"], fields.tenant_id) if readable("tenant_id") else None
            )
        else:
            d.tenant_id = d.name

        if "tenant_header" in raw:
            d.tenant_header = (
                self.parse((*base, "tenant_header"), raw["tenant_header"], fields.tenant_header)
                if readable("tenant_header")
                else None
            )
        else:
            d.tenant_header = default_header

        d.limits = self._limits((*base, "limits"), raw.get("limits"), default_limits)
        if None in (d.name, d.netns, d.upstream, d.tenant_id, d.tenant_header, d.limits) or not d.links_complete:
            d.complete = False
        return d

    def _listener(self, path: JsonPath, raw: Any) -> tuple[JsonPath, Listen] | None:
        """A listen item (an address, or {address, tls}) and the path of its address (for messages)."""
        if isinstance(raw, str):
            listen = self.parse(path, raw, fields.listen)
            return (path, listen) if listen is not None else None
        if not isinstance(raw, dict):
            return None
        address_path = (*path, "address")
        listen = self.parse(address_path, raw.get("address"), fields.listen)
        tls = self.tls.listen_tls((*path, "tls"), raw.get("tls"))
        if listen is None or tls is None:
            return None
        return address_path, dataclasses.replace(listen, tls=tls)

    def _check_cert_headers(self, d: _Draft, raw: dict[str, Any]) -> None:
        """The tenant header cannot be one of the client certificate headers nsproxy also sets."""
        if d.tls is None or d.tenant_header is None:
            return
        norm = d.tenant_header.lower().replace("_", "-")
        for key, header in (("subject", d.tls.subject_header), ("fingerprint", d.tls.fingerprint_header)):
            if header.lower().replace("_", "-") == norm:
                headers = raw.get("tls", {}).get("client_cert_headers", {}) if isinstance(raw.get("tls"), dict) else {}
                if "tenant_header" in raw:
                    where: JsonPath = ("tenants", d.index, "tenant_header")
                elif isinstance(headers, dict) and key in headers:
                    where = ("tenants", d.index, "tls", "client_cert_headers", key)
                else:
                    where = ("tenants", d.index)
                self.error(
                    where,
                    f"tenant header {d.tenant_header} is also a client certificate header (tls.client_cert_headers); "
                    "give them different names",
                )
                d.complete = False

    def _links(self, d: _Draft, base: JsonPath, raw_links: list[Any]) -> None:
        seen: dict[str, JsonPath] = {}
        for k, raw in enumerate(raw_links):
            path = (*base, "links", k)
            if not isinstance(raw, dict):
                d.links_complete = False
                continue
            if self.rejected(path):
                d.links_complete = False  # still check what can be read below
            name = None
            if isinstance(raw.get("name"), str) and not self.rejected((*path, "name")):
                name = self.parse((*path, "name"), raw["name"], fields.link_name)
            addresses: list[str] = []
            raw_addresses = raw.get("addresses")
            for n, value in enumerate(raw_addresses if isinstance(raw_addresses, list) else []):
                item = (*path, "addresses", n)
                address = None if self.rejected(item) else self.parse(item, value, fields.cidr)
                if address is None:
                    d.links_complete = False
                elif address in addresses:
                    self.error(item, f"address {address} is listed twice on this link")
                else:
                    addresses.append(address)
            mtu = None
            if raw.get("mtu") is not None and not self.rejected((*path, "mtu")):
                mtu = int(raw["mtu"])
                if mtu < IPV6_MIN_MTU and any(":" in a for a in addresses):
                    self.error((*path, "mtu"), f"mtu {mtu} is below {IPV6_MIN_MTU}, the minimum for IPv6 addresses")
            if name is None:
                d.links_complete = False
                continue
            if name in seen:
                self.error((*path, "name"), f"duplicate link name {name!r} (first at line {self._line(seen[name])})")
                d.links_complete = False
                continue
            seen[name] = (*path, "name")
            link = Link(name=name, kind=raw.get("kind", "dummy"), addresses=tuple(addresses), mtu=mtu)
            d.links.append((path, link))

    def _tenant_model(self, d: _Draft) -> Tenant:
        assert d.complete and d.name and d.netns and d.upstream and d.tenant_id and d.tenant_header and d.limits
        return Tenant(
            name=d.name,
            netns=d.netns,
            listen=tuple(listen for _, listen in d.listen),
            upstream=d.upstream,
            tenant_id=d.tenant_id,
            tenant_header=d.tenant_header,
            links=tuple(link for _, link in d.links),
            limits=d.limits,
            tls=d.tls or TenantTls(),
        )

    # -- checks across tenants -------------------------------------------------------------
    def _line(self, path: JsonPath) -> int:
        return self.source.position(path)[0]

    def _check_names(self, drafts: list[_Draft]) -> None:
        first: dict[str, _Draft] = {}
        for d in drafts:
            if d.name is None:
                continue
            if d.name in first:
                where = ("tenants", first[d.name].index, "name")
                self.error(
                    ("tenants", d.index, "name"),
                    f"duplicate tenant name {d.name!r} (first at line {self._line(where)})",
                )
            else:
                first[d.name] = d

    def _check_netns_owners(self, drafts: list[_Draft]) -> None:
        """An owned (named) netns belongs to exactly one tenant; external paths may be shared."""
        owners: dict[str, _Draft] = {}
        names: set[str | None] = set()
        for d in drafts:
            restates_duplicate_name = d.name in names and d.netns_path[-1:] == ("name",)
            names.add(d.name)
            if d.netns is not None and not d.netns.external and not restates_duplicate_name:
                if d.netns.path in owners:
                    other = owners[d.netns.path]
                    self.error(
                        d.netns_path,
                        f"netns {d.netns.name!r} is already the netns of tenant {other.name!r} "
                        f"(line {self._line(other.netns_path)}); a named netns belongs to one tenant "
                        "(to share an existing namespace, give it as netns: {path: ...} in both)",
                    )
                else:
                    owners[d.netns.path] = d
        for d in drafts:
            if d.netns is not None and d.netns.external and d.netns.path in owners:
                other = owners[d.netns.path]
                self.error(
                    d.netns_path,
                    f"netns path {d.netns.path} is the named netns {other.netns.name!r} that nsproxy owns for "  # type: ignore[union-attr]  # other is a named one
                    f"tenant {other.name!r} (line {self._line(other.netns_path)}); a netns is either owned or external",
                )

    def _check_listen_on_links(self, drafts: list[_Draft]) -> None:
        """In an owned netns only loopback, wildcards and the tenant's own link addresses exist."""
        for d in drafts:
            if d.netns is None or d.netns.external or not d.links_complete:
                continue
            on_links = {ipaddress.ip_interface(a).ip for _, link in d.links for a in link.addresses}
            for path, listen in d.listen:
                ip = ipaddress.ip_address(listen.host)
                if ip.is_unspecified or ip in on_links or ip == ipaddress.IPv6Address("::1") or ip in _LOOPBACK_V4:
                    continue
                have = ", ".join(sorted(str(a) for a in on_links)) or "none"
                self.error(
                    path,
                    f"listen address {listen.host} is not in netns {d.netns.describe()}: it is not loopback, not a "
                    f"wildcard, and not on any of this tenant's links (link addresses: {have}); add it to a link's "
                    "addresses",
                )

    def _check_collisions(self, drafts: list[_Draft]) -> None:
        """Listeners and link names must be unique per netns, across the tenants sharing one."""
        listeners: dict[str, list[tuple[_Draft, JsonPath, Listen]]] = {}
        link_names: dict[str, dict[str, tuple[_Draft, JsonPath]]] = {}
        for d in drafts:
            if d.netns is None:
                continue
            where = f"netns {d.netns.describe()}"
            taken = listeners.setdefault(d.netns.path, [])
            for path, listen in d.listen:
                clash = next(((o, p, x) for o, p, x in taken if _collide(x, listen)), None)
                if clash is not None:
                    other, other_path, other_listen = clash
                    owner = "this tenant" if other is d else f"tenant {other.name!r}"
                    self.error(
                        path,
                        f"{listen} collides with {other_listen} of {owner} (line {self._line(other_path)}) in {where}: "
                        "two listeners cannot share an address and port",
                    )
                taken.append((d, path, listen))
            names = link_names.setdefault(d.netns.path, {})
            for path, link in d.links:
                if link.name in names and names[link.name][0] is not d:
                    other, other_path = names[link.name]
                    self.error(
                        (*path, "name"),
                        f"link {link.name!r} is also defined by tenant {other.name!r} (line {self._line(other_path)}) "
                        f"in {where}; link names must be unique in a netns",
                    )
                names.setdefault(link.name, (d, (*path, "name")))


def _collide(a: Listen, b: Listen) -> bool:
    """Same port and same address, or a wildcard and any address of its family (IPv6 sockets
    are bound with IPV6_V6ONLY, so 0.0.0.0 and :: do not collide)."""
    if a.port != b.port:
        return False
    ia, ib = ipaddress.ip_address(a.host), ipaddress.ip_address(b.host)
    if ia.version != ib.version:
        return False
    return ia == ib or ia.is_unspecified or ib.is_unspecified
