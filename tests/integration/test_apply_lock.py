"""Two applies cannot interleave: the second waits for the lock, then fails clearly."""

from __future__ import annotations

import os
import subprocess
import threading

import pytest
from apply_harness import APPLY

from nsproxy_appliance import ledger, netns

pytestmark = pytest.mark.root


def test_second_apply_fails_clearly_after_the_lock_timeout(cli, unique):
    name = unique("a")
    m = cli.manifest([{"name": name}])
    with ledger.locked(cli.paths.lock, timeout=5):  # this test process is "the other apply"
        run = cli.run(m, "--lock-timeout", "0.3")
        text = cli.run(m, "--lock-timeout", "0.3", output="text")
    assert run.rc == 1 and run.data["changed"] is False
    [error] = run.data["errors"]
    assert f"process {os.getpid()} holds {cli.paths.lock}" in error and "--lock-timeout" in error
    assert text.rc == 1 and "another nsproxy apply is running" in text.stderr
    assert not netns.exists(name)  # nothing was done without the lock
    assert cli.run(m).rc == 0  # and once it is free, apply goes ahead


def test_second_apply_waits_for_the_first(cli, unique):
    name = unique("a")
    m = cli.manifest([{"name": name}])
    released = threading.Event()
    cmd = [str(APPLY), str(m), "--no-daemon", "--output", "json", "--lock-timeout", "60"]
    cmd += ["--state-dir", cli.paths.state_dir, "--runtime-dir", cli.paths.runtime_dir]
    with ledger.locked(cli.paths.lock, timeout=5):
        waiter = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            waiter.wait(timeout=0.5)
        except subprocess.TimeoutExpired:
            released.set()  # still waiting while we hold the lock, as it should
    out, err = waiter.communicate(timeout=60)
    assert released.is_set(), f"apply did not wait for the lock: {out} {err}"
    assert waiter.returncode == 0, out + err
    assert netns.exists(name)
