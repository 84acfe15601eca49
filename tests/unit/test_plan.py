"""Planning is pure: hand-built Manifest + Observed + Ledger in, ordered actions out."""

from __future__ import annotations

import dataclasses

import pytest
import support

from nsproxy_appliance import runtime_config
from nsproxy_appliance.kernel.observed import DaemonView, LinkState, NetnsState, Observed
from nsproxy_appliance.ledger import Ledger
from nsproxy_appliance.model import Link, Manifest, NetnsRef, Tenant
from nsproxy_appliance.netns import NetnsIdentity
from nsproxy_appliance.plan import DUMMY_HINT, PlanOptions, add_diff, make_plan
from nsproxy_appliance.runtime_config import Paths

PATHS = Paths(state_dir="/nonexistent/state", runtime_dir="/nonexistent/run")
OPTS = PlanOptions(paths=PATHS, no_daemon=True)
UPSTREAM = "http://127.0.0.1:9000"


def tenant(name: str, netns: NetnsRef | None = None, links: tuple[Link, ...] = (), port: int = 8080) -> Tenant:
    return support.tenant(name, netns, port=port, links=links, upstream_url=UPSTREAM)


def manifest(*tenants: Tenant) -> Manifest:
    return Manifest(version=1, tenants=tenants, source="test.yaml")


def ident(n: int) -> NetnsIdentity:
    return NetnsIdentity(4, 4026530000 + n)


def ns(name: str, n: int, lo_up: bool = True, links: dict | None = None, pids: tuple[int, ...] = ()) -> NetnsState:
    return NetnsState(path=f"/run/netns/{name}", identity=ident(n), lo_up=lo_up, links=links or {}, pids=pids)


def observed(*states: NetnsState, config: dict | None = None, **kw) -> Observed:
    return Observed(namespaces={s.path: s for s in states}, config=config, **kw)


def in_sync_config(m: Manifest, paths: Paths = PATHS) -> dict:
    return runtime_config.render(m, paths)


def ops(plan) -> list[tuple[str, str, str]]:
    return [(a.op, a.target, a.detail) for a in plan.actions]


METADATA = Link(name="nsp0", addresses=("169.254.169.254/32", "fd00:a9fe::254/128"))


# -- cold start and steady state ---------------------------------------------------------------------


def test_cold_start_creates_netns_then_lo_then_config():
    m = manifest(tenant("acme"), tenant("globex", NetnsRef.named("globex-prod")))
    plan = make_plan(m, observed(), Ledger(), OPTS)
    assert [(op, target) for op, target, _ in ops(plan)] == [
        ("create_netns", "acme"),
        ("set_lo_up", "acme/lo"),
        ("create_netns", "globex-prod"),
        ("set_lo_up", "globex-prod/lo"),
        ("update_daemon_config", PATHS.config),
    ]
    assert [a.phase for a in plan.actions] == [1, 1, 1, 1, 2]
    assert plan.counts() == (2, 3, 0)
    assert not plan.has_problems and not plan.in_sync
    assert plan.config_changes == ["acme", "globex"]


def test_in_sync_when_everything_matches():
    m = manifest(tenant("acme"))
    led = Ledger()
    led.own_netns("acme", ident(1), "acme")
    plan = make_plan(m, observed(ns("acme", 1), config=in_sync_config(m)), led, OPTS)
    assert plan.actions == [] and plan.in_sync


def test_cold_start_with_links_orders_link_up_before_addresses():
    m = manifest(tenant("acme", links=(METADATA,)))
    plan = make_plan(m, observed(), Ledger(), OPTS)
    assert ops(plan)[:6] == [
        ("create_netns", "acme", ""),
        ("set_lo_up", "acme/lo", ""),
        ("add_link", "acme/nsp0", "dummy"),
        ("set_link_up", "acme/nsp0", ""),
        ("add_address", "acme/nsp0", "169.254.169.254/32"),
        ("add_address", "acme/nsp0", "fd00:a9fe::254/128"),
    ]
    add_link = plan.actions[2]
    assert (add_link.kind, add_link.netns_path, add_link.ifindex) == ("dummy", "/run/netns/acme", None)


# -- drift -------------------------------------------------------------------------------------------


def owned_acme_with_link(ifindex: int = 2, addresses=("169.254.169.254/32", "fd00:a9fe::254/128"), up=True):
    m = manifest(tenant("acme", links=(METADATA,)))
    led = Ledger()
    led.own_netns("acme", ident(1), "acme")
    led.own_link("/run/netns/acme", ident(1), "nsp0", "dummy", ifindex, "acme")
    link = LinkState("nsp0", ifindex, "dummy", up, 1500, tuple(sorted(addresses)))
    return m, led, ns("acme", 1, links={"nsp0": link})


def test_owned_link_in_sync():
    m, led, state = owned_acme_with_link()
    assert make_plan(m, observed(state, config=in_sync_config(m)), led, OPTS).in_sync


def test_lo_down_is_drift():
    m = manifest(tenant("acme"))
    led = Ledger()
    led.own_netns("acme", ident(1), "acme")
    plan = make_plan(m, observed(ns("acme", 1, lo_up=False), config=in_sync_config(m)), led, OPTS)
    assert ops(plan) == [("set_lo_up", "acme/lo", "")]


def test_extra_and_missing_addresses_on_owned_link():
    m, led, state = owned_acme_with_link(addresses=("169.254.169.254/32", "10.9.9.9/24"), up=False)
    plan = make_plan(m, observed(state, config=in_sync_config(m)), led, OPTS)
    assert [(a.op, a.detail, a.phase, a.ifindex) for a in plan.actions] == [
        ("set_link_up", "", 1, 2),
        ("add_address", "fd00:a9fe::254/128", 1, 2),
        ("remove_address", "10.9.9.9/24", 3, 2),  # after the daemon let go of it
    ]


def test_owned_link_deleted_by_hand_is_recreated():
    m, led, state = owned_acme_with_link()
    state = dataclasses.replace(state, links={})
    plan = make_plan(m, observed(state, config=in_sync_config(m)), led, OPTS)
    assert [a.op for a in plan.actions] == ["add_link", "set_link_up", "add_address", "add_address"]


def test_owned_netns_deleted_by_hand_is_recreated_with_its_links():
    m, led, _ = owned_acme_with_link()
    plan = make_plan(m, observed(config=in_sync_config(m)), led, OPTS)
    assert [a.op for a in plan.actions][:3] == ["create_netns", "set_lo_up", "add_link"]


def test_mtu_drift():
    link = dataclasses.replace(METADATA, mtu=1400)
    m, led, state = owned_acme_with_link()
    m = manifest(tenant("acme", links=(link,)))
    plan = make_plan(m, observed(state, config=in_sync_config(m)), led, OPTS)
    assert ops(plan) == [("set_link_mtu", "acme/nsp0", "mtu 1500 -> 1400")]


def test_reboot_recreates_everything_and_drops_stale_ledger_entries():
    m, led, _ = owned_acme_with_link()
    led.own_netns("gone", ident(7), "gone")  # left the manifest while the host was down
    plan = make_plan(m, observed(), led, OPTS)  # /run/netns is empty after a reboot
    assert [a.op for a in plan.actions] == [
        "create_netns", "set_lo_up", "add_link", "set_link_up", "add_address", "add_address", "update_daemon_config",
    ]  # fmt: skip
    assert plan.stale_netns == ["gone"] and not plan.has_problems


# -- ownership and conflicts -------------------------------------------------------------------------


def test_foreign_netns_is_a_conflict_and_the_tenant_is_skipped_and_not_served():
    m = manifest(tenant("acme"), tenant("globex"))
    plan = make_plan(m, observed(ns("acme", 1)), Ledger(), OPTS)
    assert [c.target for c in plan.conflicts] == ["acme"]
    assert "not in the ledger" in plan.conflicts[0].reason
    assert [a.target for a in plan.actions if a.tenant == "acme"] == []
    assert [a.op for a in plan.actions if a.tenant == "globex"] == ["create_netns", "set_lo_up"]
    assert [t["name"] for t in plan.config["tenants"]] == ["globex"]
    assert plan.excluded == {"acme"} and plan.has_problems


def test_netns_replaced_outside_nsproxy_is_foreign():
    m = manifest(tenant("acme"))
    led = Ledger()
    led.own_netns("acme", ident(1), "acme")
    plan = make_plan(m, observed(ns("acme", 2)), led, OPTS)
    assert len(plan.conflicts) == 1 and "is not the one nsproxy created" in plan.conflicts[0].reason
    assert plan.actions == [] or all(a.op == "update_daemon_config" for a in plan.actions)


def test_same_inode_but_another_cookie_is_foreign():
    """The kernel reuses nsfs inode numbers; the netns cookie tells the namespaces apart."""
    m = manifest(tenant("acme"))
    led = Ledger()
    led.own_netns("acme", ident(1), "acme", cookie=1001)
    reused = dataclasses.replace(ns("acme", 1), cookie=2002)
    plan = make_plan(m, observed(reused), led, OPTS)
    assert [c.target for c in plan.conflicts] == ["acme"]
    same = dataclasses.replace(ns("acme", 1), cookie=1001)
    assert make_plan(m, observed(same, config=in_sync_config(m)), led, OPTS).in_sync


def test_foreign_link_with_a_wanted_name_is_a_conflict():
    m, led, state = owned_acme_with_link()
    led.disown_link("/run/netns/acme", "nsp0")
    plan = make_plan(m, observed(state, config=in_sync_config(m)), led, OPTS)
    assert [(c.tenant, c.target) for c in plan.conflicts] == [("acme", "acme/nsp0")]
    assert not [a for a in plan.actions if a.tenant == "acme"]


def test_link_with_the_owned_name_but_another_ifindex_is_foreign():
    m, led, state = owned_acme_with_link(ifindex=2)
    state = dataclasses.replace(state, links={"nsp0": dataclasses.replace(state.links["nsp0"], ifindex=9)})
    plan = make_plan(m, observed(state, config=in_sync_config(m)), led, OPTS)
    assert [c.target for c in plan.conflicts] == ["acme/nsp0"]


def test_foreign_netns_that_left_the_manifest_is_not_pruned():
    led = Ledger()
    led.own_netns("old", ident(1), "old")
    m = manifest(tenant("acme"))
    plan = make_plan(m, observed(ns("old", 5)), led, OPTS)  # same name, another namespace now
    assert not [a for a in plan.actions if a.op == "delete_netns"]
    assert plan.stale_netns == ["old"]


# -- external namespaces -----------------------------------------------------------------------------


def test_external_netns_is_never_created_but_its_links_are_managed():
    ext = NetnsRef(path="/var/run/docker/netns/abc")
    m = manifest(tenant("initech", ext, links=(METADATA,)))
    state = NetnsState(path=ext.path, identity=ident(3), lo_up=False)
    plan = make_plan(m, observed(state), Ledger(), OPTS)
    assert [a.op for a in plan.actions] == [
        "add_link",
        "set_link_up",
        "add_address",
        "add_address",
        "update_daemon_config",
    ]
    assert plan.actions[0].target == "path:/var/run/docker/netns/abc/nsp0"


def test_missing_external_netns_is_an_error_for_that_tenant_only():
    ext = NetnsRef(path="/var/run/docker/netns/gone")
    m = manifest(tenant("initech", ext), tenant("acme"))
    plan = make_plan(m, observed(), Ledger(), OPTS)
    assert [str(e) for e in plan.errors] == [
        "initech: external network namespace /var/run/docker/netns/gone does not exist (nsproxy never creates these)"
    ]
    assert [a.tenant for a in plan.actions if a.phase == 1] == ["acme", "acme"]
    assert [t["name"] for t in plan.config["tenants"]] == ["acme"]


def test_unobservable_netns_is_an_error():
    ext = NetnsRef(path="/etc/hostname")
    m = manifest(tenant("initech", ext))
    state = NetnsState(path=ext.path, error="/etc/hostname is not a network namespace")
    plan = make_plan(m, observed(state), Ledger(), OPTS)
    assert [str(e) for e in plan.errors] == ["initech: /etc/hostname is not a network namespace"]


# -- pruning -----------------------------------------------------------------------------------------


def test_prune_owned_netns_that_left_the_manifest_after_the_daemon_update():
    led = Ledger()
    led.own_netns("old", ident(1), "old")
    m = manifest(tenant("acme"))
    plan = make_plan(m, observed(ns("old", 1)), led, OPTS)
    assert [(a.op, a.target, a.phase) for a in plan.actions][-2:] == [
        ("update_daemon_config", PATHS.config, 2),
        ("delete_netns", "old", 3),
    ]
    assert plan.counts()[2] == 1


def test_owned_netns_referenced_by_path_is_not_pruned():
    led = Ledger()
    led.own_netns("old", ident(1), "old")
    m = manifest(tenant("acme", NetnsRef(path="/run/netns/old")))
    plan = make_plan(m, observed(ns("old", 1)), led, OPTS)
    assert not [a for a in plan.actions if a.op == "delete_netns"]


def test_busy_netns_is_not_pruned_without_force():
    led = Ledger()
    led.own_netns("old", ident(1), "old")
    m = manifest(tenant("acme"))
    plan = make_plan(m, observed(ns("old", 1, pids=(4242,))), led, OPTS)
    assert not [a for a in plan.actions if a.op == "delete_netns"]
    assert len(plan.errors) == 1 and "pids 4242" in str(plan.errors[0]) and "--force" in str(plan.errors[0])
    forced = make_plan(m, observed(ns("old", 1, pids=(4242,))), led, dataclasses.replace(OPTS, force=True))
    assert [a.op for a in forced.actions if a.phase == 3] == ["delete_netns"] and not forced.errors


def test_prune_owned_link_that_left_the_manifest():
    m, led, state = owned_acme_with_link()
    m = manifest(tenant("acme"))  # the link is gone from the manifest, the tenant stays
    plan = make_plan(m, observed(state, config=in_sync_config(m)), led, OPTS)
    assert [(a.op, a.target, a.ifindex, a.phase) for a in plan.actions] == [("delete_link", "acme/nsp0", 2, 3)]


def test_links_of_a_pruned_netns_die_with_it():
    _, led, state = owned_acme_with_link()
    plan = make_plan(manifest(tenant("other")), observed(state), led, OPTS)
    assert [a.op for a in plan.actions if a.phase == 3] == ["delete_netns"]


def test_no_pruning_inside_a_skipped_tenant():
    ext = NetnsRef(path="/var/run/docker/netns/abc")
    led = Ledger()
    led.own_link(ext.path, ident(3), "old0", "dummy", 5, "initech")
    m = manifest(tenant("initech", ext))
    state = NetnsState(path=ext.path, error="boom")
    plan = make_plan(m, observed(state), led, OPTS)
    assert not [a for a in plan.actions if a.op == "delete_link"]


def test_empty_manifest_is_refused_unless_allowed():
    led = Ledger()
    led.own_netns("old", ident(1), "old")
    plan = make_plan(manifest(), observed(ns("old", 1)), led, OPTS)
    assert len(plan.fatal) == 1 and "--allow-empty" in plan.fatal[0] and "1 network namespace" in plan.fatal[0]
    allowed = make_plan(manifest(), observed(ns("old", 1)), led, dataclasses.replace(OPTS, allow_empty=True))
    assert not allowed.fatal and [a.op for a in allowed.actions] == ["update_daemon_config", "delete_netns"]


# -- dummy support -----------------------------------------------------------------------------------


def test_missing_dummy_support_is_fatal_before_anything_changes():
    m = manifest(tenant("acme", links=(METADATA,)), tenant("plain"))
    plan = make_plan(m, observed(), Ledger(), dataclasses.replace(OPTS))
    assert plan.fatal == []  # not checked: unknown is not an error
    plan = make_plan(m, Observed(dummy_supported=False), Ledger(), OPTS)
    assert plan.fatal == [f"{DUMMY_HINT} (needed by tenant acme)"]
    assert "modprobe dummy" in plan.fatal[0] and "CONFIG_DUMMY" in plan.fatal[0]


# -- daemon ------------------------------------------------------------------------------------------


def test_daemon_update_when_not_running_or_serving_another_generation():
    m = manifest(tenant("acme"))
    led = Ledger()
    led.own_netns("acme", ident(1), "acme")
    config = in_sync_config(m)
    with_daemon = dataclasses.replace(OPTS, no_daemon=False)
    stopped = make_plan(m, observed(ns("acme", 1), config=config, daemon=DaemonView(running=False)), led, with_daemon)
    assert [a.op for a in stopped.actions] == ["update_daemon_config"]
    assert stopped.daemon_reasons == ["daemon not running"]
    old = DaemonView(running=True, generation="0123")
    stale = make_plan(m, observed(ns("acme", 1), config=config, daemon=old), led, with_daemon)
    assert stale.daemon_reasons == ["daemon serves generation 0123"]
    current = DaemonView(running=True, generation=config["generation"])
    assert make_plan(m, observed(ns("acme", 1), config=config, daemon=current), led, with_daemon).in_sync
    unknown = make_plan(m, observed(ns("acme", 1), config=config, daemon=DaemonView()), led, with_daemon)
    assert unknown.in_sync


def test_tenants_the_daemon_reports_failed_are_drift_that_apply_retries():
    m = manifest(tenant("acme"))
    led = Ledger()
    led.own_netns("acme", ident(1), "acme")
    config = in_sync_config(m)
    with_daemon = dataclasses.replace(OPTS, no_daemon=False)
    failing = DaemonView(running=True, generation=config["generation"], failed=("acme",))
    plan = make_plan(m, observed(ns("acme", 1), config=config, daemon=failing), led, with_daemon)
    assert not plan.in_sync
    assert [a.op for a in plan.actions] == ["update_daemon_config"]
    assert plan.daemon_reasons == ["daemon reports failed tenants: acme"]


def test_config_change_alone_is_one_daemon_update():
    m = manifest(tenant("acme"))
    led = Ledger()
    led.own_netns("acme", ident(1), "acme")
    config = in_sync_config(manifest(tenant("acme", port=9999)))
    plan = make_plan(m, observed(ns("acme", 1), config=config), led, OPTS)
    assert [a.op for a in plan.actions] == ["update_daemon_config"] and plan.config_changes == ["acme"]
    add_diff(plan, observed(ns("acme", 1), config=config))
    before, after = plan.diff["acme"]["before"], plan.diff["acme"]["after"]
    assert before["config"]["listen"] == [{"host": "127.0.0.1", "port": 9999}]
    assert after["config"]["listen"] == [{"host": "127.0.0.1", "port": 8080}]
    assert before["lo"] == after["lo"] == "up"


def test_diff_before_after_for_new_and_removed_tenants():
    led = Ledger()
    led.own_netns("old", ident(1), "old")
    m = manifest(tenant("acme", links=(METADATA,)))
    obs = observed(ns("old", 1))
    plan = make_plan(m, obs, led, OPTS)
    add_diff(plan, obs)
    assert plan.diff["acme"]["before"] == {"netns": None, "links": {}, "config": None}
    assert plan.diff["acme"]["after"]["links"]["nsp0"] == {
        "kind": "dummy",
        "state": "up",
        "addresses": ["169.254.169.254/32", "fd00:a9fe::254/128"],
    }
    assert plan.diff["old"] == {"before": {"netns": "old"}, "after": None}


@pytest.mark.parametrize("address", ["fd00:a9fe:0::254/128", "FD00:A9FE::254/128"])
def test_addresses_compare_normalised(address):
    link = Link(name="nsp0", addresses=(address,))
    m, led, state = owned_acme_with_link(addresses=("fd00:a9fe::254/128",))
    m = manifest(tenant("acme", links=(link,)))
    assert make_plan(m, observed(state, config=in_sync_config(m)), led, OPTS).in_sync


# -- the daemon's namespace identity (issue 9) --------------------------------------------------------


def test_daemon_serving_a_tenant_in_a_namespace_the_kernel_no_longer_has_is_drift():
    """`ip netns del` + re-create: same config, same generation, but the daemon's listeners live in
    the dead namespace. That is drift: --check exits 2 and apply repairs it."""
    from nsproxy_appliance.kernel.observed import ServedTenant

    m = manifest(tenant("acme"))
    led = Ledger()
    led.own_netns("acme", ident(2).with_cookie(22), "acme")
    config = in_sync_config(m)
    with_daemon = dataclasses.replace(OPTS, no_daemon=False)
    now = dataclasses.replace(ns("acme", 2), cookie=22)

    def daemon(served_in: NetnsIdentity) -> DaemonView:
        served = {"acme": ServedTenant("serving", served_in)}
        return DaemonView(running=True, generation=config["generation"], served=served)

    stale = make_plan(m, observed(now, config=config, daemon=daemon(ident(1).with_cookie(11))), led, with_daemon)
    assert [a.op for a in stale.actions] == ["update_daemon_config"]
    assert stale.daemon_reasons == ["daemon serves acme in a namespace the kernel no longer has there"]
    # the same inode number, reused by the kernel for a new namespace: the cookie tells them apart
    reused = make_plan(m, observed(now, config=config, daemon=daemon(ident(2).with_cookie(99))), led, with_daemon)
    assert [a.op for a in reused.actions] == ["update_daemon_config"]
    current = make_plan(m, observed(now, config=config, daemon=daemon(ident(2).with_cookie(22))), led, with_daemon)
    assert current.in_sync


def test_excluded_tenants_and_why_are_in_the_runtime_config():
    """The daemon's /readyz and `nsproxy status` report tenants the applier left out, with the reason."""
    m = manifest(tenant("acme"), tenant("globex"))
    plan = make_plan(m, observed(ns("acme", 1)), Ledger(), OPTS)  # acme: foreign namespace
    block = plan.config["manifest"]
    assert block["tenants"] == ["acme", "globex"]
    assert list(block["excluded"]) == ["acme"] and "nsproxy did not create it" in block["excluded"]["acme"]
    assert runtime_config.parse(plan.config).excluded == block["excluded"]
    assert [t["name"] for t in plan.config["tenants"]] == ["globex"]
