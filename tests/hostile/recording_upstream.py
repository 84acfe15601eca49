"""The byte-recording upstream: records every byte per connection and parses it with strict_http.

It runs its own asyncio loop in its own thread on 127.0.0.1:0 (the in-process proxy and the real
nsproxyd both dial it). Every connection's bytes go through a StrictParser (request side, HTTP/1.1
required); anything it cannot parse is a violation, and so is pipelining (bytes of a next request
arriving before the previous response was written: nsproxy must never pipeline upstream). The
connection is closed after a violation.

`responder` decides the answers (see the Responder classes below; tests swap it per case), and
`take()` waits until every received byte is processed, then hands over and clears what was
recorded since the previous take(): parsed requests, raw bytes, tunnel bytes, violations.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import itertools
import select
import socket
import struct
import termios
import threading
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from strict_http import Message, StrictParser

# ---- what a take() returns --------------------------------------------------------------------


@dataclass
class Seen:
    conn: int  # connection id (1, 2, ... over the upstream's life)
    message: Message


@dataclass
class Records:
    requests: list[Seen] = field(default_factory=list)  # every request head parsed, in arrival order
    raw: dict[int, bytearray] = field(default_factory=dict)  # conn -> bytes received
    tunnel: dict[int, bytearray] = field(default_factory=dict)  # conn -> bytes after a 101
    violations: list[str] = field(default_factory=list)
    opened: list[int] = field(default_factory=list)  # connections accepted
    closed: list[int] = field(default_factory=list)  # connections the peer (the proxy) closed or reset

    @property
    def complete(self) -> list[Message]:
        return [s.message for s in self.requests if s.message.complete]

    def all_raw(self) -> bytes:
        return b"".join(bytes(b) for b in self.raw.values())

    def describe(self) -> str:
        lines = [f"upstream: {len(self.requests)} request heads, violations={self.violations}"]
        for s in self.requests:
            lines.append(f"  conn {s.conn}: {s.message}")
        for conn, data in self.raw.items():
            lines.append(f"  raw conn {conn}: {bytes(data[:400])!r}")
        return "\n".join(lines)


# ---- one connection ---------------------------------------------------------------------------


class UpstreamConn(asyncio.Protocol):
    def __init__(self, server: RecordingUpstream, conn_id: int) -> None:
        self.server = server
        self.id = conn_id
        self.transport: asyncio.Transport | None = None
        self.parser = StrictParser(
            "request", require_version="HTTP/1.1", on_head=self._on_head, on_complete=self._on_complete
        )
        self.awaiting: Message | None = None  # a complete request whose response is not written yet
        self.closed = False
        self.written = 0
        self._drained: asyncio.Future[None] | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._responder: Responder | None = None
        self.tunnel_close_after: int | None = None  # close the tunnel once this many bytes came through
        self._tunnel_bytes = 0

    # asyncio callbacks
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.server.live[self.id] = self
        self.server.rec.opened.append(self.id)

    def data_received(self, data: bytes) -> None:
        rec = self.server.rec
        rec.raw.setdefault(self.id, bytearray()).extend(data)
        if self.parser.tunnel:
            rec.tunnel.setdefault(self.id, bytearray()).extend(data)
            self._tunnel_check()
            return
        if self.awaiting is not None:
            self._violation(
                f"pipelined: bytes {data[:60]!r} arrived before the response to {self.awaiting} was written"
            )
            return
        before = self.parser.violation
        self.parser.feed(data)
        if self.parser.tunnel and self.parser.rest:
            rec.tunnel.setdefault(self.id, bytearray()).extend(self.parser.rest)
            self.parser.rest = b""
            self._tunnel_check()
        if self.parser.violation is not None and before is None:
            self._violation(f"unparseable framing: {self.parser.violation}")

    def eof_received(self) -> bool | None:
        self.parser.finish()
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.server.live.pop(self.id, None)
        self.server.rec.closed.append(self.id)
        if self._drained is not None and not self._drained.done():
            self._drained.set_result(None)
        for task in self._tasks:
            task.cancel()

    def pause_writing(self) -> None:
        self._drained = asyncio.get_running_loop().create_future()

    def resume_writing(self) -> None:
        if self._drained is not None and not self._drained.done():
            self._drained.set_result(None)
        self._drained = None

    # the parser's callbacks
    def _on_head(self, msg: Message) -> None:
        self.server.rec.requests.append(Seen(self.id, msg))
        self._responder = self.server.responder
        self._responder.head(self, msg)

    def _on_complete(self, msg: Message) -> None:
        self.awaiting = msg
        if self.parser.buffered:
            self._violation("pipelined: the next request arrived in the same read as the previous one")
            return
        responder = self._responder or self.server.responder
        responder.complete(self, msg)

    def _violation(self, reason: str) -> None:
        self.server.rec.violations.append(f"conn {self.id}: {reason}")
        self.abort()

    # what responders use
    def write(self, data: bytes) -> None:
        if not self.closed and self.transport is not None:
            self.written += len(data)
            self.transport.write(data)

    def responded(self) -> None:
        """The response to the awaited request is completely written."""
        self.awaiting = None

    async def drain(self) -> None:
        while self._drained is not None and not self.closed:
            await self._drained

    def tunnel(self, close_after: int | None = None) -> None:
        self.parser.switch_to_tunnel()
        self.awaiting = None
        self.tunnel_close_after = close_after
        if close_after == 0:
            self.close()

    def _tunnel_check(self) -> None:
        self._tunnel_bytes = len(self.server.rec.tunnel.get(self.id, b""))
        if self.tunnel_close_after is not None and self._tunnel_bytes >= self.tunnel_close_after:
            self.close()

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    def abort(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.abort()

    def spawn(self, coro: Awaitable[Any]) -> None:
        task = asyncio.get_running_loop().create_task(coro)  # type: ignore[arg-type]
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


# ---- responders -------------------------------------------------------------------------------


def response(status: int = 200, body: bytes = b"ok\n", headers: tuple[str, ...] = (), *, reason: str = "OK") -> bytes:
    head = f"HTTP/1.1 {status} {reason}\r\n" + "".join(h + "\r\n" for h in headers)
    return head.encode("latin-1") + b"Content-Length: %d\r\n\r\n" % len(body) + body


class Responder:
    """Answers with 200 and a small Content-Length body (nothing for HEAD); 100 on Expect: 100-continue."""

    def head(self, conn: UpstreamConn, req: Message) -> None:
        if any(v.lower() == "100-continue" for v in req.values("expect")):
            conn.write(b"HTTP/1.1 100 Continue\r\n\r\n")

    def complete(self, conn: UpstreamConn, req: Message) -> None:
        self.answer(conn, req)
        conn.responded()

    def answer(self, conn: UpstreamConn, req: Message) -> None:
        data = response(body=b"ok\n")
        if req.method == "HEAD":
            data = data[: data.index(b"\r\n\r\n") + 4]
        conn.write(data)


class Chunked(Responder):
    def answer(self, conn: UpstreamConn, req: Message) -> None:
        conn.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n")


class CloseDelimited(Responder):
    """No Content-Length, no Transfer-Encoding: the body ends when the upstream closes."""

    def __init__(self, headers: tuple[str, ...] = ()) -> None:
        self.headers = headers

    def complete(self, conn: UpstreamConn, req: Message) -> None:
        conn.write(("HTTP/1.1 200 OK\r\n" + "".join(h + "\r\n" for h in self.headers) + "\r\n").encode())
        conn.write(b"close-delimited body")
        conn.responded()
        conn.close()


class WebSocket(Responder):
    """101 with Upgrade: websocket for a WebSocket upgrade request (else 200); then records the tunnel.

    The tunnel is closed by the upstream once `close_after` bytes came through it (0: at once), so
    a tunnel case never waits on a timeout.
    """

    def __init__(self, upgrade: str | None = "websocket", always: bool = False, close_after: int = 0) -> None:
        self.upgrade = upgrade
        self.always = always
        self.close_after = close_after

    def complete(self, conn: UpstreamConn, req: Message) -> None:
        if self.always or any(v.strip().lower() == "websocket" for v in req.values("upgrade")):
            head = "HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\n"
            if self.upgrade is not None:
                head += f"Upgrade: {self.upgrade}\r\n"
            conn.write((head + "\r\n").encode())
            conn.tunnel(self.close_after)
            return
        super().complete(conn, req)


class Raw(Responder):
    """Writes fixed bytes (or `make(req)`'s) at head or at completion of the request; optionally closes."""

    def __init__(
        self,
        data: bytes | Callable[[Message], bytes],
        *,
        at: str = "complete",
        close: bool = False,
        abort: bool = False,
    ) -> None:
        self.data = data
        self.at = at
        self.close_after = close
        self.abort_after = abort

    def _send(self, conn: UpstreamConn, req: Message) -> None:
        conn.write(self.data(req) if callable(self.data) else self.data)
        conn.responded()
        if self.abort_after:
            conn.abort()
        elif self.close_after:
            conn.close()

    def head(self, conn: UpstreamConn, req: Message) -> None:
        if self.at == "head":
            self._send(conn, req)

    def complete(self, conn: UpstreamConn, req: Message) -> None:
        if self.at == "complete":
            self._send(conn, req)
        else:
            conn.responded()


class Sequence(Responder):
    """The n-th request (counted from this responder's creation) is answered by the n-th responder."""

    def __init__(self, *responders: Responder) -> None:
        self.responders = responders
        self.count = 0
        self.by_request: dict[int, Responder] = {}

    def _pick(self, req: Message) -> Responder:
        key = id(req)
        if key not in self.by_request:
            self.by_request[key] = self.responders[min(self.count, len(self.responders) - 1)]
            self.count += 1
        return self.by_request[key]

    def head(self, conn: UpstreamConn, req: Message) -> None:
        self._pick(req).head(conn, req)

    def complete(self, conn: UpstreamConn, req: Message) -> None:
        self._pick(req).complete(conn, req)


class Hold(Responder):
    """Never answers (the proxy's timeouts, or the client, end the exchange)."""

    def complete(self, conn: UpstreamConn, req: Message) -> None:
        pass


class Routed(Responder):
    """For the exhaustion tests: GET /big/N streams N bytes (with back-pressure); anything else is 200."""

    BLOCK = b"x" * 65536

    def complete(self, conn: UpstreamConn, req: Message) -> None:
        if req.target.startswith("/big/"):
            size = int(req.target.rsplit("/", 1)[1])
            conn.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % size)
            conn.spawn(self._stream(conn, size))
            return
        super().complete(conn, req)

    async def _stream(self, conn: UpstreamConn, size: int) -> None:
        sent = 0
        while sent < size and not conn.closed:
            piece = self.BLOCK[: min(len(self.BLOCK), size - sent)]
            conn.write(piece)
            sent += len(piece)
            await conn.drain()
        conn.responded()


# ---- the server -------------------------------------------------------------------------------


class RecordingUpstream:
    """Start with `with RecordingUpstream() as up:`; dial 127.0.0.1:up.port."""

    def __init__(self, host: str = "127.0.0.1") -> None:
        self.host = host
        self.port = 0
        self.responder: Responder = Responder()
        self.rec = Records()
        self.live: dict[int, UpstreamConn] = {}
        self._ids = itertools.count(1)
        self.loop = asyncio.new_event_loop()
        self._server: asyncio.AbstractServer | None = None
        self._listener: socket.socket | None = None
        self._thread = threading.Thread(target=self.loop.run_forever, name="recording-upstream", daemon=True)

    def __enter__(self) -> RecordingUpstream:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def start(self) -> None:
        self._thread.start()
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self.host, 0))
        sock.listen(4096)
        sock.setblocking(False)
        self.port = sock.getsockname()[1]
        self._listener = sock

        async def start() -> asyncio.AbstractServer:
            return await self.loop.create_server(lambda: UpstreamConn(self, next(self._ids)), sock=sock)

        self._server = self.call(start())

    def call(self, coro: Awaitable[Any], timeout: float = 30.0) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)  # type: ignore[arg-type]

    def quiesce(self, timeout: float = 10.0) -> None:
        """Return once every byte the kernel holds for our connections has been read and parsed."""

        async def settle() -> None:
            loop = asyncio.get_running_loop()
            deadline = loop.time() + timeout
            clean = 0
            while True:
                pending = 0
                if self._listener is not None and select.select([self._listener], [], [], 0)[0]:
                    pending += 1  # a connection waits in the accept queue
                for conn in list(self.live.values()):
                    sock = conn.transport.get_extra_info("socket") if conn.transport else None
                    if sock is None or conn.closed:
                        continue
                    with contextlib.suppress(OSError, ValueError):
                        buf = fcntl.ioctl(sock.fileno(), termios.FIONREAD, b"\0\0\0\0")
                        pending += struct.unpack("i", buf)[0]
                if not pending:
                    clean += 1
                    if clean >= 3:  # clean across several loop iterations: accepts and reads settled
                        return
                    for _ in range(3):
                        await asyncio.sleep(0)
                    continue
                clean = 0
                if loop.time() > deadline:
                    raise AssertionError(f"recording upstream: {pending} bytes still unread after {timeout}s")
                await asyncio.sleep(0.001)

        self.call(settle(), timeout + 5)

    def take(self) -> Records:
        """Everything recorded since the last take() (after quiesce())."""
        self.quiesce()

        async def swap() -> Records:
            rec, self.rec = self.rec, Records()
            return rec

        return self.call(swap())

    def set_responder(self, responder: Responder) -> None:
        async def put() -> None:
            self.responder = responder

        self.call(put())

    def close_connections(self) -> None:
        """Drop every open connection (so a test starts without pooled state)."""

        async def drop() -> None:
            for conn in list(self.live.values()):
                conn.abort()

        self.call(drop())

    def close(self) -> None:
        async def stop() -> None:
            if self._server is not None:
                self._server.close()
            for conn in list(self.live.values()):
                conn.abort()

        with contextlib.suppress(Exception):
            self.call(stop(), 10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
        with contextlib.suppress(Exception):
            self.loop.close()


@contextlib.contextmanager
def recording_upstream() -> Iterator[RecordingUpstream]:
    up = RecordingUpstream()
    up.start()
    try:
        yield up
    finally:
        up.close()
