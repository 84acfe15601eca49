"""Observe, plan and (unless checking) execute the plan in phases, under the apply lock.

Phase 1 creates and converges namespaces, lo, links and addresses; phase 2 writes the runtime
config and hands it to the daemon (which drains removed tenants); phase 3 prunes. An action that
fails skips the rest of its tenant only. Every creation or deletion of an owned object is
recorded in the ledger as an intent, durably, before the kernel is asked (a batch at a time), and
settled after; the ledger is saved after every phase and on the way out, so it always tells the
truth, and a run killed at any point leaves intents the next run resolves (ledger.resolve).
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from . import atomicfile, ledger
from .actions import Action, KernelAction, Status
from .actions.daemon_config import DaemonAction, UpdateDaemonConfig, hand_off
from .errors import StateFileError
from .identity import NetnsIdentity
from .kernel.observed import Observed
from .kernel.rtnl import LinkChannel
from .kernel.session import Kernel
from .ledger import Intent, Ledger
from .model import Manifest
from .observe import daemon_view, observe, observe_paths, read_config
from .paths import DAEMON_TIMEOUT, LOCK_TIMEOUT
from .plan import Plan, PlanOptions, add_diff, make_plan
from .result import RunResult

__all__ = ["Executor", "RunOptions", "RunResult", "observe", "run"]

INTENT_BATCH = 256  # actions whose intents are saved to the ledger together, before any of them runs
IFINDEX_RANGE = (1 << 24, 1 << 30)  # where a new link's ifindex is chosen (ifindex is a positive int32)
_RANDOM = random.SystemRandom()


@dataclass(frozen=True)
class RunOptions:
    plan: PlanOptions
    check: bool = False
    lock_timeout: float = LOCK_TIMEOUT
    daemon_timeout: float = DAEMON_TIMEOUT  # how long the daemon may take to serve the new config
    diff: bool = False  # compute before/after per tenant


def run(manifest: Manifest, options: RunOptions, kernel_factory: Callable[[], Kernel] = Kernel) -> RunResult:
    paths = options.plan.paths
    with ledger.locked(paths.lock, options.lock_timeout, create=not options.check):
        owned = ledger.load(paths.ledger)
        if not options.check:
            for path in (paths.ledger, paths.config):  # what a killed run was half-way writing
                atomicfile.remove_stale_temps(path)
        with kernel_factory() as kernel:
            observed = observe(manifest, owned, kernel, options.plan)
            recovered = owned.resolve(observed.netns)  # in memory; saved by the first save of an apply
            plan = make_plan(manifest, observed, owned, options.plan)
            if options.diff:
                add_diff(plan, observed)
            if options.check:
                action = DaemonAction.SKIPPED if options.plan.no_daemon else _check_daemon_action(plan)
                return RunResult(plan, check=True, daemon_action=action, recovered=recovered)
            executor = Executor(plan, owned, kernel, observed, options.plan, options.daemon_timeout)
            executor.result.recovered = recovered
            return executor.run()


def _check_daemon_action(plan: Plan) -> DaemonAction:
    planned = any(isinstance(a, UpdateDaemonConfig) for a in plan.actions)
    return DaemonAction.PENDING if planned else DaemonAction.UNCHANGED


def _batches(actions: list[Action], size: int) -> list[list[Action]]:
    return [actions[i : i + size] for i in range(0, len(actions), size)]


class Executor:
    """Runs a Plan's actions (dispatching on their type) and records what happened in a RunResult.

    It is also the ExecContext actions run with: the kernel, the ledger, and what earlier actions
    of the run made (new links' ifindexes, prepared namespaces).
    """

    def __init__(
        self,
        plan: Plan,
        owned: Ledger,
        kernel: Kernel,
        observed: Observed,
        options: PlanOptions,
        daemon_timeout: float = DAEMON_TIMEOUT,
    ):
        self.plan = plan
        self.daemon_timeout = daemon_timeout
        self.ledger = owned
        self.kernel = kernel
        self.observed = observed
        self.options = options
        self.result = RunResult(plan, check=False)
        self.failed_tenants: set[str] = set()
        self._new_ifindex: dict[tuple[str, str], int] = {}
        self._reserved_ifindex: dict[str, set[int]] = {}
        self._kept: dict[int, Any] = {}
        self._saved = 0  # a ledger as loaded (revision 0) is what is on disk; resolving intents changes it

    # -- ExecContext ----------------------------------------------------------------------------

    def channel(self, netns_path: str) -> LinkChannel:
        return self.kernel.channel(netns_path)

    def link_index(self, netns_path: str, link: str, planned: int | None) -> int:
        return planned if planned is not None else self._new_ifindex[(netns_path, link)]

    def created_link(self, netns_path: str, link: str, ifindex: int) -> None:
        self._new_ifindex[(netns_path, link)] = ifindex

    def next_ifindex(self, netns_path: str) -> int:
        """A random index far above the kernel's own (which counts up from 2): never one that is in
        use or was reserved in this run, and, unlike max + 1, not the index of a link just deleted."""
        taken = self._reserved_ifindex.get(netns_path)
        if taken is None:
            taken = self._reserved_ifindex[netns_path] = self.channel(netns_path).ifindexes()
        while True:
            index = _RANDOM.randrange(*IFINDEX_RANGE)
            if index not in taken:
                taken.add(index)
                return index

    def keep(self, action: KernelAction, value: Any) -> None:
        self._kept[id(action)] = value

    def kept(self, action: KernelAction) -> Any:
        return self._kept.get(id(action))

    # -- the run ---------------------------------------------------------------------------------

    def run(self) -> RunResult:
        plan, result = self.plan, self.result
        if plan.fatal:
            for action in plan.actions:
                result.record(action, Status.SKIPPED)
            result.daemon_action = DaemonAction.SKIPPED
            return result
        try:
            self._run_phase(self._phase(1))
            self._save()
            daemon_ok = self._handoff()
            if daemon_ok:
                self._run_phase(self._phase(3))
            else:
                for action in self._phase(3):
                    result.record(action, Status.SKIPPED, "not pruned: the daemon did not take the new config")
            self._forget_stale()
        finally:
            self._save()
        if result.done() or result.config_written:
            self.verify()
        return result

    def _phase(self, phase: int) -> list[Action]:
        return [a for a in self.plan.actions if a.phase == phase]

    def _run_phase(self, actions: list[Action]) -> None:
        for batch in _batches(actions, INTENT_BATCH):
            intents = self._prepare(batch)
            for action in batch:
                self._run(action, intents.get(id(action)))

    def _prepare(self, batch: list[Action]) -> dict[int, Intent]:
        """Intents of the batch's creations and deletions, saved durably before any of them runs."""
        intents: dict[int, tuple[KernelAction, Intent]] = {}
        for action in batch:
            if not isinstance(action, KernelAction) or action.tenant in self.failed_tenants:
                continue
            try:
                intent = action.prepare(self)
            except Exception as e:  # isolate the failure to this tenant, whatever it is
                self._failed(action, e)
                continue
            if intent is not None:
                intents[id(action)] = (action, self.ledger.intend(intent))
        if intents:
            try:
                self._save(strict=True)
            except StateFileError as e:
                for action, intent in intents.values():
                    action.abandon(self, intent, started=False)
                    self._failed(action, f"not done, as the ledger cannot record it first: {e}")
                return {}
        return {key: intent for key, (_, intent) in intents.items()}

    def _run(self, action: Action, intent: Intent | None) -> None:
        if self.result.status(action) is not Status.PENDING:
            return  # already failed while being prepared
        if not isinstance(action, KernelAction):
            return  # the daemon's update runs in _handoff
        if action.tenant in self.failed_tenants:
            if intent is not None:
                action.abandon(self, intent, started=False)
            self.result.record(action, Status.SKIPPED, "skipped: an earlier action of this tenant failed")
            return
        try:
            action.execute(self)
        except Exception as e:  # isolate the failure to this tenant, whatever it is
            if intent is not None:
                action.abandon(self, intent, started=True)
            self._failed(action, e)
        else:
            if intent is not None:
                self.ledger.settle(intent)
            self.result.record(action, Status.DONE)

    def _failed(self, action: Action, error: Exception | str) -> None:
        if isinstance(error, str):
            message = error
        else:
            message = str(error) if isinstance(error, OSError) else f"{type(error).__name__}: {error}"
        self.result.record(action, Status.FAILED, message)
        self.failed_tenants.add(action.tenant)
        self.result.failures.append(f"{action.tenant}: {action.op} {action.target}: {message}")

    def _save(self, strict: bool = False) -> None:
        """Save the ledger if it changed; a failure is reported (or raised, with `strict`)."""
        if self.ledger.revision == self._saved:
            return
        try:
            ledger.save(self.ledger, self.options.paths.ledger)
        except StateFileError as e:
            if strict:
                raise
            message = f"cannot save the ledger: {e}"
            if message not in self.result.failures:
                self.result.failures.append(message)
            return
        self._saved = self.ledger.revision

    def _handoff(self) -> bool:
        """Phase 2: write the config without failed tenants and make the daemon serve it."""
        plan, result, paths = self.plan, self.result, self.options.paths
        config = plan.config
        newly_failed = self.failed_tenants - plan.excluded
        if newly_failed:
            reasons = {name: "an action failed (see the apply's errors)" for name in newly_failed}
            for action in result.actions:
                error = result.error(action)
                if action.tenant in reasons and result.status(action) is Status.FAILED and error:
                    reasons[action.tenant] = f"{action.op} {action.target} failed: {error}"
            config = plan.render_config(reasons)
        result.config = config
        planned = next((a for a in plan.actions if isinstance(a, UpdateDaemonConfig)), None)
        done = hand_off(
            config,
            self.observed,
            paths,
            planned=planned is not None,
            no_daemon=self.options.no_daemon,
            timeout=self.daemon_timeout,
            identities=lambda: {t["name"]: self._identity(t["netns"]["path"]) for t in config["tenants"]},
        )
        result.config_written = done.config_written
        result.daemon_action = done.daemon_action
        result.not_serving = done.not_serving
        if done.error is not None:
            result.failures.append(done.error)
            if planned is not None:
                result.record(planned, Status.FAILED, done.error)
            return False
        if planned is not None and done.idle_retry:
            result.record(planned, Status.FAILED, f"retried, still not served: {', '.join(sorted(done.not_serving))}")
        elif planned is not None:
            result.record(planned, Status.DONE)
        elif done.changed:
            result.add(UpdateDaemonConfig.for_config(paths, f"generation {config['generation']}"), Status.DONE)
        return True

    def _identity(self, netns_path: str) -> NetnsIdentity | None:
        """The identity of the namespace at `netns_path` now (its channel knows it, with the cookie)."""
        try:
            return self.kernel.channel(netns_path).identity
        except OSError:
            return None

    def _forget_stale(self) -> None:
        for name in self.plan.stale_netns:
            self.ledger.disown_netns(name)
        for path, name in self.plan.stale_links:
            self.ledger.disown_link(path, name)

    def verify(self) -> None:
        """Re-observe what this run touched and check that nothing is left to do there, and that
        the config on disk (and the daemon, unless --no-daemon) carry the new generation."""
        result = self.result
        done = result.done()
        touched = {a.netns_path for a in done if isinstance(a, KernelAction)}
        external = {t.netns.path for t in self.plan.manifest.tenants if t.netns.external}
        namespaces = dict(self.observed.namespaces)
        namespaces.update(observe_paths(self.kernel, sorted(touched), external))
        # only the touched tenants are planned again: the others were just observed in sync
        tenants = tuple(t for t in self.plan.manifest.tenants if t.netns.path in touched)
        observed = dataclasses.replace(self.observed, namespaces=namespaces)
        again = make_plan(dataclasses.replace(self.plan.manifest, tenants=tenants), observed, self.ledger, self.options)
        skipped = self.failed_tenants | self.plan.excluded
        daemon_failed = result.daemon_action == DaemonAction.FAILED
        for action in again.actions:
            if not isinstance(action, KernelAction) or action.netns_path not in touched or action.tenant in skipped:
                continue
            if daemon_failed and action.phase == 3:
                continue  # pruning waited for the daemon: already reported
            result.verify_errors.append(
                f"verify: {action.tenant}: left to do after apply: {action.op} {action.target} {action.detail}".strip()
            )
        if daemon_failed:
            return
        generation = result.config["generation"]
        on_disk = read_config(self.options.paths.config)
        if (on_disk or {}).get("generation") != generation:
            result.verify_errors.append(f"verify: {self.options.paths.config} does not hold generation {generation}")
        daemon = daemon_view(self.options)
        if daemon.running is not None and (not daemon.running or daemon.generation != generation):
            state = f"serves generation {daemon.generation}" if daemon.running else "is not running"
            result.verify_errors.append(f"verify: the daemon {state}, not {generation}")
