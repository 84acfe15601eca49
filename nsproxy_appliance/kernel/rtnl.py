"""An rtnetlink channel bound to one network namespace.

pyroute2's IPRoute costs ~0.4 ms to construct (it wraps an asyncio loop), and its `netns=`
option forks a helper per namespace (~8 ms). The applier talks to up to thousands of
namespaces per run, so it makes a plain AF_NETLINK socket while the thread is inside the
namespace (~20 µs; the socket stays bound to that namespace for its whole life).

The requests every run makes per namespace — the link and address dumps, and bringing lo up —
are fixed-size messages encoded here with struct and decoded with nlparse, without pyroute2:
importing pyroute2 alone takes 0.1-0.2 s and its generic decoder ~0.17 ms per link, which
together were most of a no-op or one-tenant run over 1000 namespaces. Every other change (links,
addresses, MTU: variable attributes) and its ack or error goes through pyroute2's message
classes (rtnl_changes.py), imported on the first such change only.
"""

from __future__ import annotations

import errno
import functools
import os
import socket
import struct
from collections.abc import Iterator
from types import ModuleType
from typing import Any, Protocol

from .. import netns
from ..errors import NsproxyError
from ..identity import NetnsIdentity
from . import nlparse
from .observed import LinkState, normalise_cidr

IFF_UP = 0x1
RTM_NEWLINK = 16
RTM_GETLINK = 18
RTM_GETADDR = 22
NLM_F_REQUEST = 0x1
NLM_F_ACK = 0x4
NLM_F_DUMP = 0x300
NLMSG_ERROR = 2
NLMSG_DONE = 3
IFLA_EXT_MASK = 29
RTEXT_FILTER_SKIP_STATS = 1 << 3  # the kernel leaves out link statistics we never read
RECV_BUFFER = 1 << 18

# dump requests: nlmsghdr + ifinfomsg (+ IFLA_EXT_MASK) / ifaddrmsg, sequence number patched in
_GETLINK_BODY = bytes(16) + struct.pack("=HHI", 8, IFLA_EXT_MASK, RTEXT_FILTER_SKIP_STATS)
_GETADDR_BODY = bytes(8)


class RtnlError(NsproxyError, OSError):
    """A netlink request failed; errno and the kernel's reason are kept."""


def error(code: int, what: str, reason: str | None = None) -> RtnlError:
    return RtnlError(code, f"{what}: {reason or os.strerror(code)} ({errno.errorcode.get(code, code)})")


def _error_code(data: bytes, offset: int) -> int:
    """The errno of an NLMSG_ERROR message at `offset` (0: the ack of a success)."""
    return -struct.unpack_from("=i", data, offset + nlparse.NLMSG_HDR.size)[0]


def _changes() -> ModuleType:
    from . import rtnl_changes  # pyroute2, imported only once something has to change

    return rtnl_changes


class LinkChannel(Protocol):
    """What the applier asks of a namespace's netlink channel: the seam a fake kernel implements."""

    label: str
    identity: NetnsIdentity | None

    @property
    def cookie(self) -> int | None: ...
    def close(self) -> None: ...
    def links(self) -> tuple[bool, dict[str, LinkState]]: ...
    def ifindexes(self) -> set[int]: ...
    def set_up(self, ifindex: int, what: str) -> None: ...
    def set_mtu(self, ifindex: int, mtu: int, what: str) -> None: ...
    def add_link(self, name: str, kind: str, mtu: int | None = None, ifindex: int | None = None) -> int: ...
    def delete_link(self, ifindex: int, what: str) -> None: ...
    def add_address(self, ifindex: int, cidr: str, what: str) -> None: ...
    def remove_address(self, ifindex: int, cidr: str, what: str) -> None: ...


class Channel:
    """One rtnetlink socket inside one namespace; requests are synchronous."""

    def __init__(self, sock: socket.socket, label: str, identity: NetnsIdentity | None = None):
        self._sock = sock
        self._sock.bind((0, 0))
        self._seq = 0
        self.label = label  # for messages: the netns name or path
        # (dev, ino) of the namespace, with its cookie (read from this very socket)
        self.identity = None if identity is None else identity.with_cookie(self.cookie)
        self._marshal: Any = None  # pyroute2's, made on the first change

    @classmethod
    def open(cls, path: str, label: str) -> Channel:
        """A channel inside the existing namespace at `path` (never creates one)."""
        ident = netns.identity(path)
        sock = netns.socket_in(path, socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC)
        return cls(sock, label, ident)

    @classmethod
    def throwaway(cls) -> Channel:
        """A channel inside a new unnamed namespace that disappears when the channel closes."""
        sock = netns.socket_in_new_netns(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC)
        return cls(sock, "throwaway")

    def close(self) -> None:
        self._sock.close()

    @functools.cached_property
    def cookie(self) -> int | None:
        """The namespace's cookie: unlike its inode number, never reused for another namespace."""
        return netns.cookie_of(self._sock)  # None on an older kernel: the inode number alone has to do

    def next_seq(self) -> int:
        self._seq += 1
        return self._seq

    def send(self, data: bytes) -> None:
        self._sock.send(data)

    def recv(self) -> bytes:
        return self._sock.recv(RECV_BUFFER)

    # -- observe -------------------------------------------------------------------------------

    def dump(self, msg_type: int, body: bytes) -> list[tuple[bytes, int, int]]:
        """A dump request; returns each reply as (buffer, offset, length) for nlparse to decode."""
        seq = self.next_seq()
        header = nlparse.NLMSG_HDR.pack(
            nlparse.NLMSG_HDR.size + len(body), msg_type, NLM_F_REQUEST | NLM_F_DUMP, seq, 0
        )
        self.send(header + body)
        replies: list[tuple[bytes, int, int]] = []
        for data, offset, length, kind in self._replies(seq):
            if kind == NLMSG_DONE:
                return replies
            if kind == NLMSG_ERROR:
                raise error(_error_code(data, offset), f"cannot dump from {self.label}")
            replies.append((data, offset, length))
        raise AssertionError("unreachable: _replies never ends")

    def _acked(self, msg_type: int, body: bytes, what: str) -> None:
        """Send a request that changes something and wait for the kernel's ack (or error)."""
        seq = self.next_seq()
        length = nlparse.NLMSG_HDR.size + len(body)
        self.send(nlparse.NLMSG_HDR.pack(length, msg_type, NLM_F_REQUEST | NLM_F_ACK, seq, 0) + body)
        for data, offset, _length, kind in self._replies(seq):
            if kind == NLMSG_ERROR:
                code = _error_code(data, offset)
                if code:
                    raise error(code, f"{what} in {self.label}")
                return

    def _replies(self, seq: int) -> Iterator[tuple[bytes, int, int, int]]:
        """The kernel's messages answering request `seq`, as (buffer, offset, length, type), read
        from the socket for as long as the caller keeps asking; others' messages are skipped."""
        while True:
            data = self.recv()
            offset = 0
            while offset + nlparse.NLMSG_HDR.size <= len(data):
                length, kind, _flags, reply_seq, _pid = nlparse.NLMSG_HDR.unpack_from(data, offset)
                if length < nlparse.NLMSG_HDR.size:
                    break
                if reply_seq == seq:
                    yield data, offset, length, kind
                offset += (length + 3) & ~3

    def links(self) -> tuple[bool, dict[str, LinkState]]:
        """(lo is up, the other links by name, each with its addresses)."""
        lo_up = False
        others: list[nlparse.LinkSummary] = []
        for reply in self.dump(RTM_GETLINK, _GETLINK_BODY):
            summary = nlparse.link(*reply)
            if summary.name == "lo":
                lo_up = bool(summary.flags & IFF_UP)
            else:
                others.append(summary)
        addresses = self.addresses() if others else {}
        links = {}
        for s in others:
            addrs = tuple(sorted(addresses.get(s.ifindex, ())))
            links[s.name] = LinkState(s.name, s.ifindex, s.kind, bool(s.flags & IFF_UP), s.mtu, addrs)
        return lo_up, links

    def ifindexes(self) -> set[int]:
        """Every ifindex in use in the namespace (lo's 1 included)."""
        return {1, *(nlparse.link(*reply).ifindex for reply in self.dump(RTM_GETLINK, _GETLINK_BODY))}

    def addresses(self) -> dict[int, set[str]]:
        by_index: dict[int, set[str]] = {}
        for reply in self.dump(RTM_GETADDR, _GETADDR_BODY):
            addr = nlparse.address(*reply)
            if addr is not None:
                by_index.setdefault(addr.ifindex, set()).add(normalise_cidr(f"{addr.address}/{addr.prefixlen}"))
        return by_index

    # -- change (pyroute2 messages, see rtnl_changes) --------------------------------------------

    def set_up(self, ifindex: int, what: str) -> None:
        # ifinfomsg: family 0, type 0, index, flags IFF_UP, change mask IFF_UP
        self._acked(RTM_NEWLINK, nlparse.IFINFOMSG.pack(0, 0, ifindex, IFF_UP, IFF_UP), f"cannot bring {what} up")

    def set_mtu(self, ifindex: int, mtu: int, what: str) -> None:
        _changes().set_mtu(self, ifindex, mtu, what)

    def add_link(self, name: str, kind: str, mtu: int | None = None, ifindex: int | None = None) -> int:
        """Create link `name` of `kind` (left down, no IPv6 link-local address); returns its ifindex.

        With `ifindex` the kernel gives the link that index or fails (EBUSY): the applier records
        the index in its intent before asking, so an interrupted run can recognise the link.
        """
        return _changes().add_link(self, name, kind, mtu, ifindex)

    def ifindex(self, name: str) -> int | None:
        return _changes().ifindex(self, name)

    def delete_link(self, ifindex: int, what: str) -> None:
        _changes().delete_link(self, ifindex, what)

    def add_address(self, ifindex: int, cidr: str, what: str) -> None:
        """Add `cidr`; IPv6 ones with IFA_F_NODAD, so they are usable at once (never "tentative")."""
        _changes().add_address(self, ifindex, cidr, what)

    def remove_address(self, ifindex: int, cidr: str, what: str) -> None:
        _changes().remove_address(self, ifindex, cidr, what)
