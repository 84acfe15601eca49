"""Drift on an owned dummy link is shown by --check and repaired by apply."""

from __future__ import annotations

import pytest
from kernel_support import Nsproxy, VipTenant, cidrs, ip, links

pytestmark = pytest.mark.kernel

HAND_ADDED = "192.0.2.7/32"  # TEST-NET-1, only ever inside the test's own netns


def pending_ops(nsproxy: Nsproxy, manifest) -> list[tuple[str, str]]:
    """(op, detail) of every action --check plans; asserts it exits 2 (changes pending)."""
    check = nsproxy.apply(manifest, "--check")
    assert check.returncode == 2, str(check)
    return [(a["op"], a["detail"]) for a in check.json["actions"]]


def test_address_added_by_hand_to_the_owned_link_is_removed(vip_tenant: VipTenant, nsproxy: Nsproxy) -> None:
    manifest = vip_tenant.manifest()
    nsproxy.apply_ok(manifest)
    ip(vip_tenant.name, "addr", "add", HAND_ADDED, "dev", vip_tenant.link)
    assert HAND_ADDED in links(vip_tenant.name)[vip_tenant.link].addresses

    assert ("remove_address", HAND_ADDED) in pending_ops(nsproxy, manifest)
    result = nsproxy.apply_ok(manifest)

    assert result["changed"] is True
    assert links(vip_tenant.name)[vip_tenant.link].addresses == vip_tenant.example_addresses


def test_link_deleted_by_hand_is_recreated(vip_tenant: VipTenant, nsproxy: Nsproxy) -> None:
    manifest = vip_tenant.manifest()
    nsproxy.apply_ok(manifest)
    old_ifindex = links(vip_tenant.name)[vip_tenant.link].ifindex
    ip(vip_tenant.name, "link", "del", vip_tenant.link)
    assert vip_tenant.link not in links(vip_tenant.name)

    assert ("add_link", "dummy") in pending_ops(nsproxy, manifest)
    nsproxy.apply_ok(manifest)

    link = links(vip_tenant.name).get(vip_tenant.link)
    assert link is not None, "the deleted link was not recreated"
    assert link.ifindex != old_ifindex
    assert link.kind == "dummy" and link.up
    assert link.addresses == vip_tenant.example_addresses


def test_address_changed_in_the_manifest_is_converged(vip_tenant: VipTenant, nsproxy: Nsproxy) -> None:
    nsproxy.apply_ok(vip_tenant.manifest())
    ifindex = links(vip_tenant.name)[vip_tenant.link].ifindex
    new_v4, new_v6 = "169.254.169.253/32", "fd00:a9fe::253/128"
    changed = vip_tenant.manifest(
        addresses=[new_v4, new_v6],
        listen=["169.254.169.253:80", "[fd00:a9fe::253]:80"],  # listeners must stay on the link's addresses
    )

    result = nsproxy.apply_ok(changed)

    assert result["changed"] is True
    link = links(vip_tenant.name)[vip_tenant.link]
    assert link.addresses == cidrs([new_v4, new_v6])  # old ones removed, new ones added
    assert link.ifindex == ifindex  # converged in place, not by recreating the link
    assert link.up
    assert nsproxy.apply(changed, "--check").returncode == 0
