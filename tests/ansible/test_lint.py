"""Static checks of the Ansible content: ansible-lint (production profile), syntax check,
ansible-doc of the module, the example inventory."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from ansible_support import REPO, TARGET_PYTHON, VENV_BIN


def run(*cmd: str) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "ANSIBLE_NOCOLOR": "1",
        "NO_COLOR": "1",
        "ANSIBLE_CONFIG": str(REPO / "ansible.cfg"),
        "PATH": f"{VENV_BIN}:{os.environ.get('PATH', '/usr/bin:/bin')}",
    }
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)


def test_ansible_lint_production_profile_passes() -> None:
    out = run(str(VENV_BIN / "ansible-lint"), "--profile", "production", "--offline")
    assert out.returncode == 0, out.stdout + out.stderr
    assert "passed" in (out.stdout + out.stderr).lower()


def test_site_yml_syntax_check_passes() -> None:
    out = run(str(VENV_BIN / "ansible-playbook"), "-i", "inventories/example", "site.yml", "--syntax-check")
    assert out.returncode == 0, out.stdout + out.stderr


def test_example_inventory_defines_the_nsproxy_hosts_group() -> None:
    out = run(str(VENV_BIN / "ansible-inventory"), "-i", "inventories/example", "--list")
    assert out.returncode == 0, out.stderr
    inventory = json.loads(out.stdout)
    hosts = inventory["nsproxy_hosts"]["hosts"]
    assert len(hosts) == 3
    assert all(inventory["_meta"]["hostvars"][h]["nsproxy_tenants"] for h in hosts)


def test_ansible_doc_renders_the_module_documentation() -> None:
    text = run(str(VENV_BIN / "ansible-doc"), "-M", "roles/nsproxy/library", "nsproxy_apply")
    assert text.returncode == 0, text.stderr
    for section in ("MODULE nsproxy_apply", "Runs the nsproxy applier", "OPTIONS", "EXAMPLES", "RETURN VALUES"):
        assert section in text.stdout

    doc = run(str(VENV_BIN / "ansible-doc"), "-M", "roles/nsproxy/library", "--json", "nsproxy_apply")
    assert doc.returncode == 0, doc.stderr
    entry = json.loads(doc.stdout)["nsproxy_apply"]
    assert entry["doc"]["short_description"] == "Converge a host to an nsproxy tenant manifest"
    assert entry["doc"]["attributes"]["check_mode"]["support"] == "full"
    assert set(entry["doc"]["options"]) == {
        "manifest",
        "content",
        "executable",
        "state_dir",
        "runtime_dir",
        "allow_empty",
        "force",
        "no_daemon",
        "lock_timeout",
    }
    assert {"actions", "errors", "daemon", "in_sync", "applier_rc"} <= set(entry["return"])
    assert entry["examples"].strip()


def test_role_argument_specs_cover_every_default() -> None:
    defaults = yaml.safe_load((REPO / "roles/nsproxy/defaults/main.yml").read_text())
    specs = yaml.safe_load((REPO / "roles/nsproxy/meta/argument_specs.yml").read_text())["argument_specs"]
    assert set(specs["main"]["options"]) == set(defaults)
    assert set(specs["validate"]["options"]) <= set(defaults)


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed")
def test_systemd_units_render_and_verify(role_venv: Path, tmp_path: Path) -> None:
    """The units the role installs on systemd hosts are valid (systemd-analyze verify works
    without systemd as PID 1) and run the installed daemon and applier with the role's paths."""
    out = run(
        str(VENV_BIN / "ansible-playbook"),
        "-i",
        "localhost,",
        "-c",
        "local",
        "tests/ansible/playbooks/render_units.yml",
        "-e",
        f"unit_out={tmp_path} nsproxy_venv={role_venv} nsproxy_runtime_dir=/run/nsproxy-test "
        f"ansible_python_interpreter={TARGET_PYTHON}",
    )
    assert out.returncode == 0, out.stdout + out.stderr
    daemon = (tmp_path / "nsproxyd.service").read_text()
    apply = (tmp_path / "nsproxy-apply.service").read_text()
    assert f"ExecStart={role_venv}/bin/nsproxyd --config /run/nsproxy-test/config.json" in daemon
    assert "ExecReload=/bin/kill -HUP $MAINPID" in daemon
    assert "Type=oneshot" in apply and "RemainAfterExit=yes" in apply
    assert f"ExecStart={role_venv}/bin/nsproxy-apply /etc/nsproxy/tenants.yaml --no-daemon" in apply
    assert "Before=nsproxyd.service" in apply
    verify = subprocess.run(
        [
            "systemd-analyze",
            "verify",
            "--man=no",
            str(tmp_path / "nsproxyd.service"),
            str(tmp_path / "nsproxy-apply.service"),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert verify.returncode == 0, verify.stdout + verify.stderr
