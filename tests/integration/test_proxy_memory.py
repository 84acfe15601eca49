"""Streaming 100 MiB each way through the proxy keeps the proxy's memory bounded.

The proxy runs alone in a child process (tests/proxy_harness.py as a script) so its peak RSS
(VmHWM) measures only the data plane; the upstream and the client live in this process.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import subprocess
import sys

import aiohttp

SIZE = 100 * 1024 * 1024
LIMIT_KB = 60 * 1024  # far below the body size


def _status_kb(pid: int, field: str) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)


def test_100mib_both_ways_with_bounded_proxy_memory(upstream):
    harness = os.path.join(os.path.dirname(os.path.dirname(__file__)), "proxy_harness.py")
    child = subprocess.Popen(
        [sys.executable, harness, "--upstream-port", str(upstream.port)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    try:
        port = int(child.stdout.readline())
        baseline = _status_kb(child.pid, "VmRSS")
        block = bytes(range(256)) * 4096  # 1 MiB

        async def run() -> tuple[dict, int, str]:
            async def body():
                for _ in range(SIZE // len(block)):
                    yield block

            timeout = aiohttp.ClientTimeout(total=240)
            async with aiohttp.ClientSession(timeout=timeout) as session:
                async with session.post(f"http://127.0.0.1:{port}/upload", data=body()) as resp:
                    uploaded = await resp.json()
                digest = hashlib.sha256()
                size = 0
                async with session.get(f"http://127.0.0.1:{port}/bytes/{SIZE}") as resp:
                    async for chunk in resp.content.iter_chunked(1 << 20):
                        size += len(chunk)
                        digest.update(chunk)
                return uploaded, size, digest.hexdigest()

        uploaded, size, _ = asyncio.run(run())
        assert uploaded["size"] == SIZE
        assert uploaded["sha256"] == hashlib.sha256(block * (SIZE // len(block))).hexdigest()
        assert size == SIZE
        peak = _status_kb(child.pid, "VmHWM")
        print(f"proxy RSS baseline {baseline} kB, peak {peak} kB after 2 x {SIZE >> 20} MiB")
        assert peak < LIMIT_KB, f"proxy peak RSS {peak} kB"
        assert peak - baseline < 30 * 1024
    finally:
        child.stdin.close()
        try:
            child.wait(10)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()
