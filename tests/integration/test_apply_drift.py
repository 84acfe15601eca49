"""Drift repair and reboots: state changed behind nsproxy's back is shown by --check and converged."""

from __future__ import annotations

import pytest
from apply_harness import lo_is_up, set_lo_down
from support import tenant

from nsproxy_appliance import ledger, netns
from nsproxy_appliance.apply import Executor, RunOptions, observe
from nsproxy_appliance.kernel.session import Kernel
from nsproxy_appliance.model import Manifest
from nsproxy_appliance.plan import PlanOptions, make_plan

pytestmark = pytest.mark.root


def test_netns_deleted_by_hand_is_recreated(cli, unique):
    a, b = unique("a"), unique("b")
    m = cli.manifest([{"name": a}, {"name": b}])
    assert cli.run(m).rc == 0
    netns.delete_named(a)
    check = cli.run(m, "--check")
    assert check.rc == 2 and check.ops() == [("create_netns", a), ("set_lo_up", f"{a}/lo")]
    run = cli.run(m)
    assert run.rc == 0 and run.data["changed"] and run.ops("done") == check.ops()
    assert netns.exists(a) and lo_is_up(a)
    assert cli.ledger().owns_netns(a, netns.identity(netns.named_path(a)))  # the new identity
    assert cli.run(m, "--check").rc == 0


def test_lo_down_is_brought_up(cli, unique):
    a = unique("a")
    m = cli.manifest([{"name": a}])
    assert cli.run(m).rc == 0
    set_lo_down(a)
    check = cli.run(m, "--check")
    assert check.rc == 2 and check.ops() == [("set_lo_up", f"{a}/lo")]
    assert not lo_is_up(a)  # --check changed nothing
    assert cli.run(m).rc == 0 and lo_is_up(a)
    assert cli.run(m, "--check").rc == 0


def test_reboot_recreates_everything_from_manifest_and_ledger(cli, unique):
    names = [unique("r") for _ in range(3)]
    m = cli.manifest([{"name": n} for n in names])
    assert cli.run(m).rc == 0
    old = {n: cli.ledger().namespaces[n].cookie for n in names}
    for n in names:  # /run/netns is a tmpfs: after a reboot nothing is left
        netns.delete_named(n)
    run = cli.run(m)
    assert run.rc == 0 and [op for op, _ in run.ops("done")].count("create_netns") == 3
    owned = cli.ledger()
    for n in names:
        now = netns.identity(netns.named_path(n))
        # the inode number may be reused by the kernel; the cookie never is
        assert owned.namespaces[n].cookie != old[n] and owned.owns_netns(n, now) and lo_is_up(n)
    assert cli.run(m).data["actions"] == []


def test_config_file_removed_is_rewritten(cli, unique):
    m = cli.manifest([{"name": unique("a")}])
    assert cli.run(m).rc == 0
    generation = cli.config()["generation"]
    (cli.tmp / "run" / "config.json").unlink()
    check = cli.run(m, "--check")
    assert check.rc == 2 and check.ops() == [("update_daemon_config", cli.paths.config)]
    assert cli.run(m).rc == 0 and cli.config()["generation"] == generation


def test_verify_reports_desired_state_that_does_not_hold(unique, paths, netns_cleanup):
    """After applying, the executor re-observes what it touched; a change undone behind its back shows."""
    name = unique("v")
    netns_cleanup.append(name)
    manifest = Manifest(version=1, tenants=(tenant(name),), source="verify")
    options = PlanOptions(paths=paths, no_daemon=True)
    owned = ledger.Ledger()
    with Kernel() as kernel:
        observed = observe(manifest, owned, kernel, options)
        executor = Executor(
            make_plan(manifest, observed, owned, options), owned, kernel, observed, options, RunOptions.daemon_timeout
        )
        result = executor.run()
        assert result.verify_errors == [] and result.exit_code == 0
        set_lo_down(name)  # undone right after apply
        executor.verify()
    assert result.verify_errors == [f"verify: {name}: left to do after apply: set_lo_up {name}/lo"]
    assert result.exit_code == 1 and not result.in_sync
