#!/usr/bin/python
"""Ansible module: converge a host to an nsproxy manifest by running `nsproxy-apply --output json`."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: nsproxy_apply
short_description: Converge a host to an nsproxy tenant manifest
version_added: "0.1.0"
description:
  - Runs the nsproxy applier (C(nsproxy-apply MANIFEST --output json)) on the target and reports
    its result the Ansible way.
  - The applier creates the tenants' network namespaces, links and addresses, prunes the ones it
    owns that left the manifest, writes the daemon's runtime config and (unless O(no_daemon))
    launches or reloads the C(nsproxyd) daemon.
  - C(changed) is exactly the applier's own C(changed) flag, so a second run of an unchanged
    manifest reports C(changed=false).
  - In check mode the applier runs with C(--check) and changes nothing; the module reports whether
    it would change something and, with C(--diff), the per-tenant before/after.
  - On failure the module fails with the applier's messages (every manifest error, every failed
    action) in RV(errors).
author:
  - nsproxy contributors
options:
  manifest:
    description:
      - Path of the manifest on the target.
      - Exactly one of O(manifest) and O(content) is required.
    type: path
  content:
    description:
      - Manifest text to apply instead of a file on the target. The module writes it to a private
        temporary file that is removed afterwards.
      - Useful in check mode, when the manifest file on the target has not been written yet.
    type: str
  executable:
    description:
      - The applier to run, typically C(<venv>/bin/nsproxy-apply).
    type: path
    default: nsproxy-apply
  state_dir:
    description:
      - The applier's state directory (ledger, lock). The applier's default (C(/var/lib/nsproxy))
        when omitted.
    type: path
  runtime_dir:
    description:
      - The applier's runtime directory (daemon config, pidfile, admin socket). The applier's
        default (C(/run/nsproxy)) when omitted.
    type: path
  allow_empty:
    description:
      - Accept a manifest without tenants (which prunes every tenant nsproxy owns).
    type: bool
    default: false
  force:
    description:
      - Prune owned namespaces even when processes still run inside them.
    type: bool
    default: false
  no_daemon:
    description:
      - Apply kernel state and write the runtime config, but neither launch nor reload the daemon
        (used when a service manager owns the daemon).
    type: bool
    default: false
  lock_timeout:
    description:
      - Seconds to wait for another apply holding the lock before failing (C(--lock-timeout)).
        The applier's default (30) when omitted.
    type: float
  daemon_timeout:
    description:
      - Seconds to wait for the daemon to serve the new config after a launch or reload
        (C(--daemon-timeout); a reload also allows the drain timeout). The applier's default (30)
        when omitted.
    type: float
    version_added: "0.1.0"
notes:
  - Needs root on the target (network namespaces).
  - If O(executable) does not exist yet in check mode (nsproxy not installed), the module reports
    C(changed=true) without running anything.
attributes:
  check_mode:
    support: full
  diff_mode:
    support: full
  platform:
    platforms: [posix]
requirements:
  - nsproxy (the C(nsproxy-appliance) package) installed on the target.
"""

EXAMPLES = r"""
- name: Converge tenants from the manifest
  nsproxy.appliance.nsproxy_apply:
    manifest: /etc/nsproxy/tenants.yaml
    executable: /opt/nsproxy/venv/bin/nsproxy-apply

- name: Show what would change, without changing anything
  nsproxy.appliance.nsproxy_apply:
    manifest: /etc/nsproxy/tenants.yaml
    executable: /opt/nsproxy/venv/bin/nsproxy-apply
  check_mode: true
  diff: true
  register: nsproxy_plan

- name: Apply kernel state only; systemd owns the daemon
  nsproxy.appliance.nsproxy_apply:
    manifest: /etc/nsproxy/tenants.yaml
    executable: /opt/nsproxy/venv/bin/nsproxy-apply
    no_daemon: true
    state_dir: /var/lib/nsproxy
    runtime_dir: /run/nsproxy

- name: Allow a slow host more time to drain and serve the new config
  nsproxy.appliance.nsproxy_apply:
    manifest: /etc/nsproxy/tenants.yaml
    executable: /opt/nsproxy/venv/bin/nsproxy-apply
    daemon_timeout: 120

- name: Remove every tenant
  nsproxy.appliance.nsproxy_apply:
    content: "{{ {'version': 1, 'tenants': []} | to_nice_yaml }}"
    executable: /opt/nsproxy/venv/bin/nsproxy-apply
    allow_empty: true
"""

RETURN = r"""
in_sync:
  description:
    - In check mode, whether the host already matches the manifest (nothing pending, no conflicts,
      no errors). After an apply, whether every tenant converged and was verified.
  returned: always
  type: bool
  sample: true
actions:
  description:
    - The applier's actions, in order. C(op) is one of create_netns, set_lo_up, add_link,
      set_link_mtu, set_link_up, add_address, remove_address, delete_link, delete_netns,
      update_daemon_config (whose C(tenant) is empty).
    - C(status) is pending (check mode), done, failed (see C(error)) or skipped.
  returned: always
  type: list
  elements: dict
  sample:
    - {tenant: acme, op: create_netns, target: acme, detail: "", status: done, error: null}
    - {tenant: acme, op: set_lo_up, target: acme/lo, detail: "", status: done, error: null}
    - tenant: ""
      op: update_daemon_config
      target: /run/nsproxy/config.json
      detail: "generation (none) -> 9b2618b3cbf4a312: no runtime config yet"
      status: done
      error: null
conflicts:
  description: Objects the manifest wants but nsproxy does not own (never modified; the tenant is skipped).
  returned: always
  type: list
  elements: dict
  sample:
    - tenant: globex
      target: globex-prod
      reason: "network namespace globex-prod exists but nsproxy did not create it (not in the ledger); not touched"
errors:
  description: The applier's error messages (manifest errors as FILE:LINE:COL, conflicts, failed actions).
  returned: always
  type: list
  elements: str
  sample: ["/etc/nsproxy/tenants.yaml:4:13: $.tenants[0].name: 'Acme' does not match '^[a-z0-9]([a-z0-9-]*[a-z0-9])?$'"]
daemon:
  description:
    - What happened to the daemon (C(action) launched, reloaded, unchanged, skipped, pending or
      failed) and the config C(generation) of the runtime config (null when none was rendered).
  returned: always
  type: dict
  sample: {action: launched, generation: 9b2618b3cbf4a312}
not_serving:
  description:
    - Tenants the daemon does not serve after the hand-off, and why (each also in RV(errors)); the
      applier then exits 1 and the module fails.
  returned: when the applier ran
  type: dict
  sample: {acme: "failed: cannot listen on 127.0.0.1:8080 in /run/netns/acme: Address already in use"}
summary:
  description: How many tenant objects the plan adds, changes and destroys.
  returned: when the applier ran
  type: dict
  sample: {add: 1, change: 2, destroy: 0}
tenant_diff:
  description:
    - The applier's per-tenant C(before) and C(after) (C(null) on the side where the tenant does
      not exist), for the tenants whose state changes.
  returned: in diff mode, when the applier ran
  type: dict
  sample:
    acme:
      before: {netns: null, links: {}, config: null}
      after:
        netns: acme
        lo: up
        links: {}
        config: {name: acme, tenant_id: acme, listen: [{host: 127.0.0.1, port: 8080}]}
cmd:
  description: The command line that was run.
  returned: when the applier ran
  type: list
  elements: str
  sample: [/opt/nsproxy/venv/bin/nsproxy-apply, /etc/nsproxy/tenants.yaml, --output, json, --diff]
applier_rc:
  description:
    - The applier's exit code (0 ok/in sync, 2 changes pending in check mode, 1 error).
    - Not called C(rc), because Ansible fails any task whose C(rc) is not 0, and 2 is a success
      in check mode.
  returned: when the applier ran
  type: int
  sample: 0
stderr:
  description: The applier's standard error (logs, warnings).
  returned: when the applier ran
  type: str
  sample: ""
"""

import json  # noqa: E402 (Ansible modules put DOCUMENTATION first)
import os  # noqa: E402
import shutil  # noqa: E402
import tempfile  # noqa: E402

from ansible.module_utils.basic import AnsibleModule  # noqa: E402

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_PENDING = 2  # only with --check


def build_command(params: dict, manifest: str, check: bool, diff: bool) -> list[str]:
    cmd = [params["executable"], manifest, "--output", "json"]
    if check:
        cmd.append("--check")
    if diff:
        cmd.append("--diff")
    for option in ("state_dir", "runtime_dir"):
        if params[option]:
            cmd += ["--" + option.replace("_", "-"), params[option]]
    for option in ("lock_timeout", "daemon_timeout"):
        if params[option] is not None:
            cmd += ["--" + option.replace("_", "-"), str(params[option])]
    for flag in ("allow_empty", "force", "no_daemon"):
        if params[flag]:
            cmd.append("--" + flag.replace("_", "-"))
    return cmd


def _flatten(value, key: str, lines: list[str]) -> None:
    if isinstance(value, dict) and value:
        for k in sorted(value):
            _flatten(value[k], f"{key}.{k}" if key else str(k), lines)
    elif isinstance(value, list) and value:
        for i, item in enumerate(value):
            _flatten(item, f"{key}[{i}]", lines)
    else:
        lines.append(f"{key}: {json.dumps(value, sort_keys=True)}")


def _text(side) -> str:
    """One side of a tenant's diff as one "dotted.key: value" line per field: a unified diff of
    that shows exactly which fields change."""
    if side is None:
        return ""
    lines: list[str] = []
    _flatten(side, "", lines)
    return "\n".join(lines) + "\n"


def ansible_diff(tenant_diff: dict) -> list[dict]:
    """The applier's {tenant: {before, after}} as Ansible diff entries, one per tenant."""
    entries = []
    for tenant in sorted(tenant_diff):
        sides = tenant_diff[tenant] or {}
        before, after = sides.get("before"), sides.get("after")
        if before == after:
            continue
        entries.append(
            {
                "before_header": f"tenant {tenant} (before)",
                "after_header": f"tenant {tenant} (after)",
                "before": _text(before),
                "after": _text(after),
            }
        )
    return entries


def parse_report(stdout: str) -> dict | None:
    """The applier's JSON object, or None when stdout is not one."""
    try:
        report = json.loads(stdout)
    except ValueError:
        return None
    return report if isinstance(report, dict) else None


def not_run(daemon_action: str, errors: list[str] | None = None) -> dict:
    """The result keys returned "always", for a run in which the applier never started."""
    return {
        "in_sync": False,
        "actions": [],
        "conflicts": [],
        "errors": errors or [],
        "daemon": {"action": daemon_action, "generation": None},
    }


def run(module: AnsibleModule) -> None:
    params = module.params
    check = module.check_mode
    executable = params["executable"]
    if os.sep in executable and not os.path.exists(executable):
        if check:
            module.exit_json(
                changed=True,
                msg=f"{executable} is not installed yet; applying would create every tenant",
                **not_run("pending"),
            )
        module.fail_json(msg=f"the applier {executable} does not exist", **not_run("skipped"))
    elif os.sep not in executable and shutil.which(executable) is None:
        module.fail_json(msg=f"the applier {executable} is not on PATH", **not_run("skipped"))

    tmpdir = None
    manifest = params["manifest"]
    if params["content"] is not None:
        tmpdir = tempfile.mkdtemp(prefix="nsproxy-apply-", dir=module.tmpdir)
        manifest = os.path.join(tmpdir, "tenants.yaml")
        with open(manifest, "w", encoding="utf-8") as f:
            f.write(params["content"])
    try:
        cmd = build_command(params, manifest, check, module._diff)
        rc, stdout, stderr = module.run_command(cmd)
    finally:
        if tmpdir:
            shutil.rmtree(tmpdir, ignore_errors=True)

    report = parse_report(stdout)
    common = {"cmd": cmd, "applier_rc": rc, "stderr": stderr}
    if report is None:
        module.fail_json(
            msg=f"nsproxy-apply exited {rc} without a JSON report: {(stderr or stdout).strip()[-2000:]}",
            stdout=stdout,
            **not_run("skipped", [line for line in stderr.splitlines() if line.strip()]),
            **common,
        )

    errors = [str(e) for e in report.get("errors") or []]
    result = {
        "in_sync": bool(report.get("in_sync")),
        "actions": report.get("actions") or [],
        "conflicts": report.get("conflicts") or [],
        "errors": errors,
        "daemon": report.get("daemon") or {"action": "skipped", "generation": None},
        "summary": report.get("summary") or {"add": 0, "change": 0, "destroy": 0},
        "not_serving": report.get("not_serving") or {},
        **common,
    }
    if module._diff:
        result["tenant_diff"] = report.get("diff") or {}

    ok_codes = (EXIT_OK, EXIT_PENDING) if check else (EXIT_OK,)
    if rc not in ok_codes or errors:
        failed = [a for a in result["actions"] if a.get("status") == "failed"]
        detail = errors or [f"{a.get('tenant')}: {a.get('op')} {a.get('target')}: {a.get('error')}" for a in failed]
        summary = "\n".join(detail) if detail else (stderr.strip() or f"exit code {rc}")
        module.fail_json(msg=f"nsproxy-apply failed:\n{summary}", changed=bool(report.get("changed")), **result)

    for c in result["conflicts"]:
        # Objects nsproxy does not own are never touched; the user has to resolve these.
        module.warn(f"conflict: tenant {c.get('tenant')}: {c.get('target')}: {c.get('reason')}")
    for warning in report.get("warnings") or []:  # e.g. a TLS certificate that expires within 14 days
        module.warn(str(warning))
    if check:
        changed = rc == EXIT_PENDING or bool(report.get("changed")) or report.get("in_sync") is False
    else:
        changed = bool(report.get("changed"))
    if module._diff and report.get("diff"):
        result["diff"] = ansible_diff(report["diff"])
    module.exit_json(changed=changed, **result)


def main() -> None:
    module = AnsibleModule(
        argument_spec={
            "manifest": {"type": "path"},
            "content": {"type": "str"},
            "executable": {"type": "path", "default": "nsproxy-apply"},
            "state_dir": {"type": "path"},
            "runtime_dir": {"type": "path"},
            "allow_empty": {"type": "bool", "default": False},
            "force": {"type": "bool", "default": False},
            "no_daemon": {"type": "bool", "default": False},
            "lock_timeout": {"type": "float"},
            "daemon_timeout": {"type": "float"},
        },
        mutually_exclusive=[("manifest", "content")],
        required_one_of=[("manifest", "content")],
        supports_check_mode=True,
    )
    run(module)


if __name__ == "__main__":
    main()
