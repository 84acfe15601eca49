"""A tenant's upstream pool (daemon/upstream.py UpstreamPool, pool_for), socket-free: which idle
connection is handed out, which one is kept or closed, how a connection is opened for each kind of
upstream (the loop and the netns socket are fakes), and when a reload gets the tenant a new pool
(never one whose upstream or namespace is not the tenant's now)."""

from __future__ import annotations

import asyncio
import dataclasses
import socket
from typing import Any

import pytest
from protocol_fakes import FakeLoop, FakeTransport, tenant

from nsproxy_appliance import netns
from nsproxy_appliance.daemon import upstream as upstream_module
from nsproxy_appliance.daemon.context import TenantContext
from nsproxy_appliance.daemon.fdbudget import FdBudget
from nsproxy_appliance.daemon.upstream import UpstreamConnection, UpstreamPool, pool_for
from nsproxy_appliance.model import Upstream, UpstreamTls
from nsproxy_appliance.netns import NetnsIdentity

HTTP = Upstream(kind="http", host="127.0.0.1", port=9000, url="http://127.0.0.1:9000")


def _pool(upstream: Upstream = HTTP, netns_path: str | None = None, **kw: Any) -> UpstreamPool:
    return UpstreamPool(upstream, netns_path, budget=FdBudget(limit=1000), loop=FakeLoop(), **kw)  # type: ignore[arg-type]


def _conn(pool: UpstreamPool) -> tuple[UpstreamConnection, FakeTransport]:
    conn = UpstreamConnection(pool)
    transport = FakeTransport(pool.loop, ("127.0.0.1", 9000), ("127.0.0.1", 1))  # type: ignore[arg-type]
    transport.protocol = conn
    conn.connection_made(transport)  # type: ignore[arg-type]
    return conn, transport


# -- keeping and handing out idle connections ------------------------------------------------
def test_the_most_recently_kept_connection_is_handed_out_first():
    pool = _pool()
    (a, _), (b, _) = _conn(pool), _conn(pool)
    pool.release(a, True)
    pool.release(b, True)
    assert pool.idle == [a, b] and pool.budget.idle == 2
    assert pool.acquire() is b and pool.budget.idle == 1
    assert pool.acquire() is a and pool.budget.idle == 0
    assert pool.acquire() is None


def test_a_dead_idle_connection_is_closed_not_handed_out():
    pool = _pool()
    (a, _ta), (b, tb) = _conn(pool), _conn(pool)
    pool.release(a, True)
    pool.release(b, True)
    tb.closing = True  # the upstream closed it meanwhile
    assert pool.acquire() is a
    assert pool.budget.idle == 0 and b.closed


@pytest.mark.parametrize("why", ["not reusable", "pool closed", "connection closing", "pool full", "no fd budget"])
def test_a_released_connection_is_closed_when_it_cannot_be_kept(why):
    pool = _pool(max_idle=1)
    conn, transport = _conn(pool)
    reusable = why != "not reusable"
    if why == "pool closed":
        pool.close()
    elif why == "connection closing":
        transport.closing = True
    elif why == "pool full":
        pool.release(_conn(pool)[0], True)
    elif why == "no fd budget":
        budget = pool.budget  # every fd the budget gives connections is in use
        budget.clients, budget.idle = budget.general // 2, budget.general % 2
    before = list(pool.idle), pool.budget.idle
    pool.release(conn, reusable)
    assert conn.closed and transport.closing and (list(pool.idle), pool.budget.idle) == before


def test_forget_takes_an_idle_connection_out_once():
    pool = _pool()
    conn, _ = _conn(pool)
    pool.release(conn, True)
    pool.forget(conn, False)  # not idle: nothing to take out
    assert pool.idle == [conn] and pool.budget.idle == 1
    pool.forget(conn, True)
    assert pool.idle == [] and pool.budget.idle == 0
    pool.forget(conn, True)  # already out
    assert pool.budget.idle == 0


def test_closing_the_pool_closes_its_idle_connections_and_gives_back_their_budget():
    pool = _pool()
    conns = [_conn(pool) for _ in range(3)]
    for conn, _ in conns:
        pool.release(conn, True)
    pool.budget.idle += 10  # other tenants' idle connections
    pool.close()
    assert pool.closed and pool.idle == [] and pool.budget.idle == 10
    assert all(conn.closed and transport.closing for conn, transport in conns)


# -- opening connections ---------------------------------------------------------------------
class FakeSocket:
    def __init__(self, family: int) -> None:
        self.family = family
        self.calls: list[tuple[Any, ...]] = []
        self.closed = False

    def setblocking(self, flag: bool) -> None:
        self.calls.append(("setblocking", flag))

    def setsockopt(self, *args: Any) -> None:
        self.calls.append(("setsockopt", *args))

    def close(self) -> None:
        self.closed = True


class OpeningLoop(FakeLoop):
    """The loop methods UpstreamPool._open calls; each records its arguments and connects at once."""

    def __init__(self, *, fail_connect: BaseException | None = None, hang: bool = False) -> None:
        super().__init__()
        self.opened: list[tuple[Any, ...]] = []
        self.fail_connect = fail_connect
        self.hang = hang

    def _made(self, factory: Any) -> tuple[FakeTransport, Any]:
        conn = factory()
        transport = FakeTransport(self, ("127.0.0.1", 9000), ("127.0.0.1", 1))
        transport.protocol = conn
        conn.connection_made(transport)
        return transport, conn

    async def create_connection(self, factory: Any, host: Any = None, port: Any = None, *, sock: Any = None):
        if self.hang:
            await asyncio.sleep(60)
        self.opened.append(("tcp", host, port, sock))
        return self._made(factory)

    async def create_unix_connection(self, factory: Any, path: str):
        self.opened.append(("unix", path))
        return self._made(factory)

    async def sock_connect(self, sock: Any, address: tuple[str, int]) -> None:
        self.opened.append(("sock_connect", sock, address))
        if self.fail_connect is not None:
            raise self.fail_connect


def _opening_pool(upstream: Upstream, netns_path: str | None = None, **kw: Any) -> tuple[UpstreamPool, OpeningLoop]:
    loop = OpeningLoop(**kw)
    pool = UpstreamPool(upstream, netns_path, budget=FdBudget(limit=1000), loop=loop)  # type: ignore[arg-type]
    return pool, loop


@pytest.fixture
def no_netns(monkeypatch):
    """netns.identity and netns.socket_in faked: the sockets made "in" a namespace are recorded."""
    made: list[tuple[str, int, FakeSocket]] = []

    def socket_in(path: str, family: int) -> FakeSocket:
        sock = FakeSocket(family)
        made.append((path, family, sock))
        return sock

    monkeypatch.setattr(netns, "identity", lambda path: NetnsIdentity(1, hash(path) & 0xFFFF))
    monkeypatch.setattr(netns, "socket_in", socket_in)
    return made


def test_an_http_upstream_from_the_host_is_dialled_by_address():
    pool, loop = _opening_pool(HTTP)
    conn = asyncio.run(pool.connect(5.0))
    assert loop.opened == [("tcp", "127.0.0.1", 9000, None)]
    assert isinstance(conn, UpstreamConnection) and conn.pool is pool and pool.opened == 1
    assert conn.transport is not None and conn.peer_label == "127.0.0.1:9000"
    assert asyncio.run(pool.connect(5.0)) is not conn and pool.opened == 2


def test_a_unix_upstream_is_dialled_by_path():
    up = Upstream(kind="unix", path="/run/up.sock", url="unix:/run/up.sock")
    pool, loop = _opening_pool(up)
    conn = asyncio.run(pool.connect(5.0))
    assert loop.opened == [("unix", "/run/up.sock")] and conn.pool is pool and pool.opened == 1


@pytest.mark.parametrize(
    ("host", "family"), [("127.0.0.1", socket.AF_INET), ("fd00::1", socket.AF_INET6), ("up.internal", socket.AF_INET)]
)
def test_an_upstream_from_the_tenant_netns_is_dialled_from_a_socket_made_there(no_netns, host, family):
    up = Upstream(kind="http", host=host, port=80, from_ns="tenant", url=f"http://{host}")
    pool, loop = _opening_pool(up, "/run/netns/t1")
    assert pool.netns_identity == NetnsIdentity(1, hash("/run/netns/t1") & 0xFFFF)
    conn = asyncio.run(pool.connect(5.0))
    ((path, made_family, sock),) = no_netns
    assert (path, made_family) == ("/run/netns/t1", family)
    assert sock.calls == [("setblocking", False), ("setsockopt", socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)]
    assert loop.opened == [("sock_connect", sock, (host, 80)), ("tcp", None, None, sock)]
    assert conn.pool is pool and not sock.closed


def test_a_failed_connect_from_the_tenant_netns_closes_its_socket(no_netns):
    up = Upstream(kind="http", host="127.0.0.1", port=80, from_ns="tenant", url="http://127.0.0.1")
    pool, _ = _opening_pool(up, "/run/netns/t1", fail_connect=ConnectionRefusedError())
    with pytest.raises(ConnectionRefusedError):
        asyncio.run(pool.connect(5.0))
    assert no_netns[0][2].closed and pool.opened == 0


def test_a_from_tenant_upstream_without_a_netns_is_dialled_from_the_host():
    up = Upstream(kind="http", host="127.0.0.1", port=80, from_ns="tenant", url="http://127.0.0.1")
    pool, loop = _opening_pool(up, None)
    asyncio.run(pool.connect(5.0))
    assert loop.opened == [("tcp", "127.0.0.1", 80, None)]


def test_connect_gives_up_at_its_timeout():
    pool, _ = _opening_pool(HTTP, hang=True)
    with pytest.raises(TimeoutError):
        asyncio.run(pool.connect(0.01))
    assert pool.opened == 0


# -- the tenant's pool across reloads --------------------------------------------------------
def _pool_for(ctx: TenantContext) -> UpstreamPool:
    """pool_for as the data plane calls it: on the running loop (a new pool takes that loop)."""

    async def call() -> UpstreamPool:
        return pool_for(ctx)

    return asyncio.run(call())


def _ctx(**changes: Any) -> TenantContext:
    return TenantContext(tenant=dataclasses.replace(tenant(), **changes), budget=FdBudget(limit=1000))


def test_pool_for_makes_one_pool_and_keeps_it():
    ctx = _ctx()
    pool = _pool_for(ctx)
    assert ctx.pool is pool and pool.upstream == ctx.tenant.upstream and pool.netns_path is None
    assert pool.budget is ctx.budget and not pool.closed
    assert _pool_for(ctx) is pool


def test_a_changed_upstream_gets_a_new_pool_and_the_old_one_closes():
    ctx = _ctx()
    old = _pool_for(ctx)
    ctx.tenant = dataclasses.replace(ctx.tenant, upstream=dataclasses.replace(HTTP, port=9001))
    new = _pool_for(ctx)
    assert new is not old and old.closed and new.upstream.port == 9001


def test_a_closed_pool_is_replaced():
    ctx = _ctx()
    old = _pool_for(ctx)
    old.close()
    assert _pool_for(ctx) is not old


def test_a_from_tenant_pool_follows_the_namespace(no_netns, monkeypatch):
    up = Upstream(kind="http", host="127.0.0.1", port=9000, from_ns="tenant", url="http://127.0.0.1:9000")
    ctx = _ctx(upstream=up)
    pool = _pool_for(ctx)
    assert pool.netns_path == ctx.tenant.netns.path
    assert _pool_for(ctx) is pool  # same namespace: same pool
    monkeypatch.setattr(netns, "identity", lambda path: NetnsIdentity(9, 9))  # the namespace was re-created
    again = _pool_for(ctx)
    assert again is not pool and pool.closed and again.netns_identity == NetnsIdentity(9, 9)

    def gone(path: str) -> NetnsIdentity:
        raise FileNotFoundError(path)

    monkeypatch.setattr(netns, "identity", gone)
    assert upstream_module._identity_or_none(ctx.tenant.netns.path) is None
    with pytest.raises(FileNotFoundError):
        _pool_for(ctx)  # a pool for a namespace that is gone cannot be made (http.py answers 502)
    assert again.closed


@pytest.mark.parametrize(
    "up",
    [
        Upstream(kind="http", host="127.0.0.1", port=9000, from_ns="host", url="http://127.0.0.1:9000"),
        Upstream(kind="unix", path="/run/up.sock", from_ns="tenant", url="unix:/run/up.sock"),
    ],
)
def test_only_an_http_upstream_from_the_tenant_uses_the_tenant_netns(up):
    ctx = _ctx(upstream=up)
    assert _pool_for(ctx).netns_path is None and _pool_for(ctx).netns_identity is None


# -- opening connections: the tenant's socket broker, TLS from the tenant netns ------------------
HTTPS_FROM_TENANT = Upstream(
    kind="http", host="up.test", port=443, from_ns="tenant", url="https://up.test", tls=UpstreamTls(ca="/ca.pem")
)


class TlsOpeningLoop(OpeningLoop):
    """OpeningLoop whose create_connection also records the TLS arguments it is given."""

    async def create_connection(self, factory: Any, host: Any = None, port: Any = None, *, sock: Any = None, **kw: Any):
        self.opened.append(("tcp", host, port, sock, kw))
        return self._made(factory)


def test_an_https_upstream_from_the_tenant_netns_is_dialled_over_that_socket_with_tls(no_netns, monkeypatch):
    context = object()
    monkeypatch.setattr(upstream_module, "client_context", lambda settings: context)
    loop = TlsOpeningLoop()
    pool = UpstreamPool(HTTPS_FROM_TENANT, "/run/netns/t1", budget=FdBudget(limit=1000), loop=loop)  # type: ignore[arg-type]  # the fake loop
    conn = asyncio.run(pool.connect(5.0))
    ((_, _, sock),) = no_netns
    assert loop.opened == [
        ("sock_connect", sock, ("up.test", 443)),
        ("tcp", None, None, sock, {"ssl": context, "server_hostname": "up.test"}),
    ]
    assert conn.pool is pool and pool.opened == 1 and not sock.closed


def test_a_socket_from_the_tenant_netns_comes_from_the_broker_when_there_is_one(no_netns, monkeypatch):
    asked: list[tuple[str, int]] = []
    brokered = FakeSocket(socket.AF_INET6)

    async def tenant_sockets(path: str, family: int) -> FakeSocket:
        asked.append((path, family))
        return brokered

    monkeypatch.setattr(upstream_module, "tenant_sockets", tenant_sockets)
    up = Upstream(kind="http", host="fd00::1", port=80, from_ns="tenant", url="http://[fd00::1]")
    pool, loop = _opening_pool(up, "/run/netns/t1")
    asyncio.run(pool.connect(5.0))
    assert asked == [("/run/netns/t1", socket.AF_INET6)] and no_netns == []  # not made here
    assert loop.opened == [("sock_connect", brokered, ("fd00::1", 80)), ("tcp", None, None, brokered)]
