"""What the Executor (apply.py) reports and records when things go wrong: the exact error of a
failed or skipped action, the reason a failed tenant is left out of the served config, the intents
a failure keeps or settles, a ledger that cannot be saved, --check, and which verify findings are
told. The kernel is fake_kernel.FakeHost; the daemon is test_apply_verify's FakeDaemon."""

from __future__ import annotations

import errno
import os
from pathlib import Path
from typing import Any

import pytest
from fake_kernel import FakeChannel, FakeHost
from support import tenant
from test_apply_verify import FakeDaemon

from nsproxy_appliance import apply, ledger
from nsproxy_appliance.actions import Status
from nsproxy_appliance.actions.daemon_config import DaemonAction
from nsproxy_appliance.errors import StateFileError
from nsproxy_appliance.kernel.rtnl import RtnlError
from nsproxy_appliance.ledger import Intent, IntentOp
from nsproxy_appliance.model import Link, Manifest, NetnsRef
from nsproxy_appliance.plan import PlanOptions
from nsproxy_appliance.runtime_config import Paths

VIP = Link(name="nsp0", addresses=("169.254.169.254/32",))


@pytest.fixture
def paths(tmp_path: Path) -> Paths:
    return Paths(state_dir=str(tmp_path / "state"), runtime_dir=str(tmp_path / "run"))


@pytest.fixture
def daemon(monkeypatch: pytest.MonkeyPatch) -> FakeDaemon:
    return FakeDaemon(monkeypatch)


def manifest(*names: str, links: tuple[Link, ...] = (VIP,), port: int = 9000) -> Manifest:
    tenants = tuple(tenant(n, links=links, upstream_url=f"http://127.0.0.1:{port}") for n in names)
    return Manifest(version=1, tenants=tenants, source="fake.yaml")


def run(host: FakeHost, m: Manifest, paths: Paths, *, check: bool = False, no_daemon: bool = True) -> apply.RunResult:
    plan = PlanOptions(paths=paths, no_daemon=no_daemon, allow_empty=True)
    return apply.run(m, apply.RunOptions(plan=plan, check=check, daemon_timeout=5.0), kernel_factory=host.kernel)


def outcomes(result: apply.RunResult, name: str) -> list[tuple[str, str, str | None]]:
    return [(a.op, result.status(a), result.error(a)) for a in result.actions if a.tenant == name]


def path(name: str) -> str:
    return NetnsRef.named(name).path


# -- failures and what they say ---------------------------------------------------------------
def test_a_kernel_error_is_told_as_the_kernel_said_it_and_skips_the_rest_of_the_tenant(paths):
    host = FakeHost()
    error = RtnlError(errno.EEXIST, "add link nsp0: File exists (EEXIST)")
    host.failures["add_link acme"] = error
    result = run(host, manifest("acme", "globex"), paths)
    skipped = "skipped: an earlier action of this tenant failed"
    assert outcomes(result, "acme") == [
        ("create_netns", Status.DONE, None),
        ("set_lo_up", Status.DONE, None),
        ("add_link", Status.FAILED, str(error)),
        ("set_link_up", Status.SKIPPED, skipped),
        ("add_address", Status.SKIPPED, skipped),
    ]
    (add_link,) = [a for a in result.actions if a.tenant == "acme" and a.op == "add_link"]
    assert str(error) == "[Errno 17] add link nsp0: File exists (EEXIST)"
    assert result.failures == [f"acme: add_link {add_link.target}: {error}"]
    # the failed tenant is left out of the served config, with the failed action as the reason
    assert result.config["manifest"]["excluded"] == {"acme": f"add_link {add_link.target} failed: {error}"}
    # the link may have been half made: its intent stays for the next run to resolve
    assert [i.op for i in ledger.load(paths.ledger).pending] == [IntentOp.ADD_LINK]


def test_any_other_error_is_told_with_its_type(paths):
    host = FakeHost()
    host.failures["add_link acme"] = ValueError("no such kind")
    result = run(host, manifest("acme"), paths)
    assert ("add_link", Status.FAILED, "ValueError: no such kind") in outcomes(result, "acme")


def test_a_failure_without_a_message_gets_a_general_reason(paths):
    host = FakeHost()
    host.failures["add_link acme"] = RtnlError()
    result = run(host, manifest("acme", "globex"), paths)
    assert result.config["manifest"]["excluded"] == {"acme": "an action failed (see the apply's errors)"}


def test_an_intent_of_an_action_skipped_after_a_failure_is_settled(paths):
    host = FakeHost()
    host.failures["set_up acme 1"] = RtnlError(errno.EPERM, "set lo up: Operation not permitted (EPERM)")
    result = run(host, manifest("acme"), paths)
    assert [(op, status) for op, status, _ in outcomes(result, "acme")][:3] == [
        ("create_netns", Status.DONE),
        ("set_lo_up", Status.FAILED),
        ("add_link", Status.SKIPPED),
    ]
    assert ledger.load(paths.ledger).pending == []  # nothing was asked of the kernel for it


def test_a_failing_prepare_skips_only_its_tenant_and_the_others_intents_are_recorded(paths):
    host = FakeHost()
    host.failures["unshare acme"] = OSError(errno.ENOMEM, "Cannot allocate memory")
    pending: dict[str, list[str]] = {}
    host.on_change = lambda what: pending.setdefault(what, [i.op for i in ledger.load(paths.ledger).pending])
    result = run(host, manifest("acme", "globex"), paths)
    assert outcomes(result, "acme")[0] == ("create_netns", Status.FAILED, "[Errno 12] Cannot allocate memory")
    assert pending["bind globex"] == [IntentOp.CREATE_NETNS, IntentOp.ADD_LINK]  # globex's, none of acme's
    assert all(status == Status.DONE for _, status, _ in outcomes(result, "globex"))


# -- a ledger that cannot be saved --------------------------------------------------------------
def failing_saves(monkeypatch: pytest.MonkeyPatch, failures: int) -> list[str]:
    """ledger.save fails `failures` times (a full disk), then works again."""
    real = ledger.save
    calls: list[str] = []

    def save(led: ledger.Ledger, where: str) -> None:
        calls.append(where)
        if len(calls) <= failures:
            raise StateFileError(where, "write", OSError(errno.ENOSPC, "No space left on device"))
        real(led, where)

    monkeypatch.setattr(ledger, "save", save)
    return calls


def test_nothing_is_changed_that_the_ledger_cannot_record_first(paths, monkeypatch):
    failing_saves(monkeypatch, 1)
    host = FakeHost()
    result = run(host, manifest("acme"), paths)
    reason = f"not done, as the ledger cannot record it first: {paths.ledger}: write: No space left on device"
    assert outcomes(result, "acme")[0] == ("create_netns", Status.FAILED, reason)
    # made unnamed to learn its identity, then dropped: nothing bound, nothing left
    assert host.namespaces == {} and host.changes == ["add_link throwaway nsproxy-probe", "unshare acme"]
    assert ledger.load(paths.ledger).pending == []  # the intents were never acted on: settled


def test_a_ledger_that_cannot_be_saved_at_the_end_is_an_error_told_once(paths, monkeypatch):
    host = FakeHost()
    run(host, manifest("acme", "old"), paths)
    del host.namespaces[path("old")]  # gone by itself: its ledger entry is stale and forgotten
    calls = failing_saves(monkeypatch, 10)
    result = run(host, manifest("acme"), paths)
    assert result.failures == [f"cannot save the ledger: {paths.ledger}: write: No space left on device"]
    assert len(calls) == 1


# -- --check -------------------------------------------------------------------------------------
def test_check_changes_nothing_not_even_the_state_directory(paths):
    host = FakeHost()
    result = run(host, manifest("acme"), paths, check=True)
    assert result.check and result.daemon_action is DaemonAction.SKIPPED
    assert [a.op for a in result.plan.actions][:1] == ["create_netns"]
    assert host.changes == ["add_link throwaway nsproxy-probe"]
    assert not os.path.exists(paths.state_dir)


def test_check_tells_whether_the_daemon_would_get_a_new_config(paths, daemon):
    host = FakeHost()
    assert run(host, manifest("acme"), paths, check=True, no_daemon=False).daemon_action is DaemonAction.PENDING
    run(host, manifest("acme"), paths, no_daemon=False)
    assert run(host, manifest("acme"), paths, check=True, no_daemon=False).daemon_action is DaemonAction.UNCHANGED


def test_check_reports_what_an_interrupted_run_left_and_leaves_the_ledger_alone(paths):
    host = FakeHost()
    run(host, manifest("acme"), paths)
    owned = ledger.load(paths.ledger)
    ns = host.namespaces[path("acme")]
    owned.intend(
        Intent(IntentOp.DELETE_NETNS, "acme", path("acme"), ns.identity.dev, ns.identity.ino, ns.identity.cookie)
    )
    ledger.save(owned, paths.ledger)
    del host.namespaces[path("acme")]  # the interrupted run did delete it
    before = Path(paths.ledger).read_text()
    stale = Path(paths.ledger).parent / f".{Path(paths.ledger).name}.x.tmp"
    stale.write_text("half written")
    result = run(host, manifest("acme"), paths, check=True)
    assert result.recovered == ["forgot network namespace acme: deleted by an interrupted run"]
    assert Path(paths.ledger).read_text() == before and stale.exists()
    applied = run(host, manifest("acme"), paths)
    assert not stale.exists() and ledger.load(paths.ledger).pending == [] and applied.exit_code == 0
    assert applied.recovered == result.recovered and path("acme") in host.namespaces  # made again


def test_the_daemon_gets_the_apply_s_timeout(paths, daemon, monkeypatch):
    asked: list[float] = []
    real = daemon.ensure_daemon

    def ensure(p: Paths, generation: str, *, timeout: float) -> str:
        asked.append(timeout)
        return real(p, generation, timeout=timeout)

    from nsproxy_appliance import daemon_control

    monkeypatch.setattr(daemon_control, "ensure_daemon", ensure)
    run(FakeHost(), manifest("acme"), paths, no_daemon=False)
    assert asked == [5.0]


# -- the daemon's hand-off and verify -------------------------------------------------------------
def test_a_daemon_that_rejects_the_config_fails_the_planned_update_with_its_reason(paths, daemon):
    daemon.error = "nsproxyd rejected the reload: bad"
    result = run(FakeHost(), manifest("acme"), paths, no_daemon=False)
    assert outcomes(result, "") == [("update_daemon_config", Status.FAILED, f"daemon: {daemon.error}")]


def test_a_config_changed_by_a_failure_alone_is_an_update_of_its_own(paths, daemon):
    host = FakeHost()
    run(host, manifest("acme", "globex"), paths, no_daemon=False)
    del host.namespaces[path("acme")].links["nsp0"]  # drift: recreated, but that fails now
    host.failures["add_link acme"] = RtnlError(errno.EPERM, "add link nsp0: Operation not permitted (EPERM)")
    result = run(host, manifest("acme", "globex"), paths, no_daemon=False)
    updates = [(a.op, a.detail, result.status(a)) for a in result.actions if a.op == "update_daemon_config"]
    assert updates == [("update_daemon_config", f"generation {result.config['generation']}", Status.DONE)]
    assert [t["name"] for t in result.config["tenants"]] == ["globex"]


def test_a_config_only_change_is_verified_against_the_daemon(paths, daemon):
    host = FakeHost()
    run(host, manifest("acme"), paths, no_daemon=False)
    daemon.stuck = True
    result = run(host, manifest("acme", port=9001), paths, no_daemon=False)
    assert result.done() and all(a.op == "update_daemon_config" for a in result.done())
    assert result.verify_errors == [
        f"verify: the daemon serves generation {daemon.generation}, not {result.config['generation']}"
    ]


def set_up_fails_for_acme_and_does_nothing_elsewhere(monkeypatch: pytest.MonkeyPatch) -> None:
    def set_up(self: FakeChannel, ifindex: int, what: str) -> None:
        if self.label.startswith("acme"):
            raise RtnlError(errno.EPERM, "set up: Operation not permitted (EPERM)")
        self.host.change(f"set_up {self.label} {ifindex}")

    monkeypatch.setattr(FakeChannel, "set_up", set_up)


def test_verify_looks_past_a_failed_tenant_at_the_next_one(paths, daemon, monkeypatch):
    set_up_fails_for_acme_and_does_nothing_elsewhere(monkeypatch)
    result = run(FakeHost(), manifest("acme", "globex", links=()), paths, no_daemon=False)
    assert [e.split(": left to do after apply: ")[0] for e in result.verify_errors] == ["verify: globex"]


def test_what_is_left_to_do_is_told_even_when_the_daemon_failed(paths, daemon, monkeypatch):
    set_up_fails_for_acme_and_does_nothing_elsewhere(monkeypatch)
    daemon.error = "gone"
    result = run(FakeHost(), manifest("globex", links=()), paths, no_daemon=False)
    assert [e.split(": left to do after apply: ")[0] for e in result.verify_errors] == ["verify: globex"]


TWO = Link(name="nsp0", addresses=("169.254.169.254/32", "fd00:a9fe::254/128"))


def ignore_address_removals(monkeypatch: pytest.MonkeyPatch) -> None:
    def remove_address(self: FakeChannel, ifindex: int, cidr: str, what: str) -> None:
        self.host.change(f"remove_address {self.label} {cidr}")

    monkeypatch.setattr(FakeChannel, "remove_address", remove_address)


def test_a_prune_the_kernel_did_not_do_is_told(paths, daemon, monkeypatch):
    host = FakeHost()
    run(host, manifest("acme", links=(TWO,)), paths, no_daemon=False)
    ignore_address_removals(monkeypatch)
    result = run(host, manifest("acme"), paths, no_daemon=False)
    assert [a.op for a in result.done() if a.tenant == "acme"] == ["remove_address"]
    assert [e.split(": left to do after apply: ")[1].split()[0] for e in result.verify_errors] == ["remove_address"]


def test_a_prune_that_waited_for_a_failed_daemon_is_not_told_again(paths, daemon, monkeypatch):
    host = FakeHost()
    run(host, manifest("acme", links=(TWO,)), paths, no_daemon=False)
    ignore_address_removals(monkeypatch)
    host.namespaces[path("acme")].lo_up = False  # drift: touched again by this run
    daemon.error = "gone"
    result = run(host, manifest("acme", port=9001), paths, no_daemon=False)  # and a new config
    assert [(a.op, result.status(a)) for a in result.actions if a.tenant == "acme"] == [
        ("set_lo_up", Status.DONE),
        ("remove_address", Status.SKIPPED),
    ]
    assert result.verify_errors == []


# -- new links' indexes ------------------------------------------------------------------------
def test_a_new_link_index_is_never_one_in_use_or_already_given_out(paths, monkeypatch):
    drawn: list[tuple[Any, ...]] = []
    picks = iter([1, 1, 1, 2, 1 << 24])  # 1 is in use in the namespace; 2 is given out first
    reads: list[str] = []

    def randrange(*args: Any) -> int:
        drawn.append(args)
        return next(picks)

    class Channel:
        def ifindexes(self) -> set[int]:
            return {1}

    class Kernel:
        def channel(self, netns_path: str) -> Channel:
            reads.append(netns_path)
            return Channel()

    monkeypatch.setattr(apply._RANDOM, "randrange", randrange)
    plan = run(FakeHost(), manifest("acme", links=()), paths, check=True).plan
    executor = apply.Executor(plan, ledger.Ledger(), Kernel(), None, plan.options)  # type: ignore[arg-type]
    assert executor.next_ifindex(path("acme")) == 2
    assert executor.next_ifindex(path("acme")) == 1 << 24
    assert drawn == [apply.IFINDEX_RANGE] * 5 and reads == [path("acme")]  # the indexes in use: read once


def test_a_daemon_update_planned_with_the_config_already_on_disk_is_still_asked_for(paths, daemon):
    host = FakeHost()
    daemon.stuck = True  # takes no new config: the file is written, the daemon serves nothing
    first = run(host, manifest("acme"), paths, no_daemon=False)
    daemon.stuck = False
    second = run(host, manifest("acme"), paths, no_daemon=False)
    assert [a.op for a in second.plan.actions] == ["update_daemon_config"]
    assert daemon.asked == [first.config["generation"]] * 2 and second.verify_errors == []
    run(host, manifest("acme"), paths, no_daemon=False)
    assert len(daemon.asked) == 2  # in sync: the daemon is not asked again


def test_a_retry_that_serves_nothing_new_fails_the_update_naming_the_tenants(paths, daemon, monkeypatch):
    from nsproxy_appliance import daemon_control
    from nsproxy_appliance.daemon_control import DaemonStatus

    host = FakeHost()
    run(host, manifest("acme", "globex"), paths, no_daemon=False)
    failed = DaemonStatus(running=True, pid=42, generation=daemon.generation, failed=("acme", "globex"))
    monkeypatch.setattr(daemon_control, "status", lambda p: failed)
    monkeypatch.setattr(daemon_control, "await_tenants", lambda p, expected, timeout: {"globex": "x", "acme": "y"})
    result = run(host, manifest("acme", "globex"), paths, no_daemon=False)
    assert outcomes(result, "") == [("update_daemon_config", Status.FAILED, "retried, still not served: acme, globex")]
