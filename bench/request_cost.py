"""What one small keep-alive request costs the data plane itself, without sockets or system calls.

The real ProxyProtocol and UpstreamConnection, on fake transports, with the upstream connection
attached across the client's keep-alive requests (as in the daemon): each round feeds one client
request and one nginx-like response. Prints microseconds of CPU per request (best of 5), or with
--callgrind the CPU instructions per request, counted by valgrind over N and 2N requests (the
difference, so start-up drops out): repeatable on a shared, noisy machine, unlike a timer.

    .venv/bin/python bench/request_cost.py                 # µs per request
    .venv/bin/python bench/request_cost.py --callgrind     # instructions per request (valgrind)
    .venv/bin/python bench/request_cost.py --access-log /tmp/a.log   # with the JSON access log on

docs/performance.md ("Where the time goes") has the breakdown this gives.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "tests")]

REQUEST = b"GET /small HTTP/1.1\r\nHost: 127.0.0.1:8080\r\n\r\n"
RESPONSE = (
    b"HTTP/1.1 200 OK\r\nServer: nginx/1.22.1\r\nDate: Tue, 01 Dec 2026 09:00:00 GMT\r\n"
    b"Content-Type: application/octet-stream\r\nContent-Length: 84\r\n"
    b"Last-Modified: Tue, 01 Dec 2026 08:00:00 GMT\r\nConnection: keep-alive\r\n"
    b'ETag: "6929b1e0-54"\r\nAccept-Ranges: bytes\r\n\r\n' + b"x" * 84
)


class FakeTransport:
    """Just enough of an asyncio transport: writes are kept (and dropped every 1000 requests).
    Not tests/unit/protocol_fakes.FakeTransport: that one copies and checks every write, a cost
    this measurement would count as the data plane's."""

    def __init__(self) -> None:
        self.out: list[bytes] = []
        self.extra = {"peername": ("10.0.0.7", 40000), "sockname": ("127.0.0.1", 8080)}
        self.closing = False

    def write(self, data: bytes) -> None:
        self.out.append(data)

    def writelines(self, parts: list[bytes]) -> None:
        self.out.append(b"".join(parts))

    def get_extra_info(self, key: str, default: Any = None) -> Any:
        return self.extra.get(key, default)

    def set_write_buffer_limits(self, high: int, low: int) -> None:
        pass

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def is_closing(self) -> bool:
        return self.closing

    def close(self) -> None:
        self.closing = True

    def abort(self) -> None:
        self.closing = True


async def measure(requests: int, repeats: int, access_log: str | None = None) -> float:
    """Best CPU seconds per request over `repeats` runs of `requests` (the writer thread's CPU
    included: process time)."""
    from proxy_harness import make_tenant

    from nsproxy_appliance.daemon import upstream
    from nsproxy_appliance.daemon.accesslog import AccessLog
    from nsproxy_appliance.daemon.context import TenantContext
    from nsproxy_appliance.daemon.http import ProxyProtocol

    ctx = TenantContext(tenant=make_tenant("bench", port=9))
    if access_log is not None:
        ctx.access_log = AccessLog(access_log, asyncio.get_running_loop())
    proto = ProxyProtocol(ctx, asyncio.get_running_loop())
    client = FakeTransport()
    proto.connection_made(client)  # type: ignore[arg-type]
    pool = upstream.pool_for(ctx)
    ctx.policy.pool = pool
    up = upstream.UpstreamConnection(pool)
    server = FakeTransport()
    up.connection_made(server)  # type: ignore[arg-type]
    pool.release(up, True)
    for _ in range(1000):  # warm up: caches filled, the connection attached
        proto.data_received(REQUEST)
        up.data_received(RESPONSE)
    if not client.out[-1].endswith(b"x" * 84):
        raise SystemExit(f"the proxy did not relay the response: {client.out[-1][:200]!r}")
    best = float("inf")
    for _ in range(repeats):
        started = time.process_time()
        for i in range(requests):
            proto.data_received(REQUEST)
            up.data_received(RESPONSE)
            if i % 1000 == 0:
                client.out.clear()
                server.out.clear()
        best = min(best, time.process_time() - started)
    if ctx.access_log is not None:
        ctx.access_log.close()
    return best / requests


def instructions(requests: int, extra: list[str]) -> int:
    """valgrind's instruction count of a whole run of `requests`."""
    with tempfile.TemporaryDirectory() as tmp:
        out = subprocess.run(
            ["valgrind", "--tool=callgrind", f"--callgrind-out-file={tmp}/cg", sys.executable, __file__,
             "--requests", str(requests), "--repeats", "1", *extra],
            capture_output=True, text=True, check=True, env=dict(os.environ, PYTHONHASHSEED="0"),
        )  # fmt: skip
    found = re.search(r"Collected : ([\d,]+)", out.stderr)
    if not found:
        raise SystemExit(f"valgrind printed no instruction count:\n{out.stderr[-2000:]}")
    return int(found.group(1).replace(",", ""))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=100_000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--callgrind", action="store_true", help="count instructions with valgrind instead")
    parser.add_argument("--access-log", metavar="FILE", help="with the JSON access log on, written to FILE")
    args = parser.parse_args()
    from nsproxy_appliance.daemon import compiled

    build = "compiled" if compiled.is_compiled() else "pure Python"
    if args.callgrind:
        n = min(args.requests, 3000)
        extra = ["--access-log", args.access_log] if args.access_log else []
        per_request = (instructions(2 * n, extra) - instructions(n, extra)) / n
        print(f"{per_request:,.0f} instructions per request ({build} data plane, valgrind over {n} and {2 * n})")
        return 0
    import uvloop  # the daemon's loop: its time() is what the protocol reads per request

    seconds = uvloop.run(measure(args.requests, args.repeats, args.access_log))
    print(f"{seconds * 1e6:.2f} µs of CPU per request ({build} data plane, no system calls, best of {args.repeats})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
