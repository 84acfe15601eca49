"""Observe, plan and (unless checking) execute the plan in phases, under the apply lock.

Phase 1 creates and converges namespaces, lo, links and addresses; phase 2 writes the runtime
config and hands it to the daemon (which drains removed tenants); phase 3 prunes. An action that
fails skips the rest of its tenant only; the ledger is saved after every phase and on the way
out, so it always tells the truth; the next run converges whatever is left.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any

from . import daemon_control, ledger, runtime_config
from .daemon_control import DaemonError
from .exitcodes import EXIT_ERROR, EXIT_OK, EXIT_PENDING
from .kernel.observed import DaemonView, NetnsState, Observed
from .kernel.rtnl import Channel
from .kernel.session import Kernel
from .ledger import Ledger
from .model import Manifest
from .netns import named_path
from .plan import DAEMON_TENANT, Action, Plan, PlanOptions, add_diff, make_plan

LOOPBACK_IFINDEX = 1  # the kernel gives lo ifindex 1 in every namespace (include/net/flow.h)


@dataclass(frozen=True)
class RunOptions:
    plan: PlanOptions
    check: bool = False
    lock_timeout: float = 30.0
    daemon_timeout: float = 30.0  # how long the daemon may take to serve the new config
    diff: bool = False  # compute before/after per tenant


@dataclass
class RunResult:
    plan: Plan
    check: bool
    daemon_action: str = "unchanged"  # launched|reloaded|unchanged|skipped|pending|failed
    failures: list[str] = field(default_factory=list)  # actions that failed, daemon hand-off
    verify_errors: list[str] = field(default_factory=list)
    config_written: bool = False

    @property
    def changed(self) -> bool:
        if self.check:
            return bool(self.plan.actions)
        return (
            any(a.status == "done" for a in self.plan.actions)
            or self.config_written
            or self.daemon_action in ("launched", "reloaded")
        )

    @property
    def errors(self) -> list[str]:
        return [*self.plan.fatal, *map(str, self.plan.errors), *self.failures, *self.verify_errors]

    @property
    def in_sync(self) -> bool:
        if self.plan.has_problems or self.failures or self.verify_errors:
            return False
        return not self.plan.actions if self.check else True

    @property
    def exit_code(self) -> int:
        """0 success/in sync, 1 error, 2 changes pending (check only: terraform -detailed-exitcode)."""
        if self.plan.has_problems or self.failures or self.verify_errors:
            return EXIT_ERROR
        if self.check and self.plan.actions:
            return EXIT_PENDING
        return EXIT_OK


def run(manifest: Manifest, options: RunOptions) -> RunResult:
    paths = options.plan.paths
    with ledger.locked(paths.lock, options.lock_timeout, create=not options.check):
        owned = ledger.load(paths.ledger)
        with Kernel() as kernel:
            observed = observe(manifest, owned, kernel, options.plan)
            plan = make_plan(manifest, observed, owned, options.plan)
            if options.diff:
                add_diff(plan, observed)
            if options.check:
                result = RunResult(plan, check=True)
                result.daemon_action = _check_daemon_action(plan, options.plan)
                return result
            return Executor(plan, owned, kernel, observed, options.plan, options.daemon_timeout).run()


def _check_daemon_action(plan: Plan, options: PlanOptions) -> str:
    if options.no_daemon:
        return "skipped"
    return "pending" if any(a.op == "update_daemon_config" for a in plan.actions) else "unchanged"


# -- observing ---------------------------------------------------------------------------------------


def observe(manifest: Manifest, owned: Ledger, kernel: Kernel, options: PlanOptions) -> Observed:
    """Everything the plan needs: only namespaces in the manifest or the ledger are looked at."""
    namespaces: dict[str, NetnsState] = {}
    named = [t.netns.name for t in manifest.tenants if t.netns.name] + sorted(owned.namespaces)
    for name in named:
        path = named_path(name)
        if path not in namespaces:
            namespaces[path] = kernel.observe_named(name)
    external = [t.netns.path for t in manifest.tenants if t.netns.external] + [p for p, _ in owned.links]
    for path in external:
        if path not in namespaces:
            namespaces[path] = kernel.observe_path(path)

    wanted = {t.netns.name for t in manifest.tenants if t.netns.name}
    candidates = {
        named_path(name): entry.identity
        for name, entry in owned.namespaces.items()
        if name not in wanted and namespaces[named_path(name)].is_(entry.identity, entry.cookie)
    }
    pids = kernel.pids_by_identity(candidates.values())
    for path, ident in candidates.items():
        namespaces[path] = dataclasses.replace(namespaces[path], pids=tuple(pids.get(ident, ())))

    dummy_supported = kernel.dummy_supported() if _dummy_link_missing(manifest, namespaces) else None
    return Observed(
        namespaces=namespaces,
        dummy_supported=dummy_supported,
        config=read_config(options.paths.config),
        daemon=daemon_view(options),
    )


def _dummy_link_missing(manifest: Manifest, namespaces: dict[str, NetnsState]) -> bool:
    for t in manifest.tenants:
        ns = namespaces.get(t.netns.path)
        for link in t.links:
            if link.kind == "dummy" and (ns is None or link.name not in ns.links):
                return True
    return False


def read_config(path: str) -> dict[str, Any] | None:
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def daemon_view(options: PlanOptions) -> DaemonView:
    if options.no_daemon:
        return DaemonView()
    status = daemon_control.status(options.paths)
    return DaemonView(running=status.running, generation=status.generation, failed=status.failed)


# -- executing -------------------------------------------------------------------------------------


class Executor:
    def __init__(
        self,
        plan: Plan,
        owned: Ledger,
        kernel: Kernel,
        observed: Observed,
        options: PlanOptions,
        daemon_timeout: float = 30.0,
    ):
        self.plan = plan
        self.daemon_timeout = daemon_timeout
        self.ledger = owned
        self.kernel = kernel
        self.observed = observed
        self.options = options
        self.result = RunResult(plan, check=False)
        self.failed_tenants: set[str] = set()
        self.new_ifindex: dict[tuple[str, str], int] = {}
        self._saved = owned.revision  # what is on disk: save only when it changed

    def run(self) -> RunResult:
        plan, result = self.plan, self.result
        if plan.fatal:
            for action in plan.actions:
                action.status = "skipped"
            result.daemon_action = "skipped"
            return result
        try:
            for action in self._phase(1):
                self._run(action)
            self._save()
            daemon_ok = self._handoff()
            for action in self._phase(3):
                if daemon_ok:
                    self._run(action)
                else:
                    action.status = "skipped"
                    action.error = "not pruned: the daemon did not take the new config"
            self._forget_stale()
        finally:
            self._save()
        if any(a.status == "done" for a in plan.actions) or result.config_written:
            self._verify()
        return result

    def _save(self) -> None:
        if self.ledger.revision != self._saved:
            ledger.save(self.ledger, self.options.paths.ledger)
            self._saved = self.ledger.revision

    def _phase(self, phase: int) -> list[Action]:
        return [a for a in self.plan.actions if a.phase == phase]

    def _run(self, action: Action) -> None:
        if action.tenant in self.failed_tenants:
            action.status = "skipped"
            action.error = "skipped: an earlier action of this tenant failed"
            return
        try:
            self._do(action)
        except Exception as e:  # isolate the failure to this tenant, whatever it is
            action.status = "failed"
            action.error = str(e) if isinstance(e, OSError) else f"{type(e).__name__}: {e}"
            self.failed_tenants.add(action.tenant)
            self.result.failures.append(f"{action.tenant}: {action.op} {action.target}: {action.error}")
        else:
            action.status = "done"

    def _channel(self, action: Action) -> Channel:
        return self.kernel.channel(action.netns_path, action.netns_name or action.netns_path)

    def _ifindex(self, action: Action) -> int:
        if action.ifindex is not None:
            return action.ifindex
        return self.new_ifindex[(action.netns_path, action.link or "")]

    def _do(self, a: Action) -> None:
        what = f"link {a.link}"
        if a.op == "create_netns":
            name = a.netns_name or ""
            identity = self.kernel.create_netns(name)
            self.ledger.own_netns(name, identity, a.tenant)  # recorded at once: the ledger stays true
            self.ledger.own_netns(name, identity, a.tenant, self._channel(a).cookie)
        elif a.op == "set_lo_up":
            self._channel(a).set_up(LOOPBACK_IFINDEX, "lo")
        elif a.op == "add_link":
            channel = self._channel(a)
            index = channel.add_link(a.link or "", a.kind or "", a.mtu)
            assert channel.identity is not None
            self.ledger.own_link(
                a.netns_path, channel.identity, a.link or "", a.kind or "", index, a.tenant, channel.cookie
            )
            self.new_ifindex[(a.netns_path, a.link or "")] = index
        elif a.op == "set_link_up":
            self._channel(a).set_up(self._ifindex(a), what)
        elif a.op == "set_link_mtu":
            self._channel(a).set_mtu(self._ifindex(a), a.mtu or 0, what)
        elif a.op == "add_address":
            self._channel(a).add_address(self._ifindex(a), a.address or "", what)
        elif a.op == "remove_address":
            self._channel(a).remove_address(self._ifindex(a), a.address or "", what)
        elif a.op == "delete_link":
            self._channel(a).delete_link(self._ifindex(a), what)
            self.ledger.disown_link(a.netns_path, a.link or "")
        elif a.op == "delete_netns":
            self.kernel.delete_netns(a.netns_name or "")
            self.ledger.disown_netns(a.netns_name or "")
        else:  # update_daemon_config runs in _handoff
            raise AssertionError(f"unknown action {a.op}")

    def _handoff(self) -> bool:
        """Phase 2: write the config without failed tenants and make the daemon serve it."""
        plan, result, paths = self.plan, self.result, self.options.paths
        config = plan.config
        newly_failed = self.failed_tenants - plan.excluded
        if newly_failed:
            served = tuple(t for t in plan.manifest.tenants if t.name not in plan.excluded | newly_failed)
            config = runtime_config.render(dataclasses.replace(plan.manifest, tenants=served), paths)
            plan.config = config
        action = next((a for a in plan.actions if a.op == "update_daemon_config"), None)
        try:
            # same generation = same content (it is a hash of it): no need to render the file again
            if config["generation"] != self.observed.config_generation:
                result.config_written = runtime_config.write(config, paths.config)
        except OSError as e:
            return self._handoff_failed(action, f"cannot write the runtime config {paths.config}: {e}")
        if self.options.no_daemon:
            result.daemon_action = "skipped"
        elif action is not None or result.config_written or self.observed.daemon.running is None:
            try:
                result.daemon_action = daemon_control.ensure_daemon(
                    paths, config["generation"], timeout=self.daemon_timeout
                )
            except DaemonError as e:
                return self._handoff_failed(action, f"daemon: {e}")
        if action is None and (result.config_written or result.daemon_action in ("launched", "reloaded")):
            action = Action(
                DAEMON_TENANT, "update_daemon_config", paths.config, f"generation {config['generation']}", 2
            )
            plan.actions.append(action)
        if action is not None:
            action.status = "done"
        return True

    def _handoff_failed(self, action: Action | None, message: str) -> bool:
        self.result.daemon_action = "failed"
        self.result.failures.append(message)
        if action is not None:
            action.status = "failed"
            action.error = message
        return False

    def _forget_stale(self) -> None:
        for name in self.plan.stale_netns:
            self.ledger.disown_netns(name)
        for path, name in self.plan.stale_links:
            self.ledger.disown_link(path, name)

    def _verify(self) -> None:
        """Re-observe what this run touched and check that nothing is left to do there, and that
        the config on disk (and the daemon, unless --no-daemon) carry the new generation."""
        touched = {a.netns_path for a in self.plan.actions if a.status == "done" and a.netns_path}
        namespaces = dict(self.observed.namespaces)
        prefix = named_path("")
        external = {t.netns.path for t in self.plan.manifest.tenants if t.netns.external}
        for path in touched:
            if path.startswith(prefix) and path not in external:
                namespaces[path] = self.kernel.observe_named(path[len(prefix) :])
            else:
                namespaces[path] = self.kernel.observe_path(path)
        # only the touched tenants are planned again: the others were just observed in sync
        tenants = tuple(t for t in self.plan.manifest.tenants if t.netns.path in touched)
        observed = dataclasses.replace(self.observed, namespaces=namespaces)
        again = make_plan(dataclasses.replace(self.plan.manifest, tenants=tenants), observed, self.ledger, self.options)
        skipped = self.failed_tenants | self.plan.excluded
        daemon_failed = self.result.daemon_action == "failed"
        for action in again.actions:
            if action.op == "update_daemon_config" or action.netns_path not in touched or action.tenant in skipped:
                continue
            if daemon_failed and action.phase == 3:
                continue  # pruning waited for the daemon: already reported
            self.result.verify_errors.append(
                f"verify: {action.tenant}: left to do after apply: {action.op} {action.target} {action.detail}".strip()
            )
        if daemon_failed:
            return
        generation = self.plan.config["generation"]
        on_disk = read_config(self.options.paths.config)
        if (on_disk or {}).get("generation") != generation:
            self.result.verify_errors.append(
                f"verify: {self.options.paths.config} does not hold generation {generation}"
            )
        daemon = daemon_view(self.options)
        if daemon.running is not None and (not daemon.running or daemon.generation != generation):
            state = f"serves generation {daemon.generation}" if daemon.running else "is not running"
            self.result.verify_errors.append(f"verify: the daemon {state}, not {generation}")
