"""Typed actions, one module per kind of object: how it is planned, executed and shown.

    netns.py          named namespaces (create, prune; ownership by identity)
    lo.py             lo up in named namespaces
    link.py           owned links (create, MTU, up, prune); their addresses via address.py
    address.py        addresses on owned links
    daemon_config.py  the runtime config and the hand-off to nsproxyd (phase 2)

TENANT_KINDS lists the kernel object kinds in the order they are planned for each tenant (and
pruned across the run). A new kind of kernel object (veth, route, VLAN) is one more module with
its actions and a Kind, added here.
"""

from __future__ import annotations

from . import link, lo, netns
from .base import (
    DAEMON_TENANT,
    Action,
    Conflict,
    ExecContext,
    KernelAction,
    Kind,
    Op,
    Phase,
    Problem,
    PruneScope,
    Sign,
    Status,
    TenantScope,
)

TENANT_KINDS: tuple[Kind, ...] = (netns.KIND, lo.KIND, link.KIND)

__all__ = [
    "DAEMON_TENANT",
    "TENANT_KINDS",
    "Action",
    "Conflict",
    "ExecContext",
    "KernelAction",
    "Kind",
    "Op",
    "Phase",
    "Problem",
    "PruneScope",
    "Sign",
    "Status",
    "TenantScope",
]
