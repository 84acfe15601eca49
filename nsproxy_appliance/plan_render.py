"""Render a plan or an apply result: terraform-like text for people, one JSON object for tools.

The JSON shape is the contract in docs/ARCHITECTURE.md ("The CLI"); the Ansible module reads it.
"""

from __future__ import annotations

import difflib
import json
from typing import Any

from .apply import RunResult
from .plan import ADD_OPS, DAEMON_TENANT, DESTROY_OPS, Action, Plan

SIGN = {**dict.fromkeys(ADD_OPS, "+"), **dict.fromkeys(DESTROY_OPS, "-")}  # anything else: "~"


def to_json(result: RunResult, show_diff: bool = False) -> dict[str, Any]:
    plan = result.plan
    add, change, destroy = plan.counts()
    return {
        "changed": result.changed,
        "in_sync": result.in_sync,
        "check": result.check,
        "manifest": plan.manifest.source,
        "actions": [a.to_json() for a in plan.actions],
        "conflicts": [c.to_json() for c in plan.conflicts],
        "errors": result.errors,
        "daemon": {"action": result.daemon_action, "generation": plan.config.get("generation")},
        "summary": {"add": add, "change": change, "destroy": destroy},
        "diff": plan.diff if show_diff else {},
    }


def to_json_text(result: RunResult, show_diff: bool = False) -> str:
    return json.dumps(to_json(result, show_diff), indent=2, sort_keys=False) + "\n"


def to_text(result: RunResult, show_diff: bool = False) -> str:
    plan = result.plan
    lines = [f"nsproxy {'plan' if result.check else 'apply'}: {plan.manifest.source}", ""]
    in_manifest = {t.name for t in plan.manifest.tenants}
    width = max((len(a.op) for a in plan.actions), default=0)
    for tenant, actions in _by_tenant(plan.actions):
        if tenant == DAEMON_TENANT:
            lines.append("daemon")
        elif tenant in in_manifest:
            lines.append(f"tenant {tenant}")
        else:
            lines.append(f"tenant {tenant} (not in the manifest)")
        lines.extend(_action_line(a, width, result.check) for a in actions)
    if plan.config_changes and plan.actions:
        names = plan.config_changes
        more = f" and {len(names) - 10} more" if len(names) > 10 else ""
        lines.append(f"  (config changes for tenant{'s' if len(names) > 1 else ''} {', '.join(names[:10])}{more})")
    if plan.actions:
        lines.append("")

    if show_diff and plan.diff:
        lines.extend(_diff_lines(plan))
    if plan.conflicts:
        lines.append("Conflicts (objects nsproxy does not own; these tenants are skipped and not served):")
        lines.extend(f"  ! {c}" for c in plan.conflicts)
        lines.append("")
    errors = result.errors
    if errors:
        lines.append("Errors:")
        lines.extend(f"  ! {e}" for e in errors)
        lines.append("")
    lines.append(_summary(result))
    return "\n".join(lines) + "\n"


def _by_tenant(actions: list[Action]) -> list[tuple[str, list[Action]]]:
    groups: dict[str, list[Action]] = {}
    for a in actions:
        groups.setdefault(a.tenant, []).append(a)
    # daemon last, as its phase sits between create and prune but concerns everyone
    return sorted(groups.items(), key=lambda kv: kv[0] == DAEMON_TENANT)


def _action_line(a: Action, width: int, check: bool) -> str:
    line = f"  {SIGN.get(a.op, '~')} {a.op:<{width}}  {a.target}"
    if a.detail:
        line += f"  ({a.detail})"
    if not check and a.status == "failed":
        line += f"  FAILED: {a.error}"
    elif not check and a.status == "skipped":
        line += f"  [skipped{': ' + a.error if a.error else ''}]"
    return line


def _diff_lines(plan: Plan) -> list[str]:
    lines = ["Changes per tenant (before -> after):"]
    for name in sorted(plan.diff):
        d = plan.diff[name]
        before = json.dumps(d["before"], indent=2, sort_keys=True).splitlines()
        after = json.dumps(d["after"], indent=2, sort_keys=True).splitlines()
        diff = difflib.unified_diff(before, after, f"{name} (before)", f"{name} (after)", n=2, lineterm="")
        lines.extend(f"  {line}" for line in diff)
    lines.append("")
    return lines


def _summary(result: RunResult) -> str:
    plan = result.plan
    add, change, destroy = plan.counts()
    if result.check:
        if not plan.actions:
            tail = " (but see the errors above)" if plan.has_problems else ""
            return f"No changes: the kernel and the daemon config match the manifest{tail}."
        return f"Plan: {add} to add, {change} to change, {destroy} to destroy."
    done = [a for a in plan.actions if a.status == "done"]
    n_add = sum(a.op in ADD_OPS for a in done)
    n_destroy = sum(a.op in DESTROY_OPS for a in done)
    n_change = len(done) - n_add - n_destroy
    failed = sum(a.status == "failed" for a in plan.actions)
    skipped = sum(a.status == "skipped" for a in plan.actions)
    if not plan.actions and not result.changed:
        status = "No changes: the kernel and the daemon config match the manifest."
    else:
        status = f"Apply: {n_add} added, {n_change} changed, {n_destroy} destroyed"
        if failed or skipped:
            status += f", {failed} failed, {skipped} skipped"
        status += "."
    if result.exit_code != 0:
        status += " Finished with errors (see above)."
    return status
