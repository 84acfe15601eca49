"""Failure isolation: one tenant's problem never stops the others; the next apply converges."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from apply_harness import lo_is_up
from support import tenant

from nsproxy_appliance import ledger, netns
from nsproxy_appliance.apply import Executor, RunOptions, observe
from nsproxy_appliance.kernel.session import Kernel
from nsproxy_appliance.model import Manifest
from nsproxy_appliance.plan import PlanOptions, make_plan

pytestmark = pytest.mark.root


def test_missing_external_netns_fails_that_tenant_only_then_converges(cli, unique, make_netns, netns_cleanup):
    a, ext = unique("a"), unique("ext")
    ext_path = netns.named_path(ext)
    netns_cleanup.append(ext)
    m = cli.manifest([{"name": a}, {"name": "initech", "netns": {"path": ext_path}}])
    run = cli.run(m)
    assert run.rc == 1
    assert run.data["errors"] == [
        f"initech: external network namespace {ext_path} does not exist (nsproxy never creates these)"
    ]
    assert run.ops("done")[:2] == [("create_netns", a), ("set_lo_up", f"{a}/lo")] and lo_is_up(a)
    assert [t["name"] for t in cli.config()["tenants"]] == [a]
    assert not netns.exists(ext)  # never created by nsproxy
    make_netns(ext)  # the container comes up
    run = cli.run(m)
    assert run.rc == 0 and run.ops("done") == [("update_daemon_config", cli.paths.config)]
    assert [t["name"] for t in cli.config()["tenants"]] == [a, "initech"]
    assert ext not in cli.ledger().namespaces  # external: never owned
    assert cli.run(m, "--check").rc == 0


def test_path_that_is_not_a_netns_is_an_error_for_that_tenant(cli, unique, tmp_path):
    a = unique("a")
    not_ns = tmp_path / "plain-file"
    not_ns.write_text("")
    run = cli.run(cli.manifest([{"name": a}, {"name": "odd", "netns": {"path": str(not_ns)}}]))
    assert run.rc == 1 and run.data["errors"] == [f"odd: {not_ns} is not a network namespace"]
    assert netns.exists(a)


def test_action_failing_at_apply_time_skips_its_tenant_and_the_ledger_stays_true(
    unique, paths, netns_cleanup, make_netns
):
    """A real failure: the namespace appears between plan and apply (EEXIST on create)."""
    racy, fine = unique("racy"), unique("fine")
    netns_cleanup.extend([racy, fine])
    manifest = Manifest(version=1, tenants=(tenant(racy), tenant(fine)), source="isolation")
    options = PlanOptions(paths=paths, no_daemon=True)
    owned = ledger.Ledger()
    with Kernel() as kernel:
        observed = observe(manifest, owned, kernel, options)
        plan = make_plan(manifest, observed, owned, options)
        make_netns(racy)  # someone else wins the race
        result = Executor(plan, owned, kernel, observed, options, RunOptions.daemon_timeout).run()
    by_target = {(a.op, a.target): a for a in plan.actions}
    create = by_target[("create_netns", racy)]
    assert result.status(create) == "failed" and "already exists" in result.error(create)
    assert result.status(by_target[("set_lo_up", f"{racy}/lo")]) == "skipped"
    assert result.status(by_target[("create_netns", fine)]) == "done" and lo_is_up(fine)
    assert result.exit_code == 1 and any(racy in f and "already exists" in f for f in result.failures)
    saved = ledger.load(paths.ledger)
    assert set(saved.namespaces) == {fine}  # the foreign one is not claimed
    served = [t["name"] for t in json.loads(Path(paths.config).read_text())["tenants"]]
    assert served == [fine]
    # once the stray namespace is gone, the next apply converges
    netns.delete_named(racy)
    with Kernel() as kernel:
        observed = observe(manifest, saved, kernel, options)
        again = Executor(
            make_plan(manifest, observed, saved, options), saved, kernel, observed, options, RunOptions.daemon_timeout
        ).run()
    assert again.exit_code == 0 and netns.exists(racy) and lo_is_up(racy)
    assert [(a.op, again.status(a)) for a in again.actions][:2] == [("create_netns", "done"), ("set_lo_up", "done")]
