"""--diff (plan.add_diff): before/after per tenant, for tenants nsproxy skips or leaves untouched,
and for tenants that left the manifest (their namespace, links and served config); the plan's
fatal messages, and what a skipped tenant protects. Pure, like test_plan.py, whose builders it uses."""

from __future__ import annotations

import dataclasses

import pytest
from test_plan import METADATA, OPTS, ident, in_sync_config, manifest, ns, observed, tenant

from nsproxy_appliance.kernel.observed import LinkState, NetnsState, Observed
from nsproxy_appliance.ledger import Ledger
from nsproxy_appliance.model import NetnsRef
from nsproxy_appliance.plan import DUMMY_HINT, add_diff, make_plan


def diff_of(m, obs, led):
    plan = make_plan(m, obs, led, OPTS)
    add_diff(plan, obs)
    return plan


def test_a_skipped_tenant_keeps_what_it_has_and_loses_its_served_config():
    m = manifest(tenant("acme", links=(METADATA,)))
    served = in_sync_config(m)
    plan = diff_of(m, observed(ns("acme", 2), config=served), Ledger())  # a namespace nsproxy did not create
    assert plan.excluded == {"acme"}
    (entry,) = served["tenants"]
    before = {"netns": "acme", "lo": "up", "links": {}, "config": dict(entry)}
    assert plan.diff == {
        "acme": {"before": before, "after": {"netns": "acme", "lo": "up", "links": {}, "config": None}}
    }


def test_an_unmanaged_tenant_still_served_the_same_shows_no_change():
    m = manifest(tenant("acme", links=(METADATA,)))  # the link would be new, were the namespace touched
    led = Ledger()
    led.own_netns("acme", ident(1), "acme")
    plan = diff_of(m, observed(ns("acme", 2), config=in_sync_config(m)), led)  # replaced by someone else
    assert plan.unmanaged == {"acme"} and plan.excluded == set()
    assert plan.diff == {}


def test_a_tenant_that_left_the_manifest_shows_its_namespace_and_served_config_going():
    old = in_sync_config(manifest(tenant("acme"), tenant("old"), tenant("gone")))
    entries = {t["name"]: dict(t) for t in old["tenants"]}
    led = Ledger()
    led.own_netns("acme", ident(1), "acme")
    led.own_netns("old", ident(3), "old")
    m = manifest(tenant("acme"))
    plan = diff_of(m, observed(ns("acme", 1), ns("old", 3), config=old), led)
    assert plan.diff == {
        "old": {"before": {"netns": "old", "config": entries["old"]}, "after": None},
        "gone": {"before": {"config": entries["gone"]}, "after": None},
    }


def test_a_link_pruned_for_a_tenant_that_left_names_its_namespace():
    led = Ledger()
    led.own_netns("acme", ident(1), "acme")
    led.own_link("/run/netns/old", ident(3), "nsp0", "dummy", 7, "old")  # the namespace is not nsproxy's
    link = LinkState("nsp0", 7, "dummy", True, 1500)
    m = manifest(tenant("acme"))
    plan = diff_of(m, observed(ns("acme", 1), ns("old", 3, links={"nsp0": link}), config=in_sync_config(m)), led)
    assert [(a.op, a.target) for a in plan.actions] == [("delete_link", "old/nsp0")]
    assert plan.diff == {"old": {"before": {"netns": "old"}, "after": None}}


# -- the plan's own messages and what a skipped tenant protects -------------------------------------
@pytest.mark.parametrize(
    ("owned", "what"), [(0, "0 network namespaces"), (1, "1 network namespace"), (2, "2 network namespaces")]
)
def test_an_empty_manifest_says_how_much_it_would_remove(owned, what):
    led = Ledger()
    for n in range(owned):
        led.own_netns(f"ns{n}", ident(n), f"ns{n}")
    plan = make_plan(manifest(), observed(), led, OPTS)
    assert plan.fatal == [
        f"test.yaml: the manifest has no tenants; applying it would remove everything nsproxy owns ({what}). "
        "Pass --allow-empty to do that."
    ]


def test_missing_dummy_support_names_every_tenant_that_needs_it():
    m = manifest(tenant("b", links=(METADATA,)), tenant("a", links=(METADATA,)), tenant("plain"))
    plan = make_plan(m, Observed(dummy_supported=False), Ledger(), OPTS)
    assert plan.fatal == [f"{DUMMY_HINT} (needed by tenants a, b)"]


def test_the_manifest_s_warnings_are_the_plan_s():
    m = dataclasses.replace(manifest(tenant("acme")), warnings=("certificate expires soon",))
    assert make_plan(m, observed(), Ledger(), OPTS).warnings == ["certificate expires soon"]


def test_nothing_is_pruned_in_the_namespace_of_a_tenant_skipped_for_a_conflict():
    ext = NetnsRef(path="/var/run/docker/netns/abc")
    led = Ledger()
    led.own_link(ext.path, ident(3), "old0", "dummy", 5, "initech")  # left the manifest: pruned, were it touched
    links = {
        "nsp0": LinkState("nsp0", 4, "dummy", True, 1500),  # wanted, but not nsproxy's: a conflict
        "old0": LinkState("old0", 5, "dummy", True, 1500),
    }
    m = manifest(tenant("initech", ext, links=(METADATA,)))
    plan = make_plan(m, observed(NetnsState(path=ext.path, identity=ident(3), links=links)), led, OPTS)
    assert plan.excluded == {"initech"} and [c.target for c in plan.conflicts] == [f"path:{ext.path}/nsp0"]
    assert [a for a in plan.actions if a.tenant == "initech"] == []
