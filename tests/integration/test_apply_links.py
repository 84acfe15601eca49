"""Links and addresses on the host kernel.

This kernel has no dummy links, so the link code runs here with bridge links in their place (same
netlink requests, only IFLA_INFO_KIND differs); the VM stage runs dummy links end to end. The
applier is driven in-process (observe, plan, execute) because the manifest schema only accepts
kind: dummy.
"""

from __future__ import annotations

import os
import socket

import pytest
import support
from pyroute2 import IPRoute

from nsproxy_appliance import ledger, netns
from nsproxy_appliance.apply import RunOptions, RunResult
from nsproxy_appliance.apply import run as apply_run
from nsproxy_appliance.kernel.session import Kernel
from nsproxy_appliance.model import Link, Manifest, NetnsRef, Tenant
from nsproxy_appliance.plan import PlanOptions

pytestmark = pytest.mark.root

V4 = "169.254.169.254/32"
V6 = "fd00:a9fe::254/128"
IFA_F_TENTATIVE = 0x40


def tenant(name: str, links: tuple[Link, ...], ref: NetnsRef | None = None) -> Tenant:
    return support.tenant(name, ref, host="169.254.169.254", port=80, links=links)


def apply(manifest: Manifest, paths, check: bool = False) -> RunResult:
    return apply_run(manifest, RunOptions(plan=PlanOptions(paths=paths, no_daemon=True), check=check, lock_timeout=5))


def ipr_in(name: str) -> IPRoute:
    with netns.entered(netns.named_path(name)):
        return IPRoute()


def link_facts(name: str, link: str) -> dict:
    with ipr_in(name) as ipr:
        [info] = ipr.get_links(ifname=link)
        addrs = {
            f"{a.get_attr('IFA_ADDRESS')}/{a['prefixlen']}": a.get_attr("IFA_FLAGS") or a["flags"]
            for a in ipr.get_addr(index=info["index"])
        }
        kind = info.get_attr("IFLA_LINKINFO").get_attr("IFLA_INFO_KIND")
        return {"index": info["index"], "up": bool(info["flags"] & 1), "mtu": info.get_attr("IFLA_MTU"),
                "kind": kind, "addresses": addrs}  # fmt: skip


@pytest.fixture
def acme(unique, netns_cleanup):
    name = unique("l")
    netns_cleanup.append(name)
    return name


def test_links_are_created_up_with_addresses_usable_at_once(acme, paths):
    link = Link(name="nsp0", kind="bridge", addresses=(V4, V6), mtu=1400)  # type: ignore[arg-type]
    m = Manifest(version=1, tenants=(tenant(acme, (link,)),), source="links")
    result = apply(m, paths)
    assert result.exit_code == 0, result.errors
    assert [a.op for a in result.plan.actions] == [
        "create_netns", "set_lo_up", "add_link", "set_link_up", "add_address", "add_address", "update_daemon_config",
    ]  # fmt: skip
    facts = link_facts(acme, "nsp0")
    assert (facts["kind"], facts["up"], facts["mtu"]) == ("bridge", True, 1400)
    assert set(facts["addresses"]) == {V4, V6}  # and no fe80:: link-local: addrgenmode none
    assert not facts["addresses"][V6] & IFA_F_TENTATIVE  # IFA_F_NODAD: no DAD wait
    owned = ledger.load(paths.ledger).owned_link(netns.named_path(acme), "nsp0")
    assert (owned.kind, owned.ifindex) == ("bridge", facts["index"])
    # usable at once: a listener binds to both addresses and answers from inside the namespace
    for family, host in ((socket.AF_INET, "169.254.169.254"), (socket.AF_INET6, "fd00:a9fe::254")):
        with netns.socket_in(netns.named_path(acme), family) as server:
            server.bind((host, 80))
            server.listen()
            with netns.socket_in(netns.named_path(acme), family) as client:
                client.settimeout(5)
                client.connect((host, 80))
                conn, _ = server.accept()
                conn.close()
    again = apply(m, paths)
    assert again.plan.actions == [] and not again.changed


def test_link_drift_is_converged(acme, paths):
    link = Link(name="nsp0", kind="bridge", addresses=(V4,))  # type: ignore[arg-type]
    m = Manifest(version=1, tenants=(tenant(acme, (link,)),), source="links")
    assert apply(m, paths).exit_code == 0
    index = link_facts(acme, "nsp0")["index"]
    with ipr_in(acme) as ipr:  # an extra address and the link down, by hand
        ipr.addr("add", index=index, address="10.66.0.1", prefixlen=24)
        ipr.link("set", index=index, state="down")
    check = apply(m, paths, check=True)
    assert [(a.op, a.detail) for a in check.plan.actions] == [("set_link_up", ""), ("remove_address", "10.66.0.1/24")]
    assert check.exit_code == 2
    assert apply(m, paths).exit_code == 0
    facts = link_facts(acme, "nsp0")
    assert facts["up"] and set(facts["addresses"]) == {V4}
    with ipr_in(acme) as ipr:  # deleted by hand: recreated
        ipr.link("del", index=index)
    result = apply(m, paths)
    assert [a.op for a in result.plan.actions][:3] == ["add_link", "set_link_up", "add_address"]
    assert result.exit_code == 0 and set(link_facts(acme, "nsp0")["addresses"]) == {V4}


def test_links_that_left_the_manifest_are_deleted_and_foreign_links_are_conflicts(acme, paths):
    keep = Link(name="nsp0", kind="bridge", addresses=(V4,))  # type: ignore[arg-type]
    gone = Link(name="nsp1", kind="bridge")  # type: ignore[arg-type]
    assert apply(Manifest(1, (tenant(acme, (keep, gone)),)), paths).exit_code == 0
    result = apply(Manifest(1, (tenant(acme, (keep,)),)), paths)
    assert [(a.op, a.target, a.phase) for a in result.plan.actions] == [("delete_link", f"{acme}/nsp1", 3)]
    assert result.exit_code == 0
    with ipr_in(acme) as ipr:
        assert ipr.link_lookup(ifname="nsp1") == []
        ipr.link("add", ifname="nsp2", kind="bridge")  # someone else's link
        foreign = ipr.link_lookup(ifname="nsp2")[0]
    want = Link(name="nsp2", kind="bridge", addresses=(V4,))  # type: ignore[arg-type]
    result = apply(Manifest(1, (tenant(acme, (keep, want)),)), paths)
    assert [(c.target, "nsproxy did not create it" in c.reason) for c in result.plan.conflicts] == [
        (f"{acme}/nsp2", True)
    ]
    assert result.exit_code == 1 and link_facts(acme, "nsp2")["index"] == foreign
    assert link_facts(acme, "nsp2")["addresses"] == {}  # untouched


def test_links_in_an_external_netns_are_managed_but_the_netns_is_never_deleted(unique, paths, make_netns):
    ext = make_netns(unique("ext"))
    link = Link(name="nsp0", kind="bridge", addresses=(V4,))  # type: ignore[arg-type]
    m = Manifest(1, (tenant("initech", (link,), NetnsRef(path=ext)),))
    result = apply(m, paths)
    assert [a.op for a in result.plan.actions][:3] == ["add_link", "set_link_up", "add_address"]
    assert ledger.load(paths.ledger).namespaces == {}
    result = apply(Manifest(1, (tenant("initech", (), NetnsRef(path=ext)),)), paths)
    assert [a.op for a in result.plan.actions] == ["delete_link"] and result.exit_code == 0
    result = apply(Manifest(1, ()), paths)  # the tenant is gone: its external netns stays
    assert netns.identity(ext) and not [a for a in result.plan.actions if a.op == "delete_netns"]


def kernel_has_dummy() -> bool:
    if os.geteuid() != 0:  # the probe needs root; these tests are skipped then anyway
        return False
    with Kernel() as kernel:
        return kernel.dummy_supported()


@pytest.mark.skipif(kernel_has_dummy(), reason="this kernel can create dummy links")
def test_dummy_links_on_a_kernel_without_them_fail_at_plan_time(cli, unique):
    a, b = unique("a"), unique("b")
    metadata = {"name": "nsp0", "kind": "dummy", "addresses": [V4]}
    m = cli.manifest([{"name": b}, {"name": a, "links": [metadata], "listen": ["169.254.169.254:80"]}])
    for args in (("--check",), ()):
        run = cli.run(m, *args)
        assert run.rc == 1
        [error] = run.data["errors"]
        assert "cannot create dummy links" in error and "modprobe dummy" in error and f"needed by tenant {a}" in error
    assert not netns.exists(a) and not netns.exists(b)  # nothing changed, not even the other tenant
