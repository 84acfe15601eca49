"""The apply's own verdict (apply.py Executor: the ledger saves between phases, verify): an apply
reports success only if the config on disk and the daemon carry the generation it made, and the
ledger on disk tells what phase 1 did before the daemon is asked to serve it. The kernel is
fake_kernel.FakeHost; the daemon is faked at daemon_control's functions (no process)."""

from __future__ import annotations

import errno
from pathlib import Path
from typing import Any

import pytest
from fake_kernel import FakeChannel, FakeHost
from support import tenant

from nsproxy_appliance import apply, daemon_control, ledger, runtime_config
from nsproxy_appliance.daemon_control import DaemonError, DaemonStatus
from nsproxy_appliance.kernel.observed import ServedTenant
from nsproxy_appliance.kernel.rtnl import RtnlError
from nsproxy_appliance.model import Manifest
from nsproxy_appliance.plan import PlanOptions
from nsproxy_appliance.runtime_config import Paths


class FakeDaemon:
    """The daemon as daemon_control reports it: serves `generation` once ensure_daemon asked it to
    (unless `stuck`); every tenant of the config then serves in the namespace the apply expects."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.running = False
        self.generation: str | None = None
        self.stuck = False  # takes no new config (a daemon that lies, or a config rewritten meanwhile)
        self.exits = False  # stops right after taking it
        self.error: str | None = None
        self.asked: list[str] = []
        self.on_ensure: list[Any] = []
        monkeypatch.setattr(daemon_control, "status", self.status)
        monkeypatch.setattr(daemon_control, "served_tenants", lambda paths, timeout=2.0: {})
        monkeypatch.setattr(daemon_control, "ensure_daemon", self.ensure_daemon)
        monkeypatch.setattr(daemon_control, "await_tenants", lambda paths, expected, timeout: {})

    def status(self, paths: Paths) -> DaemonStatus:
        return DaemonStatus(running=self.running, pid=42 if self.running else None, generation=self.generation)

    def ensure_daemon(self, paths: Paths, generation: str, *, timeout: float) -> str:
        for check in self.on_ensure:
            check(paths)
        self.asked.append(generation)
        if self.error is not None:
            raise DaemonError(self.error)
        action = "reloaded" if self.running else "launched"
        self.running = not self.exits
        if not self.stuck:
            self.generation = generation
        return action


@pytest.fixture
def paths(tmp_path: Path) -> Paths:
    return Paths(state_dir=str(tmp_path / "state"), runtime_dir=str(tmp_path / "run"))


@pytest.fixture
def daemon(monkeypatch: pytest.MonkeyPatch) -> FakeDaemon:
    return FakeDaemon(monkeypatch)


def _manifest(*names: str) -> Manifest:
    return Manifest(version=1, tenants=tuple(tenant(n) for n in names), source="fake.yaml")


def _apply(host: FakeHost, m: Manifest, paths: Paths) -> apply.RunResult:
    options = apply.RunOptions(plan=PlanOptions(paths=paths, allow_empty=True), daemon_timeout=5.0)
    return apply.run(m, options, kernel_factory=host.kernel)


def test_an_apply_the_daemon_took_verifies_clean(paths, daemon):
    result = _apply(FakeHost(), _manifest("acme"), paths)
    assert result.exit_code == 0, result.errors
    assert result.verify_errors == [] and daemon.asked == [result.config["generation"]]
    assert runtime_config.read(paths.config)["generation"] == daemon.generation


def test_verify_fails_when_the_daemon_serves_another_generation(paths, daemon):
    host = FakeHost()
    first = _apply(host, _manifest("acme"), paths)
    daemon.stuck = True  # the next config is not the one it serves
    second = _apply(host, _manifest("acme", "globex"), paths)
    old, new = first.config["generation"], second.config["generation"]
    assert old != new and daemon.generation == old
    assert second.verify_errors == [f"verify: the daemon serves generation {old}, not {new}"]
    assert second.exit_code != 0


def test_verify_fails_when_the_daemon_is_gone_after_the_handoff(paths, daemon):
    daemon.exits = True
    result = _apply(FakeHost(), _manifest("acme"), paths)
    assert result.verify_errors == [f"verify: the daemon is not running, not {result.config['generation']}"]
    assert result.exit_code != 0


def test_verify_fails_when_the_config_on_disk_is_not_the_new_one(paths, daemon):
    def rewritten(p: Paths) -> None:  # someone rewrites the file between the apply's write and its check
        Path(p.config).write_text('{"generation": "someone-else", "tenants": []}')

    daemon.on_ensure.append(rewritten)
    result = _apply(FakeHost(), _manifest("acme"), paths)
    assert f"verify: {paths.config} does not hold generation {result.config['generation']}" in result.verify_errors
    assert result.exit_code != 0


def test_a_failed_handoff_is_reported_once_and_not_verified_against_the_daemon(paths, daemon):
    daemon.error = "nsproxyd did not report generation g active in time"
    result = _apply(FakeHost(), _manifest("acme"), paths)
    assert result.failures == [f"daemon: {daemon.error}"]
    assert result.verify_errors == []  # the failure is the daemon's: verify adds nothing to it
    assert result.exit_code != 0


def test_the_ledger_on_disk_holds_phase_one_before_the_daemon_is_asked(paths, daemon):
    """A run killed while the daemon takes its config must leave a ledger that owns what phase 1
    made (settled, not pending): the next run then prunes or keeps it, never loses it."""
    seen: list[ledger.Ledger] = []
    daemon.on_ensure.append(lambda p: seen.append(ledger.load(p.ledger)))
    _apply(FakeHost(), _manifest("acme", "globex"), paths)
    (on_disk,) = seen
    assert set(on_disk.namespaces) == {"acme", "globex"} and on_disk.pending == []


def test_the_ledger_on_disk_holds_the_prune_after_the_run(paths, daemon):
    host = FakeHost()
    _apply(host, _manifest("acme", "globex"), paths)
    result = _apply(host, _manifest("acme"), paths)
    assert result.exit_code == 0, result.errors
    on_disk = ledger.load(paths.ledger)
    assert set(on_disk.namespaces) == {"acme"} and on_disk.pending == []
    assert {n.split("/")[-1] for n in host.namespaces} >= {"acme"} and not any(
        n.endswith("/globex") for n in host.namespaces
    )


def test_nothing_is_pruned_when_the_daemon_did_not_take_the_config(paths, daemon):
    host = FakeHost()
    _apply(host, _manifest("acme", "globex"), paths)
    daemon.error = "rejected"
    result = _apply(host, _manifest("acme"), paths)
    assert any(n.endswith("/globex") for n in host.namespaces)  # still served by the old config
    assert "globex" in ledger.load(paths.ledger).namespaces
    skipped = [result.error(a) for a in result.actions if a.tenant == "globex"]
    assert skipped and all(e == "not pruned: the daemon did not take the new config" for e in skipped)
    assert result.verify_errors == []  # the prune that waited is reported once, as skipped


def test_verify_reports_what_the_kernel_said_it_did_but_did_not(paths, daemon, monkeypatch):
    def set_up_that_does_nothing(self: FakeChannel, ifindex: int, what: str) -> None:
        self.host.change(f"set_up {self.label} {ifindex}")

    monkeypatch.setattr(FakeChannel, "set_up", set_up_that_does_nothing)
    result = _apply(FakeHost(), _manifest("acme", "globex"), paths)
    assert sorted(e.split(": left to do after apply: ")[0] for e in result.verify_errors) == [
        "verify: acme",
        "verify: globex",
    ]
    assert all(e.split(": left to do after apply: ")[1].startswith("set_lo_up ") for e in result.verify_errors)
    assert result.exit_code != 0


def test_a_tenant_whose_action_failed_is_reported_once_not_verified_again(paths, daemon):
    host = FakeHost()
    host.failures["set_up"] = RtnlError(errno.EPERM, "set_up: Operation not permitted")
    result = _apply(host, _manifest("acme"), paths)
    assert any(f.startswith("acme: set_lo_up ") for f in result.failures)
    assert result.verify_errors == []


def test_a_served_tenant_report_is_not_needed_for_a_clean_verify(paths, daemon, monkeypatch):
    monkeypatch.setattr(daemon_control, "served_tenants", lambda paths, timeout=2.0: {"acme": ServedTenant("serving")})
    assert _apply(FakeHost(), _manifest("acme"), paths).verify_errors == []
