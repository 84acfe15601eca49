"""`nsproxy status`: what nsproxy owns, and whether every tenant of the manifest is served.

Read-only: the ledger, the runtime config, the daemon's /tenants, and one stat per tenant's
namespace. Which tenants count: those of `--manifest M` when given, else the ones the last apply
recorded in the runtime config (its `manifest` block, which also says why the applier left some
out). A tenant is *serving* only when the daemon reports it serving, in the namespace that is at
its name or path now. The exit code is 0 only when every one of them is.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from . import daemon_control, ledger, netns, runtime_config
from .exitcodes import ExitCode
from .identity import NetnsIdentity
from .kernel.observed import ServedTenant
from .model import Manifest, NetnsRef
from .paths import Paths


@dataclass(frozen=True)
class Wanted:
    """A tenant status must find serving."""

    name: str
    netns_path: str | None  # None: not known (excluded by the applier, no --manifest)
    excluded: str | None = None  # why the applier left it out of the daemon's config


def wanted_tenants(paths: Paths, manifest: Manifest | None) -> tuple[list[Wanted], str | None]:
    """The tenants that must serve, and an error when there is no way to know them."""
    config = runtime_config.read(paths.config) or {}
    served: dict[str, dict[str, Any]] = {t["name"]: t for t in config.get("tenants", []) if isinstance(t, dict)}
    block = _object(config.get("manifest"))
    excluded = _object(block.get("excluded"))
    if manifest is not None:
        return [Wanted(t.name, t.netns.path, excluded.get(t.name)) for t in manifest.tenants], None
    if not config:
        return [], (
            f"no runtime config at {paths.config}: nothing was applied since boot (or another --runtime-dir); "
            "run nsproxy-apply, or pass --manifest"
        )
    names = block.get("tenants")
    out = []
    for name in names if isinstance(names, list) else list(served):
        netns_entry = _object(served.get(name, {}).get("netns"))
        path = netns_entry.get("path")
        out.append(Wanted(str(name), path if isinstance(path, str) else None, excluded.get(name)))
    return out, None


def _object(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _kernel_identity(path: str | None) -> NetnsIdentity | None:
    if path is None:
        return None
    try:
        return netns.identity(path) if netns.is_mounted(path) else None
    except OSError:
        return None


def _tenant(want: Wanted, served: dict[str, ServedTenant] | None, raw: dict[str, Any], running: bool) -> dict[str, Any]:
    kernel = _kernel_identity(want.netns_path)
    seen = (served or {}).get(want.name)
    entry: dict[str, Any] = {
        "name": want.name,
        "state": seen.state if seen is not None else "not served",
        "serving": False,
        "reason": None,
        "netns": {
            "path": want.netns_path,
            "identity": seen.identity.to_json() if seen is not None and seen.identity else None,  # the daemon's
            "kernel_identity": kernel.to_json() if kernel is not None else None,  # what is at the path now
        },
        "listeners": raw.get("listeners", []),
        "last_error": seen.error if seen is not None else None,
    }
    if want.excluded is not None and seen is None:
        entry["state"] = "excluded"
        entry["reason"] = f"left out by nsproxy-apply: {want.excluded}"
    elif not running:
        entry["reason"] = "the daemon is not running"
    elif served is None:
        entry["reason"] = "the daemon's admin API does not answer"
    elif seen is None:
        entry["reason"] = "not in the daemon's config (run nsproxy-apply)"
    elif seen.state != "serving":
        entry["reason"] = f"{seen.state}: {seen.error}" if seen.error else seen.state
    elif kernel is None:
        entry["reason"] = f"its namespace {NetnsRef.label_of(want.netns_path or '')} is gone"
    elif not kernel.same(seen.identity):
        entry["reason"] = f"served in namespace {seen.identity}, but {kernel} is there now"
    else:
        entry["serving"] = True
    return entry


def collect(paths: Paths, manifest: Manifest | None = None) -> tuple[dict[str, Any], ExitCode]:
    """The status report (JSON-ready) and its exit code."""
    errors: list[str] = []
    try:
        owned = ledger.load(paths.ledger)
    except ledger.LedgerError as e:
        owned = ledger.Ledger()
        errors.append(str(e))
    namespaces = []
    for name, entry in sorted(owned.namespaces.items()):
        path = NetnsRef.named(name).path
        state = "missing"
        if netns.is_mounted(path):
            state = "present" if entry.identity.same(netns.identity(path)) else "replaced (foreign)"
        namespaces.append({"name": name, "tenant": entry.tenant, "identity": str(entry.identity), "state": state})
    links = [
        {"netns": link.netns_path, "name": link.name, "kind": link.kind, "ifindex": link.ifindex, "tenant": link.tenant}
        for link in owned.links.values()
    ]
    status = daemon_control.status(paths)
    daemon: dict[str, Any] = {"running": status.running, "pid": status.pid, "generation": status.generation}
    config = runtime_config.read(paths.config)
    generation = config.get("generation") if config else None
    if status.running and generation is not None and status.generation != generation:
        errors.append(f"the daemon serves generation {status.generation}, the runtime config is {generation}")

    wanted, problem = wanted_tenants(paths, manifest)
    if problem:
        errors.append(problem)
    raw = _raw_tenants(paths) if status.running else {}
    served = daemon_control.served_tenants(paths) if status.running else None
    tenants = [_tenant(w, served, raw.get(w.name, {}), status.running) for w in wanted]
    not_serving = {t["name"]: t["reason"] for t in tenants if not t["serving"]}
    ok = not not_serving and not problem
    report = {
        "serving": ok,
        "tenants": tenants,
        "not_serving": not_serving,
        "errors": errors,
        "ledger": paths.ledger,
        "namespaces": namespaces,
        "links": links,
        "pending_intents": [intent.describe() for intent in owned.pending],
        "config": {"path": paths.config, "generation": generation},
        "daemon": daemon,
    }
    return report, ExitCode.OK if ok else ExitCode.ERROR


def _raw_tenants(paths: Paths) -> dict[str, dict[str, Any]]:
    try:
        _, body = daemon_control.admin_request(paths, "GET", "/tenants", daemon_control.STATUS_TIMEOUT)
    except (OSError, ValueError):
        return {}
    tenants = body.get("tenants") if isinstance(body, dict) else None
    return {t["name"]: t for t in tenants or [] if isinstance(t, dict) and t.get("state") != "draining"}


def to_text(report: dict[str, Any]) -> str:
    lines = []
    for t in report["tenants"]:
        ident = t["netns"]["identity"]
        where = f"netns {NetnsRef.label_of(t['netns']['path'])}" if t["netns"]["path"] else "netns ?"
        if ident:
            where += f" ({ident['dev']}:{ident['ino']})"
        listening = ", ".join(x["address"] for x in t["listeners"] if x.get("listening"))
        state = "serving" if t["serving"] else t["state"].upper()
        line = f"tenant {t['name']:<24} {state:<10} {where}"
        if listening:
            line += f"  {listening}"
        if t["reason"]:
            line += f"\n    ! {t['reason']}"
        lines.append(line)
    total, bad = len(report["tenants"]), len(report["not_serving"])
    lines.append(f"{total - bad} of {total} tenant{'s' if total != 1 else ''} serving")
    lines.append("")
    lines.append(
        f"ledger {report['ledger']}: {len(report['namespaces'])} namespace(s), {len(report['links'])} link(s) owned"
    )
    for n in report["namespaces"]:
        lines.append(f"  netns {n['name']:<24} tenant {n['tenant']:<20} {n['state']}")
    for link in report["links"]:
        where = f"{link['netns']}/{link['name']}"
        lines.append(f"  link  {where} ({link['kind']}, ifindex {link['ifindex']}) tenant {link['tenant']}")
    for intent in report["pending_intents"]:
        lines.append(f"  pending (an apply was interrupted; the next one resolves it): {intent}")
    lines.append(f"runtime config {report['config']['path']}: generation {report['config']['generation'] or '(none)'}")
    d = report["daemon"]
    running = {True: "running", False: "not running", None: "unknown"}[d["running"]]
    pid = f" (pid {d['pid']})" if d["pid"] else ""
    lines.append(f"daemon: {running}{pid}, generation {d['generation'] or '(none)'}")
    lines.extend(f"! {e}" for e in report["errors"])
    return "\n".join(lines) + "\n"


__all__ = ["collect", "to_text", "wanted_tenants"]
