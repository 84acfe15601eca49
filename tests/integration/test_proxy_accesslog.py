"""The access log record and X-Request-ID, through the real data plane (in-process harness)."""

from __future__ import annotations

import json

from proxy_harness import make_tenant, raw_request, serve_raw, split_responses


def test_record_carries_what_envoy_nginx_and_haproxy_logs_carry(proxy, upstream):
    _, port = proxy.serve(make_tenant("acme", port=upstream.port, tenant_id="acme-7"))
    data = raw_request(
        port,
        b"POST /echo/x?y=1 HTTP/1.1\r\nHost: shop.test\r\nUser-Agent: probe/1\r\nX-Request-ID: mine\r\n"
        b"Content-Length: 5\r\nConnection: close\r\n\r\nhello",
    )
    [(status, _, body)] = split_responses(data)
    assert status == 200
    seen = dict(json.loads(body)["headers"])
    [record] = proxy.access_log
    assert record["request_id"] == seen["X-Request-ID"] and record["request_id"] != "mine"
    assert record["client_request_id"] == "mine"
    assert record | {"time": 0} == record | {
        "time": 0,
        "tenant": "acme",
        "tenant_id": "acme-7",
        "client": "127.0.0.1",
        "listener": f"127.0.0.1:{port}",
        "http_version": "1.1",
        "method": "POST",
        "path": "/echo/x?y=1",
        "host": "shop.test",
        "user_agent": "probe/1",
        "status": 200,
        "request_bytes": 5,
        "upstream_status": 200,
        "upstream_address": f"127.0.0.1:{upstream.port}",
        "termination": "complete",
    }
    assert record["response_bytes"] == len(body) and record["client_port"] > 0
    assert record["upstream_connect_time"] >= 0 and record["upstream_first_byte_time"] >= 0


def test_request_ids_differ_per_request_and_an_upstream_failure_says_why(proxy, upstream):
    _, port = proxy.serve(make_tenant("acme", port=upstream.port))
    raw_request(
        port,
        b"GET /echo/1 HTTP/1.1\r\nHost: a\r\n\r\n" + b"GET /echo/2 HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
    )
    first, second = proxy.access_log
    assert first["request_id"] != second["request_id"]
    assert second["upstream_connect_time"] is None  # the attached connection served it

    async def refuse(reader, writer):
        writer.transport.abort()

    _, bad = proxy.serve(make_tenant("other", port=serve_raw(proxy, refuse)))
    [(status, _, _)] = split_responses(raw_request(bad, b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"))
    assert status == 502
    record = proxy.access_log[-1]
    assert record["termination"] in ("upstream_closed", "upstream_reset") and record["upstream_status"] is None
