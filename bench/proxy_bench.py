#!/usr/bin/env python3
"""Data-plane benchmark: nsproxyd side by side with HAProxy, in one run.

Setup (all on this machine, loopback only):
- a fresh network namespace (the "tenant") with lo up;
- nginx (own temp config, host netns, 127.0.0.1:<free port>) as the upstream, serving a small
  response (/small) and a 1 MiB file (/1m), pinned with wrk to CPU 1;
- HAProxy from Debian, `bind 127.0.0.1:8081 namespace <ns>`, `http-request set-header` for the
  tenant header, X-Forwarded-*, X-Real-IP, Forwarded, X-Request-ID, server keep-alive
  (http-reuse always), logs off; pinned to CPU 0;
- the real daemon `nsproxyd --config <runtime config>` (runtime_config.render + write),
  listening on 127.0.0.1:8080 inside the same netns, access log off; pinned to CPU 0;
- wrk runs inside the netns (`ip netns exec`), pinned to CPU 1.

Scenarios: keep-alive small responses, `Connection: close` small responses, 1 MiB responses, and
keep-alive small responses through a second nsproxyd that writes its JSON access log.
Each round runs every scenario against both proxies back to back, so machine noise hits both;
the report gives the median over rounds and the spread (min..max).

    sudo .venv/bin/python bench/proxy_bench.py [--duration 10] [--rounds 3] [--json out.json]

Needs root (namespaces), wrk, haproxy, nginx (nginx-light), taskset. Cleans up the namespace
and every process it started on exit, also on Ctrl-C.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import secrets
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import haproxy_reference
import nginx_upstream

from nsproxy_appliance import netns, runtime_config
from nsproxy_appliance.model import DaemonSettings, Listen, Manifest, NetnsRef, Tenant, Upstream

NSPROXY_PORT = 8080
HAPROXY_PORT = 8081
NSPROXY_LOGGING_PORT = 8082  # a second nsproxyd with the JSON access log on
TENANT_HEADER = "X-Tenant-ID"
TENANT_ID = "bench-tenant"
SMALL_BODY = "hello from the upstream, a small response body of about one hundred bytes.........\n"


@dataclass
class Scenario:
    name: str
    path: str
    connections: int
    headers: tuple[str, ...] = ()
    access_log: bool = False  # nsproxyd with its JSON access log on (HAProxy logs nothing either way)
    target_rps: float = 1.0  # goal: nsproxyd req/s >= target x HAProxy's (issue 10)


SCENARIOS = (
    Scenario("keepalive_small", "/small", 50),
    Scenario("close_small", "/small", 50, ("Connection: close",), target_rps=0.9),
    Scenario("keepalive_1mib", "/1m", 10),
    Scenario("keepalive_small_accesslog", "/small", 50, access_log=True, target_rps=0.8),
)


@dataclass
class Result:
    requests_per_s: float
    p50_ms: float
    p99_ms: float
    transfer_mib_s: float
    errors: int
    requests: int = 0
    cpu_us_per_request: float = 0.0  # proxy CPU time (user+sys) per request: robust to a busy machine
    user_us_per_request: float = 0.0  # of which in user space (the proxy's own code)


@dataclass
class Procs:
    items: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def start(self, cmd: list[str], **kw: Any) -> subprocess.Popen[bytes]:
        proc = subprocess.Popen(cmd, **kw)
        self.items.append(proc)
        return proc

    def stop_all(self) -> None:
        for proc in reversed(self.items):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in reversed(self.items):
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def tenant_netns() -> Iterator[str]:
    name = f"nsbench-{secrets.token_hex(3)}"
    netns.create_named(name)
    try:
        subprocess.run(["ip", "-n", name, "link", "set", "lo", "up"], check=True)
        yield name
    finally:
        netns.delete_named(name)


def wait_http(ns_path: str | None, port: int, path: str = "/small", timeout: float = 15.0) -> None:
    """Poll until a GET through 127.0.0.1:port (inside ns_path) answers 200."""
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            sock = netns.socket_in(ns_path, socket.AF_INET)
            with sock:
                sock.settimeout(2)
                sock.connect(("127.0.0.1", port))
                sock.sendall(f"GET {path} HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n".encode())
                data = sock.recv(256)
                if data.startswith(b"HTTP/1.1 200"):
                    return
                last = RuntimeError(data[:80])
        except OSError as e:
            last = e
        time.sleep(0.1)
    raise RuntimeError(f"nothing answers on 127.0.0.1:{port} in {ns_path or 'the host'}: {last}")


def start_nginx(procs: Procs, workdir: str, port: int) -> None:
    files = os.path.join(workdir, "files")
    os.makedirs(files)
    with open(os.path.join(files, "1m"), "wb") as f:
        f.write(os.urandom(1 << 20))
    with open(os.path.join(files, "small"), "w") as f:
        f.write(SMALL_BODY)
    locations = "        location = /small { }\n        location = /1m { }\n"
    conf = nginx_upstream.write_conf(workdir, port, files, locations, worker_connections=4096)
    procs.start(["taskset", "-c", "1", "nginx", "-c", conf, "-p", workdir], stderr=subprocess.DEVNULL)
    wait_http(None, port)


def start_haproxy(procs: Procs, workdir: str, ns: str, upstream_port: int) -> subprocess.Popen[bytes]:
    frontend = f"frontend tenant\n    bind 127.0.0.1:{HAPROXY_PORT} namespace {ns}\n"
    frontend += haproxy_reference.managed_headers(TENANT_HEADER, TENANT_ID, "http") + "    default_backend upstream\n"
    conf = haproxy_reference.write_conf(
        os.path.join(workdir, "haproxy.cfg"), frontend, upstream_port, maxconn=4096, http_request_timeout="10s"
    )
    proc = procs.start(["taskset", "-c", "0", "haproxy", "-f", conf, "-db"], stdout=subprocess.DEVNULL)
    wait_http(netns.named_path(ns), HAPROXY_PORT)
    return proc


def start_nsproxyd(
    procs: Procs, workdir: str, ns: str, upstream_port: int, port: int = NSPROXY_PORT, access_log: str = "off"
) -> subprocess.Popen[bytes]:
    workdir = os.path.join(workdir, f"nsproxyd-{port}")
    paths = runtime_config.Paths(state_dir=os.path.join(workdir, "state"), runtime_dir=os.path.join(workdir, "run"))
    tenant = Tenant(
        name="bench",
        netns=NetnsRef.named(ns),
        listen=(Listen("127.0.0.1", port),),
        upstream=Upstream(kind="http", host="127.0.0.1", port=upstream_port, url=f"http://127.0.0.1:{upstream_port}"),
        tenant_id=TENANT_ID,
        tenant_header=TENANT_HEADER,
    )
    manifest = Manifest(version=1, tenants=(tenant,), daemon=DaemonSettings(access_log=access_log))
    runtime_config.write(runtime_config.render(manifest, paths), paths.config)
    nsproxyd = shutil.which("nsproxyd") or os.path.join(os.path.dirname(sys.executable), "nsproxyd")
    proc = procs.start(
        ["taskset", "-c", "0", nsproxyd, "--config", paths.config, "--log-file", os.path.join(workdir, "nsproxyd.log")]
    )
    wait_http(netns.named_path(ns), port)
    return proc


_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3}
_BYTES = {"B": 1 / 2**20, "KB": 1 / 2**10, "MB": 1.0, "GB": 2**10}


def _ms(text: str) -> float:
    m = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text)
    if not m:
        raise ValueError(f"unexpected wrk latency {text!r}")
    return float(m.group(1)) * _UNITS[m.group(2)]


def _wrk_field(pattern: str, out: str) -> str:
    found = re.search(pattern, out, re.M)
    if found is None:
        raise RuntimeError(f"wrk printed no {pattern!r}:\n{out[-2000:]}")
    return found.group(1)


def parse_wrk(out: str) -> Result:
    rps = float(_wrk_field(r"Requests/sec:\s+([\d.]+)", out))
    p50 = _ms(_wrk_field(r"^\s+50%\s+(\S+)", out))
    p99 = _ms(_wrk_field(r"^\s+99%\s+(\S+)", out))
    t = re.search(r"Transfer/sec:\s+([\d.]+)(B|KB|MB|GB)", out)
    transfer = float(t.group(1)) * _BYTES[t.group(2)] if t else 0.0
    errors = 0
    for m in re.finditer(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out):
        errors += sum(int(x) for x in m.groups())
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if non_2xx:
        errors += int(non_2xx.group(1))
    total = re.search(r"(\d+) requests in", out)
    return Result(rps, p50, p99, transfer, errors, int(total.group(1)) if total else 0)


def print_report(report: dict[str, Any], path: str | None) -> None:
    """The benches' JSON report: printed, and also written to `path` when given."""
    print(json.dumps(report, indent=2))
    if path:
        with open(path, "w") as f:
            json.dump(report, f, indent=2)


def cpu_seconds(pid: int) -> tuple[float, float]:
    """(user, system) CPU seconds of `pid` so far."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    tick = os.sysconf("SC_CLK_TCK")
    return int(fields[11]) / tick, int(fields[12]) / tick


def run_wrk(ns: str, port: int, sc: Scenario, duration: int, pid: int) -> Result:
    cmd = ["ip", "netns", "exec", ns, "taskset", "-c", "1", "wrk", "-t1", f"-c{sc.connections}", f"-d{duration}s"]
    for h in sc.headers:
        cmd += ["-H", h]
    cmd += ["--latency", f"http://127.0.0.1:{port}{sc.path}"]
    user_before, sys_before = cpu_seconds(pid)
    out = subprocess.run(cmd, capture_output=True, text=True, check=True, timeout=duration + 60).stdout
    user_after, sys_after = cpu_seconds(pid)
    res = parse_wrk(out)
    if res.requests:
        res.cpu_us_per_request = (user_after - user_before + sys_after - sys_before) * 1e6 / res.requests
        res.user_us_per_request = (user_after - user_before) * 1e6 / res.requests
    return res


def rss_kb(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def summarise(samples: list[Result]) -> dict[str, Any]:
    def stat(attr: str) -> dict[str, float]:
        values = [getattr(s, attr) for s in samples]
        return {
            "median": round(statistics.median(values), 3),
            "min": round(min(values), 3),
            "max": round(max(values), 3),
        }

    return {
        "requests_per_s": stat("requests_per_s"),
        "p50_ms": stat("p50_ms"),
        "p99_ms": stat("p99_ms"),
        "transfer_mib_s": stat("transfer_mib_s"),
        "cpu_us_per_request": stat("cpu_us_per_request"),
        "user_us_per_request": stat("user_us_per_request"),
        "errors": sum(s.errors for s in samples),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=int, default=10, help="seconds per wrk run")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of every scenario against both proxies")
    parser.add_argument("--json", help="also write the JSON report here")
    parser.add_argument("--scenario", action="append", help="only these scenarios (repeatable)")
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("proxy_bench: needs root (network namespaces)", file=sys.stderr)
        return 2
    for tool in ("wrk", "haproxy", "nginx", "taskset"):
        if shutil.which(tool) is None:
            print(f"proxy_bench: {tool} is not installed", file=sys.stderr)
            return 2
    scenarios = [s for s in SCENARIOS if not args.scenario or s.name in args.scenario]

    procs = Procs()
    samples: dict[str, dict[str, list[Result]]] = {s.name: {"haproxy": [], "nsproxy": []} for s in scenarios}
    with tempfile.TemporaryDirectory(prefix="nsproxy-bench-") as workdir, tenant_netns() as ns:
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))
        try:
            upstream_port = free_port()
            start_nginx(procs, workdir, upstream_port)
            haproxy = start_haproxy(procs, workdir, ns, upstream_port)
            daemon = start_nsproxyd(procs, workdir, ns, upstream_port)
            logging = None
            if any(sc.access_log for sc in scenarios):
                log_file = os.path.join(workdir, "access.log")
                logging = start_nsproxyd(procs, workdir, ns, upstream_port, NSPROXY_LOGGING_PORT, log_file)
            load_before = os.getloadavg()[0]
            for rnd in range(args.rounds):
                for sc in scenarios:
                    nsproxy = (logging, NSPROXY_LOGGING_PORT) if sc.access_log else (daemon, NSPROXY_PORT)
                    for name, (proc, port) in (("haproxy", (haproxy, HAPROXY_PORT)), ("nsproxy", nsproxy)):
                        assert proc is not None
                        res = run_wrk(ns, port, sc, args.duration, proc.pid)
                        samples[sc.name][name].append(res)
                        print(
                            f"round {rnd + 1} {sc.name:26} {name:8} {res.requests_per_s:10.0f} req/s "
                            f"p50 {res.p50_ms:7.3f} ms p99 {res.p99_ms:7.3f} ms {res.transfer_mib_s:8.1f} MiB/s "
                            f"cpu {res.cpu_us_per_request:7.1f} us/req (user {res.user_us_per_request:5.1f})",
                            file=sys.stderr,
                        )
            daemon_rss = rss_kb(daemon.pid)
        finally:
            procs.stop_all()

    report: dict[str, Any] = {
        "duration_s": args.duration,
        "rounds": args.rounds,
        "cpus": {"proxy": 0, "wrk_and_nginx": 1},
        "load_average_at_start": round(load_before, 2),
        "nsproxyd_rss_kb_after": daemon_rss,
        "scenarios": {},
    }
    rows = []
    for sc in scenarios:
        h = summarise(samples[sc.name]["haproxy"])
        n = summarise(samples[sc.name]["nsproxy"])
        pairs = list(zip(samples[sc.name]["nsproxy"], samples[sc.name]["haproxy"], strict=True))
        # Ratios per round (both proxies measured back to back), then the median: steadier than
        # a ratio of medians when other work on the machine comes and goes.
        ratio_rps = statistics.median(a.requests_per_s / b.requests_per_s for a, b in pairs)
        ratio_p99 = statistics.median(a.p99_ms / b.p99_ms for a, b in pairs if b.p99_ms)
        ratio_cpu = statistics.median(
            a.cpu_us_per_request / b.cpu_us_per_request for a, b in pairs if b.cpu_us_per_request
        )
        report["scenarios"][sc.name] = {
            "connections": sc.connections,
            "access_log": sc.access_log,
            "target_ratio_requests_per_s": sc.target_rps,
            "haproxy": h,
            "nsproxy": n,
            "ratio_requests_per_s": round(ratio_rps, 3),
            "ratio_p99": round(ratio_p99, 3),
            "ratio_cpu_per_request": round(ratio_cpu, 3),
        }
        for who, s in (("haproxy", h), ("nsproxy", n)):
            rows.append(
                (
                    sc.name,
                    who,
                    "{median:.0f} ({min:.0f}..{max:.0f})".format(**s["requests_per_s"]),
                    f"{s['p50_ms']['median']:.3f}",
                    f"{s['p99_ms']['median']:.3f}",
                    f"{s['transfer_mib_s']['median']:.1f}",
                    f"{s['cpu_us_per_request']['median']:.1f}",
                    str(s["errors"]),
                )
            )
        rows.append((sc.name, "ratio", f"{ratio_rps:.2f}x", "", f"{ratio_p99:.2f}x", "", f"{ratio_cpu:.2f}x", ""))
    # Issue 10's goals, each judged from the per-round ratios of this run.
    targets: dict[str, bool] = {}
    for sc in scenarios:
        result = report["scenarios"][sc.name]
        targets[f"{sc.name}_rps_ge_{sc.target_rps}x"] = result["ratio_requests_per_s"] >= sc.target_rps
    ka = report["scenarios"].get("keepalive_small")
    if ka:
        targets["keepalive_small_cpu_per_request_le_1.0x"] = ka["ratio_cpu_per_request"] <= 1.0
        targets["keepalive_small_p99_le_1.2x"] = ka["ratio_p99"] <= 1.2
    report["targets"] = targets
    header = ("scenario", "proxy", "req/s median (min..max)", "p50 ms", "p99 ms", "MiB/s", "cpu us/req", "errors")
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    for r in [header, *rows]:
        print("  ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True)))
    print_report(report, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
