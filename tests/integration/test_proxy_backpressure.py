"""Back-pressure: a side that does not read stops the other side, instead of growing buffers."""

from __future__ import annotations

import asyncio
import socket
import time

from proxy_harness import make_tenant, read_head, serve_raw

from nsproxy_appliance.model import Limits


def _tcp_mem_max(name: str) -> int:
    with open(f"/proc/sys/net/ipv4/{name}") as f:
        return int(f.read().split()[2])


# What may sit in buffers along client -> proxy -> upstream while one end reads nothing, without
# the proxy reading ahead: each hop's kernel send and receive buffers (autotuned up to these
# sysctls; 32 MiB receive on some kernels) plus the proxy's high-water marks and slack. A proxy
# without back-pressure takes the whole body, so TOTAL is well above the bound.
BOUND = 2 * (_tcp_mem_max("tcp_rmem") + _tcp_mem_max("tcp_wmem")) + 4 * 1024 * 1024
TOTAL = 2 * BOUND


def _settled(read_value, deadline_s: float = 20.0) -> int:
    """Poll `read_value` until it stops growing for half a second (or the deadline passes)."""
    deadline = time.monotonic() + deadline_s
    last, since = read_value(), time.monotonic()
    while time.monotonic() < deadline:
        time.sleep(0.05)
        now = read_value()
        if now != last:
            last, since = now, time.monotonic()
        elif time.monotonic() - since > 0.5:
            break
    return last


def test_slow_client_pauses_the_upstream(proxy):
    sent = [0]

    async def big(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_head(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % TOTAL)
        block = b"x" * 65536
        while sent[0] < TOTAL:
            writer.write(block)
            await writer.drain()  # blocks while the proxy stops reading
            sent[0] += len(block)

    _, port = proxy.serve(make_tenant("acme", port=serve_raw(proxy, big)))
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
        sock.sendall(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        stalled_at = _settled(lambda: sent[0])  # the client reads nothing meanwhile
        assert stalled_at < BOUND, f"upstream wrote {stalled_at} bytes into a client that reads nothing"
        received = 0
        while received < TOTAL:  # then everything still arrives
            chunk = sock.recv(1 << 20)
            assert chunk
            received += len(chunk)
    assert received >= TOTAL


def test_slow_upstream_pauses_the_client_upload(proxy):
    got = [0]
    release = asyncio.Event()

    async def sluggish(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_head(reader)
        await release.wait()  # reads nothing until told
        while got[0] < TOTAL:
            chunk = await reader.read(1 << 20)
            if not chunk:
                break
            got[0] += len(chunk)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        await writer.drain()

    limits = Limits(max_body_bytes=TOTAL)
    _, port = proxy.serve(make_tenant("acme", port=serve_raw(proxy, sluggish), limits=limits))
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 65536)
        sock.sendall(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: %d\r\n\r\n" % TOTAL)
        sock.setblocking(False)
        sent = 0
        block = b"y" * 65536
        deadline = time.monotonic() + 20
        quiet_since = time.monotonic()
        while time.monotonic() < deadline and time.monotonic() - quiet_since < 0.5:
            try:
                sent += sock.send(block)
                quiet_since = time.monotonic()
            except BlockingIOError:
                time.sleep(0.02)
        assert sent < BOUND, f"the proxy accepted {sent} bytes for an upstream that reads nothing"
        proxy.loop.call_soon_threadsafe(release.set)
        sock.setblocking(True)
        view = memoryview(b"y" * (TOTAL - sent))
        sock.sendall(view)
        data = b""
        while not data.endswith(b"ok"):
            chunk = sock.recv(65536)
            assert chunk
            data += chunk
    assert got[0] == TOTAL
