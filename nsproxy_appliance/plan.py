"""Desired (manifest), observed (kernel, config on disk, daemon) and owned (ledger) -> Plan.

make_plan() is a pure function: no kernel, no files. The plan is an ordered list of actions in
three phases — 1: create/converge namespaces, lo, links, addresses; 2: update the daemon config;
3: prune (extra addresses, links and namespaces that left the manifest) — plus the conflicts
(objects that exist but nsproxy does not own: never touched), per-tenant errors, and fatal
errors that stop the whole run before anything changes.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from . import runtime_config
from .kernel.observed import NetnsState, Observed, normalise_cidr
from .ledger import Ledger
from .model import Link, Manifest, Tenant
from .netns import named_path
from .runtime_config import Paths

ADD_OPS = ("create_netns", "add_link", "add_address")
CHANGE_OPS = ("set_lo_up", "set_link_up", "set_link_mtu", "update_daemon_config")
DESTROY_OPS = ("remove_address", "delete_link", "delete_netns")
DAEMON_TENANT = ""  # update_daemon_config belongs to no single tenant

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
class Action:
    tenant: str
    op: str
    target: str  # what it acts on, for people: "acme", "acme/lo", "acme/nsp0"
    detail: str = ""
    phase: int = 1
    netns_path: str = ""
    netns_name: str | None = None  # named namespaces only
    link: str | None = None
    kind: str | None = None
    mtu: int | None = None
    ifindex: int | None = None  # known for links that exist; new links get theirs at apply time
    address: str | None = None
    status: str = "pending"  # pending | done | failed | skipped
    error: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "tenant": self.tenant,
            "op": self.op,
            "target": self.target,
            "detail": self.detail,
            "status": self.status,
            "error": self.error,
        }


@dataclass(frozen=True)
class Conflict:
    tenant: str
    target: str
    reason: str

    def to_json(self) -> dict[str, str]:
        return {"tenant": self.tenant, "target": self.target, "reason": self.reason}

    def __str__(self) -> str:
        return f"{self.tenant}: {self.target}: {self.reason}"


@dataclass(frozen=True)
class Problem:
    tenant: str  # "" when it concerns the whole run
    message: str

    def __str__(self) -> str:
        return f"{self.tenant}: {self.message}" if self.tenant else self.message


@dataclass
class Plan:
    manifest: Manifest
    options: PlanOptions
    actions: list[Action] = field(default_factory=list)
    conflicts: list[Conflict] = field(default_factory=list)
    errors: list[Problem] = field(default_factory=list)  # per tenant: others proceed
    fatal: list[str] = field(default_factory=list)  # the run changes nothing
    excluded: set[str] = field(default_factory=set)  # tenants left out of the daemon config
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
        ops = [a.op for a in self.actions]
        return (
            sum(op in ADD_OPS for op in ops),
            sum(op in CHANGE_OPS for op in ops),
            sum(op in DESTROY_OPS for op in ops),
        )


def make_plan(manifest: Manifest, observed: Observed, ledger: Ledger, options: PlanOptions) -> Plan:
    plan = Plan(manifest=manifest, options=options)
    if not manifest.tenants and not options.allow_empty:
        owned = len(ledger.namespaces)
        plan.fatal.append(
            f"{manifest.source}: the manifest has no tenants; applying it would remove everything nsproxy "
            f"owns ({owned} network namespace{'s' if owned != 1 else ''}). Pass --allow-empty to do that."
        )

    phase1: list[Action] = []
    phase3: list[Action] = []
    for tenant in manifest.tenants:
        planned = _plan_tenant(tenant, observed.netns(tenant.netns.path), ledger, plan)
        if planned is None:
            plan.excluded.add(tenant.name)
        else:
            phase1.extend(planned[0])
            phase3.extend(planned[1])
    phase3.extend(_plan_prune(manifest, observed, ledger, plan))

    needs_dummy = sorted({a.tenant for a in phase1 if a.op == "add_link" and a.kind == "dummy"})
    if needs_dummy and observed.dummy_supported is False:
        plan.fatal.append(
            f"{DUMMY_HINT} (needed by tenant{'s' if len(needs_dummy) > 1 else ''} {', '.join(needs_dummy)})"
        )

    served = dataclasses.replace(manifest, tenants=tuple(t for t in manifest.tenants if t.name not in plan.excluded))
    plan.config = runtime_config.render(served, options.paths)
    phase2 = _plan_daemon(plan, observed, options)

    plan.actions = phase1 + phase2 + phase3
    return plan


# -- phase 1: converge each tenant -----------------------------------------------------------------


def _plan_tenant(t: Tenant, ns: NetnsState, ledger: Ledger, plan: Plan) -> tuple[list[Action], list[Action]] | None:
    """The tenant's (phase-1 actions, phase-3 address removals).

    None when the tenant is skipped (conflict or error, recorded in `plan`): nothing of it is touched.
    """
    path = t.netns.path
    label = t.netns.describe()
    if ns.error:
        plan.errors.append(Problem(t.name, ns.error))
        return None
    actions: list[Action] = []
    fresh = False  # the namespace will be created in this run: nothing in it yet
    if t.netns.external:
        if not ns.exists:
            plan.errors.append(
                Problem(t.name, f"external network namespace {path} does not exist (nsproxy never creates these)")
            )
            return None
    else:
        name = t.netns.name or ""
        if not ns.exists:
            fresh = True
            actions.append(Action(t.name, "create_netns", name, "", 1, path, name))
        elif not ledger.owns_netns(name, ns.identity, ns.cookie):
            plan.conflicts.append(Conflict(t.name, name, _foreign_netns_reason(name, ledger)))
            return None
        if fresh or not ns.lo_up:
            actions.append(Action(t.name, "set_lo_up", f"{label}/lo", "", 1, path, name))

    removals: list[Action] = []
    for link in t.links:
        seen = None if fresh else ns.links.get(link.name)
        target = f"{label}/{link.name}"
        if seen is None:
            actions.extend(_create_link(t, link, path, target))
            continue
        owned = ledger.owned_link(path, link.name)
        if owned is None or not ns.is_(owned.netns_identity, owned.netns_cookie) or owned.ifindex != seen.ifindex:
            reason = f"a {seen.kind or 'non-virtual'} link named {link.name} exists but nsproxy did not create it"
            plan.conflicts.append(Conflict(t.name, target, reason + "; not touched"))
            return None
        common = {"netns_path": path, "link": link.name, "ifindex": seen.ifindex, "kind": link.kind}
        if link.mtu is not None and seen.mtu != link.mtu:
            actions.append(
                Action(t.name, "set_link_mtu", target, f"mtu {seen.mtu} -> {link.mtu}", mtu=link.mtu, **common)
            )
        if not seen.up:
            actions.append(Action(t.name, "set_link_up", target, **common))
        want = [normalise_cidr(a) for a in link.addresses]
        have = set(seen.addresses)
        for cidr in want:
            if cidr not in have:
                actions.append(Action(t.name, "add_address", target, cidr, address=cidr, **common))
        for cidr in sorted(have - set(want)):
            removals.append(Action(t.name, "remove_address", target, cidr, 3, address=cidr, **common))
    return actions, removals


def _create_link(t: Tenant, link: Link, path: str, target: str) -> list[Action]:
    common = {"netns_path": path, "link": link.name, "kind": link.kind}
    detail = link.kind + (f", mtu {link.mtu}" if link.mtu is not None else "")
    actions = [Action(t.name, "add_link", target, detail, mtu=link.mtu, **common)]
    actions.append(Action(t.name, "set_link_up", target, **common))
    for cidr in link.addresses:
        cidr = normalise_cidr(cidr)
        actions.append(Action(t.name, "add_address", target, cidr, address=cidr, **common))
    return actions


def _foreign_netns_reason(name: str, ledger: Ledger) -> str:
    entry = ledger.namespaces.get(name)
    if entry is None:
        return f"network namespace {name} exists but nsproxy did not create it (not in the ledger); not touched"
    return (
        f"network namespace {name} is not the one nsproxy created (it was deleted and made again outside "
        "nsproxy); not touched: delete it, or reference it as an external namespace ({path: ...})"
    )


# -- phase 2: the daemon's config ------------------------------------------------------------------


def _plan_daemon(plan: Plan, observed: Observed, options: PlanOptions) -> list[Action]:
    new = plan.config["generation"]
    old = observed.config_generation
    reasons = []
    if old != new:
        reasons.append("no runtime config yet" if old is None else "runtime config changed")
        plan.config_changes = _config_changes(plan.config, observed)
    if not options.no_daemon:
        if observed.daemon.running is False:
            reasons.append("daemon not running")
        elif observed.daemon.running and observed.daemon.generation != new:
            reasons.append(f"daemon serves generation {observed.daemon.generation}")
        elif observed.daemon.running and observed.daemon.failed:
            reasons.append(f"daemon reports failed tenants: {', '.join(observed.daemon.failed)}")
    plan.daemon_reasons = reasons
    if not reasons:
        return []
    detail = f"generation {old or '(none)'} -> {new}: {', '.join(reasons)}"
    return [Action(DAEMON_TENANT, "update_daemon_config", options.paths.config, detail, 2)]


def _config_changes(config: dict[str, Any], observed: Observed) -> list[str]:
    before = {t.get("name"): t for t in (observed.config or {}).get("tenants", ())}
    after = {t["name"]: t for t in config["tenants"]}
    return sorted(name for name in before.keys() | after.keys() if before.get(name) != after.get(name))


# -- phase 3: prune --------------------------------------------------------------------------------


def _plan_prune(manifest: Manifest, observed: Observed, ledger: Ledger, plan: Plan) -> list[Action]:
    actions: list[Action] = []
    wanted_netns = {t.netns.name for t in manifest.tenants if t.netns.name}
    wanted_links = {(t.netns.path, link.name) for t in manifest.tenants for link in t.links}
    # namespaces of tenants that are skipped: nothing in them is touched, pruning included
    untouchable = {t.netns.path for t in manifest.tenants if t.name in plan.excluded}
    leaving: set[str] = set()  # paths of owned namespaces deleted (or kept) as a whole

    in_use = {t.netns.path for t in manifest.tenants}  # also by path: an owned netns now used as external
    for name in sorted(ledger.namespaces):
        if name in wanted_netns or named_path(name) in in_use:
            continue
        owned = ledger.namespaces[name]
        path = named_path(name)
        ns = observed.netns(path)
        leaving.add(path)
        if not ns.is_(owned.identity, owned.cookie):
            plan.stale_netns.append(name)  # gone already (reboot, deleted by hand): forget it
            continue
        if ns.pids and not plan.options.force:
            pids = ", ".join(map(str, ns.pids[:10])) + (", ..." if len(ns.pids) > 10 else "")
            plan.errors.append(
                Problem(
                    owned.tenant,
                    f"network namespace {name} left the manifest but processes still run in it (pids {pids}): "
                    "not deleted; stop them, or pass --force",
                )
            )
            continue
        detail = f"with {len(ns.pids)} process(es) still inside (--force)" if ns.pids else ""
        actions.append(Action(owned.tenant, "delete_netns", name, detail, 3, path, name))

    for key in sorted(ledger.links):
        path, link_name = key
        if key in wanted_links or path in leaving or path in untouchable:
            continue
        owned = ledger.links[key]
        ns = observed.netns(path)
        seen = ns.links.get(link_name) if ns.exists else None
        if seen is None or not ns.is_(owned.netns_identity, owned.netns_cookie) or seen.ifindex != owned.ifindex:
            plan.stale_links.append(key)
            continue
        label = _label(path)
        actions.append(
            Action(
                owned.tenant, "delete_link", f"{label}/{link_name}", owned.kind, 3, path,
                link=link_name, kind=owned.kind, ifindex=seen.ifindex,
            )
        )  # fmt: skip
    # stale link records of wanted links are simply overwritten when the link is created again
    return actions


def _label(path: str) -> str:
    prefix = named_path("")
    return path[len(prefix) :] if path.startswith(prefix) else f"path:{path}"


# -- before/after per tenant (--diff) --------------------------------------------------------------


def add_diff(plan: Plan, observed: Observed) -> None:
    """Fill plan.diff: before/after per tenant that changes (for --diff; not computed otherwise)."""
    plan.diff = _diff(plan.manifest, observed, plan)


def _diff(manifest: Manifest, observed: Observed, plan: Plan) -> dict[str, dict[str, Any]]:
    served = {t["name"]: t for t in plan.config["tenants"]}
    out: dict[str, dict[str, Any]] = {}
    for t in manifest.tenants:
        before = _view_observed(t.netns.describe(), t.netns.external, observed.netns(t.netns.path), t.links)
        before["config"] = _plain(observed.config_tenant(t.name))
        after = _view_desired(t) if t.name not in plan.excluded else dict(before)
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


def _view_observed(label: str, external: bool, ns: NetnsState, links: tuple[Link, ...]) -> dict[str, Any]:
    if not ns.exists:
        return {"netns": None, "links": {}}
    view: dict[str, Any] = {"netns": label}
    if not external:
        view["lo"] = "up" if ns.lo_up else "down"
    wanted = {link.name: link for link in links}
    view["links"] = {
        name: _link_view(s.kind or "", s.up, s.addresses, s.mtu if wanted[name].mtu is not None else None)
        for name, s in sorted(ns.links.items())
        if name in wanted
    }
    return view


def _view_desired(t: Tenant) -> dict[str, Any]:
    view: dict[str, Any] = {"netns": t.netns.describe()}
    if not t.netns.external:
        view["lo"] = "up"
    view["links"] = {
        link.name: _link_view(link.kind, True, tuple(sorted(normalise_cidr(a) for a in link.addresses)), link.mtu)
        for link in sorted(t.links, key=lambda x: x.name)
    }
    return view


def _link_view(kind: str, up: bool, addresses: tuple[str, ...], mtu: int | None) -> dict[str, Any]:
    view: dict[str, Any] = {"kind": kind, "state": "up" if up else "down", "addresses": list(addresses)}
    if mtu is not None:
        view["mtu"] = mtu
    return view


def _plain(entry: Any) -> Any:
    return None if entry is None else dict(entry)
