"""How daemon_control finds, starts, waits for, reloads and stops the daemon (daemon_control.py),
without a daemon: the admin API is the fake HTTP server of test_daemon_control_retry on a real
unix socket, the children are small real Python processes, and systemd, the broker and /proc
are stood in for at daemon_control's own calls."""

from __future__ import annotations

import io
import os
import signal
import socket
import subprocess
import sys
import threading
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from test_daemon_control_retry import FakeAdmin

from nsproxy_appliance import broker_control, daemon_control, procinfo
from nsproxy_appliance.daemon_control import DaemonError, DaemonStatus, DaemonSupervisor
from nsproxy_appliance.errors import StateFileError
from nsproxy_appliance.identity import NetnsIdentity
from nsproxy_appliance.kernel.observed import ServedTenant
from nsproxy_appliance.paths import DRAIN_TIMEOUT
from nsproxy_appliance.runtime_config import Paths


@pytest.fixture
def paths(tmp_path: Path) -> Paths:
    p = Paths(state_dir=str(tmp_path / "state"), runtime_dir=str(tmp_path / "run"))
    os.makedirs(p.runtime_dir)
    return p


@pytest.fixture
def admin(paths: Paths) -> Iterator[FakeAdmin]:
    server = FakeAdmin(paths.admin_socket)
    yield server
    server.close()


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> types.SimpleNamespace:
    """daemon_control's clock, stopped at 100 s (its sleeps return at once)."""
    fake = types.SimpleNamespace(now=100.0, sleeps=[])
    fake.monotonic = lambda: fake.now
    fake.sleep = fake.sleeps.append
    monkeypatch.setattr(daemon_control, "time", fake)
    return fake


def child(code: str, **kwargs: Any) -> subprocess.Popen[bytes]:
    """A Python child that says "ready" once it runs `code`'s first line, then runs the rest."""
    proc = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, **kwargs)
    assert proc.stdout is not None and proc.stdout.readline() == b"ready\n"
    return proc


BLOCKS = "import sys; print('ready', flush=True); sys.stdin.read()"
IGNORES_TERM = (
    "import signal, sys; signal.signal(signal.SIGTERM, signal.SIG_IGN); print('ready', flush=True); sys.stdin.read()"
)


# -- small readers ---------------------------------------------------------------------------------
def test_the_pidfile_holds_a_pid_or_nothing(tmp_path):
    pidfile = tmp_path / "pid"
    pidfile.write_text(" 123\n")
    assert daemon_control._read_pid(str(pidfile)) == 123
    pidfile.write_text("12x")
    assert daemon_control._read_pid(str(pidfile)) is None
    assert daemon_control._read_pid(str(tmp_path / "missing")) is None


@pytest.mark.parametrize(("comm", "expected"), [("systemd\n", True), ("init\n", False), (None, False)])
def test_systemd_is_init_reads_the_name_of_pid_1(monkeypatch, comm, expected):
    opened: list[str] = []

    def fake_open(path: str, *args: Any) -> io.StringIO:
        opened.append(path)
        if comm is None:
            raise PermissionError(13, "Permission denied")
        return io.StringIO(comm)

    monkeypatch.setattr(daemon_control, "open", fake_open, raising=False)
    assert daemon_control.systemd_is_init() is expected
    assert opened == ["/proc/1/comm"]


def test_the_daemon_runs_the_applier_s_python_with_its_config_and_pidfile(paths):
    assert daemon_control.daemon_argv(paths) == [
        sys.executable,
        "-m",
        "nsproxy_appliance.daemon.main",
        "--config",
        paths.config,
        "--pidfile",
        paths.pidfile,
    ]


@pytest.mark.parametrize(
    ("config", "expected"),
    [
        ('{"daemon": {"drain_timeout": 7}}', 7.0),
        ('{"daemon": {}}', DRAIN_TIMEOUT),
        ('{"daemon": null}', DRAIN_TIMEOUT),
        ('{"daemon": {"drain_timeout": "soon"}}', DRAIN_TIMEOUT),
        ("not json", DRAIN_TIMEOUT),
        (None, DRAIN_TIMEOUT),
    ],
)
def test_the_drain_timeout_comes_from_the_config_or_the_default(paths, config, expected):
    if config is not None:
        Path(paths.config).write_text(config)
    assert daemon_control._drain_timeout(paths) == expected


def test_applied_means_applied_and_older_daemons_said_ready():
    assert daemon_control._applied({"applied": True, "ready": False})
    assert not daemon_control._applied({"applied": False, "ready": True})
    assert daemon_control._applied({"ready": True})
    assert not daemon_control._applied({})


# -- systemd ---------------------------------------------------------------------------------------
class Commands:
    """subprocess.run for systemctl and journalctl: answers what the test sets, records the commands."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.commands: list[list[str]] = []
        self.options: list[dict[str, Any]] = []
        self.answers: dict[str, subprocess.CompletedProcess[str]] = {}
        monkeypatch.setattr(daemon_control.subprocess, "run", self.run)

    def answer(self, program: str, returncode: int = 0, stdout: str = "", stderr: str = "") -> None:
        self.answers[program] = subprocess.CompletedProcess([program], returncode, stdout, stderr)

    def run(self, cmd: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
        self.commands.append(cmd)
        self.options.append(kwargs)
        return self.answers.get(cmd[0], subprocess.CompletedProcess(cmd, 0, "", ""))


@pytest.fixture
def commands(monkeypatch: pytest.MonkeyPatch) -> Commands:
    return Commands(monkeypatch)


@pytest.mark.parametrize(
    ("runtime_dir", "show", "expected"),
    [
        (
            "/srv/nsp",
            "LoadState=loaded\nExecStart={ argv[]=nsproxyd --config /srv/nsp/config.json ; }\n",
            ("nsproxyd", True),
        ),
        ("/run/nsproxy", "LoadState=not-found\nExecStart=\n", ("nsproxyd", False)),
        ("/srv/nsp", "LoadState=not-found\nExecStart=\n", ("nsproxyd-ee6ee476", False)),
        (
            "/srv/nsp",
            "LoadState=masked\nExecStart=nsproxyd --config /srv/nsp/config.json\n",
            ("nsproxyd-ee6ee476", False),
        ),
        ("/srv/nsp", "LoadState=loaded\n", ("nsproxyd-ee6ee476", False)),
    ],
)
def test_the_unit_is_the_installed_one_only_when_it_runs_this_config(commands, runtime_dir, show, expected):
    commands.answer("systemctl", stdout=show)
    paths = Paths(state_dir="/srv/state", runtime_dir=runtime_dir)
    assert paths.config == f"{runtime_dir}/config.json"
    assert daemon_control._unit_name(paths) == expected
    assert commands.commands == [["systemctl", "show", "-p", "LoadState", "-p", "ExecStart", "nsproxyd.service"]]
    assert commands.options == [{"capture_output": True, "text": True, "check": False}]


@pytest.mark.parametrize(("returncode", "failed"), [(0, True), (1, False), (3, False)])
def test_a_unit_failed_when_systemctl_says_so(commands, returncode, failed):
    commands.answer("systemctl", returncode=returncode)
    assert daemon_control._unit_failed("nsproxyd-x") is failed
    assert commands.commands == [["systemctl", "is-failed", "--quiet", "nsproxyd-x.service"]]
    assert commands.options == [{"check": False}]


def journal(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(
        daemon_control.shutil, "which", lambda name: "/bin/journalctl" if name == "journalctl" else None
    )


def test_the_log_tail_of_a_unit_is_its_journal(commands, monkeypatch, paths):
    journal(monkeypatch)
    commands.answer("journalctl", stdout="one\ntwo\n")
    assert daemon_control.log_tail(paths, "nsproxyd") == "one\ntwo"
    assert commands.commands == [["journalctl", "-u", "nsproxyd.service", "-n", "15", "--no-pager", "-o", "cat"]]
    assert commands.options == [{"capture_output": True, "text": True, "check": False}]
    commands.answer("journalctl", stdout="")
    assert daemon_control.log_tail(paths, "nsproxyd") == "(no log output)"


def test_the_log_tail_without_a_unit_or_journal_is_the_log_file_s_last_lines(commands, monkeypatch, paths):
    monkeypatch.setattr(daemon_control.shutil, "which", lambda name: None)
    assert daemon_control.log_tail(paths) == "(no log output)"  # no file yet
    os.makedirs(os.path.dirname(paths.log_file))
    Path(paths.log_file).write_bytes(b"".join(b"line %d\n" % n for n in range(20)) + b"bad \xff\n")
    expected = "\n".join([*(f"line {n}" for n in range(6, 20)), "bad \ufffd"])
    assert daemon_control.log_tail(paths) == expected
    assert daemon_control.log_tail(paths, "nsproxyd") == expected  # no journalctl here
    assert commands.commands == []


def test_a_failing_systemd_start_says_which_command_and_why(commands, monkeypatch, paths):
    monkeypatch.setattr(daemon_control, "systemd_is_init", lambda: True)
    monkeypatch.setattr(broker_control, "daemon_user", lambda: None)
    monkeypatch.setattr(broker_control, "prepare_runtime_dir", lambda p, user: None)
    commands.answer("systemctl", stdout=f"LoadState=loaded\nExecStart=nsproxyd --config {paths.config}\n")
    real = commands.run

    def run(cmd: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
        if cmd[:2] == ["systemctl", "start"]:
            return subprocess.CompletedProcess(cmd, 5, "only stdout said it\n", "")
        return real(cmd, **kwargs)

    monkeypatch.setattr(daemon_control.subprocess, "run", run)
    with pytest.raises(DaemonError) as err:
        DaemonSupervisor().launch(paths)
    assert str(err.value) == "systemctl start nsproxyd.service failed: only stdout said it"


def test_a_failing_transient_unit_says_which_unit_and_why(commands, monkeypatch, paths):
    monkeypatch.setattr(daemon_control, "systemd_is_init", lambda: True)
    monkeypatch.setattr(broker_control, "daemon_user", lambda: None)
    monkeypatch.setattr(broker_control, "prepare_runtime_dir", lambda p, user: None)
    monkeypatch.setattr(broker_control, "ensure_transient_unit", lambda p, user, timeout: None)
    commands.answer("systemctl", stdout="LoadState=not-found\n")
    commands.answer("systemd-run", returncode=1, stdout="ignored\n", stderr=" Unit exists. \n")
    with pytest.raises(DaemonError) as err:
        DaemonSupervisor().launch(paths)
    unit, _ = daemon_control._unit_name(paths)
    assert str(err.value) == f"systemd-run --unit {unit} failed: Unit exists."
    assert commands.options[1] == {"capture_output": True, "text": True, "check": False}


def test_a_transient_unit_runs_the_daemon_as_the_configured_user(commands, monkeypatch, paths):
    monkeypatch.setattr(daemon_control, "systemd_is_init", lambda: True)
    monkeypatch.setattr(broker_control, "daemon_user", lambda: "nsproxy")
    prepared: list[Any] = []
    monkeypatch.setattr(broker_control, "prepare_runtime_dir", lambda p, user: prepared.append(("dir", user)))
    monkeypatch.setattr(
        broker_control, "ensure_transient_unit", lambda p, user, timeout: prepared.append(("broker", user))
    )
    commands.answer("systemctl", stdout="LoadState=not-found\n")
    pid, unit = DaemonSupervisor().launch(paths)
    assert (pid, prepared) == (None, [("dir", "nsproxy"), ("broker", "nsproxy")])
    assert commands.commands[-1] == [
        "systemd-run",
        "--unit",
        unit,
        "--collect",
        "--quiet",
        "-p",
        "KillMode=mixed",
        *daemon_control.daemon_argv(paths),
        "--broker",
        paths.broker_socket,
        "--user",
        "nsproxy",
    ]
    assert os.path.isdir(os.path.dirname(paths.log_file))


# -- a detached daemon -------------------------------------------------------------------------------
class Spawned:
    """subprocess.Popen as launch() calls it: records the command and its options, starts nothing."""

    def __init__(self, cmd: list[str], **kwargs: Any) -> None:
        self.cmd, self.kwargs, self.pid = cmd, kwargs, 4242
        self.log_closed_at_start = kwargs["stderr"].closed


@pytest.fixture
def detached(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """launch() without systemd: the broker is started (a stand-in with a pid) and Popen recorded."""
    calls: list[Any] = []
    monkeypatch.setattr(daemon_control, "systemd_is_init", lambda: False)
    monkeypatch.setattr(broker_control, "daemon_user", lambda: None)
    monkeypatch.setattr(broker_control, "prepare_runtime_dir", lambda p, user: calls.append(("dir", user)))
    monkeypatch.setattr(
        broker_control,
        "ensure_detached",
        lambda p, user, timeout: calls.append(("broker", user, timeout)) or types.SimpleNamespace(pid=77),
    )
    monkeypatch.setattr(
        daemon_control.subprocess, "Popen", lambda cmd, **kw: calls.append(Spawned(cmd, **kw)) or calls[-1]
    )
    return calls


def test_a_detached_daemon_gets_its_own_session_log_files_and_the_broker(detached, paths):
    sup = DaemonSupervisor()
    assert sup.launch(paths, 12.5) == (4242, None)
    dir_, broker, spawned = detached
    assert (dir_, broker) == (("dir", None), ("broker", None, 12.5))
    assert spawned.cmd == [
        *daemon_control.daemon_argv(paths),
        "--log-file",
        paths.log_file,
        "--stdout-file",
        paths.access_log_file,
        "--broker",
        paths.broker_socket,
    ]
    log = spawned.kwargs.pop("stderr")
    assert spawned.kwargs == {
        "stdin": subprocess.DEVNULL,
        "stdout": subprocess.DEVNULL,
        "start_new_session": True,
        "close_fds": True,
        "cwd": "/",
    }
    assert (log.name, log.mode, spawned.log_closed_at_start, log.closed) == (paths.log_file, "ab", False, True)
    assert sorted(sup.children) == [77, 4242]  # both reaped (and killed in tests) by this supervisor


def test_a_detached_daemon_s_log_is_appended_to(detached, paths):
    os.makedirs(os.path.dirname(paths.log_file), exist_ok=True)
    Path(paths.log_file).write_text("earlier\n")
    DaemonSupervisor().launch(paths)
    assert Path(paths.log_file).read_text() == "earlier\n"


def test_a_broker_started_elsewhere_is_not_a_child(detached, monkeypatch, paths):
    monkeypatch.setattr(broker_control, "ensure_detached", lambda p, user, timeout: None)
    sup = DaemonSupervisor()
    sup.launch(paths)
    assert list(sup.children) == [4242]


def test_a_log_that_cannot_be_opened_names_it(detached, paths):
    os.makedirs(paths.log_file)
    with pytest.raises(StateFileError) as err:
        DaemonSupervisor().launch(paths)
    assert str(err.value) == f"{paths.log_file}: open the daemon's log: Is a directory"
    assert [c for c in detached if isinstance(c, Spawned)] == []


def test_the_log_is_closed_when_the_broker_cannot_start(detached, monkeypatch, paths):
    opened: list[Any] = []
    real_open = open
    monkeypatch.setattr(daemon_control, "open", lambda *a: opened.append(real_open(*a)) or opened[-1], raising=False)

    def fail(p: Paths, user: str | None, timeout: float) -> None:
        raise DaemonError("broker did not start")

    monkeypatch.setattr(broker_control, "ensure_detached", fail)
    with pytest.raises(DaemonError, match="broker did not start"):
        DaemonSupervisor().launch(paths)
    assert [f.closed for f in opened] == [True]


def slow_broker(paths: Paths, binds_after: float | None) -> list[str]:
    """A broker stand-in that binds the broker socket after `binds_after` s (None: never) and stays
    until killed."""
    bind = (
        ""
        if binds_after is None
        else (
            f"time.sleep({binds_after}); s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET); "
            f"s.bind({paths.broker_socket!r}); s.listen(1); "
        )
    )
    return [sys.executable, "-c", f"import socket, time; {bind}time.sleep(60)"]


@pytest.mark.parametrize("binds_after", [None, 0.5])
def test_a_detached_broker_gets_the_callers_timeout_to_answer(monkeypatch, paths, binds_after):
    monkeypatch.setattr(broker_control, "broker_argv", lambda p, user: slow_broker(p, binds_after))
    spawned: list[subprocess.Popen[bytes]] = []
    real_popen = subprocess.Popen
    monkeypatch.setattr(
        broker_control.subprocess, "Popen", lambda *a, **kw: spawned.append(real_popen(*a, **kw)) or spawned[-1]
    )
    try:
        if binds_after is None:
            with pytest.raises(DaemonError) as err:
                broker_control.ensure_detached(paths, None, 0.3)
            assert str(err.value) == f"nsproxy-broker did not answer on {paths.broker_socket} within 0.3 s"
        else:
            child = broker_control.ensure_detached(paths, None, 30.0)
            assert child is spawned[0] and child.poll() is None and broker_control.answers(paths)
    finally:
        for proc in spawned:
            proc.kill()
            proc.wait()


# -- children ------------------------------------------------------------------------------------
def test_an_exited_child_is_reaped_and_its_status_told():
    sup = DaemonSupervisor()
    proc = subprocess.Popen([sys.executable, "-c", "raise SystemExit(3)"])
    sup.children[proc.pid] = proc
    proc.wait()
    sup._reap(proc.pid)
    assert proc.pid not in sup.children
    assert sup._describe_exit(proc.pid) == "exited with status 3"
    clean = subprocess.Popen([sys.executable, "-c", "pass"])
    sup.children[clean.pid] = clean
    assert sup._describe_exit(clean.pid) == "exited with status 0"
    assert sup._describe_exit(1) == "exited"  # not ours: nothing known


def test_a_running_child_is_not_reaped_and_a_killed_one_says_by_which_signal():
    sup = DaemonSupervisor()
    proc = child(BLOCKS)
    sup.children[proc.pid] = proc
    sup._reap(proc.pid)
    assert sup.children == {proc.pid: proc}
    proc.kill()
    assert sup._describe_exit(proc.pid) == "was killed by signal 9"
    assert sup.children == {}


def test_kill_children_kills_the_process_group_of_each_running_child():
    sup = DaemonSupervisor()
    running = child(BLOCKS, start_new_session=True)
    done = subprocess.Popen([sys.executable, "-c", "pass"], start_new_session=True)
    done.wait()
    sup.children = {running.pid: running, done.pid: done}
    sup.kill_children()
    assert (running.returncode, done.returncode, sup.children) == (-signal.SIGKILL, 0, {})


@pytest.mark.parametrize(
    ("alive", "ours", "expected"),
    [(True, False, True), (False, True, False), (None, True, True), (None, False, False)],
)
def test_is_nsproxyd_trusts_an_unreadable_process_only_if_it_is_our_child(monkeypatch, alive, ours, expected):
    sup = DaemonSupervisor()
    proc = child(BLOCKS)
    try:
        if ours:
            sup.children[proc.pid] = proc
        monkeypatch.setattr(procinfo, "nsproxyd_alive", lambda pid: alive if pid == proc.pid else False)
        assert sup.is_nsproxyd(proc.pid) is expected
    finally:
        proc.kill()
        proc.wait()


# -- status and the admin API ----------------------------------------------------------------------
def running(monkeypatch: pytest.MonkeyPatch, paths: Paths, pid: int = 4242) -> None:
    Path(paths.pidfile).write_text(f"{pid}\n")
    monkeypatch.setattr(procinfo, "nsproxyd_alive", lambda p: p == pid)


def test_status_without_a_live_daemon_is_not_running(monkeypatch, paths):
    assert DaemonSupervisor().status(paths) == DaemonStatus(running=False)
    Path(paths.pidfile).write_text("4242\n")
    monkeypatch.setattr(procinfo, "nsproxyd_alive", lambda p: False)
    assert DaemonSupervisor().status(paths) == DaemonStatus(running=False)


def test_status_of_a_daemon_whose_admin_api_does_not_answer(monkeypatch, paths):
    running(monkeypatch, paths)
    assert DaemonSupervisor().status(paths) == DaemonStatus(running=True, pid=4242)


def test_status_reports_the_active_generation_and_the_failed_tenants(monkeypatch, admin, paths):
    running(monkeypatch, paths)
    admin.routes[("GET", "/readyz")] = (503, {"generation": "g7", "failed": ["a", "b"]})
    assert DaemonSupervisor().status(paths) == DaemonStatus(running=True, pid=4242, generation="g7", failed=("a", "b"))
    admin.routes[("GET", "/readyz")] = (200, {"generation": "g8"})
    assert DaemonSupervisor().status(paths) == DaemonStatus(running=True, pid=4242, generation="g8")
    admin.routes[("GET", "/readyz")] = (200, "plain text")
    assert DaemonSupervisor().status(paths) == DaemonStatus(running=True, pid=4242)
    assert admin.requests == [("GET", "/readyz")] * 3


def test_the_admin_api_answers_json_or_text(admin, paths):
    admin.routes[("GET", "/x")] = (201, {"a": 1})
    admin.routes[("POST", "/y")] = (500, "broken \u00e9")
    assert daemon_control.admin_request(paths, "GET", "/x", 5.0) == (201, {"a": 1})
    assert daemon_control.admin_request(paths, "POST", "/y", 5.0) == (500, "broken \u00e9")
    assert admin.requests == [("GET", "/x"), ("POST", "/y")]
    assert admin.host_lines == [("Host", "nsproxyd")] * 2


@pytest.mark.parametrize("body", [b"[" * 100_000, b'{"ok": tru', b'{"a": "\xff"}'], ids=["nested", "cut", "not-utf8"])
def test_a_daemon_answering_unreadable_json_is_an_unreachable_one_not_a_traceback(admin, paths, body):
    """The daemon runs unprivileged: whatever it answers, the root applier must not crash on it
    (json raised RecursionError for deep nesting, which no caller expected)."""
    admin.routes[("GET", "/readyz")] = (200, body)
    with pytest.raises(OSError, match="admin API GET /readyz: unreadable JSON"):
        daemon_control.admin_request(paths, "GET", "/readyz", 5.0)
    assert daemon_control._readiness(paths) is None


def raw_admin(paths: Paths, answer: bytes | None) -> tuple[socket.socket, threading.Thread]:
    """An admin socket that answers `answer` to the first request and closes (None: never answers)."""
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(paths.admin_socket)
    server.listen()

    def serve() -> None:
        conn, _ = server.accept()
        conn.recv(1024)
        if answer is not None:
            conn.sendall(answer)
        else:
            conn.recv(1024)  # until the client gives up and closes
        conn.close()

    thread = threading.Thread(target=serve)
    thread.start()
    return server, thread


def test_a_text_answer_that_is_not_utf8_is_still_read(paths):
    server, thread = raw_admin(paths, b"HTTP/1.0 500 Oops\r\nContent-Type: text/plain\r\n\r\nbad \xff")
    try:
        assert daemon_control.admin_request(paths, "GET", "/x", 5.0) == (500, "bad \ufffd")
    finally:
        thread.join(timeout=10)
        server.close()


def test_an_admin_api_that_never_answers_times_out(paths):
    server, thread = raw_admin(paths, None)
    try:
        with pytest.raises(OSError):
            daemon_control.admin_request(paths, "GET", "/readyz", 0.2)
    finally:
        thread.join(timeout=10)
        server.close()


def test_an_admin_api_that_does_not_speak_http_is_unreachable(paths):
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(paths.admin_socket)
    server.listen()

    def garbage() -> None:
        conn, _ = server.accept()
        conn.recv(1024)
        conn.sendall(b"garbage\r\n\r\n")
        conn.close()

    thread = threading.Thread(target=garbage)
    thread.start()
    try:
        with pytest.raises(OSError) as err:
            daemon_control.admin_request(paths, "GET", "/readyz", 5.0)
        assert str(err.value).startswith("admin API GET /readyz: ")
    finally:
        thread.join(timeout=10)
        server.close()


def test_an_admin_socket_nobody_listens_on_is_an_os_error(paths):
    with pytest.raises(OSError):
        daemon_control.admin_request(paths, "GET", "/readyz", 1.0)
    assert daemon_control._readiness(paths) is None


# -- waiting for a generation ----------------------------------------------------------------------
def ready(admin: FakeAdmin, generation: str, **more: Any) -> None:
    admin.routes[("GET", "/readyz")] = (200, {"applied": True, "generation": generation, **more})


def test_waiting_ends_once_the_generation_is_active_and_nothing_drains(admin, paths, clock):
    ready(admin, "g2")
    DaemonSupervisor()._wait_for(paths, "g2", 200.0, None, None)
    assert admin.requests == [("GET", "/readyz")] and clock.sleeps == []


@pytest.mark.parametrize(
    ("answer", "seen"),
    [
        ({"applied": True, "generation": "g1"}, "it reports generation g1"),
        ({"applied": True, "generation": "g2", "draining": ["old"]}, "it reports generation g2"),
        ({"applied": False, "generation": "g2"}, "it reports generation g2"),
        (None, "its admin API did not answer"),
    ],
)
def test_waiting_gives_up_at_the_deadline_with_what_the_daemon_said(paths, clock, monkeypatch, answer, seen):
    monkeypatch.setattr(daemon_control.shutil, "which", lambda name: None)
    server = FakeAdmin(paths.admin_socket) if answer is not None else None
    if server is not None:
        server.routes[("GET", "/readyz")] = (200, answer)
    with pytest.raises(DaemonError) as err:
        DaemonSupervisor()._wait_for(paths, "g2", 100.0, None, None)
    if server is not None:
        server.close()
    assert str(err.value) == (
        f"nsproxyd did not report generation g2 active in time ({seen}); last log lines:\n(no log output)"
    )


def test_waiting_polls_until_the_deadline(paths, clock, monkeypatch):
    monkeypatch.setattr(daemon_control.shutil, "which", lambda name: None)
    asked: list[float] = []
    monkeypatch.setattr(
        daemon_control, "_readiness", lambda p, timeout: asked.append(timeout) or {"applied": True, "generation": "g1"}
    )
    polls = 0

    def tick(seconds: float) -> None:
        nonlocal polls
        polls += 1
        clock.now += 1.0

    clock.sleep = tick
    with pytest.raises(DaemonError):
        DaemonSupervisor()._wait_for(paths, "g2", 103.0, None, None)
    # at 100, 101, 102 and, at the deadline, 103; each answer may take 2 s, up to the deadline, 0.1 s at least
    assert polls == 3 and asked == [2.0, 2.0, 1.0, 0.1]


def test_a_daemon_that_exits_while_waited_for_is_an_error_with_its_status(monkeypatch, paths, clock, commands):
    journal(monkeypatch)
    commands.answer("journalctl", stdout="it broke\n")
    monkeypatch.setattr(procinfo, "nsproxyd_alive", lambda pid: None)
    sup = DaemonSupervisor()
    proc = subprocess.Popen([sys.executable, "-c", "raise SystemExit(2)"])
    sup.children[proc.pid] = proc
    proc.wait()
    with pytest.raises(DaemonError) as err:
        sup._wait_for(paths, "g2", 200.0, proc.pid, "nsproxyd-x")
    assert str(err.value) == (
        f"nsproxyd (pid {proc.pid}) exited with status 2 before serving generation g2; last log lines:\nit broke"
    )


def test_a_failed_unit_is_noticed_every_25_polls(admin, paths, clock, monkeypatch, commands):
    journal(monkeypatch)
    commands.answer("journalctl", stdout="it broke\n")
    checked: list[str] = []
    monkeypatch.setattr(daemon_control, "_unit_failed", lambda unit: checked.append(unit) or len(checked) == 2)
    ready(admin, "g1")
    with pytest.raises(DaemonError) as err:
        DaemonSupervisor()._wait_for(paths, "g2", 1e9, None, "nsproxyd-x")
    assert str(err.value) == "unit nsproxyd-x.service failed; last log lines:\nit broke"
    assert checked == ["nsproxyd-x", "nsproxyd-x"] and len(admin.requests) == 49


# -- reloading and ensure_daemon -----------------------------------------------------------------
def test_a_daemon_without_an_admin_api_is_reloaded_by_sighup(monkeypatch, paths, clock):
    signals: list[tuple[int, int]] = []
    waits: list[tuple[Any, ...]] = []
    monkeypatch.setattr(daemon_control.os, "kill", lambda pid, sig: signals.append((pid, sig)))
    sup = DaemonSupervisor()
    monkeypatch.setattr(sup, "_wait_for", lambda *args: waits.append(args))
    sup._reload(paths, 4242, "g2", deadline=200.0)
    assert signals == [(4242, signal.SIGHUP)]
    assert waits == [(paths, "g2", 200.0, 4242, None)]


def test_a_reload_answered_without_ok_is_rejected_with_the_daemon_s_error(admin, paths, clock):
    admin.routes[("POST", "/reload")] = (200, {"generation": "g2"})
    with pytest.raises(DaemonError) as err:
        DaemonSupervisor()._reload(paths, os.getpid(), "g2", deadline=200.0)
    assert str(err.value) == "nsproxyd rejected the reload: None"


def supervised(
    monkeypatch: pytest.MonkeyPatch, status: DaemonStatus, launched: tuple[int | None, str | None] = (77, None)
) -> tuple[DaemonSupervisor, list[Any]]:
    calls: list[Any] = []
    sup = DaemonSupervisor()
    monkeypatch.setattr(sup, "status", lambda p: status)
    monkeypatch.setattr(daemon_control, "_needs_retry", lambda p: False)
    monkeypatch.setattr(
        sup, "_wait_for", lambda p, gen, deadline, pid, unit: calls.append(("wait", gen, deadline, pid, unit))
    )
    monkeypatch.setattr(sup, "_reload", lambda p, pid, gen, deadline: calls.append(("reload", pid, gen, deadline)))
    monkeypatch.setattr(sup, "launch", lambda p, timeout: (calls.append(("launch", timeout)), launched)[1])
    return sup, calls


@pytest.mark.parametrize(("drain", "timeout", "deadline"), [(None, 5.0, 135.0), (1, 5.0, 106.0), (1, 50.0, 150.0)])
def test_a_reload_may_take_the_drain_timeout_on_top(monkeypatch, paths, clock, drain, timeout, deadline):
    if drain is not None:
        Path(paths.config).write_text(f'{{"daemon": {{"drain_timeout": {drain}}}}}')
    sup, calls = supervised(monkeypatch, DaemonStatus(running=True, pid=42, generation="g1"))
    assert sup.ensure_daemon(paths, "g2", timeout=timeout) == "reloaded"
    sup2, calls2 = supervised(monkeypatch, DaemonStatus(running=True, pid=42, generation="g2"))
    assert sup2.ensure_daemon(paths, "g2", timeout=timeout) == "unchanged"
    assert (calls, calls2) == ([("reload", 42, "g2", deadline)], [("wait", "g2", deadline, 42, None)])


@pytest.mark.parametrize("launched", [(77, None), (None, "nsproxyd-x")])
def test_a_launch_gets_the_timeout_only_and_for_the_whole_start_broker_included(monkeypatch, paths, clock, launched):
    sup, calls = supervised(monkeypatch, DaemonStatus(running=False), launched)
    launch = sup.launch
    monkeypatch.setattr(
        sup, "launch", lambda p, timeout: (setattr(clock, "now", clock.now + 3.0), launch(p, timeout))[1]
    )
    assert sup.ensure_daemon(paths, "g2", timeout=5.0) == "launched"
    # The broker's start may take all of it (a slow machine: CI's kernel stage under TCG needed more
    # than a fixed 15 s), and the daemon's wait ends when the same 5 s are up.
    assert calls == [("launch", 5.0), ("wait", "g2", 105.0, *launched)]


def test_a_running_daemon_without_a_known_pid_is_launched(monkeypatch, paths, clock):
    sup, calls = supervised(monkeypatch, DaemonStatus(running=True, pid=None, generation="g2"))
    assert sup.ensure_daemon(paths, "g2", timeout=5.0) == "launched"
    assert calls[0] == ("launch", 5.0)


# -- stopping ------------------------------------------------------------------------------------
def test_stopping_without_a_daemon_is_done(paths):
    assert DaemonSupervisor()._stop_daemon(paths, timeout=1.0) is True


def test_a_daemon_that_exits_on_sigterm_is_stopped(monkeypatch, paths):
    monkeypatch.setattr(procinfo, "nsproxyd_alive", lambda pid: None)  # trusted: our child
    sup = DaemonSupervisor()
    proc = child(BLOCKS)
    sup.children[proc.pid] = proc
    Path(paths.pidfile).write_text(f"{proc.pid}\n")
    assert sup._stop_daemon(paths, timeout=5.0) is True
    assert proc.returncode == -signal.SIGTERM and sup.children == {}


def test_a_daemon_that_ignores_sigterm_is_killed_at_the_timeout(monkeypatch, paths):
    monkeypatch.setattr(procinfo, "nsproxyd_alive", lambda pid: None)
    sup = DaemonSupervisor()
    proc = child(IGNORES_TERM)
    sup.children[proc.pid] = proc
    Path(paths.pidfile).write_text(f"{proc.pid}\n")
    assert sup._stop_daemon(paths, timeout=0.2) is False
    assert proc.returncode == -signal.SIGKILL and sup.children == {}


@pytest.mark.parametrize(
    ("daemon", "broker", "expected"), [(True, True, True), (True, False, False), (False, True, False)]
)
def test_stop_stops_the_broker_too_and_reaps_it(monkeypatch, paths, daemon, broker, expected):
    sup = DaemonSupervisor()
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    sup.children[proc.pid] = proc
    asked: list[Any] = []
    monkeypatch.setattr(sup, "_stop_daemon", lambda p, timeout: asked.append(("daemon", timeout)) or daemon)
    monkeypatch.setattr(broker_control, "running_pid", lambda p: proc.pid)
    monkeypatch.setattr(broker_control, "stop", lambda p, timeout: asked.append(("broker", timeout)) or broker)
    assert sup.stop(paths, timeout=3.0) is expected
    assert asked == [("daemon", 3.0), ("broker", 3.0)]
    assert sup.children == {} and proc.returncode == 0


def test_a_restart_keeps_the_broker(monkeypatch, paths):
    sup = DaemonSupervisor()
    asked: list[str] = []
    monkeypatch.setattr(sup, "_stop_daemon", lambda p, timeout: asked.append("daemon") or False)
    monkeypatch.setattr(broker_control, "stop", lambda p, timeout: asked.append("broker") or True)
    assert sup.stop(paths, timeout=3.0, keep_broker=True) is False
    assert asked == ["daemon"]


def test_stop_without_a_broker_running(monkeypatch, paths):
    sup = DaemonSupervisor()
    monkeypatch.setattr(sup, "_stop_daemon", lambda p, timeout: True)
    monkeypatch.setattr(broker_control, "running_pid", lambda p: None)
    monkeypatch.setattr(broker_control, "stop", lambda p, timeout: True)
    assert sup.stop(paths, timeout=3.0) is True


def test_a_reload_request_may_take_until_the_deadline_but_at_least_a_second(monkeypatch, paths, clock):
    asked: list[float] = []

    def admin_request(p: Paths, method: str, path: str, timeout: float) -> tuple[int, Any]:
        asked.append(timeout)
        return 200, {"ok": True, "generation": "g2"}

    monkeypatch.setattr(daemon_control, "admin_request", admin_request)
    DaemonSupervisor()._reload(paths, 4242, "g2", deadline=110.0)
    DaemonSupervisor()._reload(paths, 4242, "g2", deadline=100.5)
    assert asked == [10.0, 1.0]


# -- draining and ordering in the admin API's answers ------------------------------------------------
def test_a_draining_tenant_listed_first_does_not_hide_a_failed_one(admin, paths):
    admin.tenants(
        {"name": "old", "state": "draining"},
        {"name": "a", "state": "failed", "netns": {"path": "/x", "identity": None}},
    )
    assert daemon_control._needs_retry(paths) is True


def test_await_tenants_looks_at_every_tenant_whatever_the_order(monkeypatch, paths, clock):
    here = NetnsIdentity(1, 2)
    served = {"ok": ServedTenant("serving", here), "bad": ServedTenant("failed", here, "bind failed")}
    asked: list[float] = []
    monkeypatch.setattr(daemon_control, "served_tenants", lambda p, timeout: asked.append(timeout) or served)
    clock.sleep = lambda seconds: (clock.sleeps.append(seconds), setattr(clock, "now", clock.now + 1.0))
    result = daemon_control.await_tenants(paths, {"ok": here, "missing": here, "bad": here}, timeout=2.5)
    assert result == {"bad": "bind failed", "missing": "the daemon does not report it (after 2.5 s)"}
    # polls at 100, 101, 102 and 103 (past the deadline): each may take 2 s at most, 0.1 s at least
    assert asked == [2.0, 1.5, 0.5, 0.1] and clock.sleeps == [0.1, 0.1, 0.1]


def test_await_tenants_waits_for_a_tenant_that_starts_serving(monkeypatch, paths, clock):
    here = NetnsIdentity(1, 2)
    answers = [{}, {"a": ServedTenant("starting", here)}, {"a": ServedTenant("serving", here)}]
    monkeypatch.setattr(daemon_control, "served_tenants", lambda p, timeout: answers.pop(0))
    clock.sleep = lambda seconds: setattr(clock, "now", clock.now + 1.0)
    assert daemon_control.await_tenants(paths, {"a": here}, timeout=2.0) == {}
    assert answers == []


def test_await_tenants_gives_up_exactly_at_the_deadline(monkeypatch, paths, clock):
    polls: list[float] = []
    monkeypatch.setattr(daemon_control, "served_tenants", lambda p, timeout: polls.append(clock.now) or None)
    clock.sleep = lambda seconds: setattr(clock, "now", clock.now + 1.0)
    assert daemon_control.await_tenants(paths, {"a": None}, timeout=2.0) == {
        "a": "the daemon does not answer (after 2 s)"
    }
    assert polls == [100.0, 101.0, 102.0]


def test_waiting_for_a_unit_tells_its_journal_at_the_deadline(paths, clock, monkeypatch, commands):
    journal(monkeypatch)
    commands.answer("journalctl", stdout="it broke\n")
    with pytest.raises(DaemonError) as err:
        DaemonSupervisor()._wait_for(paths, "g2", 100.0, None, "nsproxyd-x")
    assert str(err.value).endswith("(its admin API did not answer); last log lines:\nit broke")


def test_a_detached_daemon_and_its_broker_run_as_the_configured_user(detached, monkeypatch, paths):
    monkeypatch.setattr(broker_control, "daemon_user", lambda: "nsproxy")
    DaemonSupervisor().launch(paths)
    assert detached[:2] == [("dir", "nsproxy"), ("broker", "nsproxy", daemon_control.DAEMON_TIMEOUT)]
    assert detached[2].cmd[-4:] == ["--broker", paths.broker_socket, "--user", "nsproxy"]


def test_stop_leaves_a_broker_it_did_not_start_alone(monkeypatch, paths):
    sup = DaemonSupervisor()
    monkeypatch.setattr(sup, "_stop_daemon", lambda p, timeout: True)
    monkeypatch.setattr(broker_control, "running_pid", lambda p: 999999)
    monkeypatch.setattr(broker_control, "stop", lambda p, timeout: True)
    assert sup.stop(paths, timeout=3.0) is True


def test_a_daemon_not_started_here_that_ignores_sigterm_is_killed(monkeypatch, paths):
    proc = child(IGNORES_TERM)
    monkeypatch.setattr(procinfo, "nsproxyd_alive", lambda pid: pid == proc.pid and proc.poll() is None)
    Path(paths.pidfile).write_text(f"{proc.pid}\n")
    sup = DaemonSupervisor()
    assert sup._stop_daemon(paths, timeout=0.2) is False
    assert proc.wait(timeout=10) == -signal.SIGKILL
