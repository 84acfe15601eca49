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


def test_example_inventory_defines_the_nsproxy_hosts_group_without_warnings() -> None:
    # Manifests used to live inside the inventory directory, which Ansible parses file by file:
    # "Skipping 'version' as this is not a valid group definition" and a made-up group
    # `defaults` (a manifest key) on every run.
    out = run(str(VENV_BIN / "ansible-inventory"), "-i", "inventories/example", "--list")
    assert out.returncode == 0, out.stderr
    assert "WARNING" not in out.stderr.upper(), out.stderr
    assert "Skipping" not in out.stderr, out.stderr
    inventory = json.loads(out.stdout)
    assert set(inventory) == {"_meta", "all", "nsproxy_hosts"}, sorted(inventory)
    assert set(inventory["all"]["children"]) <= {"ungrouped", "nsproxy_hosts"}, inventory["all"]
    hosts = inventory["nsproxy_hosts"]["hosts"]
    assert len(hosts) == 3
    hostvars = inventory["_meta"]["hostvars"]
    assert all(hostvars[h]["nsproxy_tenants"] for h in hosts)
    # The per-host manifest file the inventory points at exists and is valid.
    src = hostvars["edge-03.example.net"]["nsproxy_manifest_src"].replace("{{ playbook_dir }}", str(REPO))
    assert not Path(src).resolve().is_relative_to(REPO / "inventories"), src
    valid = run(str(VENV_BIN / "nsproxy"), "validate", src)
    assert valid.returncode == 0, valid.stdout + valid.stderr


MODULE_OPTIONS = {
    "manifest",
    "content",
    "executable",
    "state_dir",
    "runtime_dir",
    "allow_empty",
    "force",
    "no_daemon",
    "lock_timeout",
    "daemon_timeout",
}


def test_ansible_doc_renders_the_module_documentation_by_fqcn() -> None:
    # From a plain checkout: ansible.cfg's collections_path finds collections/ (symlinks here).
    text = run(str(VENV_BIN / "ansible-doc"), "nsproxy.appliance.nsproxy_apply")
    assert text.returncode == 0, text.stderr
    for section in ("MODULE nsproxy.appliance.nsproxy_apply", "Runs the nsproxy applier", "OPTIONS", "EXAMPLES"):
        assert section in text.stdout.replace("\x1b[1m", "").replace("\x1b[0m", "")
    assert "RETURN VALUES" in text.stdout

    doc = run(str(VENV_BIN / "ansible-doc"), "--json", "nsproxy.appliance.nsproxy_apply")
    assert doc.returncode == 0, doc.stderr
    entry = json.loads(doc.stdout)["nsproxy.appliance.nsproxy_apply"]
    assert entry["doc"]["short_description"] == "Converge a host to an nsproxy tenant manifest"
    assert entry["doc"]["attributes"]["check_mode"]["support"] == "full"
    assert set(entry["doc"]["options"]) == MODULE_OPTIONS
    assert {"actions", "errors", "daemon", "in_sync", "applier_rc"} <= set(entry["return"])
    assert "nsproxy.appliance.nsproxy_apply:" in entry["examples"]


def test_role_refers_to_the_module_by_fqcn_only() -> None:
    uses = []
    for path in sorted((REPO / "roles").rglob("*.yml")):
        for task in _tasks(yaml.safe_load(path.read_text())):
            if "nsproxy_apply" in task or "nsproxy.appliance.nsproxy_apply" in task:
                uses.append((path.name, "nsproxy.appliance.nsproxy_apply" in task))
    assert uses, "the role no longer calls the module?"
    assert all(fqcn for _, fqcn in uses), uses
    assert not (REPO / "roles" / "nsproxy" / "library").exists()


def _tasks(data: object) -> list[dict]:
    """Every task-like mapping in a tasks/handlers file (blocks included)."""
    found: list[dict] = []
    if isinstance(data, list):
        for item in data:
            found.extend(_tasks(item))
    elif isinstance(data, dict):
        found.append(data)
        for key in ("block", "rescue", "always"):
            found.extend(_tasks(data.get(key)))
    return found


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
