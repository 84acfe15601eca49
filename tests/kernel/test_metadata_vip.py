"""examples/metadata-vip.yaml on a kernel with dummy links: the link, its addresses, idempotence."""

from __future__ import annotations

import pytest
from kernel_support import Nsproxy, VipTenant, links

pytestmark = pytest.mark.kernel


def test_apply_creates_the_dummy_link_up_with_exactly_the_manifest_addresses(
    vip_tenant: VipTenant, nsproxy: Nsproxy
) -> None:
    # The example puts an address of each family on its one dummy link.
    assert "169.254.169.254/32" in vip_tenant.example_addresses
    assert any(":" in a for a in vip_tenant.example_addresses)
    manifest = vip_tenant.manifest()

    result = nsproxy.apply_ok(manifest)

    assert result["changed"] is True
    state = links(vip_tenant.name)
    assert vip_tenant.link in state, f"no link {vip_tenant.link} in netns {vip_tenant.name}: {sorted(state)}"
    link = state[vip_tenant.link]
    assert link.kind == "dummy"
    assert link.up
    # Exactly: nothing missing, nothing extra (no IPv6 link-local address either).
    assert link.addresses == vip_tenant.example_addresses
    assert state["lo"].up


def test_second_apply_changes_nothing_and_check_reports_in_sync(vip_tenant: VipTenant, nsproxy: Nsproxy) -> None:
    manifest = vip_tenant.manifest()
    nsproxy.apply_ok(manifest)
    before = links(vip_tenant.name)

    again = nsproxy.apply_ok(manifest)
    check = nsproxy.apply(manifest, "--check")

    assert again["changed"] is False
    assert [a for a in again["actions"] if a["status"] == "done"] == []
    assert check.returncode == 0, str(check)
    assert check.json["changed"] is False
    assert check.json["in_sync"] is True
    assert links(vip_tenant.name) == before  # same ifindex, flags and addresses
