"""Prometheus rendering of the per-tenant counters, the build and process families (pure logic,
plus this test process's own /proc for the process_* values)."""

from __future__ import annotations

import ast
import os
import platform
import re
import resource
import time
from pathlib import Path

from support import tenant

import nsproxy_appliance
from nsproxy_appliance.daemon import metrics
from nsproxy_appliance.daemon.context import DURATION_BUCKETS, TenantContext

# name{labels} value — the exposition format's sample line.
SAMPLE = re.compile(r'^[a-zA-Z_:][a-zA-Z0-9_:]*(\{([a-zA-Z_][a-zA-Z0-9_]*="([^"\\]|\\.)*",?)*\})? [-+0-9.eEInf]+$')


def _ctx(name: str) -> TenantContext:
    return TenantContext(tenant=tenant(name, "ns", upstream_url="http://127.0.0.1:9000"))


INFO = {
    "generation": "abc",
    "reloads": {"ok": 2, "error": 1},
    "access_log_dropped": 0,
    "access_log_write_errors": 0,
    "start_time": 1.5,
}


def test_every_line_is_valid_exposition_format():
    a, b = _ctx("acme"), _ctx('we"ird\\name')
    a.counters.observe(200, 0.003)
    a.counters.upstream_error("refused")
    b.state = "failed"
    text = metrics.render([a, b], INFO).decode()
    assert text.endswith("\n")
    for line in text.splitlines():
        if line.startswith("# "):
            assert line.split()[1] in ("HELP", "TYPE")
            continue
        assert SAMPLE.match(line), line
    assert 'tenant="we\\"ird\\\\name"' in text
    assert 'nsproxy_upstream_errors_total{tenant="acme",reason="refused"} 1' in text
    assert 'nsproxy_tenant_state{tenant="we\\"ird\\\\name",state="failed"} 1' in text
    assert 'nsproxy_tenant_state{tenant="acme",state="failed"} 0' in text
    assert 'nsproxy_reloads_total{result="error"} 1' in text


def test_histogram_is_cumulative_with_inf_and_count():
    ctx = _ctx("acme")
    for duration in (0.0005, 0.003, 0.003, 7.0, 99.0):
        ctx.counters.observe(200, duration)
    text = metrics.render([ctx], INFO).decode()
    buckets = re.findall(r'nsproxy_request_duration_seconds_bucket\{tenant="acme",le="([^"]+)"\} (\d+)', text)
    assert [le for le, _ in buckets] == [repr(float(b)) for b in DURATION_BUCKETS] + ["+Inf"]
    counts = [int(c) for _, c in buckets]
    assert counts == sorted(counts)  # cumulative
    assert dict(buckets)["0.001"] == "1"
    assert dict(buckets)["0.005"] == "3"
    assert dict(buckets)["10.0"] == "4"
    assert dict(buckets)["+Inf"] == "5"
    assert 'nsproxy_request_duration_seconds_count{tenant="acme"} 5' in text
    assert 'nsproxy_requests_total{tenant="acme",class="2xx"} 5' in text


def samples(text: str) -> dict[str, float]:
    """Sample lines as {"name{labels}": value}."""
    return {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line[:1] != "#"}


def test_the_duplicate_failed_gauge_and_the_old_start_time_are_gone():
    ctx = _ctx("acme")
    ctx.state = "failed"
    text = metrics.render([ctx], INFO).decode()
    assert "nsproxy_tenant_failed" not in text
    assert "nsproxy_process_start_time_seconds" not in text
    assert 'nsproxy_tenant_state{tenant="acme",state="failed"} 1' in text
    assert sum(v for k, v in samples(text).items() if k.startswith('nsproxy_tenant_state{tenant="acme"')) == 1


def test_build_info_carries_the_package_and_python_versions():
    text = metrics.render([], INFO).decode()
    line = f'nsproxy_build_info{{version="{nsproxy_appliance.__version__}",python="{platform.python_version()}"}} 1'
    assert line in text.splitlines()
    assert "# TYPE nsproxy_build_info gauge" in text


def test_process_families_follow_the_prometheus_client_conventions():
    text = metrics.render([], INFO).decode()
    values = samples(text)
    for name, kind in (
        ("process_cpu_seconds_total", "counter"),
        ("process_virtual_memory_bytes", "gauge"),
        ("process_resident_memory_bytes", "gauge"),
        ("process_start_time_seconds", "gauge"),
        ("process_open_fds", "gauge"),
        ("process_max_fds", "gauge"),
    ):
        assert f"# TYPE {name} {kind}" in text, name
        assert name in values, name
    with open("/proc/self/statm") as f:
        rss_pages = int(f.read().split()[1])
    assert abs(values["process_resident_memory_bytes"] - rss_pages * resource.getpagesize()) < 64 * 2**20
    assert values["process_virtual_memory_bytes"] >= values["process_resident_memory_bytes"]
    assert 0 < values["process_cpu_seconds_total"] <= time.process_time() + 1
    # This process started before the test ran, and not before the machine booted.
    assert metrics._btime() < values["process_start_time_seconds"] <= time.time()
    assert abs(values["process_open_fds"] - len(os.listdir("/proc/self/fd"))) <= 2
    assert values["process_max_fds"] == resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def tenant_series(text: str, tenant: str) -> list[str]:
    return [k for k in samples(text) if f'tenant="{tenant}"' in k]


def test_series_per_tenant_stay_bounded_whatever_the_traffic():
    busy, quiet = _ctx("busy"), _ctx("quiet")
    for status in range(100, 1000):  # every three-digit status an upstream may send
        busy.counters.observe(status, status / 100)
    for reason in (*metrics.UPSTREAM_ERROR_REASONS, *(f"new-reason-{i}" for i in range(500))):
        busy.counters.upstream_error(reason)
    for reason in (*metrics.HANDSHAKE_FAILURE_REASONS, *(f"new-tls-reason-{i}" for i in range(500))):
        busy.counters.tls_handshake_failure(reason)
    text = metrics.render([busy, quiet], INFO).decode()
    assert len(tenant_series(text, "busy")) == metrics.MAX_SERIES_PER_TENANT  # every slot used
    assert len(tenant_series(text, "quiet")) < metrics.MAX_SERIES_PER_TENANT
    assert 'nsproxy_upstream_errors_total{tenant="busy",reason="other"} 500' in text
    assert 'nsproxy_tls_handshake_failures_total{tenant="busy",reason="other"} 501' in text
    assert "new-reason" not in text and "new-tls-reason" not in text


def test_the_documented_series_bound_is_the_code_s():
    doc = (Path(__file__).resolve().parents[2] / "docs" / "observability.md").read_text()
    assert f"at most **{metrics.MAX_SERIES_PER_TENANT}** series" in doc


def _strings(node: ast.AST) -> set[str]:
    return {c.value for c in ast.walk(node) if isinstance(c, ast.Constant) and isinstance(c.value, str)}


def _reason_literals() -> set[str]:
    """String constants the data plane passes as an upstream error reason: the reason argument of
    `_upstream_error(exchange, reason, status)`, `counters.upstream_error(reason)`,
    `_fail(..., error=reason)`, upstream.py's `_fail(reason)`, and what `_os_error_reason` returns."""
    daemon = Path(metrics.__file__).parent
    found: set[str] = set()
    for module in ("http.py", "upstream.py"):
        for node in ast.walk(ast.parse((daemon / module).read_text())):
            if isinstance(node, ast.FunctionDef) and node.name == "_os_error_reason":
                found |= {s for r in ast.walk(node) if isinstance(r, ast.Return) and r.value for s in _strings(r.value)}
            if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Attribute):
                continue
            name, args = node.func.attr, node.args
            position = {"_upstream_error": 1, "upstream_error": 0}.get(name)
            if name == "_fail" and module == "upstream.py":
                position = 0
            if position is not None and len(args) > position:
                found |= _strings(args[position])
            for kw in node.keywords:
                if kw.arg == "error":
                    found |= _strings(kw.value)
    return found


def test_the_data_plane_uses_only_reasons_the_metrics_know():
    literals = _reason_literals()
    assert {"refused", "timeout", "connect_timeout"} <= literals  # the scan still finds them
    assert literals <= set(metrics.UPSTREAM_ERROR_REASONS), literals - set(metrics.UPSTREAM_ERROR_REASONS)


def test_tls_reasons_are_ones_the_metrics_know():
    from nsproxy_appliance.daemon import tls

    tree = ast.parse(Path(tls.__file__).read_text())
    function = next(n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef) and n.name == "upstream_error_reason")
    returned = {s for r in ast.walk(function) if isinstance(r, ast.Return) and r.value for s in _strings(r.value)}
    assert returned == {"tls_verify_failed", "tls_error"}
    assert returned <= set(metrics.UPSTREAM_ERROR_REASONS)
    assert set(tls._BY_OPENSSL_REASON.values()) <= set(tls.HANDSHAKE_FAILURE_REASONS)
    assert "other" in tls.HANDSHAKE_FAILURE_REASONS


def test_certificate_expiry_and_handshake_failures():
    ctx = _ctx("acme")
    ctx.counters.tls_handshake_failure("no_certificate")
    ctx.counters.tls_handshake_failure("no_certificate")
    info = {**INFO, "tls_certificates": [("acme", "127.0.0.1:8443", "1F2E", 1.8e9), ("acme", "[::1]:443", "AB", 1.7e9)]}
    text = metrics.render([ctx], info).decode()
    assert "# TYPE nsproxy_tls_certificate_expiry_seconds gauge" in text
    assert "# TYPE nsproxy_tls_handshake_failures_total counter" in text
    values = samples(text)
    assert (
        values['nsproxy_tls_certificate_expiry_seconds{tenant="acme",listener="127.0.0.1:8443",serial="1F2E"}'] == 1.8e9
    )
    assert values['nsproxy_tls_certificate_expiry_seconds{tenant="acme",listener="[::1]:443",serial="AB"}'] == 1.7e9
    assert values['nsproxy_tls_handshake_failures_total{tenant="acme",reason="no_certificate"}'] == 2
    for line in text.splitlines():
        assert line.startswith("# ") or SAMPLE.match(line), line
