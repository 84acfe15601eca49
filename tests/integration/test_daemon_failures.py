"""Failure isolation: a vanished namespace or a listener that cannot bind fails only its tenant."""

from __future__ import annotations

import socket

import pytest
from daemon_harness import admin, get_in, refused_in, tenant, tenants_by_name, wait_until, write_config

from nsproxy_appliance import daemon_control, netns

pytestmark = pytest.mark.root


def test_vanished_namespace_fails_its_tenant_and_is_retried(daemon_launcher, make_netns, unique, echo):
    paths = daemon_launcher
    ns_a, ns_b = unique("a"), unique("b")
    path_a, path_b = make_netns(ns_a), make_netns(ns_b)
    gen = write_config(paths, [tenant("steady", ns_a, 8080, echo), tenant("fragile", ns_b, 8080, echo)])
    daemon_control.ensure_daemon(paths, gen, timeout=20)
    assert get_in(path_b, "127.0.0.1", 8080).status == 200

    netns.delete_named(ns_b)
    code, result = admin(paths, "POST", "/reload")
    assert code == 200
    assert result["tenants"]["fragile"]["state"] == "failed"
    assert result["failed"] == ["fragile"]
    info = tenants_by_name(paths)["fragile"]
    assert info["state"] == "failed"
    assert f"({path_b}) unavailable: No such file or directory" in info["last_error"]
    assert info["listeners"][0]["listening"] is False
    metrics = admin(paths, "GET", "/metrics")[1]
    assert 'nsproxy_tenant_state{tenant="fragile",state="failed"} 1' in metrics
    assert 'nsproxy_tenant_state{tenant="fragile",state="failed"} 1' in metrics
    code, ready = admin(paths, "GET", "/readyz")
    # not ready while a configured tenant does not serve, and it says which one and why
    assert code == 503 and ready["ready"] is False and ready["applied"] is True and ready["failed"] == ["fragile"]
    assert list(ready["not_serving"]) == ["fragile"] and "unavailable" in ready["not_serving"]["fragile"]
    assert get_in(path_a, "127.0.0.1", 8080).status == 200  # the other tenant keeps serving

    # Fixed (the namespace is back): the daemon rebinds by itself, though the config is the same.
    make_netns(ns_b)
    wait_until(lambda: tenants_by_name(paths)["fragile"]["state"] == "serving", timeout=5, what="fragile rebound")
    info = tenants_by_name(paths)["fragile"]
    assert info["state"] == "serving" and info["last_error"] is None
    assert get_in(path_b, "127.0.0.1", 8080).status == 200
    assert admin(paths, "GET", "/readyz")[0] == 200
    assert daemon_control.ensure_daemon(paths, gen, timeout=20) == "unchanged"


def test_bind_failure_is_isolated_and_start_still_ready(daemon_launcher, make_netns, unique, echo):
    paths = daemon_launcher
    ns_a, ns_b = unique("a"), unique("b")
    path_a, path_b = make_netns(ns_a), make_netns(ns_b)
    blocker = netns.socket_in(path_a, socket.AF_INET)
    blocker.bind(("127.0.0.1", 8080))
    blocker.listen(1)
    try:
        gen = write_config(
            paths,
            [
                tenant("blocked", ns_a, 8080, echo, extra_listen=(("127.0.0.1", 8081),)),
                tenant("fine", ns_b, 8080, echo),
                tenant("noaddr", ns_b, 8090, echo, host="10.231.0.1"),
            ],
        )
        assert daemon_control.ensure_daemon(paths, gen, timeout=20) == "launched"
        code, ready = admin(paths, "GET", "/readyz")
        assert code == 503 and ready["ready"] is False and ready["applied"] is True
        assert ready["generation"] == gen
        assert ready["failed"] == ["blocked", "noaddr"]
        assert "Address already in use" in ready["not_serving"]["blocked"]
        tenants = tenants_by_name(paths)
        assert "127.0.0.1:8080" in tenants["blocked"]["last_error"]
        assert "Address already in use" in tenants["blocked"]["last_error"]
        assert "Cannot assign requested address" in tenants["noaddr"]["last_error"]
        listeners = {x["address"]: x for x in tenants["blocked"]["listeners"]}
        assert listeners["127.0.0.1:8080"]["listening"] is False
        assert listeners["127.0.0.1:8081"]["listening"] is True  # the tenant's other listener serves
        assert get_in(path_a, "127.0.0.1", 8081).status == 200
        assert get_in(path_b, "127.0.0.1", 8080).status == 200
    finally:
        blocker.close()

    # The address is free now: the next reload binds it.
    code, result = admin(paths, "POST", "/reload")
    assert code == 200
    assert result["tenants"]["blocked"] == {"action": "retried", "state": "serving", "error": None}
    assert get_in(path_a, "127.0.0.1", 8080).status == 200
    assert result["tenants"]["noaddr"]["state"] == "failed"
    assert refused_in(path_b, "127.0.0.1", 8090)
