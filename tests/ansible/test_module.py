"""The nsproxy_apply module: its pure helpers, and real runs through `ansible` (ad hoc) against
the applier installed by the role."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
from pathlib import Path

import pytest
import yaml
from ansible_support import REPO, TARGET_PYTHON, VENV_BIN, stop_daemon

from nsproxy_appliance import netns

MODULE_PATH = REPO / "plugins" / "modules" / "nsproxy_apply.py"
FQCN = "nsproxy.appliance.nsproxy_apply"


def load_module():
    spec = importlib.util.spec_from_file_location("nsproxy_apply", MODULE_PATH)
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


nsproxy_apply = load_module()

PARAMS = {
    "executable": "/venv/bin/nsproxy-apply",
    "state_dir": None,
    "runtime_dir": None,
    "lock_timeout": None,
    "daemon_timeout": None,
    "allow_empty": False,
    "force": False,
    "no_daemon": False,
}


def test_command_carries_every_option() -> None:
    params = {
        **PARAMS,
        "state_dir": "/s",
        "runtime_dir": "/r",
        "lock_timeout": 5.0,
        "daemon_timeout": 7.5,
        "allow_empty": True,
        "force": True,
        "no_daemon": True,
    }
    cmd = nsproxy_apply.build_command(params, "/m.yaml", check=True, diff=True)
    assert cmd[:4] == ["/venv/bin/nsproxy-apply", "/m.yaml", "--output", "json"]
    for part in ("--check", "--diff", "--allow-empty", "--force", "--no-daemon"):
        assert part in cmd
    assert cmd[cmd.index("--state-dir") + 1] == "/s"
    assert cmd[cmd.index("--runtime-dir") + 1] == "/r"
    assert cmd[cmd.index("--lock-timeout") + 1] == "5.0"
    assert cmd[cmd.index("--daemon-timeout") + 1] == "7.5"


def test_command_without_options_is_a_plain_apply() -> None:
    assert nsproxy_apply.build_command(PARAMS, "/m.yaml", check=False, diff=False) == [
        "/venv/bin/nsproxy-apply",
        "/m.yaml",
        "--output",
        "json",
    ]


def test_diff_has_one_entry_per_changed_tenant_with_field_lines() -> None:
    entries = nsproxy_apply.ansible_diff(
        {
            "new": {"before": None, "after": {"netns": "new", "listen": ["127.0.0.1:8080"]}},
            "same": {"before": {"netns": "same"}, "after": {"netns": "same"}},
            "gone": {"before": {"netns": "gone"}, "after": None},
            "moved": {"before": {"upstream": {"port": 1}}, "after": {"upstream": {"port": 2}}},
        }
    )
    assert [e["before_header"] for e in entries] == [
        "tenant gone (before)",
        "tenant moved (before)",
        "tenant new (before)",
    ]
    gone, moved, new = entries
    assert gone["after"] == "" and gone["before"] == 'netns: "gone"\n'
    assert moved["before"] == "upstream.port: 1\n" and moved["after"] == "upstream.port: 2\n"
    assert new["before"] == "" and new["after"] == 'listen[0]: "127.0.0.1:8080"\nnetns: "new"\n'


@pytest.mark.parametrize("stdout", ["", "not json", "[1, 2]", "Traceback ..."])
def test_anything_but_a_json_object_is_no_report(stdout: str) -> None:
    assert nsproxy_apply.parse_report(stdout) is None


def adhoc(tmp: Path, args: str, *flags: str) -> tuple[int, str, dict]:
    """Run the module once with `ansible` against this machine: (exit code, status, result)."""
    env = {
        **os.environ,
        "ANSIBLE_CONFIG": str(REPO / "ansible.cfg"),
        "ANSIBLE_NOCOLOR": "1",
        "ANSIBLE_LOCAL_TEMP": str(tmp / "ansible-local"),
        "ANSIBLE_REMOTE_TEMP": str(tmp / "ansible-remote"),
        "ANSIBLE_HOME": str(tmp / "ansible-home"),
        "ANSIBLE_LOCALHOST_WARNING": "0",
        "ANSIBLE_INVENTORY_UNPARSED_WARNING": "0",
    }
    cmd = [
        str(VENV_BIN / "ansible"),
        "localhost",
        "-c",
        "local",
        "-e",
        f"ansible_python_interpreter={TARGET_PYTHON}",
        "-m",
        FQCN,  # found through ansible.cfg's collections_path (collections/ in this checkout)
        "-a",
        args,
        "--one-line",
        *flags,
    ]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    # "localhost | CHANGED => {...}" / "localhost | FAILED! => {...}"
    line = next(x for x in proc.stdout.splitlines() if x.startswith("localhost | "))
    head, result = line.split(" => ", 1)
    return proc.returncode, head.removeprefix("localhost | "), json.loads(result)


@pytest.mark.root
def test_failure_returns_the_appliers_messages(role_venv: Path, tmp_path: Path) -> None:
    # Valid YAML, but a semantic error only the applier's loader catches: a duplicate tenant.
    manifest = tmp_path / "dup.yaml"
    manifest.write_text(
        "version: 1\n"
        "tenants:\n"
        "  - {name: twin, listen: ['127.0.0.1:8080'], upstream: 'http://127.0.0.1:9'}\n"
        "  - {name: twin, listen: ['127.0.0.1:8081'], upstream: 'http://127.0.0.1:9'}\n"
    )
    args = json.dumps(
        {
            "manifest": str(manifest),
            "executable": str(role_venv / "bin" / "nsproxy-apply"),
            "state_dir": str(tmp_path / "state"),
            "runtime_dir": str(tmp_path / "run"),
        }
    )
    rc, status, result = adhoc(tmp_path, args)
    assert rc != 0
    assert status == "FAILED!"
    assert result["msg"].startswith("nsproxy-apply failed:\n")
    assert result["errors"], result
    assert any(f"{manifest}:4:" in e and "twin" in e for e in result["errors"]), result["errors"]
    assert result["applier_rc"] == 1
    assert not (tmp_path / "run" / "config.json").exists()


def test_check_mode_before_install_reports_a_change_and_runs_nothing(tmp_path: Path) -> None:
    args = json.dumps(
        {"content": "version: 1\ntenants: []\n", "executable": str(tmp_path / "missing" / "nsproxy-apply")}
    )
    rc, status, result = adhoc(tmp_path, args, "--check")
    assert rc == 0, result
    assert status == "CHANGED"
    assert result["changed"] is True
    assert "not installed yet" in result["msg"]
    assert "cmd" not in result


# Keys Ansible itself adds to (or reserves in) every module result; everything else the module
# returns must be documented in RETURN, and everything in RETURN must really be returned.
ANSIBLE_KEYS = {"changed", "failed", "msg", "invocation", "warnings", "deprecations", "diff", "stderr_lines"}
DOCUMENTED = yaml.safe_load(nsproxy_apply.RETURN)
ALWAYS = {key for key, spec in DOCUMENTED.items() if spec["returned"] == "always"}


def returned_keys(result: dict) -> set[str]:
    return set(result) - ANSIBLE_KEYS


def sample_keys(key: str) -> set[str]:
    sample = DOCUMENTED[key]["sample"]
    return set(sample[0] if isinstance(sample, list) else sample)


@pytest.mark.root
def test_documented_return_values_match_a_real_run(role_venv: Path, tmp_path: Path, unique, echo_upstream: str) -> None:
    """Apply (diff mode, launching the daemon with daemon_timeout), then check mode without diff,
    then a conflict: every result has exactly the documented keys, shaped like the samples."""
    served, foreign = unique("ret"), unique("own")
    manifest = tmp_path / "tenants.yaml"
    manifest.write_text(
        yaml.safe_dump(
            {
                "version": 1,
                "tenants": [
                    {"name": served, "listen": ["127.0.0.1:8080"], "upstream": echo_upstream},
                    {"name": foreign, "listen": ["127.0.0.1:8080"], "upstream": echo_upstream},
                ],
            }
        )
    )
    base = {
        "manifest": str(manifest),
        "executable": str(role_venv / "bin" / "nsproxy-apply"),
        "state_dir": str(tmp_path / "state"),
        "runtime_dir": str(tmp_path / "run"),
        "daemon_timeout": 20,
    }
    netns.create_named(foreign)  # exists, but nsproxy did not create it: a conflict
    try:
        rc, status, applied = adhoc(tmp_path, json.dumps(base), "--diff")
        assert rc != 0 and status == "FAILED!", applied  # the conflict fails the run; the rest applied
        assert returned_keys(applied) == set(DOCUMENTED), json.dumps(applied)[:3000]
        assert applied["cmd"][applied["cmd"].index("--daemon-timeout") + 1] == "20.0"
        assert applied["daemon"]["action"] == "launched", applied
        assert {key for a in applied["actions"] for key in a} == sample_keys("actions")
        assert set(applied["daemon"]) == sample_keys("daemon")
        assert set(applied["summary"]) == sample_keys("summary")
        assert [c["target"] for c in applied["conflicts"]] == [foreign]
        assert set(applied["conflicts"][0]) == sample_keys("conflicts")
        assert served in applied["tenant_diff"]
        assert set(applied["tenant_diff"][served]) == set(DOCUMENTED["tenant_diff"]["sample"]["acme"])
        assert set(applied["tenant_diff"][served]["after"]) >= set(DOCUMENTED["tenant_diff"]["sample"]["acme"]["after"])

        _, status, checked = adhoc(tmp_path, json.dumps(base), "--check")
        assert status == "FAILED!", checked
        assert returned_keys(checked) == set(DOCUMENTED) - {"tenant_diff"}, checked
        assert checked["in_sync"] is False  # the conflict is still there
    finally:
        stop_daemon(tmp_path / "run" / "nsproxyd.pid")
        netns.delete_named(served)
        netns.delete_named(foreign)


def test_results_without_a_run_still_carry_the_always_returned_keys(tmp_path: Path) -> None:
    missing = str(tmp_path / "missing" / "nsproxy-apply")
    args = json.dumps({"content": "version: 1\ntenants: []\n", "executable": missing})
    _, _, checked = adhoc(tmp_path, args, "--check")
    _, status, failed = adhoc(tmp_path, args)
    assert status == "FAILED!"
    for result in (checked, failed):
        assert ALWAYS <= returned_keys(result) <= set(DOCUMENTED), result
