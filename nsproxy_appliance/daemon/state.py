"""What the running daemon holds, shared by the reconciler (which changes it), the reports (which
read it) and the process entry: uvicorn's ServerState, for nsproxyd.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from ..runtime_config import RuntimeConfig
from . import listeners
from .context import TenantContext


class TenantState(StrEnum):
    """A served tenant's state (TenantContext.state, /tenants, nsproxy_tenant_state)."""

    STARTING = "starting"
    SERVING = "serving"
    FAILED = "failed"
    DRAINING = "draining"


class TenantSlot:
    """A served tenant: its context (kept across reloads), listeners and protocol factory."""

    __slots__ = ("ctx", "factory", "listeners")

    def __init__(self, ctx: TenantContext, factory: listeners.FactoryFor) -> None:
        self.ctx = ctx
        self.factory = factory
        self.listeners = listeners.TenantListeners()
        self.listeners.context = ctx  # a TLS listener counts handshakes against the tenant's limits


@dataclass
class DaemonState:
    config: RuntimeConfig
    access_log: Any = None  # accesslog.AccessLog or None ("off"); its drop/error counters are reported
    generation: str | None = None  # the config generation applied
    applied: bool = False  # the first config has been applied (every tenant tried once)
    stopping: bool = False
    slots: dict[str, TenantSlot] = field(default_factory=dict)
    draining: list[TenantContext] = field(default_factory=list)  # removed tenants whose connections drain
    reloads: dict[str, int] = field(default_factory=lambda: {"ok": 0, "error": 0})
    start_time: float = field(default_factory=time.time)

    def contexts(self) -> list[TenantContext]:
        """Served tenants, then draining ones (skipped when re-added: one series per tenant label)."""
        out = [slot.ctx for slot in self.slots.values()]
        seen = set(self.slots)
        for ctx in self.draining:
            if ctx.tenant.name not in seen:
                seen.add(ctx.tenant.name)
                out.append(ctx)
        return out
