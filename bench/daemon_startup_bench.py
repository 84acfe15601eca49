#!/usr/bin/env python3
"""nsproxyd start-up time and memory with N tenants, each in its own network namespace.

For each N (default 10 and 1000): create N named namespaces with lo up, write a runtime config
with one listener per tenant (127.0.0.1:8080 inside its netns), start nsproxyd, and measure

  start-up  from just before the process is spawned until /readyz reports the generation
            (every listener is bound by then: readiness is set after the last one)
  RSS       VmRSS and VmHWM from /proc/<pid>/status once ready, and again after a request
            through 10 tenants and a /metrics + /tenants scrape
  reload    POST /reload removing half of the tenants, then adding them back; and removing one
            tenant, then adding it back (five tenants, the median of each kind), checking that no
            other tenant's listening socket changed (the daemon's socket inodes from /proc/<pid>/fd:
            exactly one gone, then one new)

It also measures the import cost of the daemon's modules (what a bare interpreter pays for
asyncio, uvloop, aiohttp). Prints a table and a JSON object; cleans up everything it made.
Needs root. Usage: bench/daemon_startup_bench.py [--tenants 10,1000,10000] [--runs 3] [--json-only]
Targets (issue 10), judged at the largest count run: with 10,000 tenants RSS when ready <= 64 MB,
start-up <= 1.5 s, a reload adding or removing one tenant <= 10 ms touching no other tenant's sockets.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import secrets
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time

from nsproxy_appliance import broker_control, daemon_control, model, netns, runtime_config

TARGET_TENANTS = 10000
TARGET_RSS_MB = 64.0
TARGET_STARTUP_S = 1.5
TARGET_RELOAD_ONE_S = 0.010
ONE_TENANT_RELOADS = 5  # tenants removed and added back one at a time, per start


def _proc_status(pid: int) -> dict[str, int]:
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM", "RssAnon", "RssFile"):
                out[key] = int(value.split()[0])  # kB
    return out


def _lo_up(path: str) -> None:
    from pyroute2 import IPRoute

    with netns.entered(path):
        ipr = IPRoute()
    with ipr:
        ipr.link("set", index=1, state="up")  # lo is always ifindex 1 in a new netns


def make_namespaces(prefix: str, count: int) -> list[str]:
    names = []
    try:
        for i in range(count):
            name = f"{prefix}-{i}"
            netns.create_named(name)
            names.append(name)
            _lo_up(netns.named_path(name))
    except BaseException:
        delete_namespaces(names)
        raise
    return names


def delete_namespaces(names: list[str]) -> None:
    for name in names:
        netns.delete_named(name)


def write_config(paths: runtime_config.Paths, names: list[str]) -> str:
    upstream = model.Upstream(kind="http", host="127.0.0.1", port=9, url="http://127.0.0.1:9")
    tenants = tuple(
        model.Tenant(
            name=name,  # named after its namespace: a tenant keeps its name when others leave the config
            netns=model.NetnsRef.named(name),
            listen=(model.Listen("127.0.0.1", 8080),),
            upstream=upstream,
            tenant_id=name,
            tenant_header="X-Tenant-ID",
        )
        for name in names
    )
    manifest = model.Manifest(version=1, tenants=tenants, daemon=model.DaemonSettings(access_log="off"))
    config = runtime_config.render(manifest, paths)
    runtime_config.write(config, paths.config)
    return config["generation"]


def _request(path: str) -> None:
    sock = netns.socket_in(path, socket.AF_INET)
    try:
        sock.settimeout(5)
        sock.connect(("127.0.0.1", 8080))
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        while sock.recv(65536):
            pass
    finally:
        sock.close()


def run_once(paths: runtime_config.Paths, names: list[str], generation: str) -> dict[str, float]:
    argv = [sys.executable, "-m", "nsproxy_appliance.daemon.main", "--config", paths.config, "--pidfile", paths.pidfile]
    with open(paths.log_file, "ab") as log:
        t0 = time.perf_counter()
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
    try:
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"nsproxyd exited with {proc.returncode}: see {paths.log_file}")
            try:
                code, body = daemon_control.admin_request(paths, "GET", "/readyz", 2.0)
            except OSError:
                code, body = 0, None
            if code == 200 and body.get("generation") == generation:
                startup = time.perf_counter() - t0
                break
            if time.perf_counter() - t0 > 60:
                raise RuntimeError("nsproxyd not ready after 60 s")
            time.sleep(0.002)
        if body["failed"]:
            raise RuntimeError(f"{len(body['failed'])} tenants failed, e.g. {body['failed'][:3]}")
        ready = _proc_status(proc.pid)
        for name in random.sample(names, min(10, len(names))):
            _request(netns.named_path(name))  # upstream port 9 refuses: a 502, through the whole path
        daemon_control.admin_request(paths, "GET", "/metrics", 10.0)
        daemon_control.admin_request(paths, "GET", "/tenants", 10.0)
        after = _proc_status(proc.pid)
        # Reload: remove one tenant, add it back (ONE_TENANT_RELOADS tenants, each a single reload: the
        # median of each kind is reported); then remove half, add them back (idle: nothing to drain).
        removes: list[float] = []
        adds: list[float] = []
        before = _socket_inodes(proc.pid)
        for leaving in random.sample(names, min(ONE_TENANT_RELOADS, len(names))):
            for subset, times in (([n for n in names if n != leaving], removes), (names, adds)):
                write_config(paths, subset)
                times.append(_reload(paths))
                now = _socket_inodes(proc.pid)
                if len(before - now) + len(now - before) != 1:  # exactly one listener closed, or one opened
                    raise RuntimeError(f"a one-tenant reload changed {len(before ^ now)} sockets of the daemon")
                before = now
        reloads = []
        for subset in (names[: len(names) // 2], names):
            write_config(paths, subset)
            reloads.append(_reload(paths))
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return {
        "startup_s": startup,
        "rss_ready_mb": ready["VmRSS"] / 1024,
        "rss_anon_ready_mb": ready["RssAnon"] / 1024,
        "rss_after_mb": after["VmRSS"] / 1024,
        "hwm_mb": after["VmHWM"] / 1024,
        "reload_remove_one_s": statistics.median(removes),
        "reload_add_one_s": statistics.median(adds),
        "reload_remove_half_s": reloads[0],
        "reload_add_half_s": reloads[1],
    }


def _reload(paths: runtime_config.Paths) -> float:
    t = time.perf_counter()
    code, body = daemon_control.admin_request(paths, "POST", "/reload", 60.0)
    elapsed = time.perf_counter() - t
    if code != 200 or body["failed"]:
        raise RuntimeError(f"reload failed: {code} {body.get('error') or body.get('failed')}")
    return elapsed


def _socket_inodes(pid: int) -> set[str]:
    """The daemon's TCP sockets (its tenants' listeners, while it is idle): every open socket but the
    unix ones (the admin socket and the connection asking for the reload)."""
    with open("/proc/net/unix") as f:
        unix = {line.split()[6] for line in f.readlines()[1:] if len(line.split()) > 6}
    out = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:[") and target[8:-1] not in unix:
            out.add(target)
    return out


def import_costs() -> dict[str, dict[str, float]]:
    """RSS and wall time of a bare interpreter importing what the daemon imports."""
    snippets = {
        "python": "pass",
        "asyncio+uvloop+httptools": "import asyncio, uvloop, httptools",
        "aiohttp.web": "import aiohttp.web",
        "nsproxyd modules": "import nsproxy_appliance.daemon.main, nsproxy_appliance.daemon.admin, "
        "nsproxy_appliance.daemon.http, uvloop",
    }
    out = {}
    for label, code in snippets.items():
        probe = (
            f"import time; t=time.perf_counter(); {code}; t=time.perf_counter()-t; "
            "rss=[l for l in open('/proc/self/status') if l.startswith('VmRSS')][0].split()[1]; "
            "print(t, rss)"
        )
        res = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
        t, rss = res.stdout.split()
        out[label] = {"rss_mb": int(rss) / 1024, "import_s": float(t)}
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tenants", default="10,1000,10000", help="comma-separated tenant counts")
    p.add_argument("--runs", type=int, default=3, help="daemon starts per tenant count (median reported)")
    p.add_argument("--json-only", action="store_true")
    args = p.parse_args()
    if os.geteuid() != 0:
        sys.stderr.write("daemon_startup_bench: needs root (network namespaces)\n")
        return 1

    results: dict[str, object] = {"imports": import_costs(), "runs": {}}
    token = secrets.token_hex(2)
    for count in [int(x) for x in args.tenants.split(",")]:
        workdir = tempfile.mkdtemp(prefix="nsproxy-bench-")
        paths = runtime_config.Paths(state_dir=workdir, runtime_dir=os.path.join(workdir, "run"))
        os.makedirs(paths.runtime_dir)
        t = time.perf_counter()
        names = make_namespaces(f"b{token}n{count}", count)
        setup_s = time.perf_counter() - t
        broker = None
        try:
            generation = write_config(paths, names)
            # As nsproxy-apply and the units run it: the socket broker runs before the daemon and
            # outlives it. The first start has the broker make every listener (a cold start); the
            # later ones get the listeners it kept (a restart).
            broker = broker_control.ensure_detached(paths, None, 60.0)
            runs = [run_once(paths, names, generation) for _ in range(args.runs)]
        finally:
            if broker is not None:
                broker_control.stop(paths, 10.0)
                broker.wait(timeout=10)
            delete_namespaces(names)
            shutil.rmtree(workdir, ignore_errors=True)
        med = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
        med["cold_startup_s"] = runs[0]["startup_s"]
        # the starts after the first: the broker kept the listeners (the median above counts the cold one too)
        med["restart_s"] = statistics.median(r["startup_s"] for r in runs[1:]) if len(runs) > 1 else None
        results["runs"][str(count)] = {"median": med, "all": runs, "namespace_setup_s": setup_s}

    big = results["runs"].get(str(TARGET_TENANTS), {}).get("median")
    if big:
        results["targets"] = {
            "tenants": TARGET_TENANTS,
            "rss_ready_mb_max": TARGET_RSS_MB,
            "startup_s_max": TARGET_STARTUP_S,
            "reload_one_s_max": TARGET_RELOAD_ONE_S,
            "rss_ok": big["rss_ready_mb"] <= TARGET_RSS_MB,
            "startup_ok": big["startup_s"] <= TARGET_STARTUP_S,
            "reload_one_ok": max(big["reload_remove_one_s"], big["reload_add_one_s"]) <= TARGET_RELOAD_ONE_S,
        }
    if not args.json_only:
        print("import cost (bare interpreter)")
        print(f"  {'modules':<28}{'RSS MB':>9}{'import s':>10}")
        for label, v in results["imports"].items():
            print(f"  {label:<28}{v['rss_mb']:>9.1f}{v['import_s']:>10.3f}")
        print()
        print(f"nsproxyd start-up (median of {args.runs}; cold: the first start; restart: the median of the others)")
        head = f"  {'tenants':>8}{'cold s':>9}{'restart s':>11}{'start-up s':>12}{'RSS ready MB':>14}"
        head += f"{'RSS after MB':>14}{'HWM MB':>9}"
        head += f"{'reload -1 ms':>14}{'reload +1 ms':>14}{'reload -1/2 s':>15}{'reload +1/2 s':>15}"
        print(head)
        for count, r in results["runs"].items():
            m = r["median"]
            restart = f"{m['restart_s']:>11.3f}" if m["restart_s"] is not None else f"{'-':>11}"
            row = f"  {count:>8}{m['cold_startup_s']:>9.3f}{restart}{m['startup_s']:>12.3f}{m['rss_ready_mb']:>14.1f}"
            row += f"{m['rss_after_mb']:>14.1f}{m['hwm_mb']:>9.1f}"
            row += f"{m['reload_remove_one_s'] * 1e3:>14.1f}{m['reload_add_one_s'] * 1e3:>14.1f}"
            print(f"{row}{m['reload_remove_half_s']:>15.3f}{m['reload_add_half_s']:>15.3f}")
        if big:
            print(
                f"\ntargets with {TARGET_TENANTS} tenants: RSS when ready <= {TARGET_RSS_MB} MB, start-up <= "
                f"{TARGET_STARTUP_S} s, reload of one tenant <= {TARGET_RELOAD_ONE_S * 1e3:.0f} ms: "
                f"{results['targets']}"
            )
        print()
    print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
