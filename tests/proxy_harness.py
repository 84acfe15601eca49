"""Runs the real data plane (daemon/http.py) for tests and the benchmark, without the control plane.

In-process: ProxyHarness starts a uvloop event loop in a thread; `serve(tenant)` makes a
listening socket (host netns 127.0.0.1:0, or inside the tenant's netns) and serves it with
`loop.create_server(protocol_factory(ctx), sock=...)`, exactly as nsproxyd does.

As a script (for memory measurements, so only the proxy is in the measured process):
    python tests/proxy_harness.py --upstream-port PORT [--port-file FILE]
prints the listening port on stdout and serves until stdin closes or SIGTERM.

Test upstreams (aiohttp and raw asyncio servers) run on the same loop; see UpstreamApp.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import signal
import socket
import sys
import threading
from collections.abc import Awaitable, Callable
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from nsproxy_appliance import netns
from nsproxy_appliance.daemon.context import TenantContext
from nsproxy_appliance.daemon.http import protocol_factory
from nsproxy_appliance.model import Limits, Listen, NetnsRef, Tenant, Upstream

try:
    import uvloop
except ImportError:  # pragma: no cover - uvloop is a dependency
    uvloop = None  # type: ignore[assignment]


def new_loop() -> asyncio.AbstractEventLoop:
    return uvloop.new_event_loop() if uvloop is not None else asyncio.new_event_loop()


def make_tenant(
    name: str = "acme",
    *,
    upstream: Upstream | None = None,
    port: int = 0,
    tenant_id: str | None = None,
    header: str = "X-Tenant-ID",
    netns_path: str = "/proc/self/ns/net",
    limits: Limits | None = None,
) -> Tenant:
    return Tenant(
        name=name,
        netns=NetnsRef(path=netns_path, name=None),
        listen=(Listen("127.0.0.1", 0),),
        upstream=upstream or Upstream(kind="http", host="127.0.0.1", port=port, url=f"http://127.0.0.1:{port}"),
        tenant_id=tenant_id or f"id-{name}",
        tenant_header=header,
        limits=limits or Limits(),
    )


def listening_socket(netns_path: str | None = None, host: str = "127.0.0.1", port: int = 0) -> socket.socket:
    """A bound, listening TCP socket, created inside the netns at `netns_path` (None: host)."""
    sock = netns.socket_in(netns_path, socket.AF_INET)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(1024)
    sock.setblocking(False)
    return sock


class ProxyHarness:
    """An event loop thread serving tenants with the real protocol."""

    def __init__(self) -> None:
        self.loop = new_loop()
        self.access_log: list[dict[str, Any]] = []
        self._servers: list[asyncio.AbstractServer] = []
        self.cleanups: list[Callable[[], Awaitable[Any]]] = []  # run on the loop at close()
        self._thread = threading.Thread(target=self._run, name="proxy-loop", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()

    def call(self, coro: Awaitable[Any], timeout: float = 30.0) -> Any:
        fut = asyncio.run_coroutine_threadsafe(coro, self.loop)  # type: ignore[arg-type]
        return fut.result(timeout)

    def call_sync(self, fn: Callable[[], Any], timeout: float = 30.0) -> Any:
        async def run() -> Any:
            return fn()

        return self.call(run(), timeout)

    def serve(
        self, tenant: Tenant, *, sock: socket.socket | None = None, log: bool = True
    ) -> tuple[TenantContext, int]:
        """Serve `tenant` on `sock` (default: a new 127.0.0.1:0 socket); returns (ctx, port)."""
        if sock is None:
            sock = listening_socket()
        ctx = TenantContext(tenant=tenant, access_log=self.access_log.append if log else None)

        async def start() -> None:
            server = await self.loop.create_server(protocol_factory(ctx), sock=sock)
            self._servers.append(server)

        self.call(start())
        return ctx, sock.getsockname()[1]

    def close(self) -> None:
        async def stop() -> None:
            for server in self._servers:
                server.close()
            for cleanup in reversed(self.cleanups):
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(cleanup(), 5)
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        with contextlib.suppress(Exception):
            self.call(stop(), 10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
        with contextlib.suppress(Exception):
            self.loop.close()


# --------------------------------------------------------------------------------------------
# Test upstreams


class UpstreamApp:
    """An aiohttp upstream that shows what it received; counts the connections it accepted."""

    def __init__(self, name: str = "upstream") -> None:
        self.name = name
        self.peers: set[Any] = set()
        self.requests = 0

    def app(self) -> Any:
        from aiohttp import web

        routes = web.RouteTableDef()

        @routes.route("*", "/echo")
        @routes.route("*", "/echo/{tail:.*}")
        async def echo(request: web.Request) -> web.StreamResponse:
            self._seen(request)
            body = await request.read()
            return web.json_response(
                {
                    "upstream": self.name,
                    "method": request.method,
                    "path": request.path_qs,
                    "version": f"{request.version.major}.{request.version.minor}",
                    "headers": [[k, v] for k, v in _decode(request.raw_headers)],
                    "body_len": len(body),
                    "body_sha256": hashlib.sha256(body).hexdigest(),
                }
            )

        @routes.post("/upload")
        async def upload(request: web.Request) -> web.StreamResponse:
            self._seen(request)
            digest = hashlib.sha256()
            size = 0
            async for chunk in request.content.iter_any():
                digest.update(chunk)
                size += len(chunk)
            return web.json_response(
                {
                    "size": size,
                    "sha256": digest.hexdigest(),
                    "chunked": "chunked" in request.headers.get("Transfer-Encoding", "").lower(),
                }
            )

        @routes.get("/bytes/{n}")
        async def nbytes(request: web.Request) -> web.StreamResponse:
            """n bytes of a repeating pattern, streamed; ?chunked=1 uses chunked encoding."""
            self._seen(request)
            n = int(request.match_info["n"])
            resp = web.StreamResponse()
            if request.query.get("chunked"):
                resp.enable_chunked_encoding()
            else:
                resp.content_length = n
            await resp.prepare(request)
            block = bytes(range(256)) * 256  # 64 KiB
            sent = 0
            while sent < n:
                piece = block[: min(len(block), n - sent)]
                await resp.write(piece)
                sent += len(piece)
            await resp.write_eof()
            return resp

        @routes.route("*", "/status/{code}")
        async def status(request: web.Request) -> web.StreamResponse:
            self._seen(request)
            code = int(request.match_info["code"])
            if code in (204, 304):
                return web.Response(status=code, headers={"X-Status": str(code)})
            return web.Response(status=code, text=f"status {code}\n")

        @routes.get("/hop")
        async def hop(request: web.Request) -> web.StreamResponse:
            self._seen(request)
            return web.Response(
                text="hop\n",
                headers={"Connection": "X-Secret-Hop", "X-Secret-Hop": "1", "Keep-Alive": "timeout=5", "X-Kept": "1"},
            )

        @routes.get("/ws")
        async def ws(request: web.Request) -> web.StreamResponse:
            self._seen(request)
            sock = web.WebSocketResponse()
            await sock.prepare(request)
            async for msg in sock:
                if msg.type == web.WSMsgType.TEXT:
                    await sock.send_str(f"{self.name}:{msg.data}")
                elif msg.type == web.WSMsgType.BINARY:
                    await sock.send_bytes(msg.data)
            return sock

        @routes.get("/sleep/{seconds}")
        async def sleep(request: web.Request) -> web.StreamResponse:
            self._seen(request)
            await asyncio.sleep(float(request.match_info["seconds"]))
            return web.Response(text="slept\n")

        app = web.Application(client_max_size=1 << 30)
        app.add_routes(routes)
        return app

    def _seen(self, request: Any) -> None:
        self.requests += 1
        if request.transport is not None:
            self.peers.add(request.transport.get_extra_info("peername"))


def _decode(raw: Any) -> list[tuple[str, str]]:
    return [(k.decode("latin-1"), v.decode("latin-1")) for k, v in raw]


async def start_aiohttp(app: Any, sock: socket.socket) -> Any:
    from aiohttp import web

    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.SockSite(runner, sock)
    await site.start()
    return runner


def serve_upstream(harness: ProxyHarness, upstream: UpstreamApp, sock: socket.socket | None = None) -> int:
    """Start `upstream` on the harness loop (default: 127.0.0.1:0 in the host); returns its port."""
    if sock is None:
        sock = listening_socket()
    runner = harness.call(start_aiohttp(upstream.app(), sock))
    harness.cleanups.append(runner.cleanup)
    return sock.getsockname()[1]


RawHandler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


def serve_raw(harness: ProxyHarness, handler: RawHandler, sock: socket.socket | None = None) -> int:
    """A raw asyncio upstream (for misbehaving or hand-framed responses); returns its port."""
    if sock is None:
        sock = listening_socket()

    async def start() -> asyncio.AbstractServer:
        return await asyncio.start_server(handler, sock=sock)

    server = harness.call(start())

    async def stop() -> None:
        server.close()

    harness.cleanups.append(stop)
    return sock.getsockname()[1]


async def read_head(reader: asyncio.StreamReader) -> bytes:
    return await reader.readuntil(b"\r\n\r\n")


# --------------------------------------------------------------------------------------------
# Subprocess mode


def _main() -> None:  # pragma: no cover - runs in a child process
    import argparse

    parser = argparse.ArgumentParser()
    parser.add_argument("--upstream-port", type=int, required=True)
    parser.add_argument("--port-file")
    parser.add_argument("--access-log", action="store_true")
    args = parser.parse_args()
    loop = new_loop()
    asyncio.set_event_loop(loop)
    tenant = make_tenant("bench", port=args.upstream_port)
    ctx = TenantContext(tenant=tenant, access_log=(lambda entry: print(json.dumps(entry))) if args.access_log else None)
    sock = listening_socket()
    loop.run_until_complete(loop.create_server(protocol_factory(ctx), sock=sock))
    port = sock.getsockname()[1]
    if args.port_file:
        with open(args.port_file + ".tmp", "w") as f:
            f.write(str(port))
        os.replace(args.port_file + ".tmp", args.port_file)
    print(port, flush=True)
    stop = loop.create_future()
    loop.add_signal_handler(signal.SIGTERM, lambda: stop.done() or stop.set_result(None))
    loop.add_reader(sys.stdin.fileno(), lambda: stop.done() or stop.set_result(None))
    loop.run_until_complete(stop)


# --------------------------------------------------------------------------------------------
# pytest fixtures `proxy` and `upstream`, registered for tests/integration by its conftest.py.

if __name__ != "__main__":  # the script mode (memory measurements) keeps pytest out of the process
    import pytest

    @pytest.fixture(name="proxy")
    def proxy_fixture() -> Any:
        harness = ProxyHarness()
        yield harness
        harness.close()

    @pytest.fixture(name="upstream")
    def upstream_fixture(proxy: ProxyHarness) -> Any:
        """An echoing aiohttp upstream on 127.0.0.1:0; `.port` is where it listens."""
        app = UpstreamApp()
        app.port = serve_upstream(proxy, app)  # type: ignore[attr-defined]
        return app


if __name__ == "__main__":
    _main()


# --------------------------------------------------------------------------------------------
# Clients


def curl(*args: str, timeout: float = 20.0, netns_name: str | None = None) -> Any:
    """Run curl (inside `netns_name` via `ip netns exec` when given); returns CompletedProcess."""
    import subprocess

    cmd = ["curl", "-sS", "--max-time", str(timeout), *args]
    if netns_name is not None:
        cmd = ["ip", "netns", "exec", netns_name, *cmd]
    return subprocess.run(cmd, capture_output=True, timeout=timeout + 10, check=False)


def raw_request(port: int, data: bytes, *, timeout: float = 10.0, shut_write: bool = False) -> bytes:
    """Send raw bytes to 127.0.0.1:port and read until the server closes (or timeout)."""
    import time

    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(data)
        if shut_write:
            sock.shutdown(socket.SHUT_WR)
        chunks = []
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                chunk = sock.recv(65536)
            except (TimeoutError, ConnectionResetError):
                break
            if not chunk:
                break
            chunks.append(chunk)
        return b"".join(chunks)


def split_responses(data: bytes) -> list[tuple[int, dict[str, str], bytes]]:
    """Parse back-to-back HTTP/1.1 responses (Content-Length or chunked framing, or until the end)."""
    import httptools

    responses: list[tuple[int, dict[str, str], bytes]] = []

    class Sink:
        def __init__(self) -> None:
            self.headers: dict[str, str] = {}
            self.body = b""

        def on_message_begin(self) -> None:
            self.headers = {}
            self.body = b""

        def on_header(self, name: bytes, value: bytes) -> None:
            self.headers[name.decode().lower()] = value.decode()

        def on_body(self, body: bytes) -> None:
            self.body += body

        def on_message_complete(self) -> None:
            responses.append((parser.get_status_code(), self.headers, self.body))

    sink = Sink()
    parser = httptools.HttpResponseParser(sink)
    parser.feed_data(data)
    if sink.headers and (not responses or responses[-1][1] is not sink.headers):
        responses.append((parser.get_status_code(), sink.headers, sink.body))  # close-delimited
    return responses
