"""procinfo: whether a pid is a live nsproxyd, against real processes, with /proc's transient
failures put in front of the real reads."""

from __future__ import annotations

import builtins
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest

from nsproxy_appliance import procinfo


@pytest.fixture
def lookalike() -> Iterator[subprocess.Popen[bytes]]:
    """A live process whose cmdline is the daemon's (python -c ... nsproxy_appliance.daemon.main)."""
    proc = subprocess.Popen(
        [sys.executable, "-c", "import sys; sys.stdin.read()", "nsproxy_appliance.daemon.main"], stdin=subprocess.PIPE
    )
    yield proc
    proc.kill()
    proc.wait()


def failing_first(monkeypatch: pytest.MonkeyPatch, pid: int, error: OSError, times: int) -> list[str]:
    """open() of /proc/<pid>/... raises `error` the first `times` calls, then reads for real."""
    real_open, failed = builtins.open, []

    def flaky_open(path: Any, *args: Any, **kwargs: Any) -> Any:
        if str(path).startswith(f"/proc/{pid}/") and len(failed) < times:
            failed.append(str(path))
            raise error
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", flaky_open)
    return failed


def test_a_live_daemon_is_alive_and_another_program_is_not(lookalike):
    assert procinfo.nsproxyd_alive(lookalike.pid) is True
    assert procinfo.broker_alive(lookalike.pid) is False


@pytest.mark.parametrize("error", [OSError(5, "Input/output error"), PermissionError(13, "Permission denied")])
def test_a_transient_proc_error_is_read_again_not_taken_for_an_exit(monkeypatch, lookalike, error):
    failed = failing_first(monkeypatch, lookalike.pid, error, times=2)
    assert procinfo.nsproxyd_alive(lookalike.pid) is True
    assert len(failed) == 2


def test_a_proc_that_keeps_failing_leaves_the_answer_to_the_caller(monkeypatch, lookalike):
    failing_first(monkeypatch, lookalike.pid, OSError(5, "Input/output error"), times=10**6)
    assert procinfo.nsproxyd_alive(lookalike.pid) is None


def test_a_process_that_is_gone_is_not_alive(lookalike):
    lookalike.kill()
    lookalike.wait()
    assert procinfo.nsproxyd_alive(lookalike.pid) is False
