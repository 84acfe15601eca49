"""What the applier saw in the kernel and on disk: plain data, no kernel access.

plan.make_plan() compares this with the manifest and the ledger; kernel.session builds it.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ..identity import NetnsIdentity


def normalise_cidr(cidr: str) -> str:
    """One spelling per address: "fd00:a9fe:0::254/128" -> "fd00:a9fe::254/128"."""
    return str(ipaddress.ip_interface(cidr))


@dataclass(frozen=True)
class LinkState:
    name: str
    ifindex: int
    kind: str | None  # IFLA_INFO_KIND; None for links without one (lo, physical NICs)
    up: bool
    mtu: int
    addresses: tuple[str, ...] = ()  # normalised CIDRs ("169.254.169.254/32"), sorted


@dataclass(frozen=True)
class NetnsState:
    """One namespace, by path. identity None: nothing is mounted there (missing)."""

    path: str
    identity: NetnsIdentity | None = None
    cookie: int | None = None  # SO_NETNS_COOKIE, when the kernel has it (inode numbers get reused)
    lo_up: bool = False
    links: Mapping[str, LinkState] = field(default_factory=dict)  # by name, lo excluded
    pids: tuple[int, ...] = ()  # processes inside; only filled for namespaces that may be pruned
    error: str | None = None  # could not be observed (e.g. the path is not a network namespace)

    @property
    def exists(self) -> bool:
        return self.identity is not None and self.error is None

    @property
    def full_identity(self) -> NetnsIdentity | None:
        """(dev, ino, cookie): the one identity ledger, runtime config and daemon compare."""
        return None if self.identity is None else self.identity.with_cookie(self.cookie)

    def is_(self, identity: NetnsIdentity, cookie: int | None = None) -> bool:
        """Whether this is the namespace recorded as `identity` (with `cookie`, if given apart);
        a cookie unknown on either side is not held against it."""
        if not self.exists:
            return False
        recorded = identity if cookie is None else identity.with_cookie(cookie)
        return recorded.same(self.full_identity)


@dataclass(frozen=True)
class ServedTenant:
    """One tenant as the daemon reports it in /tenants."""

    state: str  # starting | serving | failed | draining
    identity: NetnsIdentity | None = None  # the namespace its listeners live in
    error: str | None = None


@dataclass(frozen=True)
class DaemonView:
    """The daemon as daemon_control.status() reported it; running None means unknown."""

    running: bool | None = None
    generation: str | None = None
    failed: tuple[str, ...] = ()  # tenants the daemon reports failed: applying again retries them
    served: Mapping[str, ServedTenant] | None = None  # by tenant name; None when not asked or unknown


@dataclass(frozen=True)
class Observed:
    namespaces: Mapping[str, NetnsState] = field(default_factory=dict)  # by path
    dummy_supported: bool | None = None  # None: not checked (no dummy link to create)
    config: Mapping[str, Any] | None = None  # runtime config currently on disk, None if absent/unreadable
    daemon: DaemonView = field(default_factory=DaemonView)

    def netns(self, path: str) -> NetnsState:
        return self.namespaces.get(path) or NetnsState(path=path)

    @property
    def config_generation(self) -> str | None:
        return None if self.config is None else self.config.get("generation")

    def config_tenant(self, name: str) -> Mapping[str, Any] | None:
        if self.config is None:
            return None
        for entry in self.config.get("tenants", ()):
            if entry.get("name") == name:
                return entry
        return None
