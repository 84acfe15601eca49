"""The daemon's side of the broker: requests on the event loop, reconnection, and the reserve of
unconnected sockets for `from: tenant` upstreams.

One SOCK_SEQPACKET connection, many requests in flight (replies matched by id), never a blocking
call on the loop. The broker is authenticated too: its end must belong to root (or to the daemon's
own user, when both run unprivileged in tests). When the broker goes away (restarted, upgraded) the
daemon keeps serving with the sockets it has; the client reconnects and calls `on_reconnect`, which
gives the new broker the daemon's listening sockets to keep (adopt), so a later daemon restart still
loses nothing.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import errno
import functools
import logging
import os
import socket
import time
from collections.abc import Awaitable, Callable
from typing import Any

from ..identity import NetnsIdentity
from . import protocol

log = logging.getLogger("nsproxyd")

CONNECT_TIMEOUT = 10.0  # seconds the daemon waits for the broker at start
RECONNECT_DELAYS = (0.05, 0.1, 0.2, 0.5, 1.0)  # then every second
RESERVE_SIZE = 2  # unconnected sockets kept per `from: tenant` namespace that dials
RESERVE_IDLE = 60.0  # seconds a namespace's reserve is kept after its last use
SWEEP_INTERVAL = 2.0  # seconds between checks of the reserves (gone or replaced namespaces)


class BrokerError(OSError):
    """A broker request failed (the broker refused, or is unreachable); `unavailable`: the namespace
    could not be entered."""

    def __init__(self, message: str, *, unavailable: bool = False) -> None:
        super().__init__(errno.EHOSTUNREACH if unavailable else errno.EIO, message)
        self.unavailable = unavailable

    def __str__(self) -> str:
        return str(self.strerror)


class BrokerClient:
    def __init__(self, path: str | None = None, *, sock: socket.socket | None = None) -> None:
        """Connect to the broker listening at `path`, or use `sock` (a private broker's socketpair end)."""
        self.path = path
        self._sock = sock
        self._loop: asyncio.AbstractEventLoop | None = None
        self._next_id = 0
        self._pending: dict[int, asyncio.Future[tuple[dict[str, Any], list[int]]] | None] = {}
        self._outbox: collections.deque[tuple[bytes, list[int]]] = collections.deque()
        self._writing = False
        self._reconnecting: asyncio.Task[None] | None = None
        self.on_reconnect: Callable[[], Awaitable[None]] | None = None
        self.broker_pid: int | None = None
        self.closed = False

    # ---- connection ----------------------------------------------------------------------------

    @property
    def connected(self) -> bool:
        return self._sock is not None

    async def connect(self, timeout: float = CONNECT_TIMEOUT) -> None:
        """Connect (retrying until `timeout`: the broker may still be starting) and say hello."""
        self._loop = asyncio.get_running_loop()
        deadline = time.monotonic() + timeout
        attempt = 0
        while True:
            try:
                await self._open()
                return
            except OSError as e:
                if time.monotonic() >= deadline:
                    raise BrokerError(f"cannot reach the socket broker at {self.path}: {e.strerror or e}") from None
            await asyncio.sleep(RECONNECT_DELAYS[min(attempt, len(RECONNECT_DELAYS) - 1)])
            attempt += 1

    async def _open(self) -> None:
        sock = self._sock
        if sock is None:
            if self.path is None:
                raise BrokerError("the private broker is gone")
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
            try:
                sock.connect(self.path)
            except OSError:
                sock.close()
                raise
        _, uid, _ = protocol.peer_credentials(sock)
        if uid not in (0, os.geteuid()):
            sock.close()
            raise BrokerError(f"the broker socket {self.path} is served by uid {uid}, not root: refused")
        sock.setblocking(False)
        self._sock = sock
        assert self._loop is not None
        self._loop.add_reader(sock.fileno(), self._on_readable)
        try:
            reply, _ = await self.request({"op": "hello", "version": protocol.VERSION})
        except BrokerError:
            self._lost("no hello")
            raise
        self.broker_pid = reply.get("pid")

    def _lost(self, why: str) -> None:
        sock, self._sock = self._sock, None
        if sock is not None:
            with contextlib.suppress(Exception):
                self._loop.remove_reader(sock.fileno())  # type: ignore[union-attr]  # the loop is set once connected
            if self._writing:
                with contextlib.suppress(Exception):
                    self._loop.remove_writer(sock.fileno())  # type: ignore[union-attr]  # the loop is set once connected
                self._writing = False
            sock.close()
        self._outbox.clear()
        pending, self._pending = self._pending, {}
        for future in pending.values():
            if future is not None and not future.done():
                future.set_exception(BrokerError(f"the socket broker went away ({why})"))
        if not self.closed and self.path is not None and self._reconnecting is None and self._loop is not None:
            log.warning("socket broker connection lost (%s): reconnecting", why)
            self._reconnecting = self._loop.create_task(self._reconnect())

    async def _reconnect(self) -> None:
        attempt = 0
        try:
            while not self.closed:
                await asyncio.sleep(RECONNECT_DELAYS[min(attempt, len(RECONNECT_DELAYS) - 1)])
                attempt += 1
                try:
                    await self._open()
                except OSError:
                    continue
                log.info("socket broker reconnected (pid %s)", self.broker_pid)
                if self.on_reconnect is not None:
                    try:
                        await self.on_reconnect()
                    except Exception:
                        log.exception("handing the listening sockets to the restarted broker failed")
                return
        finally:
            self._reconnecting = None

    def close(self) -> None:
        self.closed = True
        if self._reconnecting is not None:
            self._reconnecting.cancel()
        if self._sock is not None:
            self._lost("closed")

    # ---- messages ------------------------------------------------------------------------------

    def _on_readable(self) -> None:
        sock = self._sock
        while sock is not None and sock is self._sock:
            try:
                got = protocol.receive(sock)
            except (BlockingIOError, InterruptedError):
                return
            except (OSError, protocol.ProtocolError) as e:
                self._lost(str(e))
                return
            if got is None:
                self._lost("closed by the broker")
                return
            reply, fds = got
            rid = reply.get("id")
            future = self._pending.pop(rid, None) if isinstance(rid, int) else None
            if future is None or future.done():
                protocol.close_fds(fds)  # an answer nobody waits for (a release)
                continue
            future.set_result((reply, fds))

    def _send(self, message: dict[str, Any], fds: list[int]) -> None:
        data = protocol.encode(message)
        if self._outbox:
            self._outbox.append((data, fds))
            return
        try:
            self._transmit(data, fds)
        except BlockingIOError:
            self._outbox.append((data, fds))
            self._want_write()

    def _transmit(self, data: bytes, fds: list[int]) -> None:
        assert self._sock is not None
        if fds:
            socket.send_fds(self._sock, [data], fds)
        else:
            self._sock.send(data)

    def _want_write(self) -> None:
        if not self._writing and self._sock is not None:
            self._loop.add_writer(self._sock.fileno(), self._flush)  # type: ignore[union-attr]  # the loop is set once connected
            self._writing = True

    def _flush(self) -> None:
        while self._outbox and self._sock is not None:
            data, fds = self._outbox[0]
            try:
                self._transmit(data, fds)
            except BlockingIOError:
                return
            except OSError as e:
                self._lost(str(e))
                return
            self._outbox.popleft()
        if self._writing and self._sock is not None:
            self._loop.remove_writer(self._sock.fileno())  # type: ignore[union-attr]  # the loop is set once connected
        self._writing = False

    async def request(self, message: dict[str, Any], fds: list[int] | None = None) -> tuple[dict[str, Any], list[int]]:
        """The broker's reply to `message` and the fds that came with it (the caller owns them).
        Raises BrokerError when the broker refuses or is unreachable."""
        if self._sock is None:
            raise BrokerError("the socket broker is not connected")
        assert self._loop is not None
        self._next_id += 1
        rid = self._next_id
        future: asyncio.Future[tuple[dict[str, Any], list[int]]] = self._loop.create_future()
        self._pending[rid] = future
        try:
            self._send({**message, "id": rid}, fds or [])
        except (OSError, protocol.ProtocolError) as e:
            self._pending.pop(rid, None)
            self._lost(str(e))
            raise BrokerError(f"cannot send to the socket broker: {e}") from None
        reply, got = await future
        if not reply.get("ok"):
            protocol.close_fds(got)
            raise BrokerError(str(reply.get("error")), unavailable=bool(reply.get("unavailable")))
        return reply, got

    def send_nowait(self, message: dict[str, Any]) -> None:
        """Send a request whose answer nobody waits for (release); dropped while disconnected, which
        is harmless: a broker without a daemon closes what it holds by itself."""
        if self._sock is None:
            return
        self._next_id += 1
        self._pending[self._next_id] = None
        with contextlib.suppress(OSError, protocol.ProtocolError):
            self._send({**message, "id": self._next_id}, [])

    # ---- operations ----------------------------------------------------------------------------

    async def listen(
        self, tenant: str, listens: list[str], backlog: int
    ) -> tuple[NetnsIdentity, dict[str, socket.socket], dict[str, str]]:
        """The tenant's listening sockets (made or held by the broker) by address, and the addresses
        that could not be bound with why."""
        reply, fds = await self.request({"op": "listen", "tenant": tenant, "listen": listens, "backlog": backlog})
        return _identity(reply, fds), *_sockets(reply, fds)

    async def upstream(self, netns_path: str, family: int, count: int) -> tuple[NetnsIdentity, list[socket.socket]]:
        reply, fds = await self.request({"op": "upstream", "netns": netns_path, "family": family, "count": count})
        identity = _identity(reply, fds)
        return identity, [socket.socket(fileno=fd) for fd in fds]

    def release(self, tenant: str, listens: list[str] | None) -> None:
        self.send_nowait({"op": "release", "tenant": tenant, "listen": listens})

    async def adopt(self, sockets: list[tuple[str, str, int]]) -> dict[str, Any]:
        """Give the broker (tenant, listen, fd) listening sockets to keep; in batches of MAX_FDS."""
        result: dict[str, Any] = {"adopted": 0, "refused": {}}
        for start in range(0, len(sockets), protocol.MAX_FDS):
            batch = sockets[start : start + protocol.MAX_FDS]
            claims = [{"tenant": t, "listen": k} for t, k, _ in batch]
            reply, _ = await self.request({"op": "adopt", "sockets": claims}, [fd for *_, fd in batch])
            result["adopted"] += reply.get("adopted", 0)
            result["refused"].update(reply.get("refused", {}))
        return result


def _identity(reply: dict[str, Any], fds: list[int]) -> NetnsIdentity:
    identity = NetnsIdentity.from_json(reply.get("identity"))
    if identity is None:
        protocol.close_fds(fds)
        raise BrokerError("the broker's reply has no namespace identity")
    return identity


def _sockets(reply: dict[str, Any], fds: list[int]) -> tuple[dict[str, socket.socket], dict[str, str]]:
    made: dict[str, socket.socket] = {}
    errors: dict[str, str] = {}
    used: set[int] = set()
    for entry in reply.get("sockets", []):
        key, index = entry.get("listen"), entry.get("fd")
        if isinstance(index, int) and 0 <= index < len(fds) and index not in used and isinstance(key, str):
            used.add(index)
            made[key] = socket.socket(fileno=fds[index])
        elif isinstance(key, str):
            errors[key] = str(entry.get("error") or "not made")
    protocol.close_fds([fd for i, fd in enumerate(fds) if i not in used])
    return made, errors


class UpstreamReserve:
    """Unconnected sockets for `from: tenant` upstream connections: a few per namespace, made by the
    broker ahead of need and refilled in the background, so opening an upstream connection waits
    on the broker only when the reserve ran dry. Each socket is checked (fdcheck) when it arrives;
    sockets of a namespace that went or was replaced are dropped, as is a reserve nobody used for
    RESERVE_IDLE seconds (it would pin a deleted namespace)."""

    def __init__(
        self,
        client: BrokerClient,
        check: Callable[[socket.socket, int, NetnsIdentity, str], None],
        size: int = RESERVE_SIZE,
    ) -> None:
        self.client = client
        self.check = check  # raises when a socket is refused (fdcheck; see daemon/brokered.py)
        self.size = size
        self._socks: dict[tuple[str, int], collections.deque[tuple[NetnsIdentity, socket.socket]]] = {}
        self._used: dict[tuple[str, int], float] = {}
        self._filling: dict[tuple[str, int], asyncio.Task[None]] = {}
        self._sweeper: asyncio.Task[None] | None = None
        self.taken = 0  # sockets handed out (tests and benchmarks)
        self.waited = 0  # of them, how many had to wait for the broker

    async def take(self, netns_path: str, family: int) -> socket.socket:
        """An unconnected TCP socket made in the namespace at `netns_path`; raises OSError."""
        key = (netns_path, family)
        st = os.stat(netns_path)  # FileNotFoundError: the namespace is gone (a 502, as before)
        here = (st.st_dev, st.st_ino)
        self._used[key] = time.monotonic()
        if self._sweeper is None:
            self._sweeper = asyncio.get_running_loop().create_task(self._sweep())
        queue = self._socks.setdefault(key, collections.deque())
        while queue and queue[0][0].inode != here:
            queue.popleft()[1].close()
        if not queue:
            self.waited += 1
            task = self._filling.get(key)
            if task is None:
                await self._fill(key, self.size + 1)
            else:
                await asyncio.shield(task)
            while queue and queue[0][0].inode != here:
                queue.popleft()[1].close()
            if not queue:
                await self._fill(key, 1)
        if not queue:
            raise BrokerError(f"the socket broker gave no socket for {netns_path}")
        _, sock = queue.popleft()
        self.taken += 1
        if len(queue) < self.size and key not in self._filling:
            task = asyncio.get_running_loop().create_task(self._fill(key, self.size - len(queue)))
            self._filling[key] = task
            task.add_done_callback(functools.partial(self._filled, key))
        return sock

    def _filled(self, key: tuple[str, int], _task: asyncio.Task[None]) -> None:
        self._filling.pop(key, None)

    async def _fill(self, key: tuple[str, int], count: int) -> None:
        path, family = key
        try:
            identity, sockets = await self.client.upstream(path, family, count)
        except BrokerError:
            if key in self._filling:  # a background refill: the next take() asks again
                return
            raise
        queue = self._socks.setdefault(key, collections.deque())
        for sock in sockets:
            try:
                self.check(sock, family, identity, path)
            except Exception as e:
                sock.close()
                log.warning("refused an upstream socket from the broker for %s: %s", path, e)
                continue
            queue.append((identity, sock))

    async def _sweep(self) -> None:
        while True:
            await asyncio.sleep(SWEEP_INTERVAL)
            now = time.monotonic()
            for key, queue in list(self._socks.items()):
                try:
                    st = os.stat(key[0])
                    here: tuple[int, int] | None = (st.st_dev, st.st_ino)
                except OSError:
                    here = None
                idle = now - self._used.get(key, 0.0) > RESERVE_IDLE
                if idle or here is None or any(identity.inode != here for identity, _ in queue):
                    for _, sock in queue:
                        sock.close()
                    del self._socks[key]
                    self._used.pop(key, None)

    def close(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
        for task in self._filling.values():
            task.cancel()
        for queue in self._socks.values():
            for _, sock in queue:
                sock.close()
        self._socks.clear()
