"""No silent skips: the test command refuses a user that would skip the root tests, and the kernel
stage fails when its VM cannot start unless told to skip (NSPROXY_KERNEL_STAGE=skip)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest
from support import REPO

sys.path.insert(0, str(REPO / "tests" / "kernel"))
import stage  # tests/kernel/stage.py: the kernel stage driver


def _as_unprivileged_user(argv: list[str]) -> list[str]:
    """`argv` run as a user that is not root: nobody when we are root, else ourselves."""
    if os.geteuid() != 0:
        return argv
    runuser = shutil.which("runuser") or shutil.which("setpriv")
    assert runuser is not None, "runuser (util-linux) is needed to drop root for this test"
    if runuser.endswith("setpriv"):
        return [runuser, "--reuid=nobody", "--regid=nogroup", "--clear-groups", *argv]
    return [runuser, "-u", "nobody", "--", *argv]


def test_the_test_command_refuses_to_run_the_suite_as_a_non_root_user():
    out = subprocess.run(
        _as_unprivileged_user(["bash", str(REPO / "scripts" / "test.sh")]),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd="/",
    )
    assert out.returncode == 2, out
    assert "refusing to run as" in out.stderr and "needs root" in out.stderr
    assert "== " not in out.stdout  # no stage ran (setup, lint or pytest)


@pytest.fixture
def vm_cannot_start(monkeypatch, tmp_path):
    """The kernel stage on a kernel without dummy links whose VM kernel image does not exist."""
    monkeypatch.setattr(stage, "dummy_links_supported", lambda: (False, "probe replaced by the test"))
    monkeypatch.setenv("NSPROXY_VM_KERNEL", str(tmp_path / "no-such-vmlinuz"))
    monkeypatch.delenv("NSPROXY_KERNEL_STAGE", raising=False)
    monkeypatch.chdir(tmp_path)  # stage.main() changes into the checkout; undone after the test


def test_the_kernel_stage_fails_with_the_reason_when_its_vm_cannot_start(vm_cannot_start, capsys):
    assert stage.main(["tests/kernel/test_end_to_end.py"]) == 1
    out = capsys.readouterr().out
    assert "FAILED: cannot start the VM" in out and "no-such-vmlinuz" in out
    assert "NSPROXY_KERNEL_STAGE=skip" in out  # says how to skip it on purpose


def test_the_kernel_stage_skips_only_when_told_to(vm_cannot_start, monkeypatch, capsys):
    monkeypatch.setenv("NSPROXY_KERNEL_STAGE", "skip")
    assert stage.main(["tests/kernel/test_end_to_end.py"]) == 0
    out = capsys.readouterr().out
    assert "SKIPPED (NSPROXY_KERNEL_STAGE=skip): cannot start the VM" in out and "no-such-vmlinuz" in out
    monkeypatch.setenv("NSPROXY_KERNEL_STAGE", "1")  # any other value is no permission to skip
    assert stage.main(["tests/kernel/test_end_to_end.py"]) == 1


def test_the_kernel_stage_script_exits_non_zero_when_the_vm_cannot_start(tmp_path):
    """The same through the real entry point (no probe replaced): on this kernel without dummy
    links the VM is needed; on one with them the stage runs directly and this proves nothing
    new, so the test then checks the direct path is taken instead."""
    env = {k: v for k, v in os.environ.items() if k != "NSPROXY_KERNEL_STAGE"}
    env["NSPROXY_VM_KERNEL"] = str(tmp_path / "no-such-vmlinuz")
    env["NSPROXY_VM_TIMEOUT"] = "60"
    out = subprocess.run(
        [sys.executable, str(REPO / "tests" / "kernel" / "stage.py"), "--collect-only", "tests/kernel/test_prune.py"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env=env,
    )
    if "running the kernel tests directly" in out.stdout:
        assert out.returncode == 0, out
        return
    assert out.returncode == 1, out
    assert "FAILED: cannot start the VM" in out.stdout and "no-such-vmlinuz" in out.stdout
