"""The access log: one JSON line per request, to a file or stdout, or off."""

from __future__ import annotations

import json
import os
import signal

import pytest
from daemon_harness import get_in, log_text, tenant, wait_until, write_config

from nsproxy_appliance import daemon_control

pytestmark = pytest.mark.root

FIELDS = {"time", "tenant", "client", "method", "path", "status", "bytes", "duration", "upstream"}


def _json_lines(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


def test_access_log_to_a_file(daemon_launcher, make_netns, unique, echo, tmp_path):
    paths = daemon_launcher
    ns = unique("a")
    path = make_netns(ns)
    log_path = str(tmp_path / "access.log")
    gen = write_config(paths, [tenant("acme", ns, 8080, echo)], access_log=log_path)
    daemon_control.ensure_daemon(paths, gen, timeout=20)
    for i in range(3):
        assert get_in(path, "127.0.0.1", 8080, f"/item/{i}?q=1").status == 200

    def lines():
        try:
            with open(log_path) as f:
                found = _json_lines(f.read())
        except FileNotFoundError:
            return None
        return found if len(found) >= 3 else None

    records = wait_until(lines, what="3 access log lines")
    assert len(records) == 3
    for i, rec in enumerate(records):
        assert set(rec) >= FIELDS
        assert rec["tenant"] == "acme"
        assert rec["client"] == "127.0.0.1"  # as seen inside the tenant netns
        assert rec["method"] == "GET"
        assert rec["path"] == f"/item/{i}?q=1"
        assert rec["status"] == 200
        assert rec["bytes"] > 0
        assert 0 <= rec["duration"] < 60
        assert str(echo.port) in rec["upstream"]
        assert rec["time"].endswith("Z")


def _text(path: str) -> str:
    try:
        with open(path, errors="replace") as f:
            return f.read()
    except FileNotFoundError:
        return ""


def test_access_log_to_stdout_and_off(daemon_launcher, make_netns, unique, echo):
    paths = daemon_launcher
    ns = unique("a")
    path = make_netns(ns)
    gen = write_config(paths, [tenant("acme", ns, 8080, echo)], access_log="stdout")
    daemon_control.ensure_daemon(paths, gen, timeout=20)
    assert get_in(path, "127.0.0.1", 8080, "/to-stdout").status == 200
    # Detached, the daemon's stdout is the access log file in the state dir, not its own log.
    records = wait_until(lambda: _json_lines(_text(paths.access_log_file)), what="access log line on stdout")
    assert [r["path"] for r in records] == ["/to-stdout"]
    assert "serving generation=" in log_text(paths)
    assert _json_lines(log_text(paths)) == []

    daemon_control.stop(paths, timeout=15)
    os.unlink(paths.access_log_file)
    gen = write_config(paths, [tenant("acme", ns, 8080, echo)], access_log="off")
    daemon_control.ensure_daemon(paths, gen, timeout=20)
    assert get_in(path, "127.0.0.1", 8080, "/silent").status == 200
    daemon_control.stop(paths, timeout=15)  # flushes anything buffered before exiting
    assert _text(paths.access_log_file) == ""
    assert _json_lines(log_text(paths)) == []


def test_sigusr1_reopens_the_access_log(daemon_launcher, make_netns, unique, echo, tmp_path):
    paths = daemon_launcher
    ns = unique("a")
    path = make_netns(ns)
    log_path = tmp_path / "access.log"
    gen = write_config(paths, [tenant("acme", ns, 8080, echo)], access_log=str(log_path))
    daemon_control.ensure_daemon(paths, gen, timeout=20)
    assert get_in(path, "127.0.0.1", 8080, "/before").status == 200
    wait_until(lambda: log_path.exists() and _json_lines(log_path.read_text()), what="first line")
    log_path.rename(tmp_path / "access.log.1")
    os.kill(daemon_control.status(paths).pid, signal.SIGUSR1)
    wait_until(log_path.exists, what="access log re-created after SIGUSR1")
    assert get_in(path, "127.0.0.1", 8080, "/after").status == 200
    records = wait_until(lambda: _json_lines(log_path.read_text()), what="line in the new file")
    assert [r["path"] for r in records] == ["/after"]
    assert [r["path"] for r in _json_lines((tmp_path / "access.log.1").read_text())] == ["/before"]
