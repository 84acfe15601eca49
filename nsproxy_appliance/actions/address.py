"""Addresses on the links nsproxy owns: exactly the manifest's, nothing else.

Addresses belong to a link, so the link kind plans them link by link (plan_for_link); missing ones
are added in phase 1, extra ones removed in phase 3, after the daemon let go of them. IPv6 ones are
added with IFA_F_NODAD, so they are usable at once.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..kernel.observed import LinkState, normalise_cidr
from ..model import Link
from .base import ExecContext, KernelAction, Op, Phase, Sign, TenantScope


@dataclass(frozen=True, kw_only=True)
class AddressAction(KernelAction):
    link: str
    ifindex: int | None  # None: the link is created in this run
    address: str  # normalised CIDR

    @property
    def what(self) -> str:
        return f"link {self.link}"


@dataclass(frozen=True, kw_only=True)
class AddAddress(AddressAction):
    op = Op.ADD_ADDRESS
    phase = Phase.CONVERGE
    sign = Sign.ADD

    def execute(self, ctx: ExecContext) -> None:
        index = ctx.link_index(self.netns_path, self.link, self.ifindex)
        ctx.channel(self.netns_path).add_address(index, self.address, self.what)


@dataclass(frozen=True, kw_only=True)
class RemoveAddress(AddressAction):
    op = Op.REMOVE_ADDRESS
    phase = Phase.PRUNE
    sign = Sign.DESTROY

    def execute(self, ctx: ExecContext) -> None:
        index = ctx.link_index(self.netns_path, self.link, self.ifindex)
        ctx.channel(self.netns_path).remove_address(index, self.address, self.what)


def plan_for_link(scope: TenantScope, link: Link, target: str, seen: LinkState | None) -> None:
    """Addresses of `link` (seen None: the link is created in this run, so it has none yet)."""
    t = scope.tenant

    def action(cls: type[AddressAction], cidr: str) -> AddressAction:
        ifindex = None if seen is None else seen.ifindex
        return cls(
            tenant=t.name,
            target=target,
            detail=cidr,
            netns_path=t.netns.path,
            link=link.name,
            ifindex=ifindex,
            address=cidr,
        )

    if seen is None:
        scope.converge.extend(action(AddAddress, normalise_cidr(cidr)) for cidr in link.addresses)
        return
    want = [normalise_cidr(a) for a in link.addresses]
    have = set(seen.addresses)
    scope.converge.extend(action(AddAddress, cidr) for cidr in want if cidr not in have)
    scope.prune.extend(action(RemoveAddress, cidr) for cidr in sorted(have - set(want)))
