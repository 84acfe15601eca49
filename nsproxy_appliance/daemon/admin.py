"""The admin API, on a unix socket in the runtime dir and optionally a host-netns TCP address.

GET /healthz   the process and its loop answer
GET /readyz    200 only when the config is applied and every tenant of it serves, else 503;
               {"ready", "applied", "generation", "failed", "not_serving": {tenant: why}, "draining"};
               before the config is applied only {"ready", "applied", "generation", "tenants", "stopping"}
GET /metrics   Prometheus text
GET /tenants   JSON: per tenant listeners, netns path and identity, state, last error, counters
POST /reload   re-read the runtime config and apply it; answers once removed tenants are drained

The unix socket (mode 0600: root only) serves all of them. The optional TCP listener
(daemon.admin_listen), reachable by anyone who can reach that address, is read-only: /healthz,
/readyz and /metrics; /tenants (tenant ids, upstreams) and POST /reload answer 403 there.

Served by a small HTTP/1.1 protocol on httptools (the parser the data plane uses) rather than
aiohttp: importing aiohttp.web alone costs about 15 MB of RSS and 0.2 s of start-up, which the
daemon's budget (40 MB, 1 s with 1000 tenants) cannot afford for five fixed routes.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import logging
import os
import socket
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, cast

import httptools

from .. import drift
from ..errors import NsproxyError
from . import metrics, reports

if TYPE_CHECKING:
    from .reconciler import Reconciler
    from .state import DaemonState

log = logging.getLogger("nsproxyd")

ADMIN_SOCKET_MODE = 0o600  # root only: the socket can reload the daemon and lists every tenant
READ_ONLY = ("/healthz", "/readyz", "/metrics")  # all the TCP listener serves
MAX_HEAD_BYTES = 16 * 1024
MAX_BODY_BYTES = 64 * 1024  # the admin API takes no request bodies; ignore small ones
IDLE_TIMEOUT = 60.0
JSON_TYPE = "application/json; charset=utf-8"
REASONS = {
    200: "OK",
    400: "Bad Request",
    404: "Not Found",
    405: "Method Not Allowed",
    413: "Content Too Large",
    422: "Unprocessable Content",
    431: "Request Header Fields Too Large",
    500: "Internal Server Error",
    503: "Service Unavailable",
}


def drift_file(config_path: str) -> str:
    """Paths.drift_file of the runtime dir holding `config_path`."""
    return os.path.join(os.path.dirname(os.path.abspath(config_path)), "drift.json")


class AdminError(NsproxyError):
    """The admin API cannot listen where it should; the message says where and why."""


def parse_host_port(text: str) -> tuple[str, int]:
    """'127.0.0.1:9100' or '[::1]:9100' -> (host, port)."""
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not host:
        raise AdminError(f"daemon.admin_listen {text!r}: expected HOST:PORT")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return host, int(port)


def remove_stale_socket(path: str) -> None:
    """Unlink a socket file left by a dead daemon; refuse if a live one still answers on it."""
    if not os.path.lexists(path):
        return
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.settimeout(1.0)
        probe.connect(path)
    except OSError as e:
        if e.errno not in (errno.ECONNREFUSED, errno.ENOENT, errno.ENOTSOCK):
            raise AdminError(f"admin socket {path}: {e.strerror or e}") from None
        os.unlink(path)
    else:
        raise AdminError(f"admin socket {path} is in use: another nsproxyd is running")
    finally:
        probe.close()


Reply = tuple[int, str, bytes]  # status, content type, body


def _json(status: int, body: Any) -> Reply:
    # One line: json's C encoder (indent= switches to the Python one, slow for a 10,000-tenant reload).
    return status, JSON_TYPE, json.dumps(body).encode() + b"\n"


class Routes:
    """Path -> handler per method; a handler returns a Reply or an awaitable of one."""

    def __init__(self, state: DaemonState, reconciler: Reconciler) -> None:
        self.state = state
        self.reconciler = reconciler
        self.get: dict[str, Callable[[], Reply]] = {
            "/healthz": lambda: _json(200, {"status": "ok"}),
            "/readyz": self.readyz,
            "/metrics": self.metrics,
            "/tenants": lambda: (200, JSON_TYPE, reports.tenants_json(self.state)),
        }
        self.post: dict[str, Callable[[], Any]] = {"/reload": self.reload}
        self.unix_only: set[str] = set()  # paths answered 403 here (they are served on the unix socket)

    def read_only(self) -> Routes:
        """The same routes without the control ones: what the TCP listener serves."""
        view = Routes.__new__(Routes)
        view.state, view.reconciler = self.state, self.reconciler
        view.get = {path: handler for path, handler in self.get.items() if path in READ_ONLY}
        view.post = {}
        view.unix_only = (set(self.get) | set(self.post)) - set(view.get)
        return view

    def readyz(self) -> Reply:
        body = reports.readiness(self.state)
        return _json(200 if body["ready"] else 503, body)

    def metrics(self) -> Reply:
        body = metrics.render(self.state.contexts(), reports.metrics_info(self.state))
        # + what the last nsproxy-reconcile found (drift.json next to the config), when a timer runs it
        return 200, metrics.CONTENT_TYPE, body + drift.prometheus(drift_file(self.reconciler.config_path))

    async def reload(self) -> Reply:
        if self.state.stopping:
            return _json(503, {"ok": False, "error": "nsproxyd is shutting down"})
        result = await self.reconciler.reload(trigger="admin")
        return _json(200 if result["ok"] else 422, result)


class AdminProtocol(asyncio.Protocol):
    """HTTP/1.1 with keep-alive; one request at a time (reading pauses while /reload runs)."""

    def __init__(self, routes: Routes) -> None:
        self.routes = routes
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpRequestParser(self)
        self.url = b""
        self.head_bytes = 0
        self.body_bytes = 0
        self.busy: asyncio.Task[Reply] | None = None
        self.waiting: deque[tuple[str, str | None, bool]] = deque()
        self.timer: asyncio.TimerHandle | None = None

    # -- connection -----------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # a stream server's transports are Transports
        self._arm()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.timer is not None:
            self.timer.cancel()
        self.transport = None

    def _arm(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
        self.timer = asyncio.get_running_loop().call_later(IDLE_TIMEOUT, self._idle)

    def _idle(self) -> None:
        if self.transport is not None and self.busy is None:
            self.transport.close()

    def data_received(self, data: bytes) -> None:
        self._arm()
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._send((400, JSON_TYPE, b'{"error": "upgrade not supported"}\n'), keep_alive=False)
        except httptools.HttpParserError as e:
            # A callback's exception arrives wrapped, with the original as its context.
            status = e.__context__.status if isinstance(e.__context__, _TooLarge) else 400
            self._send((status, JSON_TYPE, b'{"error": "malformed or too large request"}\n'), keep_alive=False)

    # -- httptools callbacks --------------------------------------------------------------
    def on_message_begin(self) -> None:
        self.url = b""
        self.head_bytes = 0
        self.body_bytes = 0

    def on_url(self, url: bytes) -> None:
        self.url += url
        self._count_head(len(url))

    def on_header(self, name: bytes, value: bytes) -> None:
        self._count_head(len(name) + len(value))

    def _count_head(self, n: int) -> None:
        self.head_bytes += n
        if self.head_bytes > MAX_HEAD_BYTES:
            raise _TooLarge(431)

    def on_body(self, body: bytes) -> None:
        self.body_bytes += len(body)
        if self.body_bytes > MAX_BODY_BYTES:
            raise _TooLarge(413)

    def on_message_complete(self) -> None:
        method = self.parser.get_method().decode("latin-1")
        keep_alive = self.parser.should_keep_alive()
        try:
            path = httptools.parse_url(self.url).path.decode("latin-1")
        except httptools.HttpParserInvalidURLError:
            path = None
        if self.busy is not None or self.waiting:
            # A pipelined request behind a slow one (reload): answer in order, after it.
            self.waiting.append((method, path, keep_alive))
            return
        self._dispatch(method, path, keep_alive)

    def _dispatch(self, method: str, path: str | None, keep_alive: bool) -> None:
        if path is None:
            self._send((400, JSON_TYPE, b'{"error": "bad URL"}\n'), keep_alive=False)
            return
        table = self.routes.get if method in ("GET", "HEAD") else self.routes.post if method == "POST" else {}
        handler = table.get(path)
        if handler is None:
            allowed = [m for m, t in (("GET", self.routes.get), ("POST", self.routes.post)) if path in t]
            if path in self.routes.unix_only:
                reply = _json(403, {"error": f"{path} is served on the admin unix socket only"})
            elif allowed:
                reply = _json(405, {"error": f"{method} not allowed", "allow": allowed})
            else:
                reply = _json(404, {"error": f"no such endpoint {path}"})
            self._send(reply, keep_alive, head=method == "HEAD")
            return
        try:
            result = handler()
        except Exception:
            log.exception("admin %s %s failed", method, path)
            self._send(_json(500, {"error": "internal error, see the daemon log"}), keep_alive)
            return
        if not asyncio.iscoroutine(result):
            self._send(result, keep_alive, head=method == "HEAD")
            return
        # A slow handler (reload): stop reading until it answers; replies stay in order.
        assert self.transport is not None  # dispatch runs from data_received only
        self.transport.pause_reading()
        self.busy = asyncio.get_running_loop().create_task(result)
        self.busy.add_done_callback(lambda task: self._finish(task, keep_alive))

    def _finish(self, task: asyncio.Task[Reply], keep_alive: bool) -> None:
        self.busy = None
        if task.cancelled():
            reply = _json(503, {"error": "cancelled"})
        elif task.exception() is not None:
            log.error("admin request failed", exc_info=task.exception())
            reply = _json(500, {"error": "internal error, see the daemon log"})
        else:
            reply = task.result()
        self._send(reply, keep_alive)
        while self.waiting and self.busy is None and self.transport is not None:
            self._dispatch(*self.waiting.popleft())
        if self.busy is None and self.transport is not None and not self.transport.is_closing():
            self.transport.resume_reading()

    def _send(self, reply: Reply, keep_alive: bool, head: bool = False) -> None:
        if self.transport is None or self.transport.is_closing():
            return
        status, ctype, body = reply
        lines = (
            f"HTTP/1.1 {status} {REASONS.get(status, 'Unknown')}\r\n"
            f"Content-Type: {ctype}\r\nContent-Length: {len(body)}\r\nCache-Control: no-store\r\n"
            f"{'' if keep_alive else 'Connection: close' + chr(13) + chr(10)}\r\n"
        )
        self.transport.write(lines.encode())
        if body and not head:
            self.transport.write(body)
        if not keep_alive:
            self.transport.close()


class _TooLarge(Exception):
    def __init__(self, status: int) -> None:
        self.status = status


class AdminServer:
    def __init__(self, routes: Routes, socket_path: str, tcp: str | None) -> None:
        self.socket_path = socket_path
        self.tcp = parse_host_port(tcp) if tcp else None
        self.routes = routes
        self._servers: list[asyncio.AbstractServer] = []
        self._bound = False  # whether the socket file is ours to remove

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        control = lambda: AdminProtocol(self.routes)  # noqa: E731
        read_only = self.routes.read_only()
        public = lambda: AdminProtocol(read_only)  # noqa: E731
        try:
            os.makedirs(os.path.dirname(self.socket_path) or ".", mode=0o755, exist_ok=True)
            remove_stale_socket(self.socket_path)
            umask = os.umask(0o177)  # the socket is never more open than its mode, not even for a moment
            try:
                self._servers.append(await loop.create_unix_server(control, self.socket_path))
            finally:
                os.umask(umask)
            self._bound = True
            os.chmod(self.socket_path, ADMIN_SOCKET_MODE)
            if self.tcp:
                self._servers.append(await loop.create_server(public, self.tcp[0], self.tcp[1], reuse_address=True))
        except (OSError, AdminError) as e:
            await self.stop()
            if isinstance(e, AdminError):
                raise
            where = self.socket_path if not self.tcp else f"{self.socket_path} and {self.tcp[0]}:{self.tcp[1]}"
            raise AdminError(f"cannot listen for the admin API on {where}: {e.strerror or e}") from None

    async def stop(self) -> None:
        for server in self._servers:
            server.close()
        self._servers = []
        if self._bound:
            self._bound = False
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.socket_path)
