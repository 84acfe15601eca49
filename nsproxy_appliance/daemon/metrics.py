"""Prometheus text exposition (format 0.0.4) of the daemon's per-tenant counters, its build and
the standard process_* families (read from /proc/self, as the Prometheus clients do)."""

from __future__ import annotations

import os
import platform
import resource
from collections.abc import Iterable
from typing import Any

from .. import version
from .context import DURATION_BUCKETS, TenantContext
from .tls import HANDSHAKE_FAILURE_REASONS

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
STATES = ("starting", "serving", "failed", "draining")
STATUS_CLASSES = ("1xx", "2xx", "3xx", "4xx", "5xx")

# Every reason the data plane counts an upstream error under (http.py, upstream.py). A reason not
# listed here is exported as "other", so a new code path can never grow a tenant's series without
# bound; tests/unit/test_metrics_render.py checks the data plane uses no unlisted reason.
UPSTREAM_ERROR_REASONS = (
    "bad_response",
    "bad_upgrade",
    "client_error",
    "closed",
    "connect_error",
    "connect_timeout",
    "netns",
    "refused",
    "reset",
    "timeout",
    "tls_error",
    "tls_verify_failed",
    "unsolicited_101",
)
OTHER_REASON = "other"


# Families with one sample per tenant, read straight from a TenantCounters field:
# (metric, type, help, field).
_ONE_SAMPLE_PER_TENANT = (
    ("nsproxy_active_connections", "gauge", "Open client connections.", "active_connections"),
    ("nsproxy_connections_accepted_total", "counter", "Client connections accepted.", "accepted_connections"),
    (
        "nsproxy_connections_rejected_total",
        "counter",
        "Client connections refused at the tenant's limit.",
        "rejected_connections",
    ),
    ("nsproxy_received_bytes_total", "counter", "Bytes received from clients.", "bytes_in"),
    ("nsproxy_sent_bytes_total", "counter", "Bytes sent to clients.", "bytes_out"),
)

# The most series one tenant can have, whatever its traffic: one per state, status class and
# upstream error reason (plus "other"), one per single-sample family, and the histogram's buckets
# (+Inf included), _sum and _count. docs/observability.md states this number.
MAX_SERIES_PER_TENANT = (
    len(STATES)
    + len(STATUS_CLASSES)
    + len(UPSTREAM_ERROR_REASONS)
    + 1
    + len(_ONE_SAMPLE_PER_TENANT)
    + len(DURATION_BUCKETS)
    + 3
    + len(HANDSHAKE_FAILURE_REASONS)  # nsproxy_tls_handshake_failures_total ("other" included)
)
# Besides, nsproxy_tls_certificate_expiry_seconds has one series per certificate of a tenant's TLS
# listeners: bounded by its manifest entry, not by traffic.

_PROCESS_HELP = {  # names, types and help texts of the Prometheus client libraries
    "process_cpu_seconds_total": ("counter", "Total user and system CPU time spent in seconds."),
    "process_virtual_memory_bytes": ("gauge", "Virtual memory size in bytes."),
    "process_resident_memory_bytes": ("gauge", "Resident memory size in bytes."),
    "process_start_time_seconds": ("gauge", "Start time of the process since unix epoch in seconds."),
    "process_open_fds": ("gauge", "Number of open file descriptors."),
    "process_max_fds": ("gauge", "Maximum number of open file descriptors."),
}
_boot_time: float | None = None


def _btime() -> float:
    """The system's boot time (seconds since the epoch), read once: /proc/self/stat counts from it."""
    global _boot_time
    if _boot_time is None:
        with open("/proc/stat", "rb") as f:
            _boot_time = float(next(line.split()[1] for line in f if line.startswith(b"btime ")))
    return _boot_time


def process_samples() -> dict[str, float]:
    """The process_* values of this process; {} where /proc can't be read (never an error)."""
    try:
        with open("/proc/self/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()  # fields[0] is field 3 of proc(5)
        ticks = os.sysconf("SC_CLK_TCK")
        values = {
            "process_cpu_seconds_total": (int(fields[11]) + int(fields[12])) / ticks,
            "process_virtual_memory_bytes": float(fields[20]),
            "process_resident_memory_bytes": float(int(fields[21]) * resource.getpagesize()),
            "process_start_time_seconds": _btime() + int(fields[19]) / ticks,
            "process_open_fds": float(len(os.listdir("/proc/self/fd"))),
        }
    except (OSError, ValueError, IndexError, StopIteration):
        return {}
    values["process_max_fds"] = float(resource.getrlimit(resource.RLIMIT_NOFILE)[0])
    return values


def _reason(reason: str) -> str:
    return reason if reason in UPSTREAM_ERROR_REASONS else OTHER_REASON


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _le(bound: float) -> str:
    return repr(float(bound))


def render(contexts: Iterable[TenantContext], daemon: dict[str, Any]) -> bytes:
    """`daemon`: generation, reloads (result -> count), access_log_dropped, access_log_write_errors.

    Encoded one metric family at a time, so a scrape of 1000 tenants never holds every sample
    line as a separate string at once (that peak would show up in the daemon's RSS).
    """
    ctxs = list(contexts)
    out: list[str] = []
    chunks: list[bytes] = []

    def family(name: str, kind: str, help_: str) -> None:
        if out:
            chunks.append(("\n".join(out) + "\n").encode())
            out.clear()
        out.append(f"# HELP {name} {help_}")
        out.append(f"# TYPE {name} {kind}")

    family("nsproxy_build_info", "gauge", "The nsproxy version and the Python it runs on.")
    out.append(f'nsproxy_build_info{{version="{_label(version())}",python="{platform.python_version()}"}} 1')
    for name, value in process_samples().items():
        family(name, *_PROCESS_HELP[name])
        out.append(f"{name} {value!r}")
    family("nsproxy_config_generation_info", "gauge", "The runtime config generation being served.")
    out.append(f'nsproxy_config_generation_info{{generation="{_label(daemon["generation"])}"}} 1')
    family("nsproxy_reloads_total", "counter", "Reloads by result.")
    for result, count in sorted(daemon["reloads"].items()):
        out.append(f'nsproxy_reloads_total{{result="{result}"}} {count}')
    family("nsproxy_access_log_dropped_lines_total", "counter", "Access log lines dropped (writer behind).")
    out.append(f"nsproxy_access_log_dropped_lines_total {daemon['access_log_dropped']}")
    family("nsproxy_access_log_write_errors_total", "counter", "Failed access log writes or reopens.")
    out.append(f"nsproxy_access_log_write_errors_total {daemon['access_log_write_errors']}")

    labels = [(ctx, f'tenant="{_label(ctx.tenant.name)}"') for ctx in ctxs]

    family("nsproxy_tenant_state", "gauge", "1 for the state the tenant is in.")
    for ctx, lab in labels:
        for state in STATES:
            out.append(f'nsproxy_tenant_state{{{lab},state="{state}"}} {int(ctx.state == state)}')

    family("nsproxy_requests_total", "counter", "Requests answered, by status class.")
    for ctx, lab in labels:
        for cls, count in sorted(ctx.counters.requests_by_class.items()):
            out.append(f'nsproxy_requests_total{{{lab},class="{cls}"}} {count}')
    family("nsproxy_upstream_errors_total", "counter", "Upstream failures, by reason.")
    for ctx, lab in labels:
        by_reason: dict[str, int] = {}
        for reason, count in ctx.counters.upstream_errors.items():
            by_reason[_reason(reason)] = by_reason.get(_reason(reason), 0) + count
        for reason, count in sorted(by_reason.items()):
            out.append(f'nsproxy_upstream_errors_total{{{lab},reason="{reason}"}} {count}')
    for name, kind, help_, counter in _ONE_SAMPLE_PER_TENANT:
        family(name, kind, help_)
        for ctx, lab in labels:
            out.append(f"{name}{{{lab}}} {getattr(ctx.counters, counter)}")
    family("nsproxy_request_duration_seconds", "histogram", "Time from request head to the end of the response.")
    for ctx, lab in labels:
        c = ctx.counters
        cumulative = 0
        for bound, count in zip(DURATION_BUCKETS, c.duration_buckets, strict=False):
            cumulative += count
            out.append(f'nsproxy_request_duration_seconds_bucket{{{lab},le="{_le(bound)}"}} {cumulative}')
        cumulative += c.duration_buckets[-1]
        out.append(f'nsproxy_request_duration_seconds_bucket{{{lab},le="+Inf"}} {cumulative}')
        out.append(f"nsproxy_request_duration_seconds_sum{{{lab}}} {c.duration_sum}")
        out.append(f"nsproxy_request_duration_seconds_count{{{lab}}} {cumulative}")
    family(
        "nsproxy_tls_handshake_failures_total", "counter", "Failed TLS handshakes on the tenant's listeners, by reason."
    )
    for ctx, lab in labels:
        failures: dict[str, int] = {}
        for reason, count in ctx.counters.tls_handshake_failures.items():
            known = reason if reason in HANDSHAKE_FAILURE_REASONS else "other"
            failures[known] = failures.get(known, 0) + count
        for reason, count in sorted(failures.items()):
            out.append(f'nsproxy_tls_handshake_failures_total{{{lab},reason="{reason}"}} {count}')
    family(
        "nsproxy_tls_certificate_expiry_seconds",
        "gauge",
        "When a certificate a TLS listener serves expires, in seconds since the epoch.",
    )
    for tenant, listener, serial, not_after in daemon.get("tls_certificates", ()):
        labels_ = f'tenant="{_label(tenant)}",listener="{_label(listener)}",serial="{_label(serial)}"'
        out.append(f"nsproxy_tls_certificate_expiry_seconds{{{labels_}}} {not_after!r}")
    chunks.append(("\n".join(out) + "\n").encode())
    return b"".join(chunks)
