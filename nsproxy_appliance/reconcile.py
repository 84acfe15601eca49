"""nsproxy-reconcile: the periodic drift check of fleets without a push (nsproxy-reconcile.timer).

    nsproxy-reconcile MANIFEST [--mode check|apply] [--state-dir DIR] [--runtime-dir DIR] [--allow-empty]

Runs `nsproxy-apply MANIFEST --check` (kernel objects, runtime config and the daemon's view against
the manifest, changing nothing), and with --mode apply re-applies when anything is off. Exports what
it found: <runtime_dir>/drift.json (drift.py; the daemon's /metrics serves it as nsproxy_drift and nsproxy_reconcile_*)
and one log line on stdout (the journal, under the timer). Exit 0 when the host is in sync, or the
drift was reported (check) or repaired (apply); 1 when the check failed or the re-apply did not
converge (the unit then shows as failed).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from typing import Any

from . import drift
from .errors import StateFileError
from .exitcodes import EXIT_ERROR, EXIT_OK
from .paths import DEFAULT_RUNTIME_DIR, DEFAULT_STATE_DIR, Paths
from .versionarg import add_version

EXIT_PENDING = 2  # nsproxy-apply --check: changes pending
RUN_TIMEOUT = 600.0


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="nsproxy-reconcile", description="Check the host against MANIFEST; report drift.")
    p.add_argument("manifest", metavar="MANIFEST")
    p.add_argument("--mode", choices=("check", "apply"), default="check", help="apply: re-apply on drift")
    p.add_argument("--state-dir", default=os.environ.get("NSPROXY_STATE_DIR", DEFAULT_STATE_DIR))
    p.add_argument("--runtime-dir", default=os.environ.get("NSPROXY_RUNTIME_DIR", DEFAULT_RUNTIME_DIR))
    p.add_argument("--allow-empty", action="store_true", help="passed to nsproxy-apply")
    add_version(p)
    return p.parse_args(argv)


def _apply(args: argparse.Namespace, *extra: str) -> tuple[int, dict[str, Any] | None, str]:
    """nsproxy-apply's exit code, JSON report and standard error."""
    cmd = [
        sys.executable, "-m", "nsproxy_appliance.cli", args.manifest, "--output", "json",
        "--state-dir", args.state_dir, "--runtime-dir", args.runtime_dir,
        *(["--allow-empty"] if args.allow_empty else []), *extra,
    ]  # fmt: skip
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=RUN_TIMEOUT, check=False)
    except subprocess.TimeoutExpired:
        return EXIT_ERROR, None, f"nsproxy-apply did not finish within {RUN_TIMEOUT:g} s"
    try:
        report = json.loads(out.stdout)
    except ValueError:
        report = None
    return out.returncode, report if isinstance(report, dict) else None, out.stderr.strip()


def _found(rc: int, report: dict[str, Any] | None) -> dict[str, Any]:
    summary = (report or {}).get("summary") or {}
    not_serving = (report or {}).get("not_serving") or {}
    errors = [str(e) for e in (report or {}).get("errors") or []]
    return {
        "pending": {a: int(summary.get(a, 0) or 0) for a in drift.ACTIONS},
        "not_serving": sorted(not_serving),
        "conflicts": len((report or {}).get("conflicts") or []),
        "errors": errors,
        "drift": rc == EXIT_PENDING or (report is not None and report.get("in_sync") is False) or bool(not_serving),
        "exit_code": rc,
    }


def _line(record: dict[str, Any], why: dict[str, str]) -> str:
    pending = record["pending"]
    parts = [f"nsproxy-reconcile ({record['mode']}): {record['result'].replace('_', ' ')}"]
    if any(pending.values()):
        parts.append(f"{pending['add']} to add, {pending['change']} to change, {pending['destroy']} to destroy")
    if record["not_serving"]:
        parts.append("not serving: " + ", ".join(f"{t} ({why.get(t, '?')})" for t in record["not_serving"]))
    if record["conflicts"]:
        parts.append(f"{record['conflicts']} conflicts")
    if record["errors"]:
        parts.append("errors: " + "; ".join(record["errors"][:3]))
    return "; ".join(parts)


def run(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
    paths = Paths(state_dir=args.state_dir, runtime_dir=args.runtime_dir)
    rc, report, stderr = _apply(args, "--check")
    record: dict[str, Any] = {"time": time.time(), "mode": args.mode, "repaired": False, **_found(rc, report)}
    why = dict((report or {}).get("not_serving") or {})
    if report is None or rc not in (EXIT_OK, EXIT_PENDING):
        record["result"] = "error"
        if not record["errors"]:
            record["errors"] = [stderr or f"nsproxy-apply --check exited with {rc}"]
    elif not record["drift"]:
        record["result"] = "in_sync"
    elif args.mode == "check":
        record["result"] = "drift"
    else:
        rc_apply, applied, stderr = _apply(args)
        record["repaired"] = rc_apply == EXIT_OK
        record["result"] = "repaired" if rc_apply == EXIT_OK else "failed"
        if rc_apply != EXIT_OK:
            record["errors"] = [str(e) for e in (applied or {}).get("errors") or []] or [
                stderr or f"nsproxy-apply exited with {rc_apply}"
            ]
    print(_line(record, why), flush=True)
    try:
        drift.write(paths.drift_file, record)
    except StateFileError as e:
        print(f"nsproxy-reconcile: {e}", file=sys.stderr)
        return EXIT_ERROR
    return EXIT_ERROR if record["result"] in ("error", "failed") else EXIT_OK


def main(argv: list[str] | None = None) -> None:
    sys.exit(run(argv))


if __name__ == "__main__":
    main()
