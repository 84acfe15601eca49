"""Render a plan or an apply result: terraform-like text for people, one JSON object for tools.

The JSON shape is the contract in docs/cli.md ("JSON output"); the Ansible module reads it. It is
built in one place, report(), both for a run and for an error that stopped the run before
planning (failure_report).
"""

from __future__ import annotations

import difflib
import json
from typing import Any

from .actions import DAEMON_TENANT, Action, Sign, Status
from .actions.daemon_config import DaemonAction
from .plan import Plan, count_signs
from .result import RunResult


def report(
    *,
    changed: bool,
    in_sync: bool,
    check: bool,
    manifest: str | None,
    actions: list[dict[str, Any]],
    conflicts: list[dict[str, str]],
    errors: list[str],
    daemon_action: DaemonAction,
    generation: str | None,
    summary: tuple[int, int, int],
    diff: dict[str, Any],
    recovered: list[str],
    not_serving: dict[str, str] | None = None,
    warnings: list[str] | None = None,
) -> dict[str, Any]:
    add, change, destroy = summary
    return {
        "changed": changed,
        "in_sync": in_sync,
        "check": check,
        "manifest": manifest,
        "actions": actions,
        "conflicts": conflicts,
        "errors": errors,
        "warnings": warnings or [],  # FILE:LINE:COL: $.path: message, like manifest errors; never fail the run
        "daemon": {"action": daemon_action.value, "generation": generation},
        "not_serving": not_serving or {},  # tenant -> why the daemon does not serve it after the hand-off
        "summary": {"add": add, "change": change, "destroy": destroy},
        "diff": diff,
        "recovered": recovered,
    }


def failure_report(errors: list[str], manifest: str | None = None, check: bool = False) -> dict[str, Any]:
    """The JSON report of a run that stopped before planning (invalid manifest, lock timeout, ...)."""
    return report(
        changed=False,
        in_sync=False,
        check=check,
        manifest=manifest,
        actions=[],
        conflicts=[],
        errors=errors,
        daemon_action=DaemonAction.SKIPPED,
        generation=None,
        summary=(0, 0, 0),
        diff={},
        recovered=[],
    )


def to_json(result: RunResult, show_diff: bool = False) -> dict[str, Any]:
    plan = result.plan
    return report(
        changed=result.changed,
        in_sync=result.in_sync,
        check=result.check,
        manifest=plan.manifest.source,
        actions=[a.to_json(result.status(a), result.error(a)) for a in result.actions],
        conflicts=[c.to_json() for c in plan.conflicts],
        errors=result.errors,
        daemon_action=DaemonAction(result.daemon_action),
        generation=result.config.get("generation"),
        summary=plan.counts(),
        diff=plan.diff if show_diff else {},
        recovered=result.recovered,
        not_serving=result.not_serving,
        warnings=plan.warnings,
    )


def to_json_text(result: RunResult, show_diff: bool = False) -> str:
    return json.dumps(to_json(result, show_diff), indent=2, sort_keys=False) + "\n"


def to_text(result: RunResult, show_diff: bool = False) -> str:
    plan = result.plan
    lines = [f"nsproxy {'plan' if result.check else 'apply'}: {plan.manifest.source}", ""]
    in_manifest = {t.name for t in plan.manifest.tenants}
    width = max((len(a.op) for a in result.actions), default=0)
    for tenant, actions in _by_tenant(result.actions):
        if tenant == DAEMON_TENANT:
            lines.append("daemon")
        elif tenant in in_manifest:
            lines.append(f"tenant {tenant}")
        else:
            lines.append(f"tenant {tenant} (not in the manifest)")
        lines.extend(_action_line(result, a, width) for a in actions)
    if plan.config_changes and plan.actions:
        names = plan.config_changes
        more = f" and {len(names) - 10} more" if len(names) > 10 else ""
        lines.append(f"  (config changes for tenant{'s' if len(names) > 1 else ''} {', '.join(names[:10])}{more})")
    if result.actions:
        lines.append("")

    if result.recovered:
        lines.append("Recovered from an interrupted run:")
        lines.extend(f"  * {note}" for note in result.recovered)
        lines.append("")
    if show_diff and plan.diff:
        lines.extend(_diff_lines(plan))
    if plan.conflicts:
        lines.append("Conflicts (objects nsproxy does not own; these tenants are skipped and not served):")
        lines.extend(f"  ! {c}" for c in plan.conflicts)
        lines.append("")
    if plan.warnings:
        lines.append("Warnings:")
        lines.extend(f"  ~ {w}" for w in plan.warnings)
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


def _action_line(result: RunResult, a: Action, width: int) -> str:
    line = f"  {a.sign.value} {a.op.value:<{width}}  {a.target}"
    if a.detail:
        line += f"  ({a.detail})"
    status, error = result.status(a), result.error(a)
    if not result.check and status is Status.FAILED:
        line += f"  FAILED: {error}"
    elif not result.check and status is Status.SKIPPED:
        line += f"  [skipped{': ' + error if error else ''}]"
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
    n_add, n_change, n_destroy = count_signs(result.done())
    statuses = [result.status(a) for a in result.actions]
    failed, skipped = statuses.count(Status.FAILED), statuses.count(Status.SKIPPED)
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


__all__ = ["Sign", "failure_report", "report", "to_json", "to_json_text", "to_text"]
