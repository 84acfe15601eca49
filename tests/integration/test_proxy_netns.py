"""The proxy serving inside tenant namespaces, and each upstream kind: host TCP, tenant-netns TCP, unix."""

from __future__ import annotations

import json
import os
import socket

import pytest
from proxy_harness import UpstreamApp, curl, listening_socket, make_tenant, serve_upstream
from support import header_values

from nsproxy_appliance.model import Upstream

pytestmark = pytest.mark.root


def _ns_name(path: str) -> str:
    return os.path.basename(path)


def test_listener_inside_tenant_netns_serves_a_client_in_that_netns(proxy, upstream, unique, make_netns):
    path = make_netns(unique("px"))
    sock = listening_socket(path, "127.0.0.1", 8080)  # the same address in every netns
    _, _ = proxy.serve(make_tenant("acme", port=upstream.port, netns_path=path), sock=sock)
    spoofs = ("-H", "X-Tenant-ID: spoof", "-H", "x_tenant_id: spoof2")
    result = curl(*spoofs, "http://127.0.0.1:8080/echo", netns_name=_ns_name(path))
    assert result.returncode == 0, result.stderr
    seen = json.loads(result.stdout)["headers"]
    assert header_values(seen, "X-Tenant-ID") == ["id-acme"]  # exactly one copy, the tenant's own
    assert ["X-Forwarded-For", "127.0.0.1"] in seen  # the client address as seen inside the netns
    # Nothing listens on that address in the host netns.
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", 8080), timeout=1).close()


def test_upstream_inside_each_tenant_netns_with_the_same_address(proxy, unique, make_netns):
    tenants = []
    for name in ("red", "blue"):
        path = make_netns(unique(name[:3]))
        app = UpstreamApp(name=f"upstream-{name}")
        serve_upstream(proxy, app, listening_socket(path, "127.0.0.1", 9000))  # same address twice
        up = Upstream(kind="http", host="127.0.0.1", port=9000, from_ns="tenant", url="http://127.0.0.1:9000")
        tenant = make_tenant(name, upstream=up, netns_path=path)
        proxy.serve(tenant, sock=listening_socket(path, "127.0.0.1", 8080))
        tenants.append((name, path, app))
    for _ in range(2):
        for name, path, _app in tenants:
            result = curl("http://127.0.0.1:8080/echo", "http://127.0.0.1:8080/echo", netns_name=_ns_name(path))
            assert result.returncode == 0, result.stderr
            bodies = result.stdout.replace(b"}{", b"}\n{").splitlines()
            for body in bodies:
                got = json.loads(body)
                assert got["upstream"] == f"upstream-{name}"
                assert header_values(got["headers"], "X-Tenant-ID") == [f"id-{name}"]
    for _name, _path, app in tenants:
        assert app.requests == 4
        assert len(app.peers) == 1  # pooled per tenant: one connection each, never crossed


def test_unix_socket_upstream(proxy, tmp_path):
    app = UpstreamApp(name="unix-upstream")
    sock_path = str(tmp_path / "up.sock")
    usock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    usock.bind(sock_path)
    usock.listen(128)
    usock.setblocking(False)
    serve_upstream(proxy, app, usock)
    tenant = make_tenant("acme", upstream=Upstream(kind="unix", path=sock_path, url=f"unix:{sock_path}"))
    _, port = proxy.serve(tenant)
    result = curl(f"http://127.0.0.1:{port}/echo", f"http://127.0.0.1:{port}/echo")
    assert result.returncode == 0, result.stderr
    assert result.stdout.count(b'"upstream": "unix-upstream"') == 2
    assert app.requests == 2


def test_tenant_netns_upstream_in_a_vanished_namespace_is_502(proxy, unique, make_netns, netns_cleanup):
    from nsproxy_appliance import netns

    name = unique("gone")
    path = make_netns(name)
    up = Upstream(kind="http", host="127.0.0.1", port=9000, from_ns="tenant", url="http://127.0.0.1:9000")
    _, port = proxy.serve(make_tenant("acme", upstream=up, netns_path=path))
    netns.delete_named(name)
    result = curl("-o", "/dev/null", "-w", "%{http_code}", f"http://127.0.0.1:{port}/")
    assert result.stdout == b"502"
