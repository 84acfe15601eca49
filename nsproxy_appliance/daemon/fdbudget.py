"""The process's file descriptors, shared fairly: no tenant can take the fds the others need.

Every tenant is served by one process, so RLIMIT_NOFILE is a resource all tenants share: if one
tenant's connections exhaust it, accept() and connect() fail for everyone. nsproxyd therefore
raises its soft limit to the hard limit at start (`raise_nofile_limit`) and admits connections
against a budget (`FdBudget`) computed from it:

    usable   = limit - RESERVED_FDS - listeners          (admin API, logs, config, netns fds, ...)
    cost     = 2 per client connection (itself + the upstream connection it may hold)
               + 1 per idle pooled upstream connection
    headroom = max(MIN_HEADROOM, usable // 8)            kept for tenants that use little
    general  = usable - headroom

A client connection is admitted while the total cost stays within `general`; beyond that, only
tenants holding fewer than `quiet_share` connections are admitted, into the headroom. One tenant
(or several) can thus hold at most `general` worth of fds, and a quiet tenant still gets in.
"""

from __future__ import annotations

import logging
import resource

log = logging.getLogger("nsproxyd")

RESERVED_FDS = 64  # admin sockets, log files, config reads, namespace fds, inotify, stdio, slack
MIN_HEADROOM = 32
CLIENT_COST = 2


def raise_nofile_limit() -> tuple[int, int]:
    """Raise the soft RLIMIT_NOFILE to the hard limit; returns (soft, hard) as they now are."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY:
        hard = 1 << 20  # the kernel's default nr_open: an infinite hard limit is not settable as soft
    if soft != hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError) as e:
            log.warning("cannot raise RLIMIT_NOFILE from %d to %d: %s", soft, hard, e)
    return soft, hard


class FdBudget:
    """Admission of client connections and pooled upstream connections against the fd limit."""

    __slots__ = ("clients", "general", "headroom", "idle", "limit", "listeners", "quiet_share", "usable")

    def __init__(self, limit: int | None = None, listeners: int = 0) -> None:
        self.limit = limit if limit is not None else resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        self.clients = 0  # client connections (and tunnels) open now, all tenants
        self.idle = 0  # idle pooled upstream connections, all tenants
        self.listeners = 0
        self.usable = self.headroom = self.general = self.quiet_share = 0
        self.set_listeners(listeners)

    def set_limit(self, limit: int) -> None:
        """The process's fd limit changed (raised at start): recompute the budget."""
        self.limit = limit
        self.set_listeners(self.listeners)

    def set_listeners(self, listeners: int) -> None:
        """Recompute the budget for `listeners` open listening sockets (after start and each reload)."""
        self.listeners = listeners
        self.usable = max(0, self.limit - RESERVED_FDS - listeners)
        self.headroom = max(MIN_HEADROOM, self.usable // 8)
        self.general = max(0, self.usable - self.headroom)
        self.quiet_share = max(4, self.headroom // (8 * CLIENT_COST))

    @property
    def cost(self) -> int:
        return CLIENT_COST * self.clients + self.idle

    def admit(self, tenant_active: int) -> bool:
        """Whether a new client connection of a tenant that holds `tenant_active` may be served."""
        after = self.cost + CLIENT_COST
        if after <= self.general:
            return True
        return after <= self.usable and tenant_active < self.quiet_share

    def may_pool(self) -> bool:
        """Whether one more idle upstream connection may be kept (else it is closed)."""
        return self.cost + 1 <= self.general

    def describe(self) -> str:
        return (
            f"fd limit {self.limit}: {self.listeners} listeners, {self.usable} usable by connections "
            f"({self.usable // CLIENT_COST} client connections), {self.headroom} kept as headroom for tenants "
            f"holding fewer than {self.quiet_share} connections"
        )


# The budget of a process that never made its own (tests and benchmarks that serve tenants
# in-process); nsproxyd makes one after raising its limit and gives it to every TenantContext.
DEFAULT = FdBudget()
