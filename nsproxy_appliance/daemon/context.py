"""Per-tenant state the daemon keeps while serving: current config, counters, connections.

The data plane (http.py, upstream.py) reads and updates it on every request; the control plane
(main.py, listeners.py, admin.py) swaps `tenant` on reload and reads the counters for /metrics.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..model import Tenant

# Request duration histogram bucket upper bounds, in seconds (Prometheus `le` labels).
DURATION_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


@dataclass
class TenantCounters:
    requests_by_class: dict[str, int] = field(
        default_factory=lambda: dict.fromkeys(("1xx", "2xx", "3xx", "4xx", "5xx"), 0)
    )
    upstream_errors: dict[str, int] = field(default_factory=dict)  # reason ("refused", "timeout", ...) -> count
    active_connections: int = 0
    accepted_connections: int = 0
    rejected_connections: int = 0  # refused at the tenant's max_connections
    bytes_in: int = 0
    bytes_out: int = 0
    duration_buckets: list[int] = field(default_factory=lambda: [0] * (len(DURATION_BUCKETS) + 1))
    duration_sum: float = 0.0

    def observe(self, status: int, duration: float) -> None:
        self.requests_by_class[f"{status // 100}xx"] = self.requests_by_class.get(f"{status // 100}xx", 0) + 1
        self.duration_buckets[bisect.bisect_left(DURATION_BUCKETS, duration)] += 1
        self.duration_sum += duration

    def upstream_error(self, reason: str) -> None:
        self.upstream_errors[reason] = self.upstream_errors.get(reason, 0) + 1


AccessLog = Callable[[dict[str, Any]], None]


@dataclass(eq=False)
class TenantContext:
    """One per tenant for the daemon's lifetime (kept across reloads while the tenant exists)."""

    tenant: Tenant  # replaced on reload: new requests see the new upstream, header and limits
    counters: TenantCounters = field(default_factory=TenantCounters)
    access_log: AccessLog | None = None
    connections: set[Any] = field(default_factory=set)  # live client-side protocols
    pool: Any = None  # upstream.UpstreamPool, created by the data plane
    dataplane: Any = None  # http.TenantPolicy: the data plane's cache derived from `tenant`
    state: str = "starting"  # "serving", "failed", "draining"
    last_error: str | None = None
