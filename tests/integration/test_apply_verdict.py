"""Reports tell the truth (issue 9): apply's verdict, --check and `nsproxy status` include what the
daemon really serves — a namespace re-created under a tenant, a listener that cannot bind, a daemon
killed with SIGKILL. Everything through the real CLI, with the daemon launched by it.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess

import pytest
from daemon_harness import get_in
from support import wait_until

from nsproxy_appliance import daemon_control, netns

pytestmark = pytest.mark.root


@pytest.fixture
def stop_daemon(paths):
    yield
    daemon_control.stop(paths, timeout=15)


def apply(cli, manifest, *args):
    run = cli.run(manifest, "--lock-timeout", "60", "--daemon-timeout", "20", *args, daemon=True)
    return run.rc, run.data


def status(cli, *args):
    run = cli.nsproxy("status", *args)
    return run.rc, run.data


def test_namespace_deleted_by_hand_then_applied_again_is_served_in_the_new_one(cli, unique, echo, stop_daemon):
    """The issue's first finding: `ip netns del T`, then apply: it must end with T served again."""
    a, b = unique("a"), unique("b")
    m = cli.manifest([{"name": a, "upstream": echo.url}, {"name": b, "upstream": echo.url}])
    assert apply(cli, m)[0] == 0
    assert status(cli)[0] == 0
    old = cli.ledger().namespaces[b].identity

    netns.delete_named(b)
    rc, check = apply(cli, m, "--check")
    assert rc == 2 and [x["op"] for x in check["actions"]] == ["create_netns", "set_lo_up", "update_daemon_config"]
    assert f"daemon reports failed tenants: {b}" in check["actions"][2]["detail"]  # it noticed by itself
    rc, report = status(cli)
    assert rc == 1 and list(report["not_serving"]) == [b] and "unavailable" in report["not_serving"][b]

    rc, out = apply(cli, m)
    assert rc == 0 and out["in_sync"] and out["not_serving"] == {}, out["errors"]
    new = cli.ledger().namespaces[b].identity
    assert new.cookie != old.cookie  # another namespace (its inode number may well be the old one's)
    rc, report = status(cli)
    assert rc == 0 and report["serving"], report["not_serving"]
    [entry] = [t for t in report["tenants"] if t["name"] == b]
    assert entry["netns"]["identity"] == new.to_json()  # the daemon serves it in the one the ledger owns
    assert get_in(netns.named_path(b), "127.0.0.1", 8080).status == 200
    assert apply(cli, m, "--check")[0] == 0


def test_owned_namespace_recreated_by_someone_else_is_reported_and_never_touched(cli, unique, echo, stop_daemon):
    a = unique("a")
    m = cli.manifest([{"name": a, "upstream": echo.url}])
    assert apply(cli, m)[0] == 0
    netns.delete_named(a)
    subprocess.run(["ip", "netns", "add", a], check=True)  # someone else's namespace, at nsproxy's name
    subprocess.run(["ip", "-n", a, "link", "set", "lo", "up"], check=True)
    theirs = netns.identity(netns.named_path(a))

    rc, check = apply(cli, m, "--check")
    assert rc == 1 and "is not the one nsproxy created" in check["conflicts"][0]["reason"]
    rc, out = apply(cli, m)
    assert rc == 1 and out["conflicts"] and not out["in_sync"]
    # served (the daemon follows the name), and the report says so; never changed nor deleted
    rc, report = status(cli)
    assert rc == 0, report["not_serving"]
    assert [n["state"] for n in report["namespaces"]] == ["replaced (foreign)"]
    assert get_in(netns.named_path(a), "127.0.0.1", 8080).status == 200
    rc, out = apply(cli, cli.manifest([{"name": unique("b"), "upstream": echo.url}]))
    assert rc == 0 and netns.identity(netns.named_path(a)) == theirs  # left the manifest: not pruned


def test_listener_that_cannot_bind_fails_the_apply_and_status_and_changes_nothing_on_rerun(
    cli, unique, echo, make_netns, stop_daemon
):
    fine, ext = unique("fine"), unique("ext")
    ext_path = make_netns(ext)  # an external namespace where something already holds the port
    blocker = netns.socket_in(ext_path, socket.AF_INET)
    blocker.bind(("127.0.0.1", 8080))
    blocker.listen(1)
    tenants = [
        {"name": fine, "upstream": echo.url},
        {"name": "blocked", "netns": {"path": ext_path}, "upstream": echo.url},
    ]
    m = cli.manifest(tenants)
    try:
        rc, out = apply(cli, m)
        assert rc == 1 and out["in_sync"] is False
        assert list(out["not_serving"]) == ["blocked"] and "Address already in use" in out["not_serving"]["blocked"]
        assert any(e.startswith("blocked: not served by nsproxyd:") for e in out["errors"])
        assert fine in cli.ledger().namespaces  # the ledger is saved
        assert get_in(netns.named_path(fine), "127.0.0.1", 8080).status == 200  # the other one serves

        rc, again = apply(cli, m)  # still blocked: no change is reported that did not happen
        assert rc == 1 and again["changed"] is False and list(again["not_serving"]) == ["blocked"]
        text = cli.run(m, "--daemon-timeout", "20", output="text", daemon=True)
        assert text.rc == 1 and "blocked: not served by nsproxyd" in text.stdout
        rc, report = status(cli)
        assert rc == 1 and list(report["not_serving"]) == ["blocked"]
        assert "Address already in use" in report["not_serving"]["blocked"]
        status_text = cli.nsproxy("status", output="text")
        assert status_text.rc == 1 and "tenant blocked" in status_text.stdout and "FAILED" in status_text.stdout
    finally:
        blocker.close()
    rc, out = apply(cli, m)  # the port is free: the retry serves it, which is a change
    assert rc == 0 and out["changed"] is True and out["not_serving"] == {}
    assert status(cli)[0] == 0


def test_daemon_killed_with_sigkill_is_drift_and_the_next_apply_relaunches_it(cli, unique, echo, stop_daemon):
    m = cli.manifest([{"name": unique("a"), "upstream": echo.url}])
    assert apply(cli, m)[0] == 0
    pid = daemon_control.status(cli.paths).pid
    os.kill(pid, signal.SIGKILL)
    wait_until(lambda: not daemon_control.status(cli.paths).running, what="the daemon gone")
    rc, check = apply(cli, m, "--check")
    assert rc == 2 and "daemon not running" in check["actions"][0]["detail"]
    assert status(cli)[0] == 1
    rc, out = apply(cli, m)
    assert rc == 0 and out["daemon"]["action"] == "launched" and out["in_sync"]
    assert daemon_control.status(cli.paths).pid != pid and status(cli)[0] == 0


def test_path_namespace_replaced_under_a_tenant_heals_and_every_report_agrees(
    cli, unique, echo, make_netns, tmp_path, stop_daemon
):
    """A container restart: a new namespace bind-mounted at the tenant's path. The daemon serves it
    without an apply; status and --check then say so (and the plan's view of the gap before that is
    tests/unit/test_plan.py::test_daemon_serving_a_tenant_in_a_namespace_the_kernel_no_longer_has_is_drift)."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    first, second = make_netns(unique("c1")), make_netns(unique("c2"))
    mount_point = tmp_path / "container-netns"
    mount_point.write_text("")
    assert libc.mount(first.encode(), str(mount_point).encode(), None, 0x1000, None) == 0  # MS_BIND
    try:
        m = cli.manifest([{"name": "initech", "netns": {"path": str(mount_point)}, "upstream": echo.url}])
        assert apply(cli, m)[0] == 0 and status(cli)[0] == 0
        assert libc.umount2(str(mount_point).encode(), 2) == 0  # MNT_DETACH: the old one goes
        assert libc.mount(second.encode(), str(mount_point).encode(), None, 0x1000, None) == 0
        wait_until(lambda: status(cli)[0] == 0, timeout=5, what="status: initech served again")
        _, report = status(cli)
        ident = netns.identity(second)
        served = report["tenants"][0]["netns"]["identity"]
        assert (served["dev"], served["ino"]) == ident.inode
        rc, check = apply(cli, m, "--check")
        assert rc == 0 and check["in_sync"], check["actions"]
        assert get_in(second, "127.0.0.1", 8080).status == 200
    finally:
        while libc.umount2(str(mount_point).encode(), 2) == 0:
            pass
