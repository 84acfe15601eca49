"""Per-tenant state the daemon keeps while serving: current config, counters, connections.

The data plane (http.py, upstream.py) reads and updates it on every request; the control plane
(main.py, listeners.py, admin.py) swaps `tenant` on reload and reads the counters for /metrics.
`TenantPolicy` is what the data plane derives from one version of the tenant's config; it is
rebuilt the first time a request sees a new `tenant` (a reload), never per request.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..model import Tenant
from .fdbudget import DEFAULT, FdBudget
from .request_head import RequestPolicy

if TYPE_CHECKING:
    from .upstream import UpstreamPool

# Request duration histogram bucket upper bounds, in seconds (Prometheus `le` labels).
DURATION_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
_STATUS_CLASSES = ("1xx", "1xx", "2xx", "3xx", "4xx", *["5xx"] * 5)  # by status // 100 (0: never sent)


@dataclass
class TenantCounters:
    requests_by_class: dict[str, int] = field(
        default_factory=lambda: dict.fromkeys(("1xx", "2xx", "3xx", "4xx", "5xx"), 0)
    )
    upstream_errors: dict[str, int] = field(default_factory=dict)  # reason ("refused", "timeout", ...) -> count
    active_connections: int = 0
    accepted_connections: int = 0
    rejected_connections: int = 0  # refused at the tenant's max_connections or the process's fd budget
    bytes_in: int = 0
    bytes_out: int = 0
    duration_buckets: list[int] = field(default_factory=lambda: [0] * (len(DURATION_BUCKETS) + 1))
    duration_sum: float = 0.0

    def observe(self, status: int, duration: float) -> None:
        self.requests_by_class[_STATUS_CLASSES[status // 100]] += 1  # llhttp: status has three digits
        self.duration_buckets[bisect.bisect_left(DURATION_BUCKETS, duration)] += 1
        self.duration_sum += duration

    def upstream_error(self, reason: str) -> None:
        self.upstream_errors[reason] = self.upstream_errors.get(reason, 0) + 1


AccessLog = Callable[[dict[str, Any]], None]


class TenantPolicy:
    """What the data plane derives from one version of a tenant's config.

    The limits are copied into plain attributes: they are read on every request, and a frozen
    dataclass attribute is a slower read than an attribute of this (compiled) class.
    """

    def __init__(self, tenant: Tenant) -> None:
        self.tenant = tenant
        self.tenant_name = tenant.name
        self.limits = limits = tenant.limits
        self.header_timeout: float = limits.header_timeout
        self.idle_timeout: float = limits.idle_timeout
        self.connect_timeout: float = limits.connect_timeout
        self.read_timeout: float = limits.read_timeout
        self.body_timeout: float = limits.body_timeout
        self.max_header_bytes: int = limits.max_header_bytes
        self.max_body_bytes: int = limits.max_body_bytes
        self.max_connections: int = limits.max_connections
        self.request = RequestPolicy.build(tenant.tenant_header, tenant.tenant_id)
        self.upstream_label = tenant.upstream.describe()
        self.pool: UpstreamPool | None = None  # resolved on the first request: opening it may fail


@dataclass(eq=False)
class TenantContext:
    """One per tenant for the daemon's lifetime (kept across reloads while the tenant exists)."""

    tenant: Tenant  # replaced on reload: new requests see the new upstream, header and limits
    counters: TenantCounters = field(default_factory=TenantCounters)
    access_log: AccessLog | None = None
    connections: set[Any] = field(default_factory=set)  # live client-side protocols (and tunnels)
    pool: Any = None  # upstream.UpstreamPool, created by the data plane
    budget: FdBudget = field(default=DEFAULT)  # the process's fd budget, shared by every tenant
    state: str = "starting"  # "serving", "failed", "draining"
    last_error: str | None = None
    _policy: TenantPolicy | None = field(default=None, repr=False)

    @property
    def policy(self) -> TenantPolicy:
        """The data plane's view of the current `tenant` (rebuilt once after a reload)."""
        policy = self._policy
        if policy is None or policy.tenant is not self.tenant:
            policy = self._policy = TenantPolicy(self.tenant)
        return policy
