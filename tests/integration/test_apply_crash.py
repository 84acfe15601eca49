"""No crash leaves debris: nsproxy-apply killed with SIGKILL at random points of 200-tenant applies,
or stopped by a full state disk, is followed by an apply that converges exactly — no conflict with
nsproxy's own objects, no orphan, nothing foreign touched.

CI runs a few rounds; the soak runs 100 and prints its figures:

    NSPROXY_CRASH_ROUNDS=100 .venv/bin/pytest -q -s tests/integration/test_apply_crash.py -k killed
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from apply_harness import ApplyCli, lo_is_up, set_lo_down
from support import program

from nsproxy_appliance import ledger, netns
from nsproxy_appliance.model import NetnsRef

pytestmark = pytest.mark.root

ROUNDS = int(os.environ.get("NSPROXY_CRASH_ROUNDS", "3"))
TENANTS = 200


def named_on_host(prefix: str) -> set[str]:
    """Named namespaces with this test's prefix that are live (mounted) now."""
    try:
        entries = os.listdir(NetnsRef.named("").path)
    except FileNotFoundError:
        return set()
    return {e for e in entries if e.startswith(prefix) and netns.exists(e)}


class Fleet:
    """Two 200-tenant manifests sharing half their tenants, and foreign namespaces next to them."""

    def __init__(self, cli: ApplyCli, prefix: str) -> None:
        self.cli = cli
        self.prefix = prefix
        names = [f"{prefix}{i}" for i in range(TENANTS * 3 // 2)]
        self.a, self.b = names[:TENANTS], names[TENANTS // 2 :]
        self.manifests = {"a": self._manifest("a", self.a), "b": self._manifest("b", self.b)}
        self.foreign = [f"{prefix}f{i}" for i in range(2)]  # never in a manifest: nsproxy must not touch them
        for name in self.foreign:
            netns.create_named(name)
            cli.cleanup.append(name)
        set_lo_down(self.foreign[0])  # a state to check it stays as it was
        self.foreign_ids = {name: netns.identity(netns.named_path(name)) for name in self.foreign}

    def _manifest(self, label: str, names: list[str]) -> Path:
        return self.cli.manifest([{"name": n} for n in names], name=f"fleet-{label}.yaml")

    def names(self, which: str) -> list[str]:
        return self.a if which == "a" else self.b

    def argv(self, which: str) -> list[str]:
        paths = self.cli.paths
        return [
            program("nsproxy-apply"), str(self.manifests[which]), "--no-daemon", "--output", "json",
            "--state-dir", paths.state_dir, "--runtime-dir", paths.runtime_dir, "--lock-timeout", "60",
        ]  # fmt: skip

    def assert_converged(self, which: str) -> None:
        """One apply of `which`, then exactly its namespaces exist and are owned; nothing else changed."""
        run = self.cli.run(self.manifests[which])
        assert run.rc == 0, run.data["errors"][:5]
        assert run.data["conflicts"] == [], run.data["conflicts"][:5]  # its own objects are never foreign
        wanted = set(self.names(which))
        owned = self.cli.ledger()
        assert set(owned.namespaces) == wanted and owned.pending == []
        assert named_on_host(self.prefix) == wanted | set(self.foreign)  # no orphans, nothing missing
        for name in wanted:
            assert owned.owns_netns(name, netns.identity(netns.named_path(name)))
        for name, ident in self.foreign_ids.items():
            assert netns.identity(netns.named_path(name)) == ident
        assert not lo_is_up(self.foreign[0])  # untouched
        paths = self.cli.paths
        leftovers = [p.name for d in (paths.state_dir, paths.runtime_dir) for p in Path(d).glob(".*.tmp")]
        assert leftovers == []  # no half-written ledger or config of a killed run
        assert self.cli.run(self.manifests[which], "--check").rc == 0


@pytest.fixture
def fleet(cli: ApplyCli, unique: Callable[[str], str]) -> Iterator[Fleet]:
    prefix = unique("k")[:10]  # netns names stay short: t<run><rand>-k<n>...
    fleet = Fleet(cli, prefix)
    yield fleet
    for name in named_on_host(prefix):
        netns.delete_named(name)


def test_killed_at_random_points_of_200_tenant_applies_the_next_apply_converges(fleet: Fleet):
    rng = random.Random(os.environ.get("NSPROXY_CRASH_SEED", str(time.time_ns())))
    start = time.monotonic()
    subprocess.run(fleet.argv("a"), check=True, capture_output=True)
    full = time.monotonic() - start  # a whole cold apply, process start included
    fleet.assert_converged("a")
    survived = killed = recovered = 0
    which = "a"
    for _ in range(ROUNDS):
        which = "b" if which == "a" else "a"  # each switch creates 100 namespaces and prunes 100
        proc = subprocess.Popen(fleet.argv(which), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        time.sleep(rng.uniform(full * 0.25, full * 1.1))  # a random instant of its run (start-up is ~1/4 of it)
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            killed += 1
        proc.communicate()
        run = fleet.cli.run(fleet.manifests[which])
        recovered += len(run.data["recovered"])
        fleet.assert_converged(which)
        survived += 1
    print(
        f"\n{survived} of {ROUNDS} rounds converged ({killed} killed mid-run, {recovered} intents resolved by identity;"
        f" a full 200-tenant apply took {full:.2f} s); orphans 0, conflicts with own objects 0"
    )


# -- a full state disk ----------------------------------------------------------------------------


@pytest.fixture
def tiny_state_dir(cli: ApplyCli) -> Iterator[Callable[[str], None]]:
    """The state dir on its own small tmpfs; the returned function remounts it with another size."""
    state = cli.paths.state_dir
    os.makedirs(state, exist_ok=True)

    def size(value: str) -> None:
        opts = f"size={value}" if not os.path.ismount(state) else f"remount,size={value}"
        subprocess.run(["mount", "-t", "tmpfs", "-o", opts, "tmpfs", state], check=True)

    yield size
    if os.path.ismount(state):
        subprocess.run(["umount", state], check=True)


@pytest.mark.parametrize(
    "tenants, size, fails_at",
    [(200, "8k", "the first intent"), (200, "32k", "a later batch's intents"), (100, "24k", "the last save")],
)
def test_full_state_disk_stops_the_apply_cleanly_and_the_next_one_converges(
    cli, fleet, tiny_state_dir, tenants, size, fails_at
):
    """ENOSPC at any ledger write: every error names the file and what failed, every namespace made
    is on disk (owned, or as a pending intent), and once there is room one apply converges."""
    which = "a" if tenants == TENANTS else "half"
    fleet.manifests["half"] = fleet.cli.manifest([{"name": n} for n in fleet.a[:tenants]], name="fleet-half.yaml")
    tiny_state_dir(size)
    run = cli.run(fleet.manifests[which])
    assert run.rc == 1
    ledger_path = cli.paths.ledger
    full = [e for e in run.data["errors"] if "No space left on device" in e]
    assert full and all(ledger_path in e or cli.paths.state_dir in e for e in full), full[:3]
    assert all(": write: " in e or ": create a temporary file: " in e or ": fsync" in e for e in full), full[:3]
    created = named_on_host(fleet.prefix) - set(fleet.foreign)
    on_disk = ledger.load(ledger_path)
    recorded = set(on_disk.namespaces) | {NetnsRef.name_at(i.netns_path) for i in on_disk.pending}
    assert created <= recorded  # every namespace it made is on disk as owned or as a pending intent
    if fails_at == "the first intent":
        assert created == set()
    elif fails_at == "the last save":
        assert created == set(fleet.a[:tenants]) and on_disk.pending  # all made, confirmations not saved
    else:
        assert 0 < len(created) < tenants
    tiny_state_dir("4m")
    if which == "half":
        fleet.a = fleet.a[:tenants]
        fleet.manifests["a"] = fleet.manifests["half"]
    fleet.assert_converged("a")
    print(f"\nstate tmpfs {size}, {tenants} tenants: full at {fails_at}; {len(created)} namespaces made, all recovered")
