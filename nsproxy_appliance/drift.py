"""Drift, as the last `nsproxy-reconcile` found it: a small JSON file in the runtime dir, written by
the reconcile run and read by the daemon's /metrics.

    <runtime_dir>/drift.json
    {"time": 1764583348.1, "mode": "check", "result": "drift", "drift": true,
     "pending": {"add": 1, "change": 0, "destroy": 0}, "not_serving": ["acme"], "conflicts": 0,
     "errors": [], "repaired": false, "exit_code": 2}

result: in_sync | drift (found, not repaired: mode check) | repaired (found, and the re-apply
converged) | failed (the re-apply did not converge) | error (the check itself failed).
"""

from __future__ import annotations

import json
import math
from typing import Any

import orjson

from . import atomicfile

RESULTS = ("in_sync", "drift", "repaired", "failed", "error")
ACTIONS = ("add", "change", "destroy")


def write(path: str, record: dict[str, Any]) -> None:
    # Readable by the daemon's user (it exports the metrics); written by root only.
    atomicfile.write_text(path, json.dumps(record, sort_keys=True) + "\n", sync_directory=False, mode=0o644)


def read(path: str) -> dict[str, Any] | None:
    """The last record, or None when there is none (no reconcile timer) or it cannot be read."""
    try:
        with open(path, "rb") as f:
            record = orjson.loads(f.read())  # any damage is a ValueError (json also raised RecursionError)
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def _number(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return 0.0
    return float(value)


def _objects_off(record: dict[str, Any], pending: dict[str, Any], not_serving: Any) -> int:
    """Changes pending plus tenants not served; at least 1 when the check found drift it did not
    count (e.g. only the daemon's view differs), so that `nsproxy_drift > 0` means drift."""
    unserved = len(not_serving) if isinstance(not_serving, list) else 0
    count = sum(int(_number(pending.get(a))) for a in ACTIONS) + unserved
    return max(count, 1 if record.get("drift") is True else 0)


def prometheus(path: str) -> bytes:
    """nsproxy_drift and the nsproxy_reconcile_* families (Prometheus text format); nothing when
    there is no record (no reconcile timer: no claim either way)."""
    record = read(path)
    if record is None:
        return b""
    raw = record.get("pending")
    pending: dict[str, Any] = raw if isinstance(raw, dict) else {}
    not_serving = record.get("not_serving")
    result = record.get("result") if record.get("result") in RESULTS else "error"
    lines = [
        "# HELP nsproxy_reconcile_last_run_timestamp_seconds When the last reconcile check ran (unix time).",
        "# TYPE nsproxy_reconcile_last_run_timestamp_seconds gauge",
        f"nsproxy_reconcile_last_run_timestamp_seconds {_number(record.get('time'))!r}",
        "# HELP nsproxy_drift Objects the last reconcile check found differing from the manifest (0: in sync).",
        "# TYPE nsproxy_drift gauge",
        f"nsproxy_drift {_objects_off(record, pending, not_serving)}",
        "# HELP nsproxy_reconcile_pending_changes Changes the last reconcile check found pending, by action.",
        "# TYPE nsproxy_reconcile_pending_changes gauge",
        *(f'nsproxy_reconcile_pending_changes{{action="{a}"}} {int(_number(pending.get(a)))}' for a in ACTIONS),
        "# HELP nsproxy_reconcile_not_serving Tenants of the manifest the last reconcile check found not served.",
        "# TYPE nsproxy_reconcile_not_serving gauge",
        f"nsproxy_reconcile_not_serving {len(not_serving) if isinstance(not_serving, list) else 0}",
        "# HELP nsproxy_reconcile_result 1 for the outcome of the last reconcile run.",
        "# TYPE nsproxy_reconcile_result gauge",
        *(f'nsproxy_reconcile_result{{result="{r}"}} {int(r == result)}' for r in RESULTS),
    ]
    return ("\n".join(lines) + "\n").encode()
