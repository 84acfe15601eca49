"""The nsproxy_apply module: its pure helpers, and real runs through `ansible` (ad hoc) against
the applier installed by the role."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
from pathlib import Path

import pytest
from ansible_support import REPO, TARGET_PYTHON, VENV_BIN

MODULE_PATH = REPO / "roles" / "nsproxy" / "library" / "nsproxy_apply.py"


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
        "-M",
        str(MODULE_PATH.parent),
        "-m",
        "nsproxy_apply",
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
