"""Header rewriting through the real proxy protocol: anti-spoofing, hop-by-hop, X-Forwarded-*."""

from __future__ import annotations

import json

from proxy_harness import curl, make_tenant, raw_request, split_responses


def _seen_headers(body: bytes) -> list[tuple[str, str]]:
    return [(k, v) for k, v in json.loads(body)["headers"]]


def _values(headers: list[tuple[str, str]], name: str) -> list[str]:
    return [v for k, v in headers if k.lower() == name.lower()]


def test_every_case_variant_of_the_tenant_header_is_replaced_by_the_tenant_id(proxy, upstream):
    _, port = proxy.serve(make_tenant("acme", port=upstream.port, tenant_id="acme-42"))
    spoof = [
        "X-Tenant-ID: evil1",
        "x-tenant-id: evil2",
        "X-TENANT-ID: evil3",
        "x-TeNaNt-Id: evil4",
        "X_Tenant_ID: evil5",  # underscore spelling: CGI/WSGI servers read it as the same header
        "x_tenant_id: evil6",
    ]
    args = [arg for h in spoof for arg in ("-H", h)]
    result = curl(*args, f"http://127.0.0.1:{port}/echo")
    assert result.returncode == 0, result.stderr
    headers = _seen_headers(result.stdout)
    tenant_like = [(k, v) for k, v in headers if k.lower().replace("_", "-") == "x-tenant-id"]
    assert tenant_like == [("X-Tenant-ID", "acme-42")]


def test_custom_tenant_header_name(proxy, upstream):
    _, port = proxy.serve(make_tenant("acme", port=upstream.port, tenant_id="a1", header="X-Customer"))
    result = curl("-H", "x-customer: mallory", "-H", "X-Tenant-ID: untouched", f"http://127.0.0.1:{port}/echo")
    headers = _seen_headers(result.stdout)
    assert _values(headers, "X-Customer") == ["a1"]
    assert _values(headers, "X-Tenant-ID") == ["untouched"]  # not ours: forwarded as is


def test_hop_by_hop_request_headers_are_stripped(proxy, upstream):
    _, port = proxy.serve(make_tenant("acme", port=upstream.port))
    request = (
        b"GET /echo HTTP/1.1\r\nHost: example.test\r\n"
        b"Connection: keep-alive, X-Drop-Me\r\nX-Drop-Me: 1\r\nKeep-Alive: timeout=5\r\n"
        b"Proxy-Connection: keep-alive\r\nTE: trailers\r\nTrailer: X-Sum\r\nProxy-Authorization: Basic Zm9v\r\n"
        b"Upgrade: h2c\r\nX-End-To-End: kept\r\n\r\n"
        b"GET /echo HTTP/1.1\r\nHost: example.test\r\nConnection: close\r\n\r\n"
    )
    (status, _, body), (status2, headers2, _) = split_responses(raw_request(port, request))
    assert status == status2 == 200
    seen = {k.lower() for k, _ in _seen_headers(body)}
    for name in ("connection", "x-drop-me", "keep-alive", "proxy-connection", "te", "trailer"):
        assert name not in seen
    assert "proxy-authorization" not in seen and "upgrade" not in seen
    assert "x-end-to-end" in seen
    assert headers2.get("connection") == "close"


def test_hop_by_hop_response_headers_are_stripped(proxy, upstream):
    _, port = proxy.serve(make_tenant("acme", port=upstream.port))
    result = curl("-i", f"http://127.0.0.1:{port}/hop")
    head = result.stdout.split(b"\r\n\r\n")[0].decode().lower()
    assert "x-kept: 1" in head
    assert "x-secret-hop" not in head and "keep-alive" not in head


def test_x_forwarded_headers(proxy, upstream):
    _, port = proxy.serve(make_tenant("acme", port=upstream.port))
    result = curl(
        "-H",
        "X-Forwarded-For: 203.0.113.9",
        "-H",
        "X-Forwarded-Proto: https",
        "-H",
        "X-Forwarded-Host: spoofed.test",
        "-H",
        "Host: shop.test:8080",
        f"http://127.0.0.1:{port}/echo",
    )
    headers = _seen_headers(result.stdout)
    # The chain the client sent is kept; nsproxy appends the address it saw (rightmost entry).
    assert _values(headers, "X-Forwarded-For") == ["203.0.113.9, 127.0.0.1"]
    assert _values(headers, "X-Forwarded-Proto") == ["http"]
    assert _values(headers, "X-Forwarded-Host") == ["shop.test:8080"]
    assert _values(headers, "Host") == ["shop.test:8080"]  # Host is kept


def test_x_forwarded_for_without_a_chain_is_the_client_address(proxy, upstream):
    _, port = proxy.serve(make_tenant("acme", port=upstream.port))
    headers = _seen_headers(curl(f"http://127.0.0.1:{port}/echo").stdout)
    assert _values(headers, "X-Forwarded-For") == ["127.0.0.1"]
