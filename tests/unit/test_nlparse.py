"""The hand-written netlink decoder on dumps captured from a real kernel (data/capture_rtnl.py), checked
against iproute2's own decoding of the same namespace, plus the malformed inputs it must survive."""

from __future__ import annotations

import json
import socket
import struct
from pathlib import Path

import pytest

from nsproxy_appliance.kernel import nlparse

DATA = json.loads((Path(__file__).parent / "data" / "rtnl_dumps.json").read_text())
IFF_UP = 0x1


def messages(key: str) -> list[bytes]:
    return [bytes.fromhex(h) for h in DATA[key]]


def test_links_decode_like_iproute2():
    decoded = []
    for msg in messages("rtm_newlink"):
        s = nlparse.link(msg, 0, len(msg))
        decoded.append(
            {"ifindex": s.ifindex, "name": s.name, "mtu": s.mtu, "up": bool(s.flags & IFF_UP), "kind": s.kind}
        )
    assert decoded == DATA["expected_links"]
    assert {d["kind"] for d in decoded} == {None, "veth", "bridge"}  # lo has no IFLA_INFO_KIND


def test_addresses_decode_like_iproute2():
    family = {socket.AF_INET: "inet", socket.AF_INET6: "inet6"}
    decoded = []
    for msg in messages("rtm_newaddr"):
        a = nlparse.address(msg, 0, len(msg))
        assert a is not None
        decoded.append(
            {"ifindex": a.ifindex, "family": family[a.family], "address": a.address, "prefixlen": a.prefixlen}
        )
    # the kernel dumps every IPv4 address, then every IPv6 one; iproute2 groups them by link
    key = lambda a: (a["ifindex"], a["family"], a["address"])  # noqa: E731
    assert sorted(decoded, key=key) == sorted(DATA["expected_addresses"], key=key)


def test_messages_are_decoded_at_their_offset_in_one_receive_buffer():
    """A recv() holds several messages back to back (each padded to 4 bytes): decode in place."""
    msgs = messages("rtm_newlink")
    buf, offsets = b"", []
    for msg in msgs:
        offsets.append(len(buf))
        buf += msg + bytes(-len(msg) % 4)
    names = [nlparse.link(buf, offset, len(msg)).name for offset, msg in zip(offsets, msgs, strict=True)]
    assert names == [e["name"] for e in DATA["expected_links"]]


def test_truncated_attribute_list_stops_without_reading_past_the_message():
    msg = messages("rtm_newlink")[2]  # veth-a
    body = nlparse.NLMSG_HDR.size + nlparse.IFINFOMSG.size
    # An attribute whose length is below its own header: the walk ends there.
    broken = msg[:body] + struct.pack("=HH", 2, nlparse.IFLA_IFNAME) + msg[body:]
    s = nlparse.link(broken, 0, len(broken))
    assert (s.ifindex, s.name, s.mtu, s.kind) == (3, "", 0, None)
    # A message cut short: only whole attributes inside the given length are read.
    s = nlparse.link(msg, 0, body + 3)
    assert s.ifindex == 3 and s.name == ""


def _addr_message(family: int, attrs: list[tuple[int, bytes]]) -> bytes:
    payload = nlparse.IFADDRMSG.pack(family, 32, 0, 0, 7)
    for nla_type, value in attrs:
        nla = struct.pack("=HH", 4 + len(value), nla_type) + value
        payload += nla + bytes(-len(nla) % 4)
    return nlparse.NLMSG_HDR.pack(nlparse.NLMSG_HDR.size + len(payload), 20, 0, 1, 0) + payload


def test_point_to_point_address_prefers_local_over_peer():
    local, peer = socket.inet_aton("10.0.0.1"), socket.inet_aton("10.0.0.2")
    msg = _addr_message(socket.AF_INET, [(nlparse.IFA_ADDRESS, peer), (nlparse.IFA_LOCAL, local)])
    assert nlparse.address(msg, 0, len(msg)) == nlparse.AddrSummary(7, socket.AF_INET, 32, "10.0.0.1")
    only_address = _addr_message(socket.AF_INET, [(nlparse.IFA_ADDRESS, peer)])
    assert nlparse.address(only_address, 0, len(only_address)).address == "10.0.0.2"


@pytest.mark.parametrize(
    "family, attrs",
    [
        (socket.AF_INET, []),  # no address attribute at all
        (socket.AF_PACKET, [(nlparse.IFA_LOCAL, b"\x01\x02\x03\x04")]),  # not an IP family
    ],
)
def test_messages_without_an_ip_address_give_none(family, attrs):
    msg = _addr_message(family, attrs)
    assert nlparse.address(msg, 0, len(msg)) is None


def test_nested_flags_are_masked_off_attribute_types():
    msg = messages("rtm_newlink")[3]  # br-test: IFLA_LINKINFO is sent with NLA_F_NESTED on newer kernels
    types = [t for t, _, _ in nlparse.attributes(msg, nlparse.NLMSG_HDR.size + nlparse.IFINFOMSG.size, len(msg))]
    assert nlparse.IFLA_LINKINFO in types and all(t <= nlparse.NLA_TYPE_MASK for t in types)
