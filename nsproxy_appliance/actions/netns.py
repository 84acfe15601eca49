"""Named network namespaces: created when missing, owned by identity, pruned when they leave.

External namespaces (`netns: {path: ...}`) are never created or deleted; a missing one is an
error for its tenant only. A named namespace that exists but is not in the ledger is foreign: a
conflict, and its tenant is skipped and not served. One that nsproxy owned but that was deleted
and made again outside nsproxy (another identity at the name) is foreign too and never touched,
but its tenant stays served: it is the namespace at the name the manifest gives, and the daemon
already follows it there (see docs/cli.md, "Ownership").

Creation is crash safe: the namespace is made anonymous first (netns.unshared), its identity is
recorded as an intent, and only then is it named; a run killed before the name exists leaves
nothing, one killed after leaves a namespace the next run recognises by its identity.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..kernel.observed import NetnsState
from ..ledger import Intent, IntentOp, Ledger
from ..model import NetnsRef, Tenant
from .base import Conflict, ExecContext, KernelAction, Op, Phase, Problem, PruneScope, Sign, TenantScope

if TYPE_CHECKING:
    from ..kernel.session import NewNetns  # the kernel layer (ctypes, netlink) is not needed to plan


@dataclass(frozen=True, kw_only=True)
class CreateNetns(KernelAction):
    op = Op.CREATE_NETNS
    phase = Phase.CONVERGE
    sign = Sign.ADD

    name: str

    def prepare(self, ctx: ExecContext) -> Intent:
        new = ctx.kernel.new_netns(self.name)
        ctx.keep(self, new)
        ident = new.identity
        return Intent(IntentOp.CREATE_NETNS, self.tenant, self.netns_path, ident.dev, ident.ino, ident.cookie)

    def execute(self, ctx: ExecContext) -> None:
        new: NewNetns = ctx.kept(self)
        identity = ctx.kernel.bind_netns(new)
        ctx.keep(self, None)  # named now: nothing left to discard
        ctx.ledger.own_netns(self.name, identity, self.tenant)

    def abandon(self, ctx: ExecContext, intent: Intent, started: bool) -> None:
        new: NewNetns | None = ctx.kept(self)
        if new is not None:  # never named: it dies with its fd, nothing is left behind
            ctx.kernel.discard_netns(new)
            ctx.keep(self, None)
        ctx.ledger.settle(intent)


@dataclass(frozen=True, kw_only=True)
class DeleteNetns(KernelAction):
    op = Op.DELETE_NETNS
    phase = Phase.PRUNE
    sign = Sign.DESTROY

    name: str

    def prepare(self, ctx: ExecContext) -> Intent:
        owned = ctx.ledger.namespaces[self.name].identity
        return Intent(IntentOp.DELETE_NETNS, self.tenant, self.netns_path, owned.dev, owned.ino, owned.cookie)

    def execute(self, ctx: ExecContext) -> None:
        ctx.kernel.delete_netns(self.name)
        ctx.ledger.disown_netns(self.name)


def foreign_reason(name: str, ledger: Ledger) -> str:
    if ledger.namespaces.get(name) is None:
        return f"network namespace {name} exists but nsproxy did not create it (not in the ledger); not touched"
    return (
        f"network namespace {name} is not the one nsproxy created (it was deleted and made again outside "
        "nsproxy); not touched: delete it, or reference it as an external namespace ({path: ...})"
    )


class NetnsKind:
    name = "netns"

    def plan_tenant(self, scope: TenantScope) -> None:
        t, ns = scope.tenant, scope.ns
        if ns.error:
            scope.problem = Problem(t.name, ns.error)
            return
        if t.netns.external:
            if not ns.exists:
                reason = f"external network namespace {t.netns.path} does not exist (nsproxy never creates these)"
                scope.problem = Problem(t.name, reason)
            return
        name = t.netns.name or ""
        if not ns.exists:
            scope.fresh = True
            scope.converge.append(CreateNetns(tenant=t.name, target=name, netns_path=t.netns.path, name=name))
        elif not scope.ledger.owns_netns(name, ns.full_identity):
            conflict = Conflict(t.name, name, foreign_reason(name, scope.ledger))
            if name in scope.ledger.namespaces:
                scope.unmanaged = conflict  # replaced outside nsproxy: not touched, still served
            else:
                scope.conflict = conflict

    def plan_prune(self, scope: PruneScope, tenants: tuple[Tenant, ...]) -> None:
        wanted = {t.netns.name for t in tenants if t.netns.name}
        for name in sorted(scope.ledger.namespaces):
            path = NetnsRef.named(name).path
            if name in wanted or path in scope.wanted_paths:  # also by path: an owned netns now used as external
                continue
            owned = scope.ledger.namespaces[name]
            ns = scope.netns_at(path)
            scope.leaving.add(path)
            if not ns.is_(owned.identity):
                scope.stale_netns.append(name)  # gone already (reboot, deleted by hand): forget it
                continue
            if ns.pids and not scope.force:
                pids = ", ".join(map(str, ns.pids[:10])) + (", ..." if len(ns.pids) > 10 else "")
                scope.errors.append(
                    Problem(
                        owned.tenant,
                        f"network namespace {name} left the manifest but processes still run in it (pids {pids}): "
                        "not deleted; stop them, or pass --force",
                    )
                )
                continue
            detail = f"with {len(ns.pids)} process(es) still inside (--force)" if ns.pids else ""
            scope.actions.append(
                DeleteNetns(tenant=owned.tenant, target=name, detail=detail, netns_path=path, name=name)
            )

    def view_observed(self, tenant: Tenant, ns: NetnsState) -> dict[str, Any]:
        return {"netns": tenant.netns.describe() if ns.exists else None}

    def view_desired(self, tenant: Tenant) -> dict[str, Any]:
        return {"netns": tenant.netns.describe()}


KIND = NetnsKind()
