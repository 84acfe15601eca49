"""An in-memory kernel behind the Kernel's Host seam, so the Executor runs without root.

FakeHost keeps namespaces by path (named ones under /run/netns) with their links and addresses;
FakeChannel answers the LinkChannel calls the actions make, like the kernel would (EEXIST, EBUSY,
ENODEV). `crash_after(n)` makes the n-th kernel change raise Crash, a BaseException nothing in
nsproxy catches: the process "dies" there (see test_executor_crash.py).
"""

from __future__ import annotations

import errno
import itertools
from collections.abc import Callable
from dataclasses import dataclass, field

from nsproxy_appliance.identity import NetnsIdentity
from nsproxy_appliance.kernel.observed import LinkState, normalise_cidr
from nsproxy_appliance.kernel.rtnl import RtnlError
from nsproxy_appliance.kernel.session import Kernel, NewNetns
from nsproxy_appliance.model import NetnsRef
from nsproxy_appliance.netns import NetnsError

NSFS_DEV = 4
IFF_UP = 1


class Crash(BaseException):
    """The applier was killed here."""


@dataclass
class FakeLink:
    name: str
    ifindex: int
    kind: str | None
    up: bool = False
    mtu: int = 1500
    addresses: set[str] = field(default_factory=set)


@dataclass
class FakeNetns:
    identity: NetnsIdentity
    lo_up: bool = False
    links: dict[str, FakeLink] = field(default_factory=dict)
    pids: list[int] = field(default_factory=list)


class FakeChannel:
    def __init__(self, host: FakeHost, ns: FakeNetns, label: str) -> None:
        self.host = host
        self.ns = ns
        self.label = label
        self.identity: NetnsIdentity | None = ns.identity
        self.closed = False

    @property
    def cookie(self) -> int | None:
        return self.ns.identity.cookie

    def close(self) -> None:
        self.closed = True

    def links(self) -> tuple[bool, dict[str, LinkState]]:
        return self.ns.lo_up, {
            link.name: LinkState(link.name, link.ifindex, link.kind, link.up, link.mtu, tuple(sorted(link.addresses)))
            for link in self.ns.links.values()
        }

    def ifindexes(self) -> set[int]:
        return {1, *(link.ifindex for link in self.ns.links.values())}

    def _link(self, ifindex: int, what: str) -> FakeLink:
        for link in self.ns.links.values():
            if link.ifindex == ifindex:
                return link
        raise RtnlError(errno.ENODEV, f"{what} in {self.label}: No such device")

    def set_up(self, ifindex: int, what: str) -> None:
        self.host.change(f"set_up {self.label} {ifindex}")
        if ifindex == 1:
            self.ns.lo_up = True
        else:
            self._link(ifindex, what).up = True

    def set_mtu(self, ifindex: int, mtu: int, what: str) -> None:
        self.host.change(f"set_mtu {self.label} {ifindex}")
        self._link(ifindex, what).mtu = mtu

    def add_link(self, name: str, kind: str, mtu: int | None = None, ifindex: int | None = None) -> int:
        self.host.change(f"add_link {self.label} {name}")
        if name in self.ns.links:
            raise RtnlError(errno.EEXIST, f"cannot create {kind} link {name} in {self.label}: File exists")
        used = {link.ifindex for link in self.ns.links.values()} | {1}
        if ifindex is not None and ifindex in used:
            raise RtnlError(errno.EBUSY, f"cannot create {kind} link {name} in {self.label}: Device or resource busy")
        index = ifindex if ifindex is not None else max(used) + 1
        self.ns.links[name] = FakeLink(name, index, kind, mtu=mtu or 1500)
        return index

    def delete_link(self, ifindex: int, what: str) -> None:
        self.host.change(f"delete_link {self.label} {ifindex}")
        link = self._link(ifindex, what)
        del self.ns.links[link.name]

    def add_address(self, ifindex: int, cidr: str, what: str) -> None:
        self.host.change(f"add_address {self.label} {cidr}")
        link = self._link(ifindex, what)
        cidr = normalise_cidr(cidr)
        if cidr in link.addresses:
            raise RtnlError(errno.EEXIST, f"cannot add {cidr} to {what} in {self.label}: File exists")
        link.addresses.add(cidr)

    def remove_address(self, ifindex: int, cidr: str, what: str) -> None:
        self.host.change(f"remove_address {self.label} {cidr}")
        self._link(ifindex, what).addresses.discard(normalise_cidr(cidr))


class FakeHost:
    """Namespaces by path. Identities are unique for the host's life, as cookies are."""

    def __init__(self) -> None:
        self.namespaces: dict[str, FakeNetns] = {}
        self._ids = itertools.count(4026532000)
        self.changes: list[str] = []  # every kernel change, in order
        self._crash_at: int | None = None
        self.crashed = False
        self.failures: dict[str, Exception] = {}  # change prefix -> the error the kernel answers
        self.on_change: Callable[[str], None] | None = None  # called before each change is made

    # -- test helpers ----------------------------------------------------------------------------

    def new_identity(self) -> NetnsIdentity:
        n = next(self._ids)
        return NetnsIdentity(NSFS_DEV, n, cookie=n * 7)

    def add(self, path: str, *, lo_up: bool = True) -> FakeNetns:
        """A namespace made by someone else (a container runtime, `ip netns add`)."""
        ns = FakeNetns(self.new_identity(), lo_up=lo_up)
        self.namespaces[path] = ns
        return ns

    def crash_after(self, changes: int | None) -> None:
        """Raise Crash on the kernel change after `changes` more of them (None: never)."""
        self._crash_at = None if changes is None else len(self.changes) + changes

    def change(self, what: str) -> None:
        if self._crash_at is not None and len(self.changes) >= self._crash_at:
            self.crashed = True
            raise Crash(what)
        for prefix, error in self.failures.items():
            if what.startswith(prefix):
                raise error
        if self.on_change is not None:
            self.on_change(what)
        self.changes.append(what)

    def kernel(self) -> Kernel:
        return Kernel(self)

    # -- Host --------------------------------------------------------------------------------------

    def stat(self, path: str) -> NetnsIdentity:
        ns = self.namespaces.get(path)
        if ns is None:
            raise FileNotFoundError(errno.ENOENT, "No such file or directory", path)
        return NetnsIdentity(ns.identity.dev, ns.identity.ino)

    def is_mounted(self, path: str) -> bool:
        return path in self.namespaces

    def open_channel(self, path: str, label: str) -> FakeChannel:
        ns = self.namespaces.get(path)
        if ns is None:
            raise NetnsError(errno.ENOENT, f"cannot open network namespace {path}: No such file or directory")
        return FakeChannel(self, ns, label)

    def unshared(self, name: str) -> NewNetns:
        self.change(f"unshare {name}")
        ns = FakeNetns(self.new_identity())
        return NewNetns(name, -1, FakeChannel(self, ns, name), ns.identity)

    def bind_named(self, new: NewNetns) -> NetnsIdentity:
        path = NetnsRef.named(new.name).path
        if path in self.namespaces:
            raise NetnsError(errno.EEXIST, f"network namespace {new.name} already exists")
        self.change(f"bind {new.name}")
        assert isinstance(new.channel, FakeChannel)
        self.namespaces[path] = new.channel.ns
        return NetnsIdentity(new.identity.dev, new.identity.ino)

    def release(self, new: NewNetns) -> None:
        return

    def delete_named(self, name: str) -> None:
        self.change(f"delete {name}")
        self.namespaces.pop(NetnsRef.named(name).path, None)

    def pids_by_inode(self, inodes: set[tuple[int, int]]) -> dict[tuple[int, int], list[int]]:
        out: dict[tuple[int, int], list[int]] = {inode: [] for inode in inodes}
        for ns in self.namespaces.values():
            if ns.identity.inode in out:
                out[ns.identity.inode] = list(ns.pids)
        return out

    def throwaway_channel(self) -> FakeChannel:
        return FakeChannel(self, FakeNetns(self.new_identity()), "throwaway")
