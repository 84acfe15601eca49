"""What the admin API reports about the daemon: readiness, per-tenant reports, metrics inputs.

Pure functions of the DaemonState: reading never changes anything.
"""

from __future__ import annotations

import json
from typing import Any

from ..model import Listen
from . import listeners
from .context import TenantContext
from .state import DaemonState, TenantState


def not_serving(state: DaemonState) -> dict[str, str]:
    """Every tenant of the applied manifest that does not serve, with why (sorted by name)."""
    out = {name: f"not served: {reason}" for name, reason in state.config.excluded.items()}
    for name, slot in state.slots.items():
        ctx = slot.ctx
        if ctx.state != TenantState.SERVING:
            out[name] = f"{ctx.state}: {ctx.last_error}" if ctx.last_error else str(ctx.state)
    return dict(sorted(out.items()))


def readiness(state: DaemonState) -> dict[str, Any]:
    """/readyz: `ready` only when the config is applied and every tenant of it serves.

    `applied` is whether the daemon has applied its config at all (what nsproxy-apply waits for
    before it looks at the tenants); `not_serving` names each tenant that does not serve and why.
    Before that (starting, stopping) the answer names no tenant: every one would be "starting", and
    building that list for each poll of nsproxy-apply or the Ansible gate took half of the daemon's
    CPU while it started 10,000 tenants (bench/daemon_startup_bench.py).
    """
    applied = state.applied and not state.stopping
    if not applied:
        return {
            "ready": False,
            "applied": False,
            "generation": state.generation,
            "tenants": len(state.slots),
            "stopping": state.stopping,
        }
    missing = not_serving(state)
    return {
        "ready": applied and not missing,
        "applied": applied,
        "generation": state.generation,
        "tenants": len(state.slots),
        "serving": sum(slot.ctx.state == TenantState.SERVING for slot in state.slots.values()),
        "failed": sorted(name for name, slot in state.slots.items() if slot.ctx.state == TenantState.FAILED),
        "not_serving": missing,
        "draining": sorted(ctx.tenant.name for ctx in state.draining),
        "stopping": state.stopping,
    }


def metrics_info(state: DaemonState) -> dict[str, Any]:
    return {
        "generation": state.generation or "",
        "reloads": state.reloads,
        "access_log_dropped": getattr(state.access_log, "dropped_lines", 0),
        "access_log_write_errors": getattr(state.access_log, "write_errors", 0),
        "start_time": state.start_time,
        "tls_certificates": tls_certificates(state),
    }


def tls_certificates(state: DaemonState) -> list[tuple[str, str, str, float]]:
    """(tenant, listener, serial, expiry) of every certificate the TLS listeners serve now."""
    return [
        (name, str(listen), info.serial, info.not_after)
        for name, slot in state.slots.items()
        for listen, terminator in slot.listeners.tls.items()
        for info in terminator.certificates
    ]


def tenants_json(state: DaemonState) -> bytes:
    """The /tenants document, encoded tenant by tenant (bounded peak memory with many tenants)."""
    reports: list[tuple[TenantContext, listeners.TenantListeners | None]]
    reports = [(slot.ctx, slot.listeners) for slot in state.slots.values()]
    reports += [(ctx, None) for ctx in state.draining]
    body = b",\n".join(json.dumps(tenant_report(ctx, lst)).encode() for ctx, lst in reports)
    return b'{"generation": %s, "tenants": [\n%s\n]}\n' % (json.dumps(state.generation).encode(), body)


def tenant_report(ctx: TenantContext, lst: listeners.TenantListeners | None) -> dict[str, Any]:
    t = ctx.tenant
    ident = lst.identity if lst is not None else None
    c = ctx.counters
    return {
        "name": t.name,
        "tenant_id": t.tenant_id,
        "tenant_header": t.tenant_header,
        "state": str(ctx.state),
        "last_error": ctx.last_error,
        "netns": {
            "name": t.netns.name,
            "path": t.netns.path,
            "identity": ident.to_json() if ident else None,
        },
        "listeners": [
            {
                "address": str(listen),
                "listening": lst is not None and listen in lst.servers,
                "error": lst.errors.get(listen) if lst is not None else None,
                **({} if listen.tls is None else {"tls": listener_tls(listen, lst)}),
            }
            for listen in t.listen
        ],
        "upstream": t.upstream.describe(),
        **({} if t.upstream.tls is None else {"upstream_tls": upstream_tls(ctx)}),
        "counters": {
            "requests_by_class": dict(c.requests_by_class),
            "upstream_errors": dict(c.upstream_errors),
            "active_connections": c.active_connections,
            "accepted_connections": c.accepted_connections,
            "rejected_connections": c.rejected_connections,
            "bytes_in": c.bytes_in,
            "bytes_out": c.bytes_out,
            "requests": sum(c.requests_by_class.values()),
            "tls_handshake_failures": c.tls_handshake_failures,
        },
    }


def listener_tls(listen: Listen, lst: listeners.TenantListeners | None) -> dict[str, Any]:
    """A TLS listener's settings and the certificates it serves now (serial, expiry, names)."""
    tls = listen.tls
    assert tls is not None
    terminator = lst.tls.get(listen) if lst is not None else None
    return {
        "min_version": tls.min_version,
        "client_auth": tls.client_auth if tls.client_ca is not None else None,
        "certificates": [info.to_json() for info in terminator.certificates] if terminator is not None else [],
    }


def upstream_tls(ctx: TenantContext) -> dict[str, Any]:
    """How an https upstream is verified, and why the last connection to it failed in TLS, if it did."""
    tls = ctx.tenant.upstream.tls
    assert tls is not None
    return {
        "ca": tls.ca or "system",
        "client_certificate": tls.cert,
        "server_hostname": tls.server_hostname or ctx.tenant.upstream.host,
        "last_error": getattr(ctx.pool, "tls_error", None),
    }
