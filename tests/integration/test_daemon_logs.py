"""The daemon's own log and its access log, with the daemon launched detached (as nsproxy-apply
does without systemd): two files, both reopened on SIGUSR1 after a rename (by hand and by the real
logrotate with deploy/logrotate/nsproxy), and daemon.log_format text or json with structured fields."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
from pathlib import Path
from typing import Any

import pytest
from daemon_harness import get_in, tenant, wait_until, write_config
from support import REPO, run_cli

from nsproxy_appliance import daemon_control

pytestmark = pytest.mark.root

# What the text format's lines look like: "2026-12-01 10:00:00,123 nsproxyd[42] INFO message key=value".
TEXT_LINE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} nsproxyd\[(\d+)\] (INFO|WARNING|ERROR|CRITICAL) (.*)$")
# One key=value field of a text line: a bare value, or a JSON string.
TEXT_FIELD = re.compile(r'(?:^| )([A-Za-z_][\w.]*)=("(?:[^"\\]|\\.)*"|[^\s"=\\]+)')


def read(path: str | Path) -> str:
    try:
        return Path(path).read_text(errors="replace")
    except FileNotFoundError:
        return ""


def json_lines(path: str | Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in read(path).splitlines()]


def text_fields(line: str) -> dict[str, str]:
    """The key=value fields of one text log line (JSON strings decoded)."""
    return {k: json.loads(v) if v.startswith('"') else v for k, v in TEXT_FIELD.findall(line)}


def text_record(path: str | Path, message: str) -> list[dict[str, str]]:
    """The fields of every text line of `path` whose message is `message`."""
    found = []
    for line in read(path).splitlines():
        m = TEXT_LINE.match(line)
        if m and (m.group(3) == message or m.group(3).startswith(message + " ")):
            found.append(text_fields(m.group(3)[len(message) :]))
    return found


def records(path: str | Path, message: str) -> list[dict[str, Any]]:
    return [r for r in json_lines(path) if r.get("message") == message]


def launch(paths, tenants, **daemon) -> str:
    gen = write_config(paths, tenants, **daemon)
    assert daemon_control.ensure_daemon(paths, gen, timeout=20) == "launched"
    return gen


def reload(paths, tenants, **daemon) -> str:
    gen = write_config(paths, tenants, **daemon)
    assert daemon_control.ensure_daemon(paths, gen, timeout=20) == "reloaded"
    return gen


def access_paths(path: str | Path) -> list[str]:
    return [r["path"] for r in json_lines(path)]


def test_detached_daemon_writes_access_lines_and_its_own_log_to_two_files(daemon_launcher, make_netns, unique, echo):
    paths = daemon_launcher
    ns = unique("a")
    ns_path = make_netns(ns)
    gen = launch(paths, [tenant("acme", ns, 8080, echo)], access_log="stdout")
    for i in range(3):
        assert get_in(ns_path, "127.0.0.1", 8080, f"/r{i}").status == 200
    wait_until(lambda: len(access_paths(paths.access_log_file)) == 3, what="3 access lines in access.log")
    access = json_lines(paths.access_log_file)  # every line of it is a JSON access record
    assert [r["path"] for r in access] == ["/r0", "/r1", "/r2"]
    assert {r["tenant"] for r in access} == {"acme"}
    own = read(paths.log_file).splitlines()
    assert own and all(TEXT_LINE.match(line) for line in own), own  # and the daemon log has only its own lines
    assert {"generation": gen, "tenants": "1"} == text_record(paths.log_file, "serving")[-1]


def test_sigusr1_after_a_rename_reopens_both_files(daemon_launcher, make_netns, unique, echo):
    paths = daemon_launcher
    ns, other = unique("a"), unique("g")
    ns_path = make_netns(ns)
    make_netns(other)
    launch(paths, [tenant("acme", ns, 8080, echo)], access_log="stdout")
    assert get_in(ns_path, "127.0.0.1", 8080, "/before").status == 200
    wait_until(lambda: access_paths(paths.access_log_file) == ["/before"], what="the first access line")
    old_log, old_access = paths.log_file + ".1", paths.access_log_file + ".1"
    os.rename(paths.log_file, old_log)  # what logrotate does before its postrotate
    os.rename(paths.access_log_file, old_access)

    os.kill(daemon_control.status(paths).pid, signal.SIGUSR1)
    wait_until(lambda: text_record(paths.log_file, "log files reopened"), what="the daemon log re-created")
    assert get_in(ns_path, "127.0.0.1", 8080, "/after").status == 200
    wait_until(lambda: access_paths(paths.access_log_file) == ["/after"], what="the access line in the new file")
    gen = reload(paths, [tenant("acme", ns, 8080, echo), tenant("globex", other, 8080, echo)], access_log="stdout")
    assert text_record(paths.log_file, "reload")[-1]["generation"] == gen  # in the new daemon log

    daemon_control.stop(paths, timeout=15)
    assert access_paths(old_access) == ["/before"]  # nothing more went to the renamed files
    assert "reload" not in read(old_log) and "log files reopened" not in read(old_log)
    assert "serving generation=" in read(old_log)


def _logrotate_config(tmp_path: Path, paths) -> Path:
    """deploy/logrotate/nsproxy with this test's directories instead of the default ones."""
    text = (REPO / "deploy" / "logrotate" / "nsproxy").read_text()
    assert "/var/lib/nsproxy/" in text and "/run/nsproxy/nsproxyd.pid" in text
    text = text.replace("/var/lib/nsproxy/", paths.state_dir + "/").replace("/run/nsproxy/", paths.runtime_dir + "/")
    text = text.replace("/var/log/nsproxy/", str(tmp_path / "varlog") + "/")
    config = tmp_path / "logrotate.conf"
    config.write_text(text)
    return config


@pytest.mark.skipif(shutil.which("logrotate") is None, reason="logrotate not installed (scripts/setup.sh installs it)")
def test_logrotate_with_the_shipped_snippet_rotates_both_and_the_daemon_follows(
    daemon_launcher, make_netns, unique, echo, tmp_path
):
    paths = daemon_launcher
    ns = unique("a")
    ns_path = make_netns(ns)
    file_log = tmp_path / "varlog" / "access.log"  # an access_log: path rotated by the same snippet
    launch(paths, [tenant("acme", ns, 8080, echo)], access_log="stdout")
    assert get_in(ns_path, "127.0.0.1", 8080, "/before").status == 200
    wait_until(lambda: access_paths(paths.access_log_file) == ["/before"], what="the first access line")

    config = _logrotate_config(tmp_path, paths)
    rotate = subprocess.run(
        ["logrotate", "--force", "--state", str(tmp_path / "logrotate.state"), str(config)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert rotate.returncode == 0, rotate.stderr
    assert access_paths(paths.access_log_file + ".1") == ["/before"]  # rotated, not yet compressed
    wait_until(lambda: text_record(paths.log_file, "log files reopened"), what="the daemon's reopen (postrotate)")
    assert get_in(ns_path, "127.0.0.1", 8080, "/after").status == 200
    wait_until(lambda: access_paths(paths.access_log_file) == ["/after"], what="the access line in the new file")
    assert access_paths(paths.access_log_file + ".1") == ["/before"]
    assert "serving generation=" in read(paths.log_file + ".1")
    assert not file_log.exists()  # missingok: a configured path that does not exist is no error


def test_json_log_lines_parse_and_carry_the_reload_summary(daemon_launcher, make_netns, unique, echo):
    paths = daemon_launcher
    a, b, c = unique("a"), unique("b"), unique("c")
    paths_of = {n: make_netns(n) for n in (a, b, c)}
    first = launch(paths, [tenant("acme", a, 8080, echo), tenant("old", b, 8080, echo)], log_format="json")
    serving = records(paths.log_file, "serving")[-1]
    assert (serving["level"], serving["generation"], serving["tenants"], serving["failed"]) == ("info", first, 2, [])

    # globex is added, old removed, and bad cannot bind (an address its namespace does not have).
    tenants = [
        tenant("acme", a, 8080, echo),
        tenant("globex", c, 8080, echo),
        tenant("bad", c, 80, echo, host="10.9.9.9"),
    ]
    gen = reload(paths, tenants, log_format="json")
    assert get_in(paths_of[c], "127.0.0.1", 8080, "/").status == 200

    lines = json_lines(paths.log_file)  # raises if any line is not JSON
    assert lines
    for line in lines:
        assert {"time", "level", "logger", "pid", "message"} <= set(line), line
        assert line["level"] in {"info", "warning", "error"} and line["logger"] == "nsproxyd"
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", line["time"]), line
    [summary] = records(paths.log_file, "reload")
    assert summary["trigger"] == "admin"
    assert (summary["generation"], summary["previous_generation"]) == (gen, first)
    assert (summary["added"], summary["removed"], summary["changed"]) == (["bad", "globex"], ["old"], [])
    assert summary["failed"] == ["bad"]
    assert summary["unchanged"] == 1  # acme
    assert summary["drained"] == {"connections": 0, "aborted": 0}
    [failed] = records(paths.log_file, "tenant failed")
    assert (failed["level"], failed["tenant"]) == ("warning", "bad")
    assert "10.9.9.9" in failed["error"]
    [removed] = records(paths.log_file, "tenant removed")
    assert (removed["level"], removed["tenant"], removed["draining"]) == ("info", "old", 0)


def test_text_log_reload_summary_is_key_value_not_a_python_repr(daemon_launcher, make_netns, unique, echo):
    paths = daemon_launcher
    a, b = unique("a"), unique("b")
    make_netns(a)
    make_netns(b)
    first = launch(paths, [tenant("acme", a, 8080, echo)])
    gen = reload(paths, [tenant("acme", a, 8080, echo), tenant("globex", b, 8080, echo)])
    [line] = [line for line in read(paths.log_file).splitlines() if " INFO reload " in line]
    assert "{" not in line and "'" not in line, line
    assert text_fields(line) == {
        "trigger": "admin",
        "generation": gen,
        "previous_generation": first,
        "added": "globex",
        "unchanged": "1",
        "drained.connections": "0",
        "drained.aborted": "0",
    }


def test_log_format_changes_with_a_reload(daemon_launcher, make_netns, unique, echo):
    paths = daemon_launcher
    a = unique("a")
    make_netns(a)
    launch(paths, [tenant("acme", a, 8080, echo)])
    text_lines = read(paths.log_file).splitlines()
    gen = reload(paths, [tenant("acme", a, 8080, echo)], log_format="json")
    after = read(paths.log_file).splitlines()[len(text_lines) :]
    assert after and all(line.startswith("{") for line in after), after
    summary = [json.loads(line) for line in after]
    assert [r["message"] for r in summary] == ["reload"] and summary[0]["generation"] == gen
    assert all(TEXT_LINE.match(line) for line in text_lines)


def test_a_log_file_that_cannot_be_opened_is_a_clear_error(tmp_path):
    (tmp_path / "file").write_text("")
    run = run_cli("nsproxyd", "--config", str(tmp_path / "config.json"), "--log-file", str(tmp_path / "file" / "x.log"))
    assert run.returncode == 1, run
    assert run.stderr.startswith(f"nsproxyd: error: cannot open {tmp_path / 'file'}"), run
