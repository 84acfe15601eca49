"""The Executor on a fake kernel (fake_kernel.FakeHost behind the Kernel's Host seam): no root.

What runs is the real applier — observe, plan, execute, ledger with intents — only the namespaces
and netlink replies are in memory. A crash at every kernel change of an apply, followed by an
apply that converges, checks the crash-safe ledger exhaustively.
"""

from __future__ import annotations

import errno
import json
from pathlib import Path

import pytest
from fake_kernel import Crash, FakeHost
from support import tenant

from nsproxy_appliance import apply, ledger
from nsproxy_appliance.actions import Status
from nsproxy_appliance.kernel.rtnl import RtnlError
from nsproxy_appliance.model import Link, Manifest, NetnsRef
from nsproxy_appliance.plan import PlanOptions
from nsproxy_appliance.runtime_config import Paths

VIP = Link(name="nsp0", addresses=("169.254.169.254/32", "fd00:a9fe::254/128"))


@pytest.fixture
def paths(tmp_path: Path) -> Paths:
    return Paths(state_dir=str(tmp_path / "state"), runtime_dir=str(tmp_path / "run"))


def manifest(*names: str, links: tuple[Link, ...] = (VIP,)) -> Manifest:
    return Manifest(version=1, tenants=tuple(tenant(n, links=links) for n in names), source="fake.yaml")


def run(host: FakeHost, m: Manifest, paths: Paths, check: bool = False) -> apply.RunResult:
    options = apply.RunOptions(plan=PlanOptions(paths=paths, no_daemon=True, allow_empty=True), check=check)
    return apply.run(m, options, kernel_factory=host.kernel)


def path(name: str) -> str:
    return NetnsRef.named(name).path


def test_cold_apply_creates_everything_and_records_identities(paths):
    host = FakeHost()
    result = run(host, manifest("acme", "globex"), paths)
    assert result.exit_code == 0, result.errors
    assert {a.op: result.status(a) for a in result.actions} == dict.fromkeys(
        ["create_netns", "set_lo_up", "add_link", "set_link_up", "add_address", "update_daemon_config"], "done"
    )
    owned = ledger.load(paths.ledger)
    for name in ("acme", "globex"):
        ns = host.namespaces[path(name)]
        assert ns.lo_up and ns.links["nsp0"].up and ns.links["nsp0"].addresses == set(VIP.addresses)
        assert owned.namespaces[name].identity == ns.identity  # dev, ino and cookie
        assert owned.owned_link(path(name), "nsp0").ifindex == ns.links["nsp0"].ifindex
    assert owned.pending == []
    again = run(host, manifest("acme", "globex"), paths)
    assert again.actions == [] and not again.changed


def test_the_intent_is_on_disk_before_the_kernel_change(paths):
    """Record-before-change: when a namespace gets its name, the ledger file already names it."""
    host = FakeHost()
    seen: dict[str, list[dict]] = {}

    def check(what: str) -> None:
        if what.startswith(("bind ", "add_link ", "delete ")) and "throwaway" not in what:
            seen[what] = json.loads(Path(paths.ledger).read_text())["pending"]

    host.on_change = check
    run(host, manifest("acme"), paths)
    [intent] = [i for i in seen["bind acme"] if i["op"] == "create_netns"]
    ns = host.namespaces[path("acme")]
    assert (intent["dev"], intent["ino"], intent["cookie"]) == tuple(ns.identity)
    assert any(i["op"] == "add_link" and i["ifindex"] == ns.links["nsp0"].ifindex for i in seen["add_link acme nsp0"])
    run(host, manifest(), paths)  # pruned
    assert [i["op"] for i in seen["delete acme"]] == ["delete_netns"]
    assert path("acme") not in host.namespaces and ledger.load(paths.ledger).pending == []


def test_a_failing_action_skips_its_tenant_only_and_the_result_not_the_plan_holds_outcomes(paths):
    host = FakeHost()
    host.failures["add_address acme"] = RtnlError(errno.EADDRNOTAVAIL, "cannot add 169.254.169.254/32: refused")
    result = run(host, manifest("acme", "globex"), paths)
    assert result.exit_code == 1
    statuses = [(a.tenant, a.op, result.status(a)) for a in result.actions if a.tenant == "acme"]
    assert ("acme", "add_address", Status.FAILED) in statuses and ("acme", "add_address", Status.SKIPPED) in statuses
    assert all(result.status(a) == "done" for a in result.actions if a.tenant == "globex")
    assert not hasattr(result.plan.actions[0], "status")  # actions are frozen data: outcomes live in the result
    assert [t["name"] for t in result.config["tenants"]] == ["globex"]
    host.failures.clear()
    again = run(host, manifest("acme", "globex"), paths)
    assert again.exit_code == 0 and [a.op for a in again.done()] == ["add_address"] * 2 + ["update_daemon_config"]


def test_foreign_namespace_with_a_wanted_name_is_never_touched(paths):
    host = FakeHost()
    foreign = host.add(path("acme"), lo_up=False)
    result = run(host, manifest("acme", "globex"), paths)
    assert [c.target for c in result.plan.conflicts] == ["acme"]
    assert host.namespaces[path("acme")] is foreign and not foreign.lo_up and foreign.links == {}
    assert "acme" not in ledger.load(paths.ledger).namespaces


def test_owned_namespace_replaced_by_someone_else_stays_served_but_untouched(paths):
    host = FakeHost()
    run(host, manifest("acme"), paths)
    replaced = host.add(path("acme"), lo_up=False)  # deleted and made again outside nsproxy
    result = run(host, manifest("acme"), paths)
    assert result.exit_code == 1 and "is not the one nsproxy created" in result.plan.conflicts[0].reason
    assert [t["name"] for t in result.config["tenants"]] == ["acme"]  # still served
    assert not replaced.lo_up and replaced.links == {}  # but never modified
    gone = run(host, manifest(), paths)  # and never pruned: it is not ours
    assert host.namespaces[path("acme")] is replaced and gone.exit_code == 0


def test_busy_namespace_is_not_pruned(paths):
    host = FakeHost()
    run(host, manifest("acme", "old"), paths)
    host.namespaces[path("old")].pids.append(4242)
    result = run(host, manifest("acme"), paths)
    assert result.exit_code == 1 and any("pids 4242" in e for e in result.errors)
    assert path("old") in host.namespaces


# -- crash safety ------------------------------------------------------------------------------


def crash_run(host: FakeHost, m: Manifest, paths: Paths, monkeypatch, after: int) -> bool:
    """Apply `m`, killed at the `after`-th kernel change: nothing is saved once it is dead. True if it died."""
    real_save = ledger.save

    def save(owned: ledger.Ledger, where: str) -> None:
        if host.crashed:
            raise Crash("dead processes write nothing")
        real_save(owned, where)

    monkeypatch.setattr(ledger, "save", save)
    host.crash_after(after)
    try:
        run(host, m, paths)
    except Crash:
        return True
    finally:
        host.crash_after(None)
        host.crashed = False
        monkeypatch.setattr(ledger, "save", real_save)
    return False


def assert_converged(host: FakeHost, m: Manifest, paths: Paths, foreign: dict) -> None:
    result = run(host, m, paths)
    assert result.exit_code == 0, result.errors
    assert result.plan.conflicts == []  # nsproxy's own objects are recognised as its own
    owned = ledger.load(paths.ledger)
    wanted = {t.name for t in m.tenants}
    assert set(owned.namespaces) == wanted and owned.pending == []
    named = {p for p in host.namespaces if p.startswith("/run/netns/")}
    assert named == {path(n) for n in wanted} | set(foreign)  # no orphans
    for p, ns in foreign.items():
        assert host.namespaces[p] is ns and ns.links == {} and not ns.lo_up  # untouched
    for name in wanted:
        ns = host.namespaces[path(name)]
        assert owned.namespaces[name].identity == ns.identity
        assert ns.links["nsp0"].addresses == set(VIP.addresses) and ns.links["nsp0"].up and ns.lo_up
    assert run(host, m, paths, check=True).exit_code == 0


def setup_host(paths: Paths) -> tuple[FakeHost, dict]:
    """Tenants b, c, old applied; a foreign namespace f next to them."""
    host = FakeHost()
    foreign = {path("f"): host.add(path("f"), lo_up=False)}
    assert run(host, manifest("b", "c", "old"), paths).exit_code == 0
    return host, foreign


@pytest.mark.parametrize("second", ["same", "other"])
def test_killed_at_every_kernel_change_the_next_apply_converges(tmp_path, monkeypatch, second):
    first = manifest("a", "b", "c")  # creates a (namespace, lo, link, addresses), prunes old
    then = first if second == "same" else manifest("b", "d")
    reference, _ = setup_host(Paths(str(tmp_path / "ref"), str(tmp_path / "run")))
    before = len(reference.changes)
    run(reference, first, Paths(str(tmp_path / "ref"), str(tmp_path / "run")))
    changes = len(reference.changes) - before
    for after in range(changes):
        where = Paths(str(tmp_path / f"state-{after}"), str(tmp_path / f"run-{after}"))
        host, foreign = setup_host(where)
        assert crash_run(host, first, where, monkeypatch, after), f"no crash at change {after}"
        assert_converged(host, then, where, foreign)
    assert changes >= 9  # unshare, bind, lo, link, link up, 2 addresses (a); delete (old); ...
