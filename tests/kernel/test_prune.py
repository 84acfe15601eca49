"""Pruning: an owned link that left the manifest is deleted; a dummy link nsproxy doesn't own stays."""

from __future__ import annotations

import pytest
from kernel_support import Nsproxy, VipTenant, ip, links

pytestmark = pytest.mark.kernel


def test_link_removed_from_manifest_is_deleted_and_a_foreign_dummy_link_is_left_alone(
    vip_tenant: VipTenant, nsproxy: Nsproxy, unique
) -> None:
    extra, foreign = unique("x"), unique("f")
    with_extra = vip_tenant.manifest(extra_links=[{"name": extra, "kind": "dummy", "addresses": ["192.0.2.10/32"]}])
    nsproxy.apply_ok(with_extra)
    assert extra in links(vip_tenant.name)
    # A dummy link someone else made in the same netns, up, with an address of its own.
    ip(vip_tenant.name, "link", "add", foreign, "type", "dummy")
    ip(vip_tenant.name, "addr", "add", "192.0.2.99/32", "dev", foreign)
    ip(vip_tenant.name, "link", "set", foreign, "up")
    foreign_before = links(vip_tenant.name)[foreign]
    without_extra = vip_tenant.manifest()

    result = nsproxy.apply_ok(without_extra)

    assert result["changed"] is True
    after = links(vip_tenant.name)
    assert extra not in after, "the link that left the manifest was not pruned"
    assert after.get(foreign) == foreign_before, "the foreign dummy link was touched"
    assert after[vip_tenant.link].addresses == vip_tenant.example_addresses
    assert not [a for a in result["actions"] if foreign in a["target"]], result["actions"]
    check = nsproxy.apply(without_extra, "--check")
    assert check.returncode == 0, str(check)  # the foreign link is not drift
