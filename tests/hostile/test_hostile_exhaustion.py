"""Exhaustion with a quiet tenant: the real nsproxyd, two tenants in two real namespaces.

`hostile` attacks (slowloris, slow body, slow reader, 5,000 idle connections, a flood above its
max_connections, fd exhaustion under a 1024 soft AND hard RLIMIT_NOFILE); meanwhile `quiet` must be
answered on every request, the hostile tenant must be limited the way the contract says (R13, R14),
and afterwards the daemon's fd count and RSS must come back near their baseline (polled with a
deadline). Function only: the latency figures are bench/exhaustion_bench.py's job.
"""

from __future__ import annotations

import contextlib
import dataclasses
import resource
import select
import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from cases import GET
from client import exchange
from daemon_harness import connect_in, tenant, write_config
from daemon_proc import Daemon, close_all, open_connections, poll, running_daemon
from recording_upstream import RecordingUpstream, Routed, recording_upstream

from nsproxy_appliance.model import Limits

pytestmark = pytest.mark.root

PORT = 8080
QUIET_REQUESTS = 20
FD_SLACK = 8  # pooled upstream connections and the like
RSS_SLACK_KB = 64 * 1024


@dataclasses.dataclass
class Pair:
    daemon: Daemon
    up: RecordingUpstream
    quiet: str  # netns paths
    hostile: str

    def quiet_statuses(self, n: int = QUIET_REQUESTS) -> list[int]:
        """n requests from the quiet tenant, each on a new connection (accept must keep working)."""
        out = []
        for _ in range(n):
            try:
                result = exchange(lambda: connect_in(self.quiet, "127.0.0.1", PORT, timeout=5), [GET], timeout=5)
                out.extend(result.statuses or [0])
            except OSError:
                out.append(-1)
        return out

    def hostile_connections(self, count: int) -> list[socket.socket]:
        return open_connections(self.hostile, "127.0.0.1", PORT, count)


@pytest.fixture
def start_pair(paths, make_netns, unique) -> Iterator[Callable[..., Any]]:
    """start_pair(hostile_limits, nofile=None) -> a context manager yielding a Pair."""

    @contextlib.contextmanager
    def start(hostile: Limits, *, nofile: tuple[int, int] | None = None) -> Iterator[Pair]:
        quiet_ns, hostile_ns = unique("q"), unique("h")
        quiet_path, hostile_path = make_netns(quiet_ns), make_netns(hostile_ns)
        with recording_upstream() as up:
            up.set_responder(Routed())
            url = f"http://127.0.0.1:{up.port}"
            tenants = [
                tenant("quiet", quiet_ns, PORT, url, header="X-Tenant-ID"),
                dataclasses.replace(tenant("hostile", hostile_ns, PORT, url, header="X-Tenant-ID"), limits=hostile),
            ]
            generation = write_config(paths, tenants)
            with running_daemon(paths, generation, nofile=nofile) as daemon:
                pair = Pair(daemon, up, quiet_path, hostile_path)
                assert pair.quiet_statuses(2) == [200, 200]  # warm: the pool's first connection exists
                yield pair

    yield start


def _baseline(pair: Pair) -> tuple[int, int]:
    return pair.daemon.fds(), pair.daemon.rss_kb()


def _back_to_baseline(pair: Pair, fds: int, rss_kb: int) -> None:
    poll(lambda: pair.daemon.fds() <= fds + FD_SLACK, 15, f"daemon fds back near {fds} (now {pair.daemon.fds()})")
    poll(lambda: pair.daemon.rss_kb() <= rss_kb + RSS_SLACK_KB, 15, f"daemon RSS back near {rss_kb} kB")


class Reader:
    """Collects what the proxy sends on many sockets until each is closed (or a deadline)."""

    def __init__(self, socks: list[socket.socket]) -> None:
        self.data = {s.fileno(): b"" for s in socks}
        self.closed: set[int] = set()
        self.socks = {s.fileno(): s for s in socks}
        for s in socks:
            s.setblocking(False)

    def run(self, until: float) -> None:
        poller = select.poll()
        for fd in self.socks:
            if fd not in self.closed:
                poller.register(fd, select.POLLIN)
        while time.monotonic() < until and len(self.closed) < len(self.socks):
            for fd, _ in poller.poll(50):
                s = self.socks[fd]
                try:
                    chunk = s.recv(65536)
                except (ConnectionResetError, BlockingIOError):
                    chunk = b""
                if chunk:
                    self.data[fd] += chunk
                else:
                    self.closed.add(fd)
                    poller.unregister(fd)

    def statuses(self) -> list[bytes]:
        return [d[9:12] for d in self.data.values()]


def test_slowloris_gets_408_and_quiet_tenant_is_served(start_pair) -> None:
    with start_pair(Limits(header_timeout=2.0)) as pair:
        fds, rss = _baseline(pair)
        socks = pair.hostile_connections(200)
        stop = threading.Event()

        def dribble() -> None:  # one header line every 0.3 s: the head never completes in time
            for s in socks:
                with contextlib.suppress(OSError):
                    s.sendall(b"GET / HTTP/1.1\r\nHost: h\r\n")
            while not stop.wait(0.3):
                for s in socks:
                    with contextlib.suppress(OSError):
                        s.send(b"X-A: b\r\n")

        thread = threading.Thread(target=dribble, daemon=True)
        started = time.monotonic()
        thread.start()
        try:
            assert pair.quiet_statuses() == [200] * QUIET_REQUESTS
            reader = Reader(socks)
            reader.run(until=started + 2.0 + 8.0)
        finally:
            stop.set()
            thread.join(5)
        assert len(reader.closed) == len(socks), f"{len(socks) - len(reader.closed)} slowloris connections still open"
        assert reader.statuses() == [b"408"] * len(socks)
        close_all(socks)
        _back_to_baseline(pair, fds, rss)
        assert pair.quiet_statuses(3) == [200] * 3


def test_slow_body_gets_408_and_frees_the_upstream_connection(start_pair) -> None:
    with start_pair(Limits(body_timeout=2.0, read_timeout=30.0)) as pair:
        fds, rss = _baseline(pair)
        pair.up.take()
        socks = pair.hostile_connections(20)
        for s in socks:
            s.sendall(b"POST /upload HTTP/1.1\r\nHost: h\r\nContent-Length: 1000000\r\n\r\n0123456789")
        stop = threading.Event()

        def dribble() -> None:
            while not stop.wait(0.3):
                for s in socks:
                    with contextlib.suppress(OSError):
                        s.send(b"x")

        thread = threading.Thread(target=dribble, daemon=True)
        started = time.monotonic()
        thread.start()
        try:
            assert pair.quiet_statuses() == [200] * QUIET_REQUESTS
            reader = Reader(socks)
            reader.run(until=started + 2.0 + 8.0)
        finally:
            stop.set()
            thread.join(5)
        assert len(reader.closed) == len(socks), f"{len(socks) - len(reader.closed)} slow bodies still held"
        assert reader.statuses() == [b"408"] * len(socks)
        # R13: the upstream connection that carried each slow body was aborted, never kept or reused.
        rec = pair.up.take()
        partial = {s.conn for s in rec.requests if not s.message.complete}
        assert partial, "the slow bodies' heads never reached the upstream (nothing was tested)"
        poll(lambda: not (partial & set(pair.up.live)), 10, "upstream connections of slow bodies closed")
        close_all(socks)
        _back_to_baseline(pair, fds, rss)


def test_slow_reader_is_bounded_by_back_pressure(start_pair) -> None:
    with start_pair(Limits()) as pair:
        fds, rss = _baseline(pair)
        socks = pair.hostile_connections(20)
        for s in socks:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            s.sendall(b"GET /big/200000000 HTTP/1.1\r\nHost: h\r\n\r\n")  # 200 MB each, never read
        peak = rss
        deadline = time.monotonic() + 3.0
        while time.monotonic() < deadline:
            peak = max(peak, pair.daemon.rss_kb())
            time.sleep(0.1)
        assert pair.quiet_statuses() == [200] * QUIET_REQUESTS
        peak = max(peak, pair.daemon.rss_kb())
        # 20 x 200 MB offered; back-pressure keeps what the daemon holds to its write buffers.
        assert peak - rss < 128 * 1024, f"daemon RSS grew {(peak - rss) // 1024} MiB under 20 slow readers"
        close_all(socks)
        _back_to_baseline(pair, fds, rss)


def test_5000_idle_connections_leave_the_quiet_tenant_served(start_pair) -> None:
    with start_pair(Limits(max_connections=6000, header_timeout=60.0)) as pair:
        fds, rss = _baseline(pair)
        socks = pair.hostile_connections(5000)
        try:
            poll(
                lambda: pair.daemon.tenant_counters("hostile")["active_connections"] >= 5000,
                30,
                "the daemon holding 5,000 hostile connections",
            )
            assert pair.quiet_statuses() == [200] * QUIET_REQUESTS
        finally:
            close_all(socks)
        _back_to_baseline(pair, fds, rss)


def test_flood_above_max_connections_gets_503_for_that_tenant_only(start_pair) -> None:
    with start_pair(Limits(max_connections=50, header_timeout=60.0)) as pair:
        fds, rss = _baseline(pair)
        socks = pair.hostile_connections(200)
        try:
            reader = Reader(socks)
            reader.run(until=time.monotonic() + 5.0)
            refused = [fd for fd in reader.closed if reader.data[fd].startswith(b"HTTP/1.1 503 ")]
            assert len(refused) == 150, f"{len(refused)} of 200 got 503 + close at max_connections=50"
            assert len(reader.closed) == 150, "connections within max_connections were closed"
            assert pair.daemon.tenant_counters("hostile")["active_connections"] <= 50
            assert pair.quiet_statuses() == [200] * QUIET_REQUESTS
        finally:
            close_all(socks)
        _back_to_baseline(pair, fds, rss)


def test_fd_exhaustion_under_1024_nofile_leaves_the_quiet_tenant_served(start_pair) -> None:
    """R14: with a 1024 soft AND hard limit, one tenant holding 1,100 connections cannot starve the others."""
    with start_pair(Limits(header_timeout=60.0), nofile=(1024, 1024)) as pair:
        assert pair.daemon.nofile() == (1024, 1024)
        fds, rss = _baseline(pair)
        socks = pair.hostile_connections(1100)
        try:
            reader = Reader(socks)
            reader.run(until=time.monotonic() + 3.0)
            assert pair.quiet_statuses() == [200] * QUIET_REQUESTS
            reader.run(until=time.monotonic() + 2.0)
            turned_away = [fd for fd in reader.closed if reader.data[fd].startswith(b"HTTP/1.1 503 ")]
            assert turned_away, "no hostile connection got 503 + close although the fd budget was exceeded"
            assert set(turned_away) == reader.closed, "hostile connections closed without a 503"
            assert pair.daemon.fds() < 1024
            assert pair.daemon.alive()
        finally:
            close_all(socks)
        _back_to_baseline(pair, fds, rss)
        assert pair.quiet_statuses(5) == [200] * 5


def test_nofile_soft_limit_is_raised_to_the_hard_limit(start_pair) -> None:
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    if hard == resource.RLIM_INFINITY or hard <= 1024:
        pytest.skip(f"this host's hard RLIMIT_NOFILE ({hard}) leaves nothing to raise")
    with start_pair(Limits(), nofile=(1024, hard)) as pair:
        assert pair.daemon.nofile() == (hard, hard)
