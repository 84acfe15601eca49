"""The data plane reads the tenant's config per request: a reload applies to the next request."""

from __future__ import annotations

import dataclasses
import json
import socket

from proxy_harness import UpstreamApp, make_tenant, serve_upstream, split_responses
from support import header_values

from nsproxy_appliance.model import Limits, Upstream


def _get(sock: socket.socket, path: str) -> tuple[int, dict]:
    sock.sendall(f"GET {path} HTTP/1.1\r\nHost: a\r\n\r\n".encode())
    data = b""
    while True:
        data += sock.recv(65536)
        responses = split_responses(data)
        if responses and int(responses[0][1].get("content-length", -1)) == len(responses[0][2]):
            status, _, body = responses[0]
            return status, json.loads(body)


def test_new_config_applies_to_the_next_request_on_a_kept_alive_connection(proxy):
    old_app, new_app = UpstreamApp("old"), UpstreamApp("new")
    old_port, new_port = serve_upstream(proxy, old_app), serve_upstream(proxy, new_app)
    tenant = make_tenant("acme", port=old_port, tenant_id="v1")
    ctx, port = proxy.serve(tenant)
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        status, body = _get(sock, "/echo")
        assert status == 200 and body["upstream"] == "old" and header_values(body["headers"], "X-Tenant-ID") == ["v1"]
        old_pool = ctx.pool

        new_upstream = Upstream(kind="http", host="127.0.0.1", port=new_port, url=f"http://127.0.0.1:{new_port}")
        reloaded = dataclasses.replace(
            tenant, upstream=new_upstream, tenant_id="v2", tenant_header="X-Org", limits=Limits(max_body_bytes=10)
        )
        proxy.call_sync(lambda: setattr(ctx, "tenant", reloaded))

        status, body = _get(sock, "/echo")  # same client connection
        assert status == 200 and body["upstream"] == "new"
        assert header_values(body["headers"], "X-Org") == ["v2"]
        assert header_values(body["headers"], "X-Tenant-ID") == []
    assert ctx.pool is not old_pool and old_pool.closed  # the old upstream's idle connections went


def test_unchanged_upstream_keeps_its_pool_across_a_reload(proxy):
    app = UpstreamApp()
    tenant = make_tenant("acme", port=serve_upstream(proxy, app), tenant_id="v1")
    ctx, port = proxy.serve(tenant)
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        _get(sock, "/echo")
        pool = ctx.pool
        proxy.call_sync(lambda: setattr(ctx, "tenant", dataclasses.replace(tenant, tenant_id="v2")))
        _, body = _get(sock, "/echo")
    assert header_values(body["headers"], "X-Tenant-ID") == ["v2"]
    assert ctx.pool is pool and len(app.peers) == 1
