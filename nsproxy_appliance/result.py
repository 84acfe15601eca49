"""What a run did: each action's outcome, the hand-off, failures, and the verdict (changed,
in_sync, exit code). The Executor records here; the Plan it ran is never changed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .actions import Action, Status
from .actions.daemon_config import DaemonAction
from .exitcodes import ExitCode
from .plan import Plan


@dataclass(frozen=True)
class Outcome:
    status: Status
    error: str | None = None


PENDING = Outcome(Status.PENDING)


@dataclass
class RunResult:
    plan: Plan
    check: bool
    daemon_action: DaemonAction | str = DaemonAction.UNCHANGED
    failures: list[str] = field(default_factory=list)  # actions that failed, daemon hand-off
    verify_errors: list[str] = field(default_factory=list)
    config_written: bool = False
    actions: list[Action] = field(default_factory=list)  # the plan's, plus a hand-off the plan did not foresee
    outcomes: dict[int, Outcome] = field(default_factory=dict)  # by position in `actions`
    config: dict[str, Any] = field(default_factory=dict)  # the runtime config served (plan.config unless narrowed)
    recovered: list[str] = field(default_factory=list)  # intents of an interrupted run, resolved
    not_serving: dict[str, str] = field(default_factory=dict)  # tenants the daemon does not serve after the hand-off

    def __post_init__(self) -> None:
        self.daemon_action = DaemonAction(self.daemon_action)
        if not self.actions:
            self.actions = list(self.plan.actions)
        if not self.config:
            self.config = self.plan.config
        self._positions = {id(a): i for i, a in enumerate(self.actions)}  # actions are told apart by identity

    # -- outcomes ------------------------------------------------------------------------------

    def _index(self, action: Action) -> int:
        return self._positions[id(action)]

    def outcome(self, action: Action) -> Outcome:
        return self.outcomes.get(self._index(action), PENDING)

    def status(self, action: Action) -> Status:
        return self.outcome(action).status

    def error(self, action: Action) -> str | None:
        return self.outcome(action).error

    def record(self, action: Action, status: Status, error: str | None = None) -> None:
        self.outcomes[self._index(action)] = Outcome(status, error)

    def add(self, action: Action, status: Status, error: str | None = None) -> None:
        """An action the plan did not foresee (a hand-off the run found necessary)."""
        self._positions[id(action)] = len(self.actions)
        self.actions.append(action)
        self.record(action, status, error)

    def done(self) -> list[Action]:
        return [self.actions[i] for i, o in sorted(self.outcomes.items()) if o.status is Status.DONE]

    # -- verdict -------------------------------------------------------------------------------

    @property
    def changed(self) -> bool:
        if self.check:
            return bool(self.plan.actions)
        return (
            bool(self.done())
            or self.config_written
            or self.daemon_action in (DaemonAction.LAUNCHED, DaemonAction.RELOADED)
        )

    @property
    def errors(self) -> list[str]:
        serving = [f"{name}: not served by nsproxyd: {why}" for name, why in sorted(self.not_serving.items())]
        return [*self.plan.fatal, *map(str, self.plan.errors), *self.failures, *self.verify_errors, *serving]

    @property
    def failed(self) -> bool:
        return bool(self.plan.has_problems or self.failures or self.verify_errors or self.not_serving)

    @property
    def in_sync(self) -> bool:
        if self.failed:
            return False
        return not self.plan.actions if self.check else True

    @property
    def exit_code(self) -> ExitCode:
        """0 success/in sync, 1 error, 2 changes pending (check only: terraform -detailed-exitcode)."""
        if self.failed:
            return ExitCode.ERROR
        if self.check and self.plan.actions:
            return ExitCode.PENDING
        return ExitCode.OK
