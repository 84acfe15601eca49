"""Prometheus text exposition (format 0.0.4) of the daemon's per-tenant counters."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from .context import DURATION_BUCKETS, TenantContext

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
STATES = ("starting", "serving", "failed", "draining")


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


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _le(bound: float) -> str:
    return repr(float(bound))


def render(contexts: Iterable[TenantContext], daemon: dict[str, Any]) -> bytes:
    """`daemon`: generation, reloads (result -> count), access_log_dropped, access_log_write_errors, start_time.

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

    family("nsproxy_config_generation_info", "gauge", "The runtime config generation being served.")
    out.append(f'nsproxy_config_generation_info{{generation="{_label(daemon["generation"])}"}} 1')
    family("nsproxy_reloads_total", "counter", "Reloads by result.")
    for result, count in sorted(daemon["reloads"].items()):
        out.append(f'nsproxy_reloads_total{{result="{result}"}} {count}')
    family("nsproxy_access_log_dropped_lines_total", "counter", "Access log lines dropped (writer behind).")
    out.append(f"nsproxy_access_log_dropped_lines_total {daemon['access_log_dropped']}")
    family("nsproxy_access_log_write_errors_total", "counter", "Failed access log writes or reopens.")
    out.append(f"nsproxy_access_log_write_errors_total {daemon['access_log_write_errors']}")
    family("nsproxy_process_start_time_seconds", "gauge", "Start time of the daemon since the epoch.")
    out.append(f"nsproxy_process_start_time_seconds {daemon['start_time']:.3f}")

    labels = [(ctx, f'tenant="{_label(ctx.tenant.name)}"') for ctx in ctxs]

    family("nsproxy_tenant_state", "gauge", "1 for the state the tenant is in.")
    for ctx, lab in labels:
        for state in STATES:
            out.append(f'nsproxy_tenant_state{{{lab},state="{state}"}} {int(ctx.state == state)}')
    family("nsproxy_tenant_failed", "gauge", "1 when the tenant is not fully served (see /tenants for the reason).")
    for ctx, lab in labels:
        out.append(f"nsproxy_tenant_failed{{{lab}}} {int(ctx.state == 'failed')}")

    family("nsproxy_requests_total", "counter", "Requests answered, by status class.")
    for ctx, lab in labels:
        for cls, count in sorted(ctx.counters.requests_by_class.items()):
            out.append(f'nsproxy_requests_total{{{lab},class="{cls}"}} {count}')
    family("nsproxy_upstream_errors_total", "counter", "Upstream failures, by reason.")
    for ctx, lab in labels:
        for reason, count in sorted(ctx.counters.upstream_errors.items()):
            out.append(f'nsproxy_upstream_errors_total{{{lab},reason="{_label(reason)}"}} {count}')
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
    chunks.append(("\n".join(out) + "\n").encode())
    return b"".join(chunks)
