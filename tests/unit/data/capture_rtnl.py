"""Capture the RTM_NEWLINK / RTM_NEWADDR dump replies test_nlparse.py decodes (run once, as root).

    .venv/bin/python tests/unit/data/capture_rtnl.py   -> tests/unit/data/rtnl_dumps.json

In a throwaway namespace: lo up, a veth pair (one end up, MTU 1400, IPv4 and IPv6 addresses, the
other end down) and a bridge. The replies are the raw bytes the kernel sent to nsproxy's own dump
requests (kernel.rtnl.Channel.dump); the expected values come from iproute2's JSON output
(`ip -j`), an independent decoder.
"""

from __future__ import annotations

import json
import platform
import subprocess
import sys
from pathlib import Path

from nsproxy_appliance import netns
from nsproxy_appliance.kernel import rtnl

OUT = Path(__file__).with_name("rtnl_dumps.json")
NAME = "nsproxy-capture"


def ip(*args: str) -> str:
    return subprocess.run(["ip", "-n", NAME, *args], check=True, capture_output=True, text=True).stdout


def main() -> int:
    netns.create_named(NAME)
    try:
        ip("link", "set", "lo", "up")
        ip("link", "add", "veth-a", "mtu", "1400", "type", "veth", "peer", "name", "veth-b")
        ip("link", "set", "veth-a", "up")
        ip("addr", "add", "192.0.2.1/24", "dev", "veth-a")
        ip("addr", "add", "2001:db8::1/64", "dev", "veth-a", "nodad")
        ip("link", "add", "br-test", "type", "bridge")
        channel = rtnl.Channel.open(netns.named_path(NAME), NAME)
        try:
            links = [data[offset : offset + length].hex() for data, offset, length in
                     channel.dump(rtnl.RTM_GETLINK, rtnl._GETLINK_BODY)]  # fmt: skip
            addrs = [data[offset : offset + length].hex() for data, offset, length in
                     channel.dump(rtnl.RTM_GETADDR, rtnl._GETADDR_BODY)]  # fmt: skip
        finally:
            channel.close()
        expected_links = [
            {
                "ifindex": e["ifindex"],
                "name": e["ifname"],
                "mtu": e["mtu"],
                "up": "UP" in e["flags"],
                "kind": e.get("linkinfo", {}).get("info_kind"),
            }
            for e in json.loads(ip("-j", "-d", "link", "show"))
        ]
        expected_addrs = [
            {"ifindex": e["ifindex"], "family": a["family"], "address": a["local"], "prefixlen": a["prefixlen"]}
            for e in json.loads(ip("-j", "addr", "show"))
            for a in e.get("addr_info", [])
        ]
    finally:
        netns.delete_named(NAME)
    doc = {
        "captured_on": f"Linux {platform.release()}",
        "rtm_newlink": links,
        "rtm_newaddr": addrs,
        "expected_links": expected_links,
        "expected_addresses": expected_addrs,
    }
    OUT.write_text(json.dumps(doc, indent=1) + "\n")
    print(f"wrote {OUT}: {len(links)} links, {len(addrs)} addresses")
    return 0


if __name__ == "__main__":
    sys.exit(main())
