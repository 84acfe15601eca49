"""The daemon's reports (/readyz, /tenants) from a DaemonState, and the namespace watcher's pieces
that need no namespace: inotify on a plain directory, and which tenants a check finds stale."""

from __future__ import annotations

import dataclasses
import json
import os

import pytest
from support import tenant, wait_until

from nsproxy_appliance.daemon import reports
from nsproxy_appliance.daemon.context import TenantContext
from nsproxy_appliance.daemon.nswatch import Inotify, NamespaceWatcher
from nsproxy_appliance.daemon.state import DaemonState, TenantSlot, TenantState
from nsproxy_appliance.identity import NetnsIdentity
from nsproxy_appliance.model import DaemonSettings, NetnsRef
from nsproxy_appliance.runtime_config import RuntimeConfig


def state_with(states: dict[str, TenantState], excluded: dict[str, str] | None = None) -> DaemonState:
    tenants = tuple(tenant(name) for name in states)
    config = RuntimeConfig("g1", "/run/x/admin.sock", DaemonSettings(), tenants, excluded or {})
    state = DaemonState(config, generation="g1", applied=True)
    for t in tenants:
        slot = TenantSlot(TenantContext(tenant=t), lambda: None)  # type: ignore[arg-type, return-value]  # never called
        slot.ctx.state = states[t.name]
        slot.ctx.last_error = (
            "cannot listen on 127.0.0.1:8080: Address already in use" if states[t.name] == "failed" else None
        )
        state.slots[t.name] = slot
    return state


def test_ready_only_when_every_configured_tenant_serves():
    ok = reports.readiness(state_with({"a": TenantState.SERVING, "b": TenantState.SERVING}))
    assert ok["ready"] is True and ok["not_serving"] == {} and ok["serving"] == 2
    bad = reports.readiness(state_with({"a": TenantState.SERVING, "b": TenantState.FAILED}))
    assert bad["ready"] is False and bad["applied"] is True and bad["failed"] == ["b"]
    assert bad["not_serving"] == {"b": "failed: cannot listen on 127.0.0.1:8080: Address already in use"}


def test_tenants_the_applier_left_out_count_as_not_serving():
    body = reports.readiness(state_with({"a": TenantState.SERVING}, excluded={"x": "conflict: x: not ours"}))
    assert body["ready"] is False and body["not_serving"] == {"x": "not served: conflict: x: not ours"}


def test_not_ready_before_the_config_is_applied_or_while_stopping():
    state = state_with({"a": TenantState.SERVING})
    state.applied = False
    assert reports.readiness(state)["ready"] is False
    state.applied, state.stopping = True, True
    assert reports.readiness(state)["ready"] is False and reports.readiness(state)["applied"] is False


def test_before_the_config_is_applied_the_answer_names_no_tenant():
    """A poller asking while 10,000 tenants start must not cost the daemon a 10,000-entry answer."""
    state = state_with({name: TenantState.STARTING for name in ("a", "b", "c")})
    state.applied = False
    body = reports.readiness(state)
    assert body == {"ready": False, "applied": False, "generation": "g1", "tenants": 3, "stopping": False}
    state.applied = True
    assert reports.readiness(state)["not_serving"] == {name: "starting" for name in ("a", "b", "c")}


def test_tenants_report_the_full_identity():
    state = state_with({"a": TenantState.SERVING})
    state.slots["a"].listeners.identity = NetnsIdentity(4, 4026532001, 77)
    [entry] = json.loads(reports.tenants_json(state))["tenants"]
    assert entry["netns"]["identity"] == {"dev": 4, "ino": 4026532001, "cookie": 77}
    assert entry["state"] == "serving"


def test_inotify_reports_names_created_and_removed(tmp_path):
    watch = Inotify(str(tmp_path))
    try:
        assert watch.watch()
        (tmp_path / "acme").write_text("")
        os.unlink(tmp_path / "acme")
        names = wait_until(watch.read, what="inotify events")
        assert set(names) == {"acme"}
        assert watch.read() == []
    finally:
        watch.close()


def test_inotify_on_a_missing_directory_waits_for_it(tmp_path):
    watch = Inotify(str(tmp_path / "netns"))
    try:
        assert watch.watch() is False and watch.watching is False
        (tmp_path / "netns").mkdir()
        assert watch.watch() is True
    finally:
        watch.close()


@pytest.mark.parametrize(
    "made_in, at_path, state, stale",
    [
        ("same", "same", TenantState.SERVING, False),  # nothing changed
        ("same", None, TenantState.SERVING, True),  # deleted: release and fail
        ("same", "other", TenantState.SERVING, True),  # replaced: rebind
        (None, None, TenantState.FAILED, False),  # still gone: nothing to do again
        (None, "same", TenantState.FAILED, True),  # back: rebind
        ("same", "same", TenantState.FAILED, False),  # bind failure in the right namespace: apply retries
    ],
)
def test_which_tenants_a_check_finds_stale(monkeypatch, made_in, at_path, state, stale):
    from nsproxy_appliance.daemon import nswatch

    ident = {"same": NetnsIdentity(4, 1), "other": NetnsIdentity(4, 2), None: None}
    daemon = state_with({"a": state})
    daemon.slots["a"].listeners.identity = ident[made_in]
    monkeypatch.setattr(nswatch.netns, "mounted_identity", lambda path, parent_devs=None: ident[at_path])
    watcher = NamespaceWatcher.__new__(NamespaceWatcher)
    watcher.state = daemon
    watcher._inotify = None  # not watching: every tenant is checked each time
    assert watcher.stale() == ({"a"} if stale else set())


def test_while_inotify_watches_named_namespaces_are_swept_in_slices_and_path_ones_every_time(monkeypatch):
    from nsproxy_appliance.daemon import nswatch

    daemon = state_with({f"n{i}": TenantState.SERVING for i in range(100)})  # named: netns /run/netns/<name>
    assert all(slot.ctx.tenant.netns.name for slot in daemon.slots.values())
    for i in range(3):  # and three `{path: ...}` tenants, which inotify does not see
        t = dataclasses.replace(tenant(f"p{i}"), netns=NetnsRef(path=f"/proc/{1000 + i}/ns/net"))
        daemon.slots[t.name] = TenantSlot(TenantContext(tenant=t), lambda: None)  # type: ignore[arg-type, return-value]  # never called
    checked: list[str] = []

    def mounted_identity(path: str, parent_devs: dict[str, int] | None = None) -> NetnsIdentity:
        checked.append(path)
        return NetnsIdentity(4, 1)

    monkeypatch.setattr(nswatch.netns, "mounted_identity", mounted_identity)
    for slot in daemon.slots.values():
        slot.listeners.identity = NetnsIdentity(4, 1)

    class Watching:
        watching = True

    watcher = NamespaceWatcher.__new__(NamespaceWatcher)
    watcher.state, watcher._inotify, watcher._sweep_at = daemon, Watching(), 0  # type: ignore[assignment]
    watcher.interval = 0.5
    ticks = int(nswatch.SWEEP_PERIOD / watcher.interval)
    for _ in range(ticks):
        before = len(checked)
        assert watcher.stale() == set()
        assert {f"/proc/{1000 + i}/ns/net" for i in range(3)} <= set(checked[before:])  # path ones every tick
    assert len(checked) <= 100 + ticks + 3 * ticks  # a slice per tick, not every tenant every tick
    named = {p.rsplit("/", 1)[1] for p in checked if p.startswith("/run/netns/")}
    assert named == {f"n{i}" for i in range(100)}  # and every named one within the period
    # a reload that adds a tenant (a new generation) puts it into the slices too
    t = tenant("late")
    daemon.slots["late"] = TenantSlot(TenantContext(tenant=t), lambda: None)  # type: ignore[arg-type, return-value]  # never called
    daemon.generation = "g2"
    checked.clear()
    for _ in range(ticks):
        watcher.stale()
    assert f"/run/netns/{t.netns.name}" in checked
