"""Per-tenant state the daemon keeps while serving: current config, counters, connections.

The data plane (http.py, upstream.py) reads and updates it on every request; the control plane
(main.py, listeners.py, admin.py) swaps `tenant` on reload and reads the counters for /metrics.
`TenantPolicy` is what the data plane derives from one version of the tenant's config; it is
rebuilt the first time a request sees a new `tenant` (a reload), never per request.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..model import Tenant
from .fdbudget import DEFAULT, FdBudget
from .request_head import RequestPolicy

if TYPE_CHECKING:
    from .upstream import UpstreamPool

# Request duration histogram bucket upper bounds, in seconds (Prometheus `le` labels).
DURATION_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
STATUS_CLASSES = ("1xx", "2xx", "3xx", "4xx", "5xx")
_CLASS_INDEX = (0, 0, 1, 2, 3, 4, 4, 4, 4, 4)  # status // 100 -> index in STATUS_CLASSES


class TenantCounters:
    """What /metrics and /tenants report per tenant.

    The containers are made on a tenant's first request or error: with 10,000 tenants most are idle
    at any time, and each empty dict and list would cost memory anyway.
    """

    def __init__(self) -> None:
        self.active_connections = 0
        self.accepted_connections = 0
        self.rejected_connections = 0  # refused at the tenant's max_connections or the process's fd budget
        self.bytes_in = 0
        self.bytes_out = 0
        self.duration_sum = 0.0
        self._by_class: list[int] | None = None  # by _CLASS_INDEX
        self._buckets: list[int] | None = None  # by DURATION_BUCKETS, then +Inf
        self._errors: dict[str, int] | None = None  # reason ("refused", "timeout", ...) -> count
        self._tls_failures: dict[str, int] | None = None  # failed TLS handshakes: reason -> count (tls.py)

    def observe(self, status: int, duration: float) -> None:
        by_class = self._by_class
        buckets = self._buckets
        if by_class is None or buckets is None:
            by_class = self._by_class = [0] * len(STATUS_CLASSES)
            buckets = self._buckets = [0] * (len(DURATION_BUCKETS) + 1)
        by_class[_CLASS_INDEX[status // 100]] += 1  # llhttp: a status has three digits
        buckets[bisect.bisect_left(DURATION_BUCKETS, duration)] += 1
        self.duration_sum += duration

    def upstream_error(self, reason: str) -> None:
        errors = self._errors
        if errors is None:
            errors = self._errors = {}
        errors[reason] = errors.get(reason, 0) + 1

    def tls_handshake_failure(self, reason: str) -> None:
        failures = self._tls_failures
        if failures is None:
            failures = self._tls_failures = {}
        failures[reason] = failures.get(reason, 0) + 1

    @property
    def tls_handshake_failures(self) -> dict[str, int]:
        return dict(self._tls_failures or {})

    @property
    def requests_by_class(self) -> dict[str, int]:
        """Requests answered, by status class ("1xx" .. "5xx")."""
        counts = self._by_class or [0] * len(STATUS_CLASSES)
        return dict(zip(STATUS_CLASSES, counts, strict=True))

    @property
    def duration_buckets(self) -> list[int]:
        return list(self._buckets or [0] * (len(DURATION_BUCKETS) + 1))

    @property
    def upstream_errors(self) -> dict[str, int]:
        return dict(self._errors or {})


AccessLog = Callable[[dict[str, Any]], None]
_NO_CONNECTIONS: frozenset[Any] = frozenset()


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
        tls = tenant.tls
        self.request = RequestPolicy.build(
            tenant.tenant_header, tenant.tenant_id, managed=(tls.subject_header, tls.fingerprint_header)
        )
        self.subject_header = tls.subject_header  # mutual TLS: the client certificate's headers
        self.fingerprint_header = tls.fingerprint_header
        self.upstream_label = tenant.upstream.describe()
        self.pool: UpstreamPool | None = None  # resolved on the first request: opening it may fail


@dataclass(eq=False)
class TenantContext:
    """One per tenant for the daemon's lifetime (kept across reloads while the tenant exists)."""

    tenant: Tenant  # replaced on reload: new requests see the new upstream, header and limits
    counters: TenantCounters = field(default_factory=TenantCounters)
    access_log: AccessLog | None = None
    pool: Any = None  # upstream.UpstreamPool, created by the data plane
    budget: FdBudget = field(default=DEFAULT)  # the process's fd budget, shared by every tenant
    state: str = "starting"  # "serving", "failed", "draining"
    last_error: str | None = None
    _policy: TenantPolicy | None = field(default=None, repr=False)
    _connections: set[Any] | None = field(default=None, repr=False)

    @property
    def connections(self) -> AbstractSet[Any]:
        """Live client-side protocols (and tunnels); the data plane adds and discards them."""
        return self._connections if self._connections is not None else _NO_CONNECTIONS

    def add_connection(self, conn: Any) -> None:
        if self._connections is None:
            self._connections = set()
        self._connections.add(conn)

    def discard_connection(self, conn: Any) -> None:
        if self._connections is not None:
            self._connections.discard(conn)
            if not self._connections:
                self._connections = None  # an idle tenant holds no empty set

    @property
    def policy(self) -> TenantPolicy:
        """The data plane's view of the current `tenant` (rebuilt once after a reload)."""
        policy = self._policy
        if policy is None or policy.tenant is not self.tenant:
            policy = self._policy = TenantPolicy(self.tenant)
        return policy
