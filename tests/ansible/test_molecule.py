"""`molecule test` of the scenario extensions/molecule/default, for real: the default (delegated)
driver, a simulated host in local network namespaces, the role by its FQCN. Slow (about a minute:
seven ansible-playbook runs), hence the `molecule` marker; `-m "not molecule"` leaves it out."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest
from ansible_support import REPO, VENV_BIN

pytestmark = [pytest.mark.root, pytest.mark.molecule]

SEQUENCE = ["destroy", "syntax", "create", "converge", "idempotence", "verify", "destroy"]
SCENARIO_NETNS = re.compile(r"^m[0-9a-f]{6}-[ab]$")  # the tenant namespaces create.yml names


def scenario_namespaces() -> set[str]:
    run_dir = Path("/run/netns")
    return {p.name for p in run_dir.iterdir() if SCENARIO_NETNS.match(p.name)} if run_dir.is_dir() else set()


def test_molecule_test_passes_every_step_and_leaves_nothing_behind(role_venv: Path, tmp_path: Path) -> None:
    before = scenario_namespaces()
    env = {
        **os.environ,
        "PATH": f"{VENV_BIN}:{os.environ.get('PATH', '/usr/bin:/bin')}",
        "MOLECULE_EPHEMERAL_DIRECTORY": str(tmp_path / "ephemeral"),
        "ANSIBLE_HOME": str(tmp_path / "ansible-home"),
        "ANSIBLE_LOCAL_TEMP": str(tmp_path / "ansible-local"),
        "ANSIBLE_REMOTE_TEMP": str(tmp_path / "ansible-remote"),
        "NO_COLOR": "1",
        "ANSIBLE_NOCOLOR": "1",
        # The venv the session's role run installed: converge then skips the install path
        # (test_site covers it), which keeps this to about a minute.
        "NSPROXY_MOLECULE_VENV": str(role_venv),
    }
    proc = subprocess.run(
        [str(VENV_BIN / "molecule"), "test"], cwd=REPO, env=env, capture_output=True, text=True, timeout=600
    )
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output[-8000:]

    steps = re.findall(r"^default > (\w+): Executed: (\w+)", output, re.MULTILINE)
    assert steps == [(step, "Successful") for step in SEQUENCE], steps
    # The second converge changed nothing, and verify really ran its checks.
    recaps = re.findall(r"^nsproxy-molecule\s+: ok=(\d+)\s+changed=(\d+)", output, re.MULTILINE)
    assert len(recaps) == 6, recaps  # every step but syntax runs a play
    converge, idempotence, verify = recaps[2], recaps[3], recaps[4]
    assert int(converge[1]) > 0 and int(idempotence[1]) == 0, recaps
    assert int(verify[0]) >= 6, recaps
    assert scenario_namespaces() == before
    assert not any(p.is_dir() for p in (tmp_path / "ephemeral").glob("nsproxy-molecule"))
