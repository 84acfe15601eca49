"""A raw-socket client that sends hostile byte streams and parses the answers strictly.

`exchange(connect, segments)` sends each bytes segment as its own write (TCP_NODELAY, so a split
really is a split on the wire), waits where a `Wait` says so, half-closes (so nothing waits on a
timeout), reads until the proxy closes, and parses everything with strict_http (response side).
"""

from __future__ import annotations

import select
import socket
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from strict_http import Message, StrictParser

ABORTED = -1  # pseudo status in expectations: the connection ended without a (further) complete response


@dataclass(frozen=True)
class Wait:
    """Before the next segment, wait until this many final (and interim) responses have arrived."""

    responses: int = 0
    interim: int = 0


Segment = bytes | Wait


@dataclass
class ClientResult:
    raw: bytes = b""
    messages: list[Message] = field(default_factory=list)  # every response head parsed (interim too)
    violation: str | None = None
    reset: bool = False  # the proxy reset the connection
    eof: bool = False  # the proxy closed the connection
    timed_out: bool = False
    send_failed: bool = False  # a write failed: the proxy had closed already

    @property
    def finals(self) -> list[Message]:
        """Complete final responses (101 counts: it is the answer to its request)."""
        return [m for m in self.messages if m.complete and not m.interim]

    @property
    def interim(self) -> list[Message]:
        return [m for m in self.messages if m.interim]

    @property
    def statuses(self) -> list[int]:
        return [m.status for m in self.finals]

    @property
    def truncated(self) -> bool:
        """A response head arrived but its body never completed."""
        return any(not m.complete for m in self.messages)

    def describe(self) -> str:
        return (
            f"client: statuses={self.statuses} interim={[m.status for m in self.interim]} violation={self.violation} "
            f"eof={self.eof} reset={self.reset} timed_out={self.timed_out} truncated={self.truncated}\n"
            f"  raw: {self.raw[:600]!r}"
        )


def connect_tcp(host: str, port: int, timeout: float = 10.0) -> Callable[[], socket.socket]:
    def make() -> socket.socket:
        return socket.create_connection((host, port), timeout=timeout)

    return make


def exchange(
    connect: Callable[[], socket.socket],
    segments: Sequence[Segment],
    *,
    methods: Sequence[str] = (),
    half_close: bool = True,
    timeout: float = 10.0,
) -> ClientResult:
    """Run one client connection; `methods[i]` is the method of the i-th request (default GET)."""
    result = ClientResult()
    parser = StrictParser("response", method_of=lambda i: methods[i] if i < len(methods) else "GET")
    sock = connect()
    deadline = time.monotonic() + timeout
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.setblocking(False)

        def read_once(wait: float) -> None:
            if not _ready(sock, select.POLLIN, wait):
                return
            try:
                data = sock.recv(262144)
            except BlockingIOError:
                return
            except ConnectionResetError:
                result.reset = result.eof = True
                return
            if not data:
                result.eof = True
                return
            result.raw += data
            parser.feed(data)

        def pump(until: Callable[[], bool]) -> None:
            while not until() and not result.eof:
                left = deadline - time.monotonic()
                if left <= 0:
                    result.timed_out = True
                    return
                read_once(left)

        for seg in segments:
            if isinstance(seg, Wait):
                pump(lambda seg=seg: len(_finals(parser)) >= seg.responses and _interim(parser) >= seg.interim)
                if result.eof or result.timed_out:
                    break
                continue
            if not _send_all(sock, seg, deadline, read_once):
                result.send_failed = True
                break
        if half_close and not result.eof:
            try:
                sock.shutdown(socket.SHUT_WR)
            except OSError:
                result.send_failed = True
        pump(lambda: False)
    finally:
        sock.close()
    parser.finish()
    result.messages = parser.messages
    result.violation = parser.violation
    return result


def _ready(sock: socket.socket, events: int, wait: float) -> bool:
    """poll(2), not select(2): the exhaustion tests hold thousands of fds (select stops at 1024)."""
    poller = select.poll()
    poller.register(sock, events | select.POLLERR | select.POLLHUP)
    return bool(poller.poll(max(0.0, wait) * 1000))


def _finals(parser: StrictParser) -> list[Message]:
    return [m for m in parser.messages if m.complete and not m.interim]


def _interim(parser: StrictParser) -> int:
    return sum(1 for m in parser.messages if m.interim)


def _send_all(sock: socket.socket, data: bytes, deadline: float, read_once: Callable[[float], None]) -> bool:
    view = memoryview(data)
    while view:
        try:
            sent = sock.send(view)
        except BlockingIOError:
            if time.monotonic() > deadline:
                return False
            # The proxy is not reading: read what it says meanwhile (it may be answering).
            if not _ready(sock, select.POLLOUT, 0.05) and _ready(sock, select.POLLIN, 0):
                read_once(0)
            continue
        except (BrokenPipeError, ConnectionResetError):
            return False
        view = view[sent:]
    return True
