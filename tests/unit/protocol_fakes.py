"""Socket-free fakes for the data-plane protocol tests (the pattern of uvicorn's tests/protocols).

FakeLoop: deterministic time and timers (`advance`), call_soon callbacks (`run_ready`), and
create_task for coroutines that finish without suspending. FakeTransport: records writes and
pause/resume/close; closing calls the protocol's connection_lost on the next `run_ready`, as
asyncio does. `Wire` builds one proxied connection: a client transport, the real ProxyProtocol,
and upstream connections made on demand by a fake pool.
"""

from __future__ import annotations

import heapq
import itertools
import socket
from collections.abc import Callable, Coroutine
from typing import Any

from nsproxy_appliance.daemon.context import TenantContext
from nsproxy_appliance.daemon.http import ProxyProtocol
from nsproxy_appliance.daemon.upstream import UpstreamConnection, UpstreamPool
from nsproxy_appliance.model import Limits, Listen, NetnsRef, Tenant, Upstream


class FakeHandle:
    def __init__(self, when: float, callback: Callable[..., Any], args: tuple[Any, ...]) -> None:
        self.when = when
        self.callback = callback
        self.args = args
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


class FakeTask:
    def cancel(self) -> bool:  # asyncio.Task.cancel's signature (the compiled protocol checks it)
        return True


class FakeLoop:
    def __init__(self) -> None:
        self.now = 1000.0
        self._timers: list[tuple[float, int, FakeHandle]] = []
        self._ready: list[FakeHandle] = []
        self._seq = itertools.count()

    def time(self) -> float:
        return self.now

    def call_at(self, when: float, callback: Callable[..., Any], *args: Any) -> FakeHandle:
        handle = FakeHandle(when, callback, args)
        heapq.heappush(self._timers, (when, next(self._seq), handle))
        return handle

    def call_later(self, delay: float, callback: Callable[..., Any], *args: Any) -> FakeHandle:
        return self.call_at(self.now + delay, callback, *args)

    def call_soon(self, callback: Callable[..., Any], *args: Any) -> FakeHandle:
        handle = FakeHandle(self.now, callback, args)
        self._ready.append(handle)
        return handle

    def create_task(self, coro: Coroutine[Any, Any, Any]) -> FakeTask:
        try:
            coro.send(None)
        except StopIteration:
            return FakeTask()
        raise AssertionError("a coroutine suspended on the fake loop")

    def run_ready(self) -> None:
        while self._ready:
            ready, self._ready = self._ready, []
            for handle in ready:
                if not handle.cancelled:
                    handle.callback(*handle.args)

    def advance(self, seconds: float) -> None:
        """Move time forward, running every timer that falls due, in order."""
        target = self.now + seconds
        while self._timers and self._timers[0][0] <= target:
            when, _, handle = heapq.heappop(self._timers)
            self.now = max(self.now, when)
            if not handle.cancelled:
                handle.callback(*handle.args)
            self.run_ready()
        self.now = target
        self.run_ready()


class FakeSSLObject:
    """What transport.get_extra_info("ssl_object") gives after a handshake: the client's certificate."""

    def __init__(self, der: bytes | None) -> None:
        self.der = der

    def getpeercert(self, binary_form: bool = False) -> bytes | None:
        assert binary_form
        return self.der


class FakeTransport:
    def __init__(self, loop: FakeLoop, peer: tuple[str, int], local: tuple[str, int]) -> None:
        self.loop = loop
        self.protocol: Any = None
        self.written: list[bytes] = []
        self.extra = {"peername": peer, "sockname": local}
        self.closing = False
        self.aborted = False
        self.reading = True
        self.eof_written = False

    # what the protocols call
    def write(self, data: bytes) -> None:
        assert not self.aborted, "write after abort"
        if not self.closing:
            self.written.append(bytes(data))

    def writelines(self, parts: list[bytes]) -> None:
        self.write(b"".join(parts))

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self.extra.get(name, default)

    def set_write_buffer_limits(self, high: int, low: int) -> None:
        pass

    def pause_reading(self) -> None:
        self.reading = False

    def resume_reading(self) -> None:
        self.reading = True

    def is_closing(self) -> bool:
        return self.closing

    def can_write_eof(self) -> bool:
        return True

    def write_eof(self) -> None:
        self.eof_written = True

    def set_protocol(self, protocol: Any) -> None:
        self.protocol = protocol

    def close(self) -> None:
        self._lose(None)

    def abort(self) -> None:
        self.aborted = True
        self._lose(None)

    def _lose(self, exc: Exception | None) -> None:
        if self.closing:
            return
        self.closing = True
        if self.protocol is not None:
            self.loop.call_soon(self.protocol.connection_lost, exc)

    # what a test does
    def data(self) -> bytes:
        """Everything written so far (and forget it)."""
        out = b"".join(self.written)
        self.written.clear()
        return out

    def peer_closes(self, exc: Exception | None = None) -> None:
        """The other end closed (or reset, with `exc`)."""
        self._lose(exc)


class FakeSocket:
    """What transport.get_extra_info("socket") gives: each TCP_CORK change, with everything written
    to the transport by then."""

    def __init__(self, transport: FakeTransport, family: int) -> None:
        self.transport = transport
        self.family = family
        self.corks: list[tuple[int, bytes]] = []

    def setsockopt(self, level: int, option: int, value: int) -> None:
        if (level, option) == (socket.IPPROTO_TCP, socket.TCP_CORK):
            self.corks.append((value, b"".join(self.transport.written)))


class FakePool(UpstreamPool):
    """A pool whose connect() makes a FakeTransport-backed UpstreamConnection at once."""

    def __init__(self, ctx: TenantContext, loop: FakeLoop) -> None:
        super().__init__(ctx.tenant.upstream, None, budget=ctx.budget, loop=loop)  # type: ignore[arg-type]
        self.fake_loop = loop
        self.transports: list[FakeTransport] = []
        self.refuse = False
        self.socket_family: int | None = None  # set: its transports have a FakeSocket of that family

    async def connect(self, timeout: float) -> UpstreamConnection:
        if self.refuse:
            raise ConnectionRefusedError(111, "refused")
        conn = UpstreamConnection(self)
        transport = FakeTransport(self.fake_loop, ("127.0.0.1", 9000), ("127.0.0.1", 50000 + len(self.transports)))
        if self.socket_family is not None:
            transport.extra["socket"] = FakeSocket(transport, self.socket_family)
        transport.protocol = conn
        conn.connection_made(transport)  # type: ignore[arg-type]
        self.transports.append(transport)
        self.opened += 1
        return conn


def tenant(**limits: Any) -> Tenant:
    return Tenant(
        name="acme",
        netns=NetnsRef(path="/proc/self/ns/net", name=None),
        listen=(Listen("127.0.0.1", 8080),),
        upstream=Upstream(kind="http", host="127.0.0.1", port=9000, url="http://127.0.0.1:9000"),
        tenant_id="acme-id",
        tenant_header="X-Tenant-ID",
        limits=Limits(**limits),
    )


class Wire:
    """One client connection through the real ProxyProtocol, with fake transports both sides."""

    def __init__(self, **limits: Any) -> None:
        self.loop = FakeLoop()
        self.ctx = TenantContext(tenant=tenant(**limits))
        self.pool = FakePool(self.ctx, self.loop)
        self.ctx.pool = self.pool
        self.ctx.policy.pool = self.pool
        self.proto = ProxyProtocol(self.ctx, self.loop)  # type: ignore[arg-type]
        self.client = FakeTransport(self.loop, ("10.0.0.7", 40000), ("127.0.0.1", 8080))
        self.client.protocol = self.proto
        self.proto.connection_made(self.client)  # type: ignore[arg-type]

    def send(self, data: bytes) -> None:
        self.proto.data_received(data)
        self.loop.run_ready()

    @property
    def upstream(self) -> FakeTransport:
        """The most recent upstream connection's transport."""
        assert self.pool.transports, "no upstream connection was opened"
        return self.pool.transports[-1]

    def respond(self, data: bytes, transport: FakeTransport | None = None) -> None:
        transport = transport or self.upstream
        transport.protocol.data_received(data)
        self.loop.run_ready()
