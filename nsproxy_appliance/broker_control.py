"""Starting, finding and stopping the socket broker (nsproxy-broker), and preparing the runtime dir
for an unprivileged daemon: the part of the hand-off that daemon_control.py delegates.

The broker must run before the daemon (the daemon gets every socket from it) and keeps running
when the daemon restarts (it keeps the listening sockets meanwhile). Under systemd with the role's
units installed, nsproxyd.service pulls nsproxy-broker.service in and nothing here runs; otherwise
the broker is started detached (or as a transient unit when systemd is PID 1 without the units),
once, and found again by its pidfile and socket.

The daemon's user (NSPROXY_DAEMON_USER, e.g. "nsproxy"; unset: the daemon stays root, still
without entering namespaces) must be able to write its pidfile and admin socket into the runtime
dir, but never to replace the root-written config.json there: the dir becomes root:<its group>,
mode 1770 (sticky: a user may only rename or delete its own files; broker/registry.py refuses a
config the daemon could have written).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import signal
import socket
import stat
import subprocess
import sys
import time

from . import atomicfile, procinfo
from .errors import DaemonError, StateFileError
from .paths import DEFAULT_RUNTIME_DIR, Paths

ENV_DAEMON_USER = "NSPROXY_DAEMON_USER"
UNIT = "nsproxy-broker"
POLL_INTERVAL = 0.02
RUNTIME_DIR_MODE = 0o1770


def daemon_user() -> str | None:
    """The user the daemon drops to when started by the applier (NSPROXY_DAEMON_USER); None: root."""
    user = os.environ.get(ENV_DAEMON_USER, "").strip()
    return None if user in ("", "root", "0") else user


def broker_argv(paths: Paths, user: str | None) -> list[str]:
    return [
        sys.executable,
        "-m",
        "nsproxy_appliance.broker.server",
        "--runtime-dir",
        paths.runtime_dir,
        "--pidfile",
        paths.broker_pidfile,
        *(["--daemon-user", user] if user else []),
    ]


def answers(paths: Paths) -> bool:
    """Whether a broker accepts connections on its socket now."""
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    try:
        probe.settimeout(1.0)
        probe.connect(paths.broker_socket)
    except OSError:
        return False
    finally:
        probe.close()
    return True


def _read_pid(path: str) -> int | None:
    try:
        with open(path) as f:
            return int(f.read().strip())
    except (OSError, ValueError):
        return None


def running_pid(paths: Paths) -> int | None:
    pid = _read_pid(paths.broker_pidfile)
    return pid if pid is not None and procinfo.broker_alive(pid) is not False else None


def prepare_runtime_dir(paths: Paths, user: str | None) -> None:
    """The runtime dir as the daemon's user needs it (see the module doc), and no stale daemon files
    of a root daemon there that the user could not replace."""
    atomicfile.ensure_dir(paths.runtime_dir)
    if user is None:
        return
    from .daemon.privilege import PrivilegeError, group_of

    try:
        gid = group_of(user)
    except PrivilegeError as e:
        raise DaemonError(str(e)) from None
    try:
        st = os.stat(paths.runtime_dir)
        if st.st_uid != 0 or st.st_gid != gid:
            os.chown(paths.runtime_dir, 0, gid)
        if stat.S_IMODE(st.st_mode) != RUNTIME_DIR_MODE:
            os.chmod(paths.runtime_dir, RUNTIME_DIR_MODE)
    except OSError as e:
        raise StateFileError(paths.runtime_dir, "prepare the runtime dir for the daemon's user", e) from None
    pid = _read_pid(paths.pidfile)
    if pid is None or procinfo.nsproxyd_alive(pid) is False:
        for leftover in (paths.pidfile, paths.admin_socket):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(leftover)


def _wait_answering(paths: Paths, child: subprocess.Popen[bytes] | None, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not answers(paths):
        if child is not None and child.poll() is not None:
            raise DaemonError(f"nsproxy-broker exited with status {child.returncode}; its log:\n{log_tail(paths)}")
        if time.monotonic() >= deadline:
            raise DaemonError(f"nsproxy-broker did not answer on {paths.broker_socket} within {timeout:g} s")
        time.sleep(POLL_INTERVAL)


def log_tail(paths: Paths, lines: int = 15) -> str:
    try:
        with open(paths.broker_log_file, errors="replace") as f:
            return "\n".join(f.read().splitlines()[-lines:]) or "(empty)"
    except OSError:
        return "(no log)"


def ensure_detached(paths: Paths, user: str | None, timeout: float) -> subprocess.Popen[bytes] | None:
    """Start the broker detached unless one answers, and wait up to `timeout` s for it to answer;
    the child (None when one already ran)."""
    if answers(paths):
        return None
    atomicfile.ensure_dir(os.path.dirname(paths.broker_log_file))
    try:
        log = open(paths.broker_log_file, "ab")  # noqa: SIM115  # closed below, once the child has it
    except OSError as e:
        raise StateFileError(paths.broker_log_file, "open the broker's log", e) from None
    with log:
        child = subprocess.Popen(
            broker_argv(paths, user),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            start_new_session=True,
            close_fds=True,
            cwd="/",
        )
    _wait_answering(paths, child, timeout)
    return child


def transient_unit(paths: Paths) -> str:
    if paths.runtime_dir == DEFAULT_RUNTIME_DIR:
        return UNIT
    return f"{UNIT}-{hashlib.sha256(paths.runtime_dir.encode()).hexdigest()[:8]}"


def ensure_transient_unit(paths: Paths, user: str | None, timeout: float) -> None:
    """systemd is PID 1 but the role's units are not installed: the broker as a transient unit,
    answering within `timeout` s."""
    if answers(paths):
        return
    cmd = [
        "systemd-run",
        "--unit",
        transient_unit(paths),
        "--collect",
        "--quiet",
        "-p",
        "Type=notify",
        *broker_argv(paths, user),
    ]
    out = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise DaemonError(f"systemd-run (nsproxy-broker) failed: {out.stderr.strip() or out.stdout.strip()}")
    _wait_answering(paths, None, timeout)


def stop(paths: Paths, timeout: float) -> bool:
    """SIGTERM the broker (it closes every socket it holds) and wait; SIGKILL after `timeout`."""
    pid = running_pid(paths)
    if pid is None:
        return True
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)  # our own child: reap it, or it looks alive as a zombie
        if procinfo.broker_alive(pid) is False:
            return True
        time.sleep(POLL_INTERVAL)
    if procinfo.broker_alive(pid):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    return False
