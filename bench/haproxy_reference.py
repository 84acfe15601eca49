"""The HAProxy the benchmarks compare against: one thread, the same timeouts, one nginx backend."""

from __future__ import annotations


def managed_headers(tenant_header: str, tenant_id: str, proto: str) -> str:
    """A frontend's lines that set what nsproxyd sets on every request (docs/daemon.md, the managed
    headers): the tenant header, the X-Forwarded family, Forwarded and a request id."""
    return f"""    option forwardfor
    http-request set-header {tenant_header} {tenant_id}
    http-request set-header X-Forwarded-Proto {proto}
    http-request set-header X-Forwarded-Host %[req.hdr(host)]
    http-request set-header X-Forwarded-Port %[dst_port]
    http-request set-header X-Real-IP %[src]
    http-request add-header Forwarded "for=%[src];host=\\"%[req.hdr(host)]\\";proto={proto}"
    unique-id-format %{{+X}}o\\ %ci:%cp_%fi:%fp_%Ts_%rt:%pid
    http-request set-header X-Request-ID %[unique-id]
"""


def write_conf(
    path: str, frontends: str, upstream_port: int, *, maxconn: int, http_request_timeout: str, extra_global: str = ""
) -> str:
    """Write a config to `path` (returned): `frontends` (their whole sections) in front of the
    `upstream` backend, nginx at 127.0.0.1:`upstream_port`, kept-alive connections reused."""
    with open(path, "w") as f:
        f.write(
            f"""global
    nbthread 1
    maxconn {maxconn}
{extra_global}
defaults
    mode http
    timeout connect 5s
    timeout client 60s
    timeout server 60s
    timeout http-request {http_request_timeout}
    timeout http-keep-alive 60s
    option http-keep-alive

{frontends}
backend upstream
    http-reuse always
    server nginx 127.0.0.1:{upstream_port}
"""
        )
    return path
