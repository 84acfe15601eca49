"""Desired (manifest), observed (kernel, config on disk, daemon) and owned (ledger) -> Plan.

make_plan() is a pure function: no kernel, no files. The plan is an ordered list of typed actions
in three phases — 1: create/converge namespaces, lo, links, addresses; 2: update the daemon config;
3: prune (extra addresses, links and namespaces that left the manifest) — plus the conflicts
(objects that exist but nsproxy does not own: never touched), per-tenant errors, and fatal
errors that stop the whole run before anything changes. Each kind of object plans itself
(actions/); this module puts the kinds together and computes --diff.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from . import runtime_config
from .actions import TENANT_KINDS, Action, Conflict, Problem, PruneScope, Sign, TenantScope
from .actions import daemon_config as daemon_kind
from .actions.base import DAEMON_TENANT
from .actions.link import AddLink
from .kernel.observed import Observed
from .ledger import Ledger
from .model import Manifest, Tenant
from .paths import Paths

__all__ = ["DAEMON_TENANT", "DUMMY_HINT", "Conflict", "Plan", "PlanOptions", "Problem", "add_diff", "make_plan"]

DUMMY_HINT = (
    "this kernel cannot create dummy links (CONFIG_DUMMY is not set, or the dummy module is not "
    "available): load it with `modprobe dummy`, or use a kernel built with CONFIG_DUMMY=m or =y"
)


@dataclass(frozen=True)
class PlanOptions:
    paths: Paths = field(default_factory=Paths)
    no_daemon: bool = False
    force: bool = False  # prune namespaces even while processes run inside them
    allow_empty: bool = False  # accept a manifest without tenants (prunes everything owned)


@dataclass
class Plan:
    manifest: Manifest
    options: PlanOptions
    actions: list[Action] = field(default_factory=list)
    conflicts: list[Conflict] = field(default_factory=list)
    errors: list[Problem] = field(default_factory=list)  # per tenant: others proceed
    fatal: list[str] = field(default_factory=list)  # the run changes nothing
    warnings: list[str] = field(default_factory=list)  # shown, never failing the run (e.g. a certificate expiring soon)
    excluded: set[str] = field(default_factory=set)  # tenants left out of the daemon config
    exclusions: dict[str, str] = field(default_factory=dict)  # why, by tenant (told to the daemon and status)
    unmanaged: set[str] = field(default_factory=set)  # tenants served, but whose objects are not touched
    config: dict[str, Any] = field(default_factory=dict)  # runtime config to serve
    daemon_reasons: list[str] = field(default_factory=list)
    config_changes: list[str] = field(default_factory=list)  # tenants whose served config entry changes
    diff: dict[str, dict[str, Any]] = field(default_factory=dict)  # tenant -> {before, after}; see add_diff()
    stale_netns: list[str] = field(default_factory=list)  # ledger entries whose object is gone
    stale_links: list[tuple[str, str]] = field(default_factory=list)

    @property
    def in_sync(self) -> bool:
        return not self.actions and not self.conflicts and not self.errors and not self.fatal

    @property
    def has_problems(self) -> bool:
        return bool(self.conflicts or self.errors or self.fatal)

    def counts(self) -> tuple[int, int, int]:
        """(to add, to change, to destroy), as in terraform's summary line."""
        return count_signs(self.actions)

    def serving(self, tenants: set[str] | None = None) -> Manifest:
        """The manifest the daemon is to serve: without excluded tenants (and `tenants` too)."""
        left_out = self.excluded | (tenants or set())
        return dataclasses.replace(
            self.manifest, tenants=tuple(t for t in self.manifest.tenants if t.name not in left_out)
        )

    def render_config(self, failed: dict[str, str] | None = None) -> dict[str, Any]:
        """The runtime config to serve, leaving out excluded tenants and `failed` ones (with why)."""
        failed = failed or {}
        return runtime_config.render(
            self.serving(set(failed)),
            self.options.paths,
            all_tenants=[t.name for t in self.manifest.tenants],
            excluded={**self.exclusions, **failed},
        )


def count_signs(actions: list[Action]) -> tuple[int, int, int]:
    signs = [a.sign for a in actions]
    return signs.count(Sign.ADD), signs.count(Sign.CHANGE), signs.count(Sign.DESTROY)


def make_plan(manifest: Manifest, observed: Observed, ledger: Ledger, options: PlanOptions) -> Plan:
    plan = Plan(manifest=manifest, options=options, warnings=list(manifest.warnings))
    if not manifest.tenants and not options.allow_empty:
        owned = len(ledger.namespaces)
        plan.fatal.append(
            f"{manifest.source}: the manifest has no tenants; applying it would remove everything nsproxy "
            f"owns ({owned} network namespace{'s' if owned != 1 else ''}). Pass --allow-empty to do that."
        )

    converge: list[Action] = []
    prune: list[Action] = []
    for tenant in manifest.tenants:
        scope = _plan_tenant(tenant, observed, ledger)
        if scope.conflict is not None or scope.problem is not None:
            plan.excluded.add(tenant.name)
        if scope.conflict is not None:
            plan.conflicts.append(scope.conflict)
            plan.exclusions[tenant.name] = f"conflict: {scope.conflict.target}: {scope.conflict.reason}"
        if scope.problem is not None:
            plan.errors.append(scope.problem)
            plan.exclusions[tenant.name] = scope.problem.message
        if scope.unmanaged is not None:
            plan.conflicts.append(scope.unmanaged)
            plan.unmanaged.add(tenant.name)
        if not scope.skipped:
            converge.extend(scope.converge)
            prune.extend(scope.prune)
    prune.extend(_plan_prune(manifest, observed, ledger, plan))

    needs_dummy = sorted({a.tenant for a in converge if isinstance(a, AddLink) and a.kind == "dummy"})
    if needs_dummy and observed.dummy_supported is False:
        plan.fatal.append(
            f"{DUMMY_HINT} (needed by tenant{'s' if len(needs_dummy) > 1 else ''} {', '.join(needs_dummy)})"
        )

    plan.config = plan.render_config()
    daemon = daemon_kind.plan(plan.config, observed, options.paths, options.no_daemon)
    plan.daemon_reasons = daemon.reasons
    plan.config_changes = daemon.config_changes
    plan.actions = converge + ([daemon.action] if daemon.action else []) + prune
    return plan


def _plan_tenant(tenant: Tenant, observed: Observed, ledger: Ledger) -> TenantScope:
    """The tenant's actions from every kind, in order; stops at the first kind that skips it."""
    scope = TenantScope(tenant, observed.netns(tenant.netns.path), ledger)
    for kind in TENANT_KINDS:
        kind.plan_tenant(scope)
        if scope.skipped:
            break
    return scope


def _plan_prune(manifest: Manifest, observed: Observed, ledger: Ledger, plan: Plan) -> list[Action]:
    scope = PruneScope(
        ledger=ledger,
        netns_at=observed.netns,
        wanted_paths={t.netns.path for t in manifest.tenants},
        # namespaces of tenants that are skipped: nothing in them is touched, pruning included
        untouchable={t.netns.path for t in manifest.tenants if t.name in plan.excluded | plan.unmanaged},
        force=plan.options.force,
    )
    for kind in TENANT_KINDS:
        kind.plan_prune(scope, manifest.tenants)
    plan.errors.extend(scope.errors)
    plan.stale_netns = scope.stale_netns
    plan.stale_links = scope.stale_links
    return list(scope.actions)


# -- before/after per tenant (--diff) --------------------------------------------------------------


def add_diff(plan: Plan, observed: Observed) -> None:
    """Fill plan.diff: before/after per tenant that changes (for --diff; not computed otherwise)."""
    plan.diff = _diff(plan.manifest, observed, plan)


def _diff(manifest: Manifest, observed: Observed, plan: Plan) -> dict[str, dict[str, Any]]:
    served = {t["name"]: t for t in plan.config["tenants"]}
    out: dict[str, dict[str, Any]] = {}
    for t in manifest.tenants:
        ns = observed.netns(t.netns.path)
        before: dict[str, Any] = {}
        after: dict[str, Any] = {}
        for kind in TENANT_KINDS:
            before.update(kind.view_observed(t, ns))
            after.update(kind.view_desired(t))
        before["config"] = _plain(observed.config_tenant(t.name))
        if t.name in plan.excluded or t.name in plan.unmanaged:
            after = {k: v for k, v in before.items() if k != "config"}
        after["config"] = served.get(t.name)
        if before != after:
            out[t.name] = {"before": before, "after": after}
    in_manifest = {t.name for t in manifest.tenants}
    for action in plan.actions:
        if action.tenant in in_manifest or action.tenant == DAEMON_TENANT or action.tenant in out:
            continue
        out[action.tenant] = {"before": {"netns": action.target.split("/")[0]}, "after": None}
    for entry in (observed.config or {}).get("tenants", ()):
        name = entry.get("name")
        if name not in in_manifest and name not in served:
            out.setdefault(name, {"before": {}, "after": None})["before"]["config"] = _plain(entry)
    return out


def _plain(entry: Any) -> Any:
    return None if entry is None else dict(entry)
