"""The health gate checks every tenant on every host, through `nsproxy status --output json`: one
tenant that cannot be served on one host of three fails that host, with the reason, and only it."""

from __future__ import annotations

import json
import socket
import subprocess
from collections.abc import Iterator

import pytest
from ansible_support import Fleet, curl_in_netns
from support import header_values

from nsproxy_appliance import netns

pytestmark = pytest.mark.root


@pytest.fixture
def blocked_netns(unique) -> Iterator[tuple[str, str]]:
    """(path, name) of a namespace where something already listens on 127.0.0.1:8080."""
    name = unique("blk")
    netns.create_named(name)
    path = netns.named_path(name)
    subprocess.run(["ip", "-n", name, "link", "set", "lo", "up"], check=True)
    blocker = netns.socket_in(path, socket.AF_INET)
    blocker.bind(("127.0.0.1", 8080))
    blocker.listen(1)
    try:
        yield path, name
    finally:
        blocker.close()
        netns.delete_named(name)


def serves(tenant: dict) -> bool:
    out = curl_in_netns(tenant["name"], "http://127.0.0.1:8080/probe")
    if out.returncode != 0:
        return False
    return header_values(json.loads(out.stdout)["headers"], "X-Tenant-ID") == [tenant["name"]]


def test_one_failed_tenant_on_one_host_of_three_fails_that_host_with_the_reason(
    fleet: Fleet, echo_upstream: str, blocked_netns: tuple[str, str]
) -> None:
    path, _ = blocked_netns
    hosts = [fleet.host(f"h{i}", nsproxy_health_retries=2) for i in (1, 2, 3)]
    plain = {}
    for h in hosts:
        plain[h.name] = [fleet.tenant(h, f"{h.name}a", echo_upstream), fleet.tenant(h, f"{h.name}b", echo_upstream)]
        h.vars["nsproxy_tenants"] = list(plain[h.name])
    broken = {"name": "stuck", "netns": {"path": path}, "listen": ["127.0.0.1:8080"], "upstream": echo_upstream}
    hosts[1].vars["nsproxy_tenants"].append(broken)  # h2's third tenant cannot bind: the port is taken
    knobs = ("-e", "nsproxy_serial=3", "-e", "nsproxy_max_fail_percentage=100")  # one batch, keep going

    run = fleet.run(*knobs)
    assert run.rc != 0
    assert {h: run.recap[h]["failed"] for h in ("h1", "h2", "h3")} == {"h1": 0, "h2": 1, "h3": 0}, run.output
    assert "stuck: not served by nsproxyd" in run.stdout and "Address already in use" in run.stdout, run.output
    for h in hosts:
        assert all(serves(t) for t in plain[h.name]), h.name  # every other tenant serves, h2's too

    again = fleet.run(*knobs)  # nothing changed since: no host reports a change, h2 still fails
    assert {h: again.recap[h]["changed"] for h in ("h1", "h2", "h3")} == {"h1": 0, "h2": 0, "h3": 0}, again.output
    assert again.recap["h2"]["failed"] == 1

    # The gate on its own (what a later run's gate sees): every tenant of every host is checked.
    gate = fleet.run(*knobs, "--tags", "nsproxy_health")
    assert {h: gate.recap[h]["failed"] for h in ("h1", "h2", "h3")} == {"h1": 0, "h2": 1, "h3": 0}, gate.output
    assert "health gate: on h2, nsproxy status reports 1 tenant(s) not served" in gate.stdout, gate.output
    assert "stuck: failed: cannot listen on 127.0.0.1:8080" in gate.stdout, gate.output
