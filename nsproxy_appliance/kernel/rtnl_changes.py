"""Change requests on a Channel, encoded and acknowledged with pyroute2's message classes.

Imported on the first change of a run only (pyroute2 takes 0.1-0.2 s to import); a run that
finds everything in sync never loads it.
"""

from __future__ import annotations

import errno
import ipaddress
import socket
from typing import Any

from pyroute2.netlink import NLM_F_ACK, NLM_F_CREATE, NLM_F_DUMP, NLM_F_EXCL, NLM_F_REQUEST, NLMSG_DONE, NLMSG_ERROR
from pyroute2.netlink.exceptions import NetlinkError
from pyroute2.netlink.rtnl import RTM_DELADDR, RTM_DELLINK, RTM_GETLINK, RTM_NEWADDR, RTM_NEWLINK
from pyroute2.netlink.rtnl.ifaddrmsg import IFA_F_NODAD, ifaddrmsg
from pyroute2.netlink.rtnl.ifinfmsg import ifinfmsg
from pyroute2.netlink.rtnl.marshal import MarshalRtnl

from .rtnl import RTEXT_FILTER_SKIP_STATS, Channel, RtnlError, error

IN6_ADDR_GEN_MODE_NONE = 1  # no automatic IPv6 link-local address: the link holds exactly ours
_NO_LINK_LOCAL = ("IFLA_INET6_ADDR_GEN_MODE", IN6_ADDR_GEN_MODE_NONE)


def request(channel: Channel, msg: Any, msg_type: int, flags: int) -> list[Any]:
    """Send one request; return the reply messages. Raises NetlinkError."""
    if channel._marshal is None:
        channel._marshal = MarshalRtnl()
    seq = channel.next_seq()
    msg["header"]["type"] = msg_type
    msg["header"]["flags"] = flags
    msg["header"]["sequence_number"] = seq
    msg.encode()
    channel.send(msg.data)
    replies: list[Any] = []
    while True:
        for reply in channel._marshal.parse(channel.recv()):
            header = reply["header"]
            if header["sequence_number"] != seq:
                continue
            if header["error"] is not None:
                raise header["error"]
            if header["type"] in (NLMSG_DONE, NLMSG_ERROR):  # end of dump, or the ACK
                return replies
            replies.append(reply)
            if not flags & (NLM_F_DUMP | NLM_F_ACK):
                return replies


def _change(channel: Channel, msg: Any, msg_type: int, what: str, extra_flags: int = 0) -> None:
    try:
        request(channel, msg, msg_type, NLM_F_REQUEST | NLM_F_ACK | extra_flags)
    except NetlinkError as e:
        reason = e.args[1] if len(e.args) > 1 and e.args[1] else None
        raise error(e.code, f"{what} in {channel.label}", reason) from None


def set_mtu(channel: Channel, ifindex: int, mtu: int, what: str) -> None:
    msg = ifinfmsg()
    msg["index"] = ifindex
    msg["attrs"] = [("IFLA_MTU", mtu)]
    _change(channel, msg, RTM_NEWLINK, f"cannot set the MTU of {what} to {mtu}")


def ifindex(channel: Channel, name: str) -> int | None:
    msg = ifinfmsg()
    msg["attrs"] = [("IFLA_IFNAME", name), ("IFLA_EXT_MASK", RTEXT_FILTER_SKIP_STATS)]
    try:
        replies = request(channel, msg, RTM_GETLINK, NLM_F_REQUEST)
    except NetlinkError as e:
        if e.code == errno.ENODEV:
            return None
        raise error(e.code, f"cannot look up link {name} in {channel.label}") from None
    return replies[0]["index"] if replies else None


def add_link(channel: Channel, name: str, kind: str, mtu: int | None, wanted_index: int | None = None) -> int:
    msg = ifinfmsg()
    if wanted_index is not None:
        msg["index"] = wanted_index
    attrs: list[tuple[str, Any]] = [("IFLA_IFNAME", name), ("IFLA_LINKINFO", {"attrs": [("IFLA_INFO_KIND", kind)]})]
    if mtu is not None:
        attrs.append(("IFLA_MTU", mtu))
    msg["attrs"] = attrs
    _change(channel, msg, RTM_NEWLINK, f"cannot create {kind} link {name}", NLM_F_CREATE | NLM_F_EXCL)
    index = ifindex(channel, name)
    if index is None:
        raise RtnlError(errno.ENODEV, f"link {name} vanished right after it was created in {channel.label}")
    # The kernel accepts IFLA_AF_SPEC only on an existing link (EAFNOSUPPORT at creation); set it
    # before the link is up so no IPv6 link-local address is ever generated on it.
    msg = ifinfmsg()
    msg["index"] = index
    msg["attrs"] = [("IFLA_AF_SPEC", {"attrs": [("AF_INET6", {"attrs": [_NO_LINK_LOCAL]})]})]
    _change(channel, msg, RTM_NEWLINK, f"cannot disable IPv6 link-local addressing on {name}")
    return index


def delete_link(channel: Channel, index: int, what: str) -> None:
    msg = ifinfmsg()
    msg["index"] = index
    _change(channel, msg, RTM_DELLINK, f"cannot delete {what}")


def _addr_msg(index: int, cidr: str) -> tuple[Any, int]:
    iface = ipaddress.ip_interface(cidr)
    msg = ifaddrmsg()
    msg["family"] = socket.AF_INET if iface.version == 4 else socket.AF_INET6
    msg["prefixlen"] = iface.network.prefixlen
    msg["index"] = index
    ip = str(iface.ip)
    msg["attrs"] = [("IFA_LOCAL", ip), ("IFA_ADDRESS", ip)]
    return msg, iface.version


def add_address(channel: Channel, index: int, cidr: str, what: str) -> None:
    msg, version = _addr_msg(index, cidr)
    if version == 6:
        # usable at once: no duplicate address detection delay (no "tentative" state)
        msg["flags"] = IFA_F_NODAD
        msg["attrs"].append(("IFA_FLAGS", IFA_F_NODAD))
    _change(channel, msg, RTM_NEWADDR, f"cannot add {cidr} to {what}", NLM_F_CREATE | NLM_F_EXCL)


def remove_address(channel: Channel, index: int, cidr: str, what: str) -> None:
    msg, _ = _addr_msg(index, cidr)
    _change(channel, msg, RTM_DELADDR, f"cannot remove {cidr} from {what}")
