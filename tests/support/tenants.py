"""The one tenant factory: a model.Tenant with sensible test defaults."""

from __future__ import annotations

from nsproxy_appliance import model

UNUSED_UPSTREAM = "http://127.0.0.1:9"  # discard port: never contacted by tests that run no daemon


def upstream(url: str = UNUSED_UPSTREAM) -> model.Upstream:
    hostport = url.removeprefix("http://")
    host, _, port = hostport.rpartition(":")
    return model.Upstream(kind="http", host=host, port=int(port), url=url)


def tenant(
    name: str,
    netns: str | model.NetnsRef | None = None,
    *,
    port: int = 8080,
    host: str = "127.0.0.1",
    extra_listen: tuple[tuple[str, int], ...] = (),
    upstream_url: str = UNUSED_UPSTREAM,
    tenant_id: str | None = None,
    header: str = "X-Tenant-ID",
    links: tuple[model.Link, ...] = (),
) -> model.Tenant:
    """Tenant `name` in the named netns `netns` (default: its name) or a NetnsRef, listening on host:port."""
    ref = netns if isinstance(netns, model.NetnsRef) else model.NetnsRef.named(netns or name)
    return model.Tenant(
        name=name,
        netns=ref,
        listen=(model.Listen(host, port), *(model.Listen(h, p) for h, p in extra_listen)),
        upstream=upstream(upstream_url),
        tenant_id=tenant_id or name,
        tenant_header=header,
        links=links,
    )
