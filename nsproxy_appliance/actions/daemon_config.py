"""The daemon's runtime config: planned when the config on disk or the daemon differ from the
manifest, executed as the hand-off of phase 2 (write the file, launch or reload nsproxyd).

The hand-off runs between creating and pruning: new namespaces exist before the daemon is asked
to listen in them, and removed tenants are drained before their namespaces are deleted.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from .. import daemon_control, runtime_config
from ..errors import DaemonError, StateFileError
from ..identity import NetnsIdentity
from ..kernel.observed import Observed
from ..paths import Paths
from .base import DAEMON_TENANT, Action, Op, Phase, Sign

_NOWHERE = NetnsIdentity(-1, -1)  # the identity of no namespace


class DaemonAction(StrEnum):
    """What happened to the daemon in a run (JSON `daemon.action`)."""

    LAUNCHED = "launched"
    RELOADED = "reloaded"
    UNCHANGED = "unchanged"
    SKIPPED = "skipped"  # --no-daemon, or nothing ran
    PENDING = "pending"  # --check: it would be launched or reloaded
    FAILED = "failed"


@dataclass(frozen=True, kw_only=True)
class UpdateDaemonConfig(Action):
    op = Op.UPDATE_DAEMON_CONFIG
    phase = Phase.DAEMON
    sign = Sign.CHANGE

    @classmethod
    def for_config(cls, paths: Paths, detail: str) -> UpdateDaemonConfig:
        return cls(tenant=DAEMON_TENANT, target=paths.config, detail=detail)


@dataclass
class DaemonPlan:
    action: UpdateDaemonConfig | None
    reasons: list[str] = field(default_factory=list)
    config_changes: list[str] = field(default_factory=list)  # tenants whose served entry changes


def plan(config: Mapping[str, Any], observed: Observed, paths: Paths, no_daemon: bool) -> DaemonPlan:
    """Whether the config on disk or the daemon lag behind `config` (the one to serve), and why."""
    new = config["generation"]
    old = observed.config_generation
    reasons = []
    changes: list[str] = []
    if old != new:
        reasons.append("no runtime config yet" if old is None else "runtime config changed")
        changes = _config_changes(config, observed)
    if not no_daemon:
        daemon = observed.daemon
        if daemon.running is False:
            reasons.append("daemon not running")
        elif daemon.running and daemon.generation != new:
            reasons.append(f"daemon serves generation {daemon.generation}")
        else:
            if daemon.running and daemon.failed:
                reasons.append(f"daemon reports failed tenants: {', '.join(daemon.failed)}")
            stale = stale_tenants(config, observed)
            if stale:
                reasons.append(f"daemon serves {', '.join(stale)} in a namespace the kernel no longer has there")
    if not reasons:
        return DaemonPlan(None)
    detail = f"generation {old or '(none)'} -> {new}: {', '.join(reasons)}"
    return DaemonPlan(UpdateDaemonConfig.for_config(paths, detail), reasons, changes)


def stale_tenants(config: Mapping[str, Any], observed: Observed) -> list[str]:
    """Tenants the daemon serves in another namespace than the one at their name or path now."""
    served = observed.daemon.served or {}
    out = []
    for entry in config["tenants"]:
        seen = served.get(entry["name"])
        ns = observed.netns(entry["netns"]["path"])
        if seen is not None and seen.state == "serving" and ns.exists and not ns.is_(seen.identity or _NOWHERE):
            out.append(entry["name"])
    return out


def _config_changes(config: Mapping[str, Any], observed: Observed) -> list[str]:
    before = {t.get("name"): t for t in (observed.config or {}).get("tenants", ())}
    after = {t["name"]: t for t in config["tenants"]}
    return sorted(name for name in before.keys() | after.keys() if before.get(name) != after.get(name))


# -- executing: the hand-off ----------------------------------------------------------------------


@dataclass
class Handoff:
    """What phase 2 did."""

    config_written: bool = False
    daemon_action: DaemonAction = DaemonAction.UNCHANGED
    error: str | None = None  # the hand-off failed: nothing is pruned
    not_serving: dict[str, str] = field(default_factory=dict)  # tenants the daemon does not serve, and why
    idle_retry: bool = False  # only retried tenants that failed, and none of them serves now: no change

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def changed(self) -> bool:
        return self.config_written or self.daemon_action in (DaemonAction.LAUNCHED, DaemonAction.RELOADED)


def hand_off(
    config: dict[str, Any],
    observed: Observed,
    paths: Paths,
    *,
    planned: bool,
    no_daemon: bool,
    timeout: float,
    identities: Callable[[], dict[str, NetnsIdentity | None]],
) -> Handoff:
    """Write `config` (unless the file holds it), make the daemon serve it, and wait (up to
    `timeout`) until every tenant of it serves in the namespace `identities()` gives for it, or
    failed there: the apply's verdict includes the daemon's."""
    done = Handoff()
    try:
        # same generation = same content (it is a hash of it): no need to render the file again
        if config["generation"] != observed.config_generation:
            done.config_written = runtime_config.write(config, paths.config)
    except StateFileError as e:
        done.daemon_action = DaemonAction.FAILED
        done.error = f"cannot write the runtime config: {e}"
        return done
    if no_daemon:
        done.daemon_action = DaemonAction.SKIPPED
        return done
    if not (planned or done.config_written or observed.daemon.running is None):
        return done
    try:
        done.daemon_action = DaemonAction(daemon_control.ensure_daemon(paths, config["generation"], timeout=timeout))
    except DaemonError as e:
        done.daemon_action = DaemonAction.FAILED
        done.error = f"daemon: {e}"
        return done
    done.not_serving = daemon_control.await_tenants(paths, identities(), timeout)
    retried = set(observed.daemon.failed) | set(stale_tenants(config, observed))
    only_retry = not done.config_written and observed.daemon.generation == config["generation"]
    if only_retry and done.daemon_action is DaemonAction.RELOADED and retried <= set(done.not_serving):
        done.daemon_action = DaemonAction.UNCHANGED  # a reload that served nothing new changed nothing
        done.idle_retry = True
    return done
