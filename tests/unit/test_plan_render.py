"""Rendering and exit codes of plans and apply results (pure: no kernel)."""

from __future__ import annotations

import json

from test_plan import OPTS, PATHS, ident, in_sync_config, manifest, ns, observed, tenant

from nsproxy_appliance.actions import Status
from nsproxy_appliance.apply import RunResult
from nsproxy_appliance.kernel.observed import NetnsState
from nsproxy_appliance.ledger import Ledger
from nsproxy_appliance.model import NetnsRef
from nsproxy_appliance.plan import add_diff, make_plan
from nsproxy_appliance.plan_render import to_json, to_text

CONTRACT_KEYS = {"changed", "in_sync", "actions", "conflicts", "errors", "daemon", "diff"}


def cold_plan():
    led = Ledger()
    led.own_netns("old", ident(9), "old")
    m = manifest(tenant("acme"))
    obs = observed(ns("old", 9))
    plan = make_plan(m, obs, led, OPTS)
    add_diff(plan, obs)
    return plan


def test_check_text_is_a_terraform_like_plan():
    text = to_text(RunResult(cold_plan(), check=True))
    assert "tenant acme\n  + create_netns          acme\n  ~ set_lo_up             acme/lo\n" in text
    assert "tenant old (not in the manifest)\n  - delete_netns          old\n" in text
    assert "daemon\n  ~ update_daemon_config  " + PATHS.config in text
    assert text.rstrip().endswith("Plan: 1 to add, 2 to change, 1 to destroy.")


def test_check_exit_codes_follow_detailed_exitcode():
    assert RunResult(cold_plan(), check=True).exit_code == 2
    m = manifest(tenant("acme"))
    led = Ledger()
    led.own_netns("acme", ident(1), "acme")
    in_sync = make_plan(m, observed(ns("acme", 1), config=in_sync_config(m)), led, OPTS)
    result = RunResult(in_sync, check=True)
    assert (result.exit_code, result.changed, result.in_sync) == (0, False, True)
    assert "No changes" in to_text(result)
    conflict = make_plan(m, observed(ns("acme", 1)), Ledger(), OPTS)
    assert RunResult(conflict, check=True).exit_code == 1


def test_json_has_the_contract_shape():
    plan = cold_plan()
    data = to_json(RunResult(plan, check=True, daemon_action="skipped"), show_diff=True)
    assert data.keys() >= CONTRACT_KEYS
    assert data["changed"] is True and data["in_sync"] is False
    assert data["actions"][0] == {
        "tenant": "acme",
        "op": "create_netns",
        "target": "acme",
        "detail": "",
        "status": "pending",
        "error": None,
    }
    assert data["daemon"] == {"action": "skipped", "generation": plan.config["generation"]}
    assert data["diff"]["old"] == {"before": {"netns": "old"}, "after": None}
    assert data["summary"] == {"add": 1, "change": 2, "destroy": 1}
    json.dumps(data)  # serialisable as is
    assert to_json(RunResult(plan, check=True))["diff"] == {}


def test_apply_result_reports_failures_and_skips():
    plan = cold_plan()
    create, lo_up = plan.actions[0], plan.actions[1]
    error = "cannot create network namespace acme: No space left on device"
    result = RunResult(plan, check=False, failures=[f"acme: create_netns acme: {error}"])
    result.record(create, Status.FAILED, error)
    result.record(lo_up, Status.SKIPPED, "skipped: an earlier action of this tenant failed")
    for action in plan.actions[2:]:
        result.record(action, Status.DONE)
    text = to_text(result)
    assert "FAILED: cannot create network namespace acme: No space left on device" in text
    assert "[skipped: skipped: an earlier action" in text
    assert "1 failed, 1 skipped" in text and "Finished with errors" in text
    data = to_json(result)
    assert result.exit_code == 1 and data["changed"] is True and data["in_sync"] is False
    assert [a["status"] for a in data["actions"]] == ["failed", "skipped", "done", "done"]


def test_conflicts_and_errors_are_listed():
    m = manifest(tenant("acme"), tenant("initech", NetnsRef(path="/var/run/docker/netns/x")))
    plan = make_plan(m, observed(ns("acme", 1)), Ledger(), OPTS)
    text = to_text(RunResult(plan, check=True))
    assert "Conflicts (objects nsproxy does not own" in text
    assert "  ! acme: acme: network namespace acme exists but nsproxy did not create it" in text
    assert "  ! initech: external network namespace /var/run/docker/netns/x does not exist" in text
    data = to_json(RunResult(plan, check=True))
    assert data["conflicts"][0]["tenant"] == "acme" and data["errors"][0].startswith("initech: ")


def test_diff_text_shows_before_and_after():
    text = to_text(RunResult(cold_plan(), check=True), show_diff=True)
    assert "--- acme (before)" in text and "+++ acme (after)" in text
    assert '+  "lo": "up",' in text


def test_unobserved_error_state_is_not_in_sync():
    m = manifest(tenant("x", NetnsRef(path="/nope")))
    plan = make_plan(m, observed(NetnsState(path="/nope", error="boom")), Ledger(), OPTS)
    result = RunResult(plan, check=False)
    assert result.exit_code == 1 and not result.in_sync and result.errors == ["x: boom"]


def test_manifest_warnings_are_shown_and_never_fail_the_run():
    import dataclasses

    m = manifest(tenant("acme"))
    warning = "t.yaml:8:30: $.tenants[0].listen[1].tls.certificates[0].cert: certificate /c.pem (...) expires in 5 days"
    m = dataclasses.replace(m, warnings=(warning,))
    led = Ledger()
    led.own_netns("acme", ident(1), "acme")
    in_sync = make_plan(m, observed(ns("acme", 1), config=in_sync_config(m)), led, OPTS)
    result = RunResult(in_sync, check=True)
    assert result.exit_code == 0 and in_sync.warnings == [warning]
    assert f"Warnings:\n  ~ {warning}\n" in to_text(result)
    assert to_json(result)["warnings"] == [warning]
    assert to_json(RunResult(cold_plan(), check=True))["warnings"] == []
