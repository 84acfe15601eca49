"""Links nsproxy owns inside tenant namespaces (dummy links today): created up, MTU and state
converged, addresses delegated to address.py, deleted when they leave the manifest.

A link is ours only while it has the ifindex recorded in the ledger, in a namespace with the
recorded identity; one with a wanted name that is not ours is a conflict and its tenant is
skipped. A new link asks the kernel for an ifindex chosen in advance (Executor.next_ifindex: at
random, far above the kernel's own) and recorded in the ledger's intent, so a run killed right after
creating it still recognises it as its own.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..kernel.observed import NetnsState, normalise_cidr
from ..ledger import Intent, IntentOp
from ..model import Link, NetnsRef, Tenant
from . import address
from .base import Conflict, ExecContext, KernelAction, Op, Phase, PruneScope, Sign, TenantScope


@dataclass(frozen=True, kw_only=True)
class LinkAction(KernelAction):
    link: str

    @property
    def what(self) -> str:
        return f"link {self.link}"


@dataclass(frozen=True, kw_only=True)
class AddLink(LinkAction):
    op = Op.ADD_LINK
    phase = Phase.CONVERGE
    sign = Sign.ADD

    kind: str
    mtu: int | None = None

    @property
    def ifindex(self) -> None:
        """A new link has no ifindex until it is created (the later actions look it up)."""
        return None

    def prepare(self, ctx: ExecContext) -> Intent:
        channel = ctx.channel(self.netns_path)
        assert channel.identity is not None
        wanted = ctx.next_ifindex(self.netns_path)
        ctx.keep(self, wanted)
        ident = channel.identity
        return Intent(
            IntentOp.ADD_LINK,
            self.tenant,
            self.netns_path,
            ident.dev,
            ident.ino,
            ident.cookie,
            link=self.link,
            kind=self.kind,
            ifindex=wanted,
        )

    def execute(self, ctx: ExecContext) -> None:
        channel = ctx.channel(self.netns_path)
        assert channel.identity is not None
        index = channel.add_link(self.link, self.kind, self.mtu, ctx.kept(self))
        ctx.ledger.own_link(self.netns_path, channel.identity, self.link, self.kind, index, self.tenant)
        ctx.created_link(self.netns_path, self.link, index)


@dataclass(frozen=True, kw_only=True)
class SetLinkUp(LinkAction):
    op = Op.SET_LINK_UP
    phase = Phase.CONVERGE
    sign = Sign.CHANGE

    ifindex: int | None

    def execute(self, ctx: ExecContext) -> None:
        index = ctx.link_index(self.netns_path, self.link, self.ifindex)
        ctx.channel(self.netns_path).set_up(index, self.what)


@dataclass(frozen=True, kw_only=True)
class SetLinkMtu(LinkAction):
    op = Op.SET_LINK_MTU
    phase = Phase.CONVERGE
    sign = Sign.CHANGE

    ifindex: int
    mtu: int

    def execute(self, ctx: ExecContext) -> None:
        ctx.channel(self.netns_path).set_mtu(self.ifindex, self.mtu, self.what)


@dataclass(frozen=True, kw_only=True)
class DeleteLink(LinkAction):
    op = Op.DELETE_LINK
    phase = Phase.PRUNE
    sign = Sign.DESTROY

    kind: str
    ifindex: int

    def prepare(self, ctx: ExecContext) -> Intent:
        owned = ctx.ledger.links[(self.netns_path, self.link)].netns_identity
        return Intent(
            IntentOp.DELETE_LINK,
            self.tenant,
            self.netns_path,
            owned.dev,
            owned.ino,
            owned.cookie,
            link=self.link,
            kind=self.kind,
            ifindex=self.ifindex,
        )

    def execute(self, ctx: ExecContext) -> None:
        ctx.channel(self.netns_path).delete_link(self.ifindex, self.what)
        ctx.ledger.disown_link(self.netns_path, self.link)


class LinkKind:
    name = "link"

    def plan_tenant(self, scope: TenantScope) -> None:
        t = scope.tenant
        path = t.netns.path
        for link in t.links:
            seen = None if scope.fresh else scope.ns.links.get(link.name)
            target = f"{scope.label}/{link.name}"
            if seen is None:
                detail = link.kind + (f", mtu {link.mtu}" if link.mtu is not None else "")
                scope.converge.append(
                    AddLink(
                        tenant=t.name,
                        target=target,
                        detail=detail,
                        netns_path=path,
                        link=link.name,
                        kind=link.kind,
                        mtu=link.mtu,
                    )
                )
                scope.converge.append(
                    SetLinkUp(tenant=t.name, target=target, netns_path=path, link=link.name, ifindex=None)
                )
                address.plan_for_link(scope, link, target, None)
                continue
            owned = scope.ledger.owned_link(path, link.name)
            if owned is None or not scope.ns.is_(owned.netns_identity) or owned.ifindex != seen.ifindex:
                reason = f"a {seen.kind or 'non-virtual'} link named {link.name} exists but nsproxy did not create it"
                scope.conflict = Conflict(t.name, target, reason + "; not touched")
                return
            if link.mtu is not None and seen.mtu != link.mtu:
                scope.converge.append(
                    SetLinkMtu(
                        tenant=t.name,
                        target=target,
                        detail=f"mtu {seen.mtu} -> {link.mtu}",
                        netns_path=path,
                        link=link.name,
                        ifindex=seen.ifindex,
                        mtu=link.mtu,
                    )
                )
            if not seen.up:
                scope.converge.append(
                    SetLinkUp(tenant=t.name, target=target, netns_path=path, link=link.name, ifindex=seen.ifindex)
                )
            address.plan_for_link(scope, link, target, seen)

    def plan_prune(self, scope: PruneScope, tenants: tuple[Tenant, ...]) -> None:
        wanted = {(t.netns.path, link.name) for t in tenants for link in t.links}
        for key in sorted(scope.ledger.links):
            path, link_name = key
            if key in wanted or path in scope.leaving or path in scope.untouchable:
                continue
            owned = scope.ledger.links[key]
            ns = scope.netns_at(path)
            seen = ns.links.get(link_name) if ns.exists else None
            if seen is None or not ns.is_(owned.netns_identity) or seen.ifindex != owned.ifindex:
                scope.stale_links.append(key)
                continue
            target = f"{NetnsRef.label_of(path)}/{link_name}"
            scope.actions.append(
                DeleteLink(
                    tenant=owned.tenant,
                    target=target,
                    detail=owned.kind,
                    netns_path=path,
                    link=link_name,
                    kind=owned.kind,
                    ifindex=seen.ifindex,
                )
            )
        # stale link records of wanted links are simply overwritten when the link is created again

    def view_observed(self, tenant: Tenant, ns: NetnsState) -> dict[str, Any]:
        if not ns.exists:
            return {"links": {}}
        wanted = {link.name: link for link in tenant.links}
        return {
            "links": {
                name: _view(s.kind or "", s.up, s.addresses, s.mtu if wanted[name].mtu is not None else None)
                for name, s in sorted(ns.links.items())
                if name in wanted
            }
        }

    def view_desired(self, tenant: Tenant) -> dict[str, Any]:
        return {
            "links": {
                link.name: _view(link.kind, True, tuple(sorted(normalise_cidr(a) for a in link.addresses)), link.mtu)
                for link in sorted(tenant.links, key=lambda x: x.name)
            }
        }


def _view(kind: str, up: bool, addresses: tuple[str, ...], mtu: int | None) -> dict[str, Any]:
    view: dict[str, Any] = {"kind": kind, "state": "up" if up else "down", "addresses": list(addresses)}
    if mtu is not None:
        view["mtu"] = mtu
    return view


KIND = LinkKind()
__all__ = ["KIND", "AddLink", "DeleteLink", "Link", "SetLinkMtu", "SetLinkUp"]
