"""End to end: nsproxy-apply launches nsproxyd, which answers on the example's VIPs inside the
tenant netns and forwards to the echo upstream in the host namespace with the tenant header."""

from __future__ import annotations

import json
import subprocess

import pytest
from kernel_support import Nsproxy, VipTenant

pytestmark = pytest.mark.kernel


def curl_in(netns_name: str, url: str, *args: str) -> dict:
    out = subprocess.run(
        ["ip", "netns", "exec", netns_name, "curl", "-sS", "--noproxy", "*", "--max-time", "60", *args, url],
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
    )
    assert out.returncode == 0, f"curl {url} in netns {netns_name}: exit {out.returncode}: {out.stderr.strip()}"
    return json.loads(out.stdout)


def header_values(echoed: dict, name: str) -> list[str]:
    """Every copy the upstream got, names read the way a CGI server reads them (`_` as `-`)."""
    wanted = name.lower().replace("_", "-")
    return [value for key, value in echoed["headers"] if key.lower().replace("_", "-") == wanted]


def test_daemon_serves_both_vips_and_the_upstream_learns_the_tenant(
    vip_tenant: VipTenant, nsproxy: Nsproxy, echo_upstream: str
) -> None:
    header = vip_tenant.example.get("defaults", {}).get("tenant_header", "X-Tenant-ID")
    listen = vip_tenant.example_tenant["listen"]
    assert "169.254.169.254:80" in listen and any(x.startswith("[") for x in listen), listen
    manifest = vip_tenant.manifest(upstream=echo_upstream)

    result = nsproxy.apply_ok(manifest, daemon=True)
    assert result["daemon"]["action"] == "launched", result["daemon"]

    for host in [x.rsplit(":", 1)[0] for x in listen]:  # "169.254.169.254", "[fd00:a9fe::254]"
        try:
            # A client-sent tenant header must not survive: the upstream sees only the real one.
            echoed = curl_in(vip_tenant.name, f"http://{host}/latest/meta-data", "-H", f"{header}: spoofed")
        except AssertionError as e:
            raise AssertionError(f"{e}\ndaemon log:\n{nsproxy.daemon_log()}") from None
        assert echoed["path"] == "/latest/meta-data"
        assert header_values(echoed, header) == [vip_tenant.name], echoed["headers"]
