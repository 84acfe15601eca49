#!/usr/bin/env python3
"""CPU a proxy spends per one-byte request-body chunk: nsproxyd against HAProxy 2.6, same run.

The exhaustion bench's slow-body attack (100 connections dribbling a byte each) costs the quiet
tenant latency in proportion to what each dribbled byte costs the proxy: a read from the client,
a send to the upstream, the event loop between. This measures that cost directly, where the
exhaustion bench's p99 only shows it through the noise: the same layout (bench/exhaustion_bench.py:
nginx's DAV PUT upstream on CPU 1, the proxy on CPU 0 serving the hostile tenant), 100 connections
that each sent a PUT head with a 100 MB Content-Length, then `--rounds` rounds of one byte on each
connection, 5 ms apart, sent from CPU 1; the proxy's user and system CPU time (/proc/PID/stat) over
the rounds, divided by the bytes sent. Each run measures nsproxyd, then HAProxy.

    sudo .venv/bin/python bench/body_chunk_cost.py [--rounds 300] [--runs 3] [--json out.json]

Needs root (namespaces), nginx, haproxy, taskset. Cleans up its namespaces and processes on exit.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import sys
import tempfile
import time
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import exhaustion_bench as xb  # bench/ is not a package
import tls_bench
from proxy_bench import cpu_seconds, free_port, print_report

CONNECTIONS = 100
INTERVAL = 0.005  # between rounds: each round's bytes are read and forwarded one by one, as in the attack
SENDER_CPU = 1  # the client's CPU: the proxy's CPU 0 does only the proxy's work


def per_byte(pid: int, hostile: str, rounds: int) -> tuple[float, float]:
    """(user, system) CPU microseconds the process `pid` spent per dribbled byte."""
    attack = xb.Attack(hostile)  # its sockets in the hostile netns, closed by stop(); the dribbling is below
    socks = attack.connect(CONNECTIONS)
    try:
        for s in socks:
            s.sendall(b"PUT /upload/chunks HTTP/1.1\r\nHost: h\r\nContent-Length: 100000000\r\n\r\nx")
        time.sleep(0.5)  # the heads forwarded and the upstream connections open: not what is measured
        (user0, sys0) = cpu_seconds(pid)
        for _ in range(rounds):
            for s in socks:
                s.send(b"x")
            time.sleep(INTERVAL)
        time.sleep(0.3)  # the last round's bytes forwarded
        (user1, sys1) = cpu_seconds(pid)
    finally:
        attack.stop()
    sent = rounds * CONNECTIONS
    return (user1 - user0) * 1e6 / sent, (sys1 - sys0) * 1e6 / sent


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=300, help="bytes sent on each connection per measurement")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--json", help="also write the JSON report here")
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("body_chunk_cost: needs root (network namespaces)", file=sys.stderr)
        return 2
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    os.sched_setaffinity(0, {SENDER_CPU})
    procs = xb.Procs()
    samples: dict[str, list[tuple[float, float]]] = {"nsproxyd": [], "haproxy": []}
    with (
        tempfile.TemporaryDirectory(prefix="nsproxy-chunkbench-") as workdir,
        xb.bench_netns("q") as quiet,
        xb.bench_netns("h") as hostile,
    ):
        try:
            upstream_port = free_port()
            xb.start_nginx(procs, workdir, upstream_port)
            served = tls_bench.make_certificates(workdir, "ecdsa")
            for _ in range(args.runs):
                daemon = xb.start_nsproxyd(procs, workdir, quiet, hostile, upstream_port, None, served)
                samples["nsproxyd"].append(per_byte(daemon.pid, hostile, args.rounds))
                procs.stop(daemon)
                haproxy = xb.start_haproxy(procs, workdir, quiet, hostile, upstream_port, served)
                samples["haproxy"].append(per_byte(haproxy.pid, hostile, args.rounds))
                procs.stop(haproxy)
        finally:
            procs.stop_all()
    report: dict[str, Any] = {"rounds": args.rounds, "connections": CONNECTIONS, "runs": {}}
    print(f"{'proxy':10} {'user us/byte':>14} {'system us/byte':>15} {'total':>8}")
    for name, runs in samples.items():
        for user, system in runs:
            print(f"{name:10} {user:14.1f} {system:15.1f} {user + system:8.1f}")
        report["runs"][name] = [{"user_us": round(u, 2), "system_us": round(s, 2)} for u, s in runs]
    totals = {name: [u + s for u, s in runs] for name, runs in samples.items()}
    ratios = [n / h for n, h in zip(totals["nsproxyd"], totals["haproxy"], strict=True) if h]
    report["total_ratio_per_run"] = [round(r, 3) for r in ratios]
    if ratios:
        print(f"nsproxyd / HAProxy per byte, per run: {', '.join(f'{r:.2f}x' for r in ratios)}", end="")
        print(f" (median {statistics.median(ratios):.2f}x)")
    print_report(report, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
