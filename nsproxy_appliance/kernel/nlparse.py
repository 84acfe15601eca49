"""Just-enough decoding of the two rtnetlink dumps the applier reads on every run.

pyroute2's generic decoder builds an object for each of the ~40 attributes of every link
message (~0.17 ms per link, measured: most of a no-op run over 1000 namespaces). Observation
only needs the ifinfomsg/ifaddrmsg headers and three or four attributes, so this module walks
the attribute list with struct and skips the rest. The dump requests themselves are encoded by
hand in rtnl.py; only changes to links and addresses (and their acks) go through pyroute2's
message classes (rtnl_changes.py). tests/unit/test_nlparse.py decodes dumps captured from a real
kernel (tests/unit/data/rtnl_dumps.json).
"""

from __future__ import annotations

import socket
import struct
from collections.abc import Iterator
from typing import NamedTuple

NLMSG_HDR = struct.Struct("=IHHII")  # len, type, flags, seq, pid
IFINFOMSG = struct.Struct("=BxHiII")  # family, type, index, flags, change
IFADDRMSG = struct.Struct("=BBBBI")  # family, prefixlen, flags, scope, index
NLA_HDR = struct.Struct("=HH")  # len, type
NLA_TYPE_MASK = 0x3FFF  # without NLA_F_NESTED / NLA_F_NET_BYTEORDER

IFLA_IFNAME = 3
IFLA_MTU = 4
IFLA_LINKINFO = 18
IFLA_INFO_KIND = 1
IFA_ADDRESS = 1
IFA_LOCAL = 2


class LinkSummary(NamedTuple):
    ifindex: int
    flags: int
    name: str
    mtu: int
    kind: str | None


class AddrSummary(NamedTuple):
    ifindex: int
    family: int
    prefixlen: int
    address: str


def attributes(buf: bytes, start: int, end: int) -> Iterator[tuple[int, int, int]]:
    """(type, payload offset, payload length) of each attribute in buf[start:end]."""
    while start + NLA_HDR.size <= end:
        length, nla_type = NLA_HDR.unpack_from(buf, start)
        if length < NLA_HDR.size:
            return
        yield nla_type & NLA_TYPE_MASK, start + NLA_HDR.size, length - NLA_HDR.size
        start += (length + 3) & ~3


def _cstring(buf: bytes, offset: int, length: int) -> str:
    return bytes(buf[offset : offset + length]).split(b"\0", 1)[0].decode("utf-8", "replace")


def link(buf: bytes, offset: int, length: int) -> LinkSummary:
    """Decode an RTM_NEWLINK message starting at `offset` (its nlmsghdr)."""
    body = offset + NLMSG_HDR.size
    _family, _type, index, flags, _change = IFINFOMSG.unpack_from(buf, body)
    name, mtu, kind = "", 0, None
    for nla_type, at, size in attributes(buf, body + IFINFOMSG.size, offset + length):
        if nla_type == IFLA_IFNAME:
            name = _cstring(buf, at, size)
        elif nla_type == IFLA_MTU and size >= 4:
            mtu = struct.unpack_from("=I", buf, at)[0]
        elif nla_type == IFLA_LINKINFO:
            for info_type, info_at, info_size in attributes(buf, at, at + size):
                if info_type == IFLA_INFO_KIND:
                    kind = _cstring(buf, info_at, info_size)
    return LinkSummary(index, flags, name, mtu, kind)


def address(buf: bytes, offset: int, length: int) -> AddrSummary | None:
    """Decode an RTM_NEWADDR message; None if it carries no address."""
    body = offset + NLMSG_HDR.size
    family, prefixlen, _flags, _scope, index = IFADDRMSG.unpack_from(buf, body)
    found: dict[int, bytes] = {}
    for nla_type, at, size in attributes(buf, body + IFADDRMSG.size, offset + length):
        if nla_type in (IFA_ADDRESS, IFA_LOCAL):
            found[nla_type] = bytes(buf[at : at + size])
    raw = found.get(IFA_LOCAL) or found.get(IFA_ADDRESS)  # IFA_ADDRESS is the peer on point-to-point links
    if raw is None or family not in (socket.AF_INET, socket.AF_INET6):
        return None
    return AddrSummary(index, family, prefixlen, socket.inet_ntop(family, raw))
