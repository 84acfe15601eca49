"""Benchmark of the applier: cold apply, no-op re-apply and a one-tenant change, for N tenants
(each its own netns, lo up, a loopback listener), side by side with a shell loop of
`ip netns add` + `ip -n X link set lo up` doing the same cold work.

    .venv/bin/python bench/apply_bench.py [--tenants 100 1000] [--repeat 3] [--json out.json]

Runs the real CLI (`nsproxy-apply --no-daemon --output json`) with private state/runtime dirs.
Every namespace it creates carries a run-unique prefix and is deleted at the end, pass or fail.
Needs root.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
APPLY = ROOT / ".venv" / "bin" / "nsproxy-apply"
sys.path.insert(0, str(ROOT))

from nsproxy_appliance import netns  # noqa: E402

TARGETS = {1000: {"cold": 3.0, "noop": 0.5, "change": 0.5}}


def manifest_text(names: list[str]) -> str:
    lines = ["version: 1", "defaults:", "  upstream: http://127.0.0.1:9000", "tenants:"]
    for name in names:
        lines += [f"  - name: {name}", '    listen: ["127.0.0.1:8080"]']
    return "\n".join(lines) + "\n"


def run_apply(manifest: Path, state: Path) -> tuple[float, dict]:
    cmd = [str(APPLY), str(manifest), "--no-daemon", "--output", "json"]
    cmd += ["--state-dir", str(state / "state"), "--runtime-dir", str(state / "run")]
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    elapsed = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"nsproxy-apply failed (exit {proc.returncode}):\n{proc.stdout[-2000:]}{proc.stderr[-2000:]}")
    return elapsed, json.loads(proc.stdout)


def shell_loop(names: list[str]) -> float:
    script = 'for n in "$@"; do ip netns add "$n" && ip -n "$n" link set lo up || exit 1; done'
    start = time.perf_counter()
    subprocess.run(["bash", "-c", script, "bench", *names], check=True)
    return time.perf_counter() - start


@contextmanager
def cleanup(names: list[str]) -> Iterator[None]:
    try:
        yield
    finally:
        for name in names:
            netns.delete_named(name)


def bench(n: int, token: str, repeat: int) -> dict:
    names = [f"nb{token}-{i}" for i in range(n)]
    extra = [f"nb{token}-x{k}" for k in range(repeat)]
    shell_names = [f"ns{token}-{i}" for i in range(n)]
    result: dict = {"tenants": n}
    with tempfile.TemporaryDirectory(prefix="nsproxy-bench-") as tmp, cleanup([*names, *extra]):
        state = Path(tmp)
        manifest = state / "tenants.yaml"
        manifest.write_text(manifest_text(names))
        result["cold"], out = run_apply(manifest, state)
        assert out["changed"] and sum(a["op"] == "create_netns" for a in out["actions"]) == n, out["summary"]
        noops = []
        for _ in range(repeat):
            elapsed, out = run_apply(manifest, state)
            assert not out["changed"] and not out["actions"], out["summary"]
            noops.append(elapsed)
        changes = []
        for k in range(repeat):  # each run adds one more tenant
            manifest.write_text(manifest_text([*names, *extra[: k + 1]]))
            elapsed, out = run_apply(manifest, state)
            assert [a["target"] for a in out["actions"] if a["op"] == "create_netns"] == [extra[k]], out["summary"]
            changes.append(elapsed)
        result["noop"], result["change"] = statistics.median(noops), statistics.median(changes)
        result["noop_runs"], result["change_runs"] = noops, changes
    with cleanup(shell_names):
        result["shell_cold"] = shell_loop(shell_names)
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tenants", type=int, nargs="+", default=[100, 1000])
    parser.add_argument("--json", metavar="FILE", help="also write the results as JSON to FILE")
    parser.add_argument("--repeat", type=int, default=3, help="no-op and one-tenant runs per size (median)")
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("apply_bench needs root (network namespaces)", file=sys.stderr)
        return 1
    token = secrets.token_hex(2)
    results = [bench(n, token, args.repeat) for n in args.tenants]

    print(f"{'tenants':>8} {'cold':>8} {'no-op':>8} {'1 change':>9} {'shell cold':>11}   target (cold/no-op/change)")
    print(f"{'':>8} {'':>8} {'(median of ' + str(args.repeat) + ')':>19}")
    for r in results:
        target = TARGETS.get(r["tenants"])
        t = f"{target['cold']:.1f}/{target['noop']:.1f}/{target['change']:.1f} s" if target else "-"
        row = f"{r['tenants']:>8} {r['cold']:>7.3f}s {r['noop']:>7.3f}s {r['change']:>8.3f}s {r['shell_cold']:>10.3f}s"
        print(f"{row}   {t}")
    report = {"cpus": os.cpu_count(), "loadavg": os.getloadavg(), "results": results, "targets": TARGETS}
    print(json.dumps(report))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
