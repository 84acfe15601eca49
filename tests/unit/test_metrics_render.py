"""Prometheus rendering of the per-tenant counters (pure logic)."""

from __future__ import annotations

import re

from nsproxy_appliance import model
from nsproxy_appliance.daemon import metrics
from nsproxy_appliance.daemon.context import DURATION_BUCKETS, TenantContext

# name{labels} value — the exposition format's sample line.
SAMPLE = re.compile(r'^[a-zA-Z_:][a-zA-Z0-9_:]*(\{([a-zA-Z_][a-zA-Z0-9_]*="([^"\\]|\\.)*",?)*\})? [-+0-9.eEInf]+$')


def _ctx(name: str) -> TenantContext:
    tenant = model.Tenant(
        name=name,
        netns=model.NetnsRef.named("ns"),
        listen=(model.Listen("127.0.0.1", 8080),),
        upstream=model.Upstream(kind="http", host="127.0.0.1", port=9000, url="http://127.0.0.1:9000"),
        tenant_id=name,
        tenant_header="X-Tenant-ID",
    )
    return TenantContext(tenant=tenant)


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
    assert 'nsproxy_tenant_failed{tenant="we\\"ird\\\\name"} 1' in text
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
