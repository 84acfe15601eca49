"""Pruning and ownership: only what nsproxy created is ever deleted; foreign objects are conflicts."""

from __future__ import annotations

import subprocess

import pytest
from support import wait_until

from nsproxy_appliance import netns

pytestmark = pytest.mark.root


def test_tenant_removed_from_the_manifest_is_pruned(cli, unique):
    a, b = unique("a"), unique("b")
    assert cli.run(cli.manifest([{"name": a}, {"name": b}])).rc == 0
    m = cli.manifest([{"name": a}])
    check = cli.run(m, "--check")
    assert check.rc == 2 and ("delete_netns", b) in check.ops() and netns.exists(b)
    run = cli.run(m)
    assert run.rc == 0 and run.ops("done") == [("update_daemon_config", cli.paths.config), ("delete_netns", b)]
    assert not netns.exists(b) and netns.exists(a)
    assert b not in cli.ledger().namespaces
    assert [t["name"] for t in cli.config()["tenants"]] == [a]


def test_foreign_netns_with_a_wanted_name_is_a_conflict_and_untouched(cli, unique, make_netns):
    foreign, mine = unique("f"), unique("m")
    path = make_netns(foreign)  # made by someone else (lo up), not in the ledger
    ident = netns.identity(path)
    m = cli.manifest([{"name": foreign}, {"name": mine}])
    run = cli.run(m)
    assert run.rc == 1
    assert [(c["tenant"], c["target"]) for c in run.data["conflicts"]] == [(foreign, foreign)]
    assert "nsproxy did not create it" in run.data["conflicts"][0]["reason"]
    assert run.ops("done")[:2] == [("create_netns", mine), ("set_lo_up", f"{mine}/lo")]
    assert netns.identity(path) == ident and foreign not in cli.ledger().namespaces
    assert [t["name"] for t in cli.config()["tenants"]] == [mine]  # not served
    # dropping it from the manifest never deletes it: nsproxy does not own it
    run = cli.run(cli.manifest([{"name": mine}]))
    assert run.rc == 0 and netns.identity(path) == ident


def test_owned_name_recreated_by_someone_else_is_foreign(cli, unique, make_netns):
    a = unique("a")
    m = cli.manifest([{"name": a}])
    assert cli.run(m).rc == 0
    netns.delete_named(a)
    make_netns(a)  # same name, another namespace
    run = cli.run(m)
    assert run.rc == 1 and "is not the one nsproxy created" in run.data["conflicts"][0]["reason"]
    run = cli.run(cli.manifest([{"name": unique("b")}]))  # a left the manifest: still not deleted
    assert netns.exists(a) and not [t for op, t in run.ops() if op == "delete_netns"]


@pytest.fixture
def sleeper_in():
    """Start a real process inside a named netns; killed after the test."""
    procs: list[subprocess.Popen] = []

    def start(name: str) -> subprocess.Popen:
        proc = subprocess.Popen(["ip", "netns", "exec", name, "sleep", "600"])
        procs.append(proc)
        ident = netns.identity(netns.named_path(name))
        wait_until(lambda: proc.pid in netns.pids_in(ident), what="sleep to enter the namespace")
        return proc

    yield start
    for proc in procs:
        proc.kill()
        proc.wait()


def test_busy_netns_is_not_pruned_without_force(cli, unique, sleeper_in):
    a, busy = unique("a"), unique("busy")
    assert cli.run(cli.manifest([{"name": a}, {"name": busy}])).rc == 0
    sleeper = sleeper_in(busy)
    m = cli.manifest([{"name": a}])
    run = cli.run(m)
    assert run.rc == 1 and netns.exists(busy)
    assert any(f"pids {sleeper.pid}" in e and "--force" in e for e in run.data["errors"]), run.data["errors"]
    assert busy in cli.ledger().namespaces
    forced = cli.run(m, "--force")
    assert forced.rc == 0 and ("delete_netns", busy) in forced.ops("done") and not netns.exists(busy)
    assert sleeper.poll() is None  # --force removes the name; it does not kill anything


def test_empty_manifest_is_refused_unless_allow_empty(cli, unique):
    a = unique("a")
    assert cli.run(cli.manifest([{"name": a}])).rc == 0
    empty = cli.manifest([])
    run = cli.run(empty)
    assert run.rc == 1 and "--allow-empty" in run.data["errors"][0] and netns.exists(a)
    assert {a["status"] for a in run.data["actions"]} == {"skipped"}
    assert cli.run(empty, "--check").rc == 1
    run = cli.run(empty, "--allow-empty")
    assert run.rc == 0 and not netns.exists(a) and cli.ledger().namespaces == {}
    assert cli.config()["tenants"] == []
