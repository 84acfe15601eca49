#!/usr/bin/env python3
"""TLS benchmark: nsproxyd's HTTPS listeners side by side with HAProxy's, same certificates, one run.

Setup as in the data-plane benchmark (bench/proxy_bench.py, whose machinery this reuses):
- a fresh network namespace (the "tenant") with lo up; every listener below is inside it;
- nginx in the host netns (127.0.0.1:<free port>, plain HTTP) as the upstream, pinned with wrk
  to CPU 1;
- HAProxy (`bind ... namespace <ns> ssl crt <chain+key> alpn http/1.1`, the same header work as
  proxy_bench plus X-Forwarded-Proto https, server keep-alive, logs off), pinned to CPU 0;
- nsproxyd (`--config`, one tenant with TLS listeners, access log off), pinned to CPU 0;
- wrk inside the netns (`ip netns exec`), pinned to CPU 1, to https://127.0.0.1:PORT/small.

Certificates: made at start (cryptography), one CA and one server certificate per key type,
ECDSA P-256 and RSA 2048; both proxies serve the same files (the leaf and its CA as the chain).

Scenarios, for each key type:
- keepalive: 50 keep-alive connections (a handshake per connection, then requests only);
- handshake_full: `Connection: close`, so every request is a new TCP connection and TLS handshake.
  wrk offers the previous connection's session on every reconnect (it resumes whenever the server
  lets it), so the proxies measured here have resumption off, alike: HAProxy with
  `tune.ssl.cachesize 0` and `no-tls-tickets`, a second nsproxyd whose server contexts issue no
  TLS 1.3 tickets (num_tickets = 0, set by this script: nsproxy has no setting for it). Every
  handshake is a full one (checked before measuring); HAProxy still sends a stateful ticket that
  it never accepts (the JSON's tls_parameters say "ticket"), a little work nsproxyd does not do;
- handshake_resumed: the same against the proxies as configured by default (both resume wrk's
  sessions: tickets), for reference.
The proxies' TLS parameters (protocol, cipher) are probed and reported: the same OpenSSL on both
sides picks the same ones. Each round runs every scenario against both proxies back to back; the
report gives medians over rounds, min..max, ratios per round (then their median), the proxy's CPU
per request (robust on a busy machine) and its CPU use during the run ("busy": below ~0.95 the
proxy did not saturate its CPU: the client on CPU 1, or other work on the machine, was the limit).

    sudo .venv/bin/python bench/tls_bench.py [--duration 6] [--rounds 3] [--json out.json] [--profile]

The full run (defaults) is 36 wrk runs of --duration seconds plus under a second each to set up:
about 4 minutes. --profile adds a run per scenario, key and proxy under `perf record` (about 2
minutes more) and a table of the proxies' CPU per request by part (kernel, libcrypto, Python...).
Needs root (namespaces), wrk, haproxy, nginx, taskset (perf for --profile). Refuses to start when
a port it needs is taken; stops when a proxy exits during the run. Cleans up the namespace, its
files and every process it started on exit, also on failure and Ctrl-C.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import errno
import os
import re
import shutil
import signal
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import haproxy_reference  # bench/ is not a package
from proxy_bench import (
    TENANT_HEADER,
    TENANT_ID,
    Procs,
    Result,
    cpu_seconds,
    free_port,
    parse_wrk,
    print_report,
    rss_kb,
    start_nginx,
    summarise,
    tenant_netns,
)

from nsproxy_appliance import netns, runtime_config
from nsproxy_appliance.model import (
    Certificate,
    DaemonSettings,
    Listen,
    ListenTls,
    Manifest,
    NetnsRef,
    Tenant,
    Upstream,
)

KEYS = ("ecdsa", "rsa")  # ECDSA P-256, RSA 2048
SERVER_NAME = "bench.test"
# Ports inside the tenant netns: (proxy, resumption) -> {key: port}
PORTS = {
    ("nsproxy", True): {"ecdsa": 8443, "rsa": 8444},
    ("nsproxy", False): {"ecdsa": 8445, "rsa": 8446},
    ("haproxy", True): {"ecdsa": 9443, "rsa": 9444},
    ("haproxy", False): {"ecdsa": 9445, "rsa": 9446},
}
PROXIES = ("haproxy", "nsproxy")


@dataclass(frozen=True)
class Scenario:
    name: str
    connections: int
    close: bool  # Connection: close (a new TLS connection per request)
    resumption: bool  # against the proxies that let wrk resume its sessions
    target_rps: float | None  # issue 11's goal for nsproxyd req/s / HAProxy's (None: reference only)


SCENARIOS = (
    Scenario("keepalive", 50, close=False, resumption=True, target_rps=0.9),
    Scenario("handshake_full", 50, close=True, resumption=False, target_rps=0.8),
    Scenario("handshake_resumed", 50, close=True, resumption=True, target_rps=None),
)

# nsproxyd with no session resumption: its server contexts issue no TLS 1.3 session tickets (the
# only way a TLS 1.3 client resumes). A bench-only patch; the daemon itself is unchanged.
NO_RESUMPTION_NSPROXYD = """\
import sys
from nsproxy_appliance.daemon import tls

_made = tls._server_context


def _no_tickets(settings):
    ctx = _made(settings)
    ctx.num_tickets = 0
    return ctx


tls._server_context = _no_tickets
from nsproxy_appliance.daemon.main import main

main(sys.argv[1:])
"""


# -- certificates -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Served:
    cert: str  # the chain, PEM: the certificate, then its CA
    key: str  # PEM, mode 0600
    combined: str  # chain and key in one file, for HAProxy's crt
    ca: str


def make_certificates(directory: str, kind: str) -> Served:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec, rsa
    from cryptography.x509.oid import NameOID

    def key() -> Any:
        return ec.generate_private_key(ec.SECP256R1()) if kind == "ecdsa" else rsa.generate_private_key(65537, 2048)

    now = datetime.datetime.now(datetime.UTC)
    ca_key, leaf_key = key(), key()
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"nsproxy bench CA ({kind})")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    leaf = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, SERVER_NAME)]))
        .issuer_name(ca_name)
        .public_key(leaf_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(SERVER_NAME)]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    pem = serialization.Encoding.PEM
    chain = leaf.public_bytes(pem) + ca.public_bytes(pem)
    key_pem = leaf_key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    paths = {name: os.path.join(directory, f"{kind}-{name}") for name in ("chain.pem", "key.pem", "haproxy.pem")}
    for name, data in (("chain.pem", chain), ("key.pem", key_pem), ("haproxy.pem", chain + key_pem)):
        fd = os.open(paths[name], os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
    ca_file = os.path.join(directory, f"{kind}-ca.pem")
    with open(ca_file, "wb") as f:
        f.write(ca.public_bytes(pem))
    return Served(paths["chain.pem"], paths["key.pem"], paths["haproxy.pem"], ca_file)


# -- ports, probes ------------------------------------------------------------------------------


def check_free(ns_path: str | None, port: int) -> None:
    """Refuse to run (SystemExit) when 127.0.0.1:port is taken in the netns (None: the host)."""
    with netns.socket_in(ns_path, socket.AF_INET) as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError as e:
            if e.errno != errno.EADDRINUSE:
                raise
            where = ns_path or "the host netns"
            raise SystemExit(f"tls_bench: 127.0.0.1:{port} is taken in {where}; stop what uses it first") from None


def client_context(ca: str) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=ca)
    ctx.set_alpn_protocols(["http/1.1"])
    return ctx


def probe(ns_path: str, port: int, ctx: ssl.SSLContext, session: ssl.SSLSession | None = None) -> ssl.SSLSocket:
    """A verified TLS connection through 127.0.0.1:port that has read one response (so a TLS 1.3
    session ticket, if any, has arrived); the caller closes it."""
    sock = netns.socket_in(ns_path, socket.AF_INET)
    sock.settimeout(5)
    try:
        sock.connect(("127.0.0.1", port))
        tls = ctx.wrap_socket(sock, server_hostname=SERVER_NAME, session=session)
    except BaseException:
        sock.close()
        raise
    tls.sendall(f"GET /small HTTP/1.1\r\nHost: {SERVER_NAME}\r\nConnection: close\r\n\r\n".encode())
    data = b""
    while chunk := tls.recv(65536):
        data += chunk
    if not data.startswith(b"HTTP/1.1 200"):
        tls.close()
        raise RuntimeError(f"127.0.0.1:{port} answered {data[:80]!r}")
    return tls


def wait_tls(ns_path: str, port: int, ca: str, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            probe(ns_path, port, client_context(ca)).close()
            return
        except (OSError, RuntimeError) as e:
            if time.monotonic() > deadline:
                raise RuntimeError(f"no TLS answer on 127.0.0.1:{port} in {ns_path}: {e}") from None
        time.sleep(0.1)


def tls_parameters(ns_path: str, port: int, ca: str) -> dict[str, Any]:
    """What a handshake with the proxy negotiates, and whether it resumes a session."""
    ctx = client_context(ca)
    first = probe(ns_path, port, ctx)
    cipher, version, _ = first.cipher() or ("?", "?", 0)
    alpn, session = first.selected_alpn_protocol(), first.session
    first.close()
    again = probe(ns_path, port, ctx, session=session)
    resumed = again.session_reused
    again.close()
    tickets = session is not None and session.has_ticket
    return {"version": version, "cipher": cipher, "alpn": alpn, "ticket": tickets, "resumes": resumed}


# -- the proxies --------------------------------------------------------------------------------


def start_haproxy(
    procs: Procs, workdir: str, ns: str, upstream_port: int, certs: dict[str, Served], resumption: bool
) -> subprocess.Popen[bytes]:
    ports = PORTS[("haproxy", resumption)]
    conf = os.path.join(workdir, f"haproxy-{'resume' if resumption else 'full'}.cfg")
    tickets = "" if resumption else " no-tls-tickets"
    binds = "".join(
        f"    bind 127.0.0.1:{ports[k]} namespace {ns} ssl crt {certs[k].combined} alpn http/1.1"
        f" ssl-min-ver TLSv1.2{tickets}\n"
        for k in KEYS
    )
    frontend = f"frontend tenant\n{binds}"
    frontend += haproxy_reference.managed_headers(TENANT_HEADER, TENANT_ID, "https") + "    default_backend upstream\n"
    extra = "" if resumption else "    tune.ssl.cachesize 0\n"
    haproxy_reference.write_conf(
        conf, frontend, upstream_port, maxconn=4096, http_request_timeout="10s", extra_global=extra
    )
    return procs.start(["taskset", "-c", "0", "haproxy", "-f", conf, "-db"], stdout=subprocess.DEVNULL)


def start_nsproxyd(
    procs: Procs, workdir: str, ns: str, upstream_port: int, certs: dict[str, Served], resumption: bool
) -> subprocess.Popen[bytes]:
    ports = PORTS[("nsproxy", resumption)]
    workdir = os.path.join(workdir, f"nsproxyd-{'resume' if resumption else 'full'}")
    paths = runtime_config.Paths(state_dir=os.path.join(workdir, "state"), runtime_dir=os.path.join(workdir, "run"))
    listen = tuple(
        Listen("127.0.0.1", ports[k], ListenTls(certificates=(Certificate(certs[k].cert, certs[k].key),))) for k in KEYS
    )
    tenant = Tenant(
        name="bench",
        netns=NetnsRef.named(ns),
        listen=listen,
        upstream=Upstream(kind="http", host="127.0.0.1", port=upstream_port, url=f"http://127.0.0.1:{upstream_port}"),
        tenant_id=TENANT_ID,
        tenant_header=TENANT_HEADER,
    )
    manifest = Manifest(version=1, tenants=(tenant,), daemon=DaemonSettings(access_log="off"))
    runtime_config.write(runtime_config.render(manifest, paths), paths.config)
    args = ["--config", paths.config, "--log-file", os.path.join(workdir, "nsproxyd.log")]
    if resumption:
        nsproxyd = shutil.which("nsproxyd") or os.path.join(os.path.dirname(sys.executable), "nsproxyd")
        cmd = [nsproxyd, *args]
    else:
        cmd = [sys.executable, "-c", NO_RESUMPTION_NSPROXYD, *args]
    return procs.start(["taskset", "-c", "0", *cmd])


# -- measuring ----------------------------------------------------------------------------------


@dataclass
class Sample:
    result: Result
    cpu_busy: float  # the proxy's CPU seconds per second of the run (1.0: CPU 0 saturated)


def run_wrk(ns: str, port: int, sc: Scenario, duration: int, pid: int) -> Sample:
    cmd = ["ip", "netns", "exec", ns, "taskset", "-c", "1", "wrk", "-t1", f"-c{sc.connections}", f"-d{duration}s"]
    if sc.close:
        cmd += ["-H", "Connection: close"]
    cmd += ["--latency", f"https://127.0.0.1:{port}/small"]
    user_before, sys_before = cpu_seconds(pid)
    began = time.monotonic()
    out = subprocess.run(cmd, capture_output=True, text=True, check=True, timeout=duration + 60).stdout
    elapsed = time.monotonic() - began
    user_after, sys_after = cpu_seconds(pid)
    res = parse_wrk(out)
    cpu = user_after - user_before + sys_after - sys_before
    if res.requests:
        res.cpu_us_per_request = cpu * 1e6 / res.requests
        res.user_us_per_request = (user_after - user_before) * 1e6 / res.requests
    return Sample(res, cpu / elapsed if elapsed else 0.0)


def haproxy_openssl() -> str:
    """The OpenSSL library HAProxy runs on (`haproxy -vv`)."""
    out = subprocess.run(["haproxy", "-vv"], capture_output=True, text=True, check=False).stdout
    m = re.search(r"Running on OpenSSL version : (.+)", out)
    return m.group(1).strip() if m else "unknown"


def alive(running: dict[tuple[str, bool], subprocess.Popen[bytes]]) -> None:
    """Stop the run (RuntimeError) when a proxy has exited: its numbers would be wrk's errors."""
    for (proxy, resumption), proc in running.items():
        if proc.poll() is not None:
            mode = "resumption on" if resumption else "resumption off"
            raise RuntimeError(f"{proxy} ({mode}) exited with status {proc.returncode} during the run")


def dso_group(dso: str) -> str:
    """Which part of a proxy a perf DSO is."""
    if dso.startswith("[kernel") or dso.startswith("[vdso"):
        return "kernel"
    for part, group in (
        ("libcrypto", "libcrypto"),
        ("libssl", "libssl"),
        ("libpython", "python interpreter"),
        ("__mypyc", "nsproxy (mypyc)"),
        ("loop.cpython", "uvloop"),
        ("parser.cpython", "httptools"),
        ("_ssl.cpython", "python _ssl"),
        ("haproxy", "haproxy"),
        ("libc.so", "libc"),
    ):
        if part in dso:
            return group
    return "nsproxy (mypyc)" if dso.split(".")[0] in COMPILED else "other"


COMPILED = {"context", "fdbudget", "flow_control", "framing", "http", "lazytimer", "request_head", "response_head"}
COMPILED |= {"tunnel", "upstream"}


def profiled_run(
    ns: str, port: int, sc: Scenario, duration: int, pid: int, out: str
) -> tuple[Sample, dict[str, float]]:
    """A wrk run with `perf record` on the proxy: the run, and the share (%) of its CPU per dso_group."""
    perf = subprocess.Popen(
        ["perf", "record", "-q", "-F", "999", "-p", str(pid), "-o", out, "--", "sleep", str(duration)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        sample = run_wrk(ns, port, sc, duration, pid)
        perf.wait(duration + 30)
    finally:
        if perf.poll() is None:
            perf.send_signal(signal.SIGINT)
            try:
                perf.wait(10)
            except subprocess.TimeoutExpired:
                perf.kill()
                perf.wait()
    text = subprocess.run(
        ["perf", "report", "-i", out, "--sort", "dso", "--stdio"], capture_output=True, text=True, check=True
    ).stdout
    shares: dict[str, float] = {}
    for line in text.splitlines():
        m = re.match(r"\s*([\d.]+)%\s+(\S+)", line)
        if m:
            group = dso_group(m.group(2))
            shares[group] = round(shares.get(group, 0.0) + float(m.group(1)), 1)
    return sample, dict(sorted(shares.items(), key=lambda kv: -kv[1]))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=int, default=6, help="seconds per wrk run")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of every scenario against both proxies")
    parser.add_argument("--json", help="also write the JSON report here")
    parser.add_argument("--scenario", action="append", choices=[s.name for s in SCENARIOS], help="only these")
    parser.add_argument("--key", action="append", choices=KEYS, help="only these key types")
    parser.add_argument("--upstream-port", type=int, help="nginx's port in the host netns (default: a free one)")
    parser.add_argument(
        "--profile",
        action="store_true",
        help="after the rounds, one more run per scenario, key and proxy under `perf record`: where the CPU goes",
    )
    args = parser.parse_args()
    if args.rounds < 1 or args.duration < 1:
        parser.error("--rounds and --duration must be at least 1")
    if os.geteuid() != 0:
        print("tls_bench: needs root (network namespaces)", file=sys.stderr)
        return 2
    for tool in ("wrk", "haproxy", "nginx", "taskset", "ip", *(("perf",) if args.profile else ())):
        if shutil.which(tool) is None:
            print(f"tls_bench: {tool} is not installed", file=sys.stderr)
            return 2
    scenarios = [s for s in SCENARIOS if not args.scenario or s.name in args.scenario]
    keys = [k for k in KEYS if not args.key or k in args.key]
    modes = sorted({s.resumption for s in scenarios})
    runs = len(scenarios) * len(keys) * len(PROXIES) * (args.rounds + args.profile)
    print(
        f"tls_bench: {runs} wrk runs of {args.duration} s: about {runs * (args.duration + 1) + 10} s", file=sys.stderr
    )

    procs = Procs()
    samples: dict[tuple[str, str], dict[str, list[Sample]]] = {
        (s.name, k): {p: [] for p in PROXIES} for s in scenarios for k in keys
    }
    parameters: dict[str, Any] = {}
    profiles: dict[str, dict[str, Any]] = {}
    rss: dict[str, int] = {}
    with tempfile.TemporaryDirectory(prefix="nsproxy-tls-bench-") as workdir, tenant_netns() as ns:
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))
        ns_path = netns.named_path(ns)
        try:
            upstream_port = args.upstream_port or free_port()
            check_free(None, upstream_port)
            for ports in PORTS.values():
                for port in ports.values():
                    check_free(ns_path, port)
            certs = {k: make_certificates(workdir, k) for k in KEYS}
            start_nginx(procs, workdir, upstream_port)
            running: dict[tuple[str, bool], subprocess.Popen[bytes]] = {}
            for resumption in modes:
                running[("haproxy", resumption)] = start_haproxy(procs, workdir, ns, upstream_port, certs, resumption)
                running[("nsproxy", resumption)] = start_nsproxyd(procs, workdir, ns, upstream_port, certs, resumption)
            pids = {which: proc.pid for which, proc in running.items()}
            for (proxy, resumption), ports in PORTS.items():
                if resumption not in modes:
                    continue
                for k in keys:
                    wait_tls(ns_path, ports[k], certs[k].ca)
                    found = tls_parameters(ns_path, ports[k], certs[k].ca)
                    parameters[f"{proxy}_{k}_{'resume' if resumption else 'full'}"] = found
                    if found["resumes"] != resumption:
                        raise RuntimeError(f"{proxy} on {ports[k]}: resumes sessions: {found['resumes']}")
            load_before = os.getloadavg()[0]
            for rnd in range(args.rounds):
                for sc in scenarios:
                    for k in keys:
                        for proxy in PROXIES:
                            port, pid = PORTS[(proxy, sc.resumption)][k], pids[(proxy, sc.resumption)]
                            sample = run_wrk(ns, port, sc, args.duration, pid)
                            alive(running)
                            samples[(sc.name, k)][proxy].append(sample)
                            res = sample.result
                            print(
                                f"round {rnd + 1} {sc.name:17} {k:5} {proxy:7} {res.requests_per_s:9.0f} req/s "
                                f"p50 {res.p50_ms:7.3f} ms p99 {res.p99_ms:7.3f} ms "
                                f"cpu {res.cpu_us_per_request:7.1f} us/req (user {res.user_us_per_request:6.1f}) "
                                f"busy {sample.cpu_busy:4.2f} errors {res.errors}",
                                file=sys.stderr,
                            )
            for sc in scenarios if args.profile else ():
                for k in keys:
                    for proxy in PROXIES:
                        port, pid = PORTS[(proxy, sc.resumption)][k], pids[(proxy, sc.resumption)]
                        out = os.path.join(workdir, f"perf-{sc.name}-{k}-{proxy}.data")
                        sample, shares = profiled_run(ns, port, sc, args.duration, pid, out)
                        alive(running)
                        per_request = sample.result.cpu_us_per_request
                        profiles.setdefault(f"{sc.name}_{k}", {})[proxy] = {
                            "cpu_us_per_request": round(per_request, 1),
                            "share_percent": shares,
                            "us_per_request": {g: round(per_request * v / 100, 1) for g, v in shares.items()},
                        }
                        print(
                            f"profile {sc.name:17} {k:5} {proxy:7} {per_request:7.1f} us/req {shares}", file=sys.stderr
                        )
            for (proxy, resumption), pid in pids.items():
                rss[f"{proxy}_{'resume' if resumption else 'full'}"] = rss_kb(pid)
        finally:
            procs.stop_all()

    report: dict[str, Any] = {
        "duration_s": args.duration,
        "rounds": args.rounds,
        "cpus": {"proxy": 0, "wrk_and_nginx": 1},
        "load_average_at_start": round(load_before, 2),
        "openssl": {"nsproxyd": ssl.OPENSSL_VERSION, "haproxy": haproxy_openssl()},
        "tls_parameters": parameters,
        "rss_kb_after": rss,
        "scenarios": {},
        "targets": {},
    }
    if profiles:
        report["profile"] = profiles
    rows = []
    for sc in scenarios:
        for k in keys:
            name = f"{sc.name}_{k}"
            by = samples[(sc.name, k)]
            summaries = {p: summarise([s.result for s in by[p]]) for p in PROXIES}
            for p in PROXIES:
                busy = [s.cpu_busy for s in by[p]]
                summaries[p]["proxy_cpu_busy"] = round(statistics.median(busy), 3)
            pairs = list(zip(by["nsproxy"], by["haproxy"], strict=True))
            ratio_rps = statistics.median(a.result.requests_per_s / b.result.requests_per_s for a, b in pairs)
            ratio_cpu = statistics.median(
                a.result.cpu_us_per_request / b.result.cpu_us_per_request
                for a, b in pairs
                if b.result.cpu_us_per_request
            )
            report["scenarios"][name] = {
                "connections": sc.connections,
                "connection_close": sc.close,
                "resumption": sc.resumption,
                "target_ratio_requests_per_s": sc.target_rps,
                **summaries,
                "ratio_requests_per_s": round(ratio_rps, 3),
                "ratio_cpu_per_request": round(ratio_cpu, 3),
            }
            if sc.target_rps is not None:
                report["targets"][f"{name}_rps_ge_{sc.target_rps}x"] = ratio_rps >= sc.target_rps
            for p in PROXIES:
                s = summaries[p]
                rows.append(
                    (
                        sc.name,
                        k,
                        p,
                        "{median:.0f} ({min:.0f}..{max:.0f})".format(**s["requests_per_s"]),
                        f"{s['p50_ms']['median']:.3f}",
                        f"{s['p99_ms']['median']:.3f}",
                        f"{s['cpu_us_per_request']['median']:.1f}",
                        f"{s['proxy_cpu_busy']:.2f}",
                        str(s["errors"]),
                    )
                )
            target = f" (goal {sc.target_rps}x)" if sc.target_rps is not None else ""
            rows.append((sc.name, k, "ratio", f"{ratio_rps:.2f}x{target}", "", "", f"{ratio_cpu:.2f}x", "", ""))
    header = ("scenario", "key", "proxy", "req/s median (min..max)", "p50 ms", "p99 ms", "cpu us/req", "busy", "errors")
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    for r in [header, *rows]:
        print("  ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())
    if profiles:
        print()
        groups = sorted({g for p in profiles.values() for w in p.values() for g in w["us_per_request"]})
        prow = [("scenario", "proxy", "cpu us/req", *groups)]
        for name, by_proxy in profiles.items():
            for proxy, found in by_proxy.items():
                us = found["us_per_request"]
                prow.append((name, proxy, str(found["cpu_us_per_request"]), *(str(us.get(g, "")) for g in groups)))
        pw = [max(len(r[i]) for r in prow) for i in range(len(prow[0]))]
        print("CPU per request by part (us, from perf):")
        for r in prow:
            print("  ".join(c.ljust(w) for c, w in zip(r, pw, strict=True)).rstrip())
    print_report(report, args.json)
    return 0


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())
    sys.exit(130)
