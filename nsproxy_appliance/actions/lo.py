"""The loopback link of a named namespace: always up (a new namespace starts with lo down).

External namespaces' lo belongs to whoever made them and is left alone.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..kernel.observed import NetnsState
from ..model import Tenant
from .base import ExecContext, KernelAction, Op, Phase, PruneScope, Sign, TenantScope

LOOPBACK_IFINDEX = 1  # the kernel gives lo ifindex 1 in every namespace (include/net/flow.h)


@dataclass(frozen=True, kw_only=True)
class SetLoUp(KernelAction):
    op = Op.SET_LO_UP
    phase = Phase.CONVERGE
    sign = Sign.CHANGE

    def execute(self, ctx: ExecContext) -> None:
        ctx.channel(self.netns_path).set_up(LOOPBACK_IFINDEX, "lo")


class LoKind:
    name = "lo"

    def plan_tenant(self, scope: TenantScope) -> None:
        t = scope.tenant
        if not t.netns.external and (scope.fresh or not scope.ns.lo_up):
            scope.converge.append(SetLoUp(tenant=t.name, target=f"{scope.label}/lo", netns_path=t.netns.path))

    def plan_prune(self, scope: PruneScope, tenants: tuple[Tenant, ...]) -> None:
        return  # lo goes with its namespace

    def view_observed(self, tenant: Tenant, ns: NetnsState) -> dict[str, Any]:
        if not ns.exists or tenant.netns.external:
            return {}
        return {"lo": "up" if ns.lo_up else "down"}

    def view_desired(self, tenant: Tenant) -> dict[str, Any]:
        return {} if tenant.netns.external else {"lo": "up"}


KIND = LoKind()
