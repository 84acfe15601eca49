"""The applier's hand-off to the daemon: launch it, reload it, or leave it alone.

The applier has already written the runtime config (runtime_config.write) when it calls
ensure_daemon(). This module is the only place that knows how the daemon is started
(systemd unit or detached process with a pidfile) and how it is asked to reload.

It talks to the daemon's admin API over the unix socket with the standard library only (no event
loop, no aiohttp import in the applier).
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import Any, Literal

from . import procinfo
from .runtime_config import Paths

DaemonAction = Literal["launched", "reloaded", "unchanged"]

UNIT = "nsproxyd"
STATUS_TIMEOUT = 2.0  # seconds for one admin request in status()
POLL_INTERVAL = 0.02
LOG_TAIL_LINES = 15
UNIT_CHECK_EVERY = 25  # polls between `systemctl is-failed` checks while waiting
_DEFAULT_RUNTIME_DIR = Paths().runtime_dir

# Daemons this process started detached: kept so they can be reaped (no zombie looks alive).
_children: dict[int, subprocess.Popen[bytes]] = {}


class DaemonError(RuntimeError):
    """The daemon could not be started or did not take the new config; the message says why."""


@dataclass(frozen=True)
class DaemonStatus:
    running: bool
    pid: int | None = None
    generation: str | None = None  # the config generation the daemon reports as active
    failed: tuple[str, ...] = ()  # tenants the daemon could not serve (bind failed, netns gone)


# ---- the admin API over the unix socket --------------------------------------------------------


class _UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(self._path)
        except OSError:
            sock.close()
            raise
        self.sock = sock


def admin_request(paths: Paths, method: str, path: str, timeout: float) -> tuple[int, Any]:
    """(status, parsed JSON or text) from the daemon's admin socket; OSError when unreachable."""
    conn = _UnixHTTPConnection(paths.admin_socket, timeout)
    try:
        conn.request(method, path, headers={"Host": "nsproxyd"})
        resp = conn.getresponse()
        body = resp.read()
    except (http.client.HTTPException, ValueError) as e:
        raise OSError(f"admin API {method} {path}: {e}") from None
    finally:
        conn.close()
    if resp.getheader("Content-Type", "").startswith("application/json"):
        return resp.status, json.loads(body)
    return resp.status, body.decode(errors="replace")


def _readiness(paths: Paths, timeout: float = STATUS_TIMEOUT) -> dict[str, Any] | None:
    try:
        _, body = admin_request(paths, "GET", "/readyz", timeout)
    except (OSError, ValueError):
        return None
    return body if isinstance(body, dict) else None


# ---- the process -------------------------------------------------------------------------------


def _read_pid(pidfile: str) -> int | None:
    try:
        with open(pidfile) as f:
            return int(f.read().strip())
    except (OSError, ValueError):
        return None


_exit_codes: dict[int, int] = {}  # exit status of reaped children, for error messages


def _reap(pid: int) -> None:
    child = _children.get(pid)
    if child is not None and child.poll() is not None:
        _exit_codes[pid] = child.returncode
        del _children[pid]


def _describe_exit(pid: int) -> str:
    child = _children.pop(pid, None)
    if child is not None:
        with contextlib.suppress(subprocess.TimeoutExpired):
            _exit_codes[pid] = child.wait(timeout=5.0)
    code = _exit_codes.get(pid)
    if code is None:
        return "exited"
    return f"was killed by signal {-code}" if code < 0 else f"exited with status {code}"


def is_nsproxyd(pid: int) -> bool:
    """Whether `pid` is a live (not zombie) nsproxyd process."""
    _reap(pid)
    alive = procinfo.nsproxyd_alive(pid)
    return pid in _children if alive is None else alive  # unreadable: trust it only if we started it


def status(paths: Paths) -> DaemonStatus:
    """What is running now, without side effects (used by plan and --check)."""
    pid = _read_pid(paths.pidfile)
    if pid is None or not is_nsproxyd(pid):
        return DaemonStatus(running=False)
    ready = _readiness(paths)
    if not ready:
        return DaemonStatus(running=True, pid=pid)
    return DaemonStatus(
        running=True, pid=pid, generation=ready.get("generation"), failed=tuple(ready.get("failed", ()))
    )


def _log_tail(paths: Paths, unit: str | None = None) -> str:
    """The daemon's last log lines: the journal of its unit under systemd, else its log file."""
    lines: list[str] = []
    if unit and shutil.which("journalctl"):
        out = subprocess.run(
            ["journalctl", "-u", f"{unit}.service", "-n", str(LOG_TAIL_LINES), "--no-pager", "-o", "cat"],
            capture_output=True,
            text=True,
            check=False,
        )
        lines = out.stdout.splitlines()
    else:
        try:
            with open(paths.log_file, errors="replace") as f:
                lines = f.read().splitlines()[-LOG_TAIL_LINES:]
        except OSError:
            pass
    return "\n".join(lines) if lines else "(no log output)"


def systemd_is_init() -> bool:
    try:
        with open("/proc/1/comm") as f:
            return f.read().strip() == "systemd"
    except OSError:
        return False


def _unit_name(paths: Paths) -> tuple[str, bool]:
    """(unit, installed): the installed nsproxyd.service when it runs this config, else a transient one.

    A transient unit for another runtime dir gets its own name, so instances do not collide.
    """
    out = subprocess.run(
        ["systemctl", "show", "-p", "LoadState", "-p", "ExecStart", f"{UNIT}.service"],
        capture_output=True,
        text=True,
        check=False,
    )
    props = dict(line.partition("=")[::2] for line in out.stdout.splitlines())
    if props.get("LoadState") == "loaded" and paths.config in props.get("ExecStart", ""):
        return UNIT, True
    if paths.runtime_dir == _DEFAULT_RUNTIME_DIR:
        return UNIT, False
    return f"{UNIT}-{hashlib.sha256(paths.runtime_dir.encode()).hexdigest()[:8]}", False


def _unit_failed(unit: str) -> bool:
    out = subprocess.run(["systemctl", "is-failed", "--quiet", f"{unit}.service"], check=False)
    return out.returncode == 0


def _daemon_argv(paths: Paths) -> list[str]:
    return [
        sys.executable,
        "-m",
        "nsproxy_appliance.daemon.main",
        "--config",
        paths.config,
        "--pidfile",
        paths.pidfile,
    ]


def _launch(paths: Paths) -> tuple[int | None, str | None]:
    """Start the daemon; (pid of a detached child or None, systemd unit or None)."""
    os.makedirs(paths.runtime_dir, mode=0o755, exist_ok=True)
    os.makedirs(os.path.dirname(paths.log_file), mode=0o755, exist_ok=True)
    if systemd_is_init():
        unit, installed = _unit_name(paths)
        if installed:
            cmd = ["systemctl", "start", f"{unit}.service"]
        else:
            cmd = ["systemd-run", "--unit", unit, "--collect", "--quiet", "-p", "KillMode=mixed", *_daemon_argv(paths)]
        out = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if out.returncode != 0:
            raise DaemonError(f"{' '.join(cmd[:3])} failed: {out.stderr.strip() or out.stdout.strip()}")
        return None, unit
    with open(paths.log_file, "ab") as log:
        child = subprocess.Popen(
            _daemon_argv(paths),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            close_fds=True,
            cwd="/",
        )
    _children[child.pid] = child
    return child.pid, None


def _wait_for(paths: Paths, generation: str, deadline: float, pid: int | None, unit: str | None) -> None:
    """Poll /readyz until `generation` is active and nothing is draining, or raise with the reason."""
    last: dict[str, Any] | None = None
    polls = 0
    while True:
        polls += 1
        if unit is not None and polls % UNIT_CHECK_EVERY == 0 and _unit_failed(unit):
            raise DaemonError(f"unit {unit}.service failed; last log lines:\n{_log_tail(paths, unit)}")
        if pid is not None and not is_nsproxyd(pid):
            raise DaemonError(
                f"nsproxyd (pid {pid}) {_describe_exit(pid)} before serving generation {generation}; "
                f"last log lines:\n{_log_tail(paths, unit)}"
            )
        last = _readiness(paths, timeout=max(0.1, min(STATUS_TIMEOUT, deadline - time.monotonic())))
        if last and last.get("ready") and last.get("generation") == generation and not last.get("draining"):
            return
        if time.monotonic() >= deadline:
            seen = f"it reports generation {last.get('generation')}" if last else "its admin API did not answer"
            raise DaemonError(
                f"nsproxyd did not report generation {generation} active in time ({seen}); "
                f"last log lines:\n{_log_tail(paths, unit)}"
            )
        time.sleep(POLL_INTERVAL)


def _needs_retry(paths: Paths) -> bool:
    """Same config, but a tenant failed or its namespace was re-created since its listeners were made.

    The applier may have just re-created a vanished namespace under the same name (same config,
    same generation): the daemon only notices on a reload, so ask for one.
    """
    try:
        _, body = admin_request(paths, "GET", "/tenants", STATUS_TIMEOUT)
    except (OSError, ValueError):
        return True
    for t in body.get("tenants", []) if isinstance(body, dict) else []:
        if t.get("state") == "draining":  # removed from the config, on its way out
            continue
        if t.get("state") == "failed":
            return True
        seen = t.get("netns", {}).get("identity")
        try:
            st = os.stat(t["netns"]["path"])
        except (OSError, KeyError, TypeError):
            return True
        if not seen or (seen.get("dev"), seen.get("ino")) != (st.st_dev, st.st_ino):
            return True
    return False


def _drain_timeout(paths: Paths) -> float:
    try:
        with open(paths.config) as f:
            return float(json.load(f)["daemon"]["drain_timeout"])
    except (OSError, ValueError, KeyError, TypeError):
        return 30.0


def _reload(paths: Paths, pid: int, generation: str, deadline: float) -> None:
    """POST /reload (answers after removed tenants drained); SIGHUP when the admin API is unreachable."""
    try:
        code, body = admin_request(paths, "POST", "/reload", timeout=max(1.0, deadline - time.monotonic()))
    except OSError:
        os.kill(pid, signal.SIGHUP)
        _wait_for(paths, generation, deadline, pid, None)
        return
    if code != 200 or not isinstance(body, dict) or not body.get("ok"):
        reason = body.get("error") if isinstance(body, dict) else body
        raise DaemonError(f"nsproxyd rejected the reload: {reason}")
    if body.get("generation") != generation:
        raise DaemonError(
            f"nsproxyd reloaded generation {body.get('generation')}, expected {generation} "
            f"(was {paths.config} rewritten meanwhile?)"
        )


def ensure_daemon(paths: Paths, generation: str, *, timeout: float = 30.0) -> DaemonAction:
    """Make the daemon serve config generation `generation` from paths.config.

    Launch if not running, reload if it serves another generation, nothing if it already serves
    this one. Returns only once the daemon reports `generation` active and listeners of removed
    tenants are closed (so their namespaces can be deleted). Raises DaemonError with the reason.
    """
    # A reload waits for removed tenants to drain, so allow the configured drain time on top.
    deadline = time.monotonic() + max(timeout, _drain_timeout(paths) + 5.0)
    current = status(paths)
    if current.running and current.pid is not None:
        if current.generation == generation and not _needs_retry(paths):
            _wait_for(paths, generation, deadline, current.pid, None)  # returns at once unless draining
            return "unchanged"
        _reload(paths, current.pid, generation, deadline)
        return "reloaded"
    pid, unit = _launch(paths)
    _wait_for(paths, generation, time.monotonic() + timeout, pid, unit)
    return "launched"


def stop(paths: Paths, timeout: float = 30.0) -> bool:
    """SIGTERM the daemon and wait for it to exit; SIGKILL after `timeout`. False if it had to be killed."""
    pid = _read_pid(paths.pidfile)
    if pid is None or not is_nsproxyd(pid):
        return True
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        child = _children.get(pid)
        if child is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                child.wait(timeout=POLL_INTERVAL)
        if not is_nsproxyd(pid):
            return True
        time.sleep(POLL_INTERVAL)
    if is_nsproxyd(pid):  # re-checked: never signal a recycled pid
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    child = _children.pop(pid, None)
    if child is not None:
        child.wait()
    return False
