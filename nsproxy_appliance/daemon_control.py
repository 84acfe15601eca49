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
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import Any, Literal

import orjson

from . import atomicfile, broker_control, procinfo
from .errors import DaemonError, StateFileError
from .identity import NetnsIdentity
from .kernel.observed import ServedTenant
from .paths import DAEMON_TIMEOUT, DEFAULT_RUNTIME_DIR, DRAIN_TIMEOUT, STOP_TIMEOUT, Paths

__all__ = ["SUPERVISOR", "DaemonError", "DaemonStatus", "DaemonSupervisor", "ensure_daemon", "status", "stop"]

DaemonAction = Literal["launched", "reloaded", "unchanged"]

UNIT = "nsproxyd"
STATUS_TIMEOUT = 2.0  # seconds for one admin request in status()
POLL_INTERVAL = 0.02
LOG_TAIL_LINES = 15
UNIT_CHECK_EVERY = 25  # polls between `systemctl is-failed` checks while waiting


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
        try:  # orjson: the daemon is unprivileged, and json raised RecursionError for deep nesting
            return resp.status, orjson.loads(body)
        except orjson.JSONDecodeError as e:
            raise OSError(f"admin API {method} {path}: unreadable JSON ({e})") from None
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


def systemd_is_init() -> bool:
    try:
        with open("/proc/1/comm") as f:
            return f.read().strip() == "systemd"
    except OSError:
        return False


UNIT_CHOICE = ("LoadState", "ExecStart")  # the properties of nsproxyd.service _unit_name decides by


def unit_properties(unit: str, names: tuple[str, ...]) -> dict[str, str]:
    """`systemctl show` of the properties `names` of `unit`, by name."""
    argv = ["systemctl", "show", *(arg for name in names for arg in ("-p", name)), unit]
    out = subprocess.run(argv, capture_output=True, text=True, check=False)
    return dict(line.partition("=")[::2] for line in out.stdout.splitlines())


def _unit_name(paths: Paths, props: dict[str, str] | None = None) -> tuple[str, bool]:
    """(unit, installed): the installed nsproxyd.service when it runs this config, else a transient one.

    A transient unit for another runtime dir gets its own name, so instances do not collide.
    `props`: nsproxyd.service's UNIT_CHOICE properties when the caller asked systemd already.
    """
    if props is None:
        props = unit_properties(f"{UNIT}.service", UNIT_CHOICE)
    if props.get("LoadState") == "loaded" and paths.config in props.get("ExecStart", ""):
        return UNIT, True
    if paths.runtime_dir == DEFAULT_RUNTIME_DIR:
        return UNIT, False
    return f"{UNIT}-{hashlib.sha256(paths.runtime_dir.encode()).hexdigest()[:8]}", False


def _unit_failed(unit: str) -> bool:
    out = subprocess.run(["systemctl", "is-failed", "--quiet", f"{unit}.service"], check=False)
    return out.returncode == 0


def daemon_argv(paths: Paths) -> list[str]:
    """The daemon's command line: the applier's own Python, so both run the same code."""
    return [
        sys.executable,
        "-m",
        "nsproxy_appliance.daemon.main",
        "--config",
        paths.config,
        "--pidfile",
        paths.pidfile,
    ]


def log_tail(paths: Paths, unit: str | None = None) -> str:
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


def _drain_timeout(paths: Paths) -> float:
    try:
        with open(paths.config, "rb") as f:  # orjson: json raises RecursionError for deep nesting
            return float(orjson.loads(f.read())["daemon"]["drain_timeout"])
    except (OSError, ValueError, KeyError, TypeError):
        return DRAIN_TIMEOUT


class DaemonSupervisor:
    """Launches, watches, reloads and stops nsproxyd; remembers the daemons it started detached.

    Those children are kept so they can be reaped (no zombie looks alive) and their exit status
    reported. One supervisor per applier process (SUPERVISOR); tests may make their own.
    """

    def __init__(self) -> None:
        self.children: dict[int, subprocess.Popen[bytes]] = {}
        self._exit_codes: dict[int, int] = {}  # exit status of reaped children, for error messages

    # -- children --------------------------------------------------------------------------------

    def _reap(self, pid: int) -> None:
        child = self.children.get(pid)
        if child is not None and child.poll() is not None:
            self._exit_codes[pid] = child.returncode
            del self.children[pid]

    def _describe_exit(self, pid: int) -> str:
        child = self.children.pop(pid, None)
        if child is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._exit_codes[pid] = child.wait(timeout=5.0)
        code = self._exit_codes.get(pid)
        if code is None:
            return "exited"
        return f"was killed by signal {-code}" if code < 0 else f"exited with status {code}"

    def kill_children(self) -> None:
        """SIGKILL the process group of every daemon this supervisor started that still runs."""
        for pid, child in list(self.children.items()):
            if child.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(pid, signal.SIGKILL)
                child.wait(timeout=10)
            self.children.pop(pid, None)

    def is_nsproxyd(self, pid: int) -> bool:
        """Whether `pid` is a live (not zombie) nsproxyd process."""
        self._reap(pid)
        alive = procinfo.nsproxyd_alive(pid)
        return pid in self.children if alive is None else alive  # unreadable: trust it only if we started it

    # -- status ----------------------------------------------------------------------------------

    def status(self, paths: Paths) -> DaemonStatus:
        """What is running now, without side effects (used by plan and --check)."""
        pid = _read_pid(paths.pidfile)
        if pid is None or not self.is_nsproxyd(pid):
            return DaemonStatus(running=False)
        ready = _readiness(paths)
        if not ready:
            return DaemonStatus(running=True, pid=pid)
        return DaemonStatus(
            running=True, pid=pid, generation=ready.get("generation"), failed=tuple(ready.get("failed", ()))
        )

    # -- launching and reloading -------------------------------------------------------------------

    def launch(self, paths: Paths, timeout: float = DAEMON_TIMEOUT) -> tuple[int | None, str | None]:
        """Start the daemon; (pid of a detached child or None, systemd unit or None).

        The socket broker first (broker_control: the daemon gets every socket from it), unless the
        installed units do that, waiting up to `timeout` s for it to answer (the caller's budget for
        the whole start: a slow machine's broker is as slow to start as its daemon); the daemon as
        NSPROXY_DAEMON_USER when that is set.
        """
        user = broker_control.daemon_user()
        broker_control.prepare_runtime_dir(paths, user)
        atomicfile.ensure_dir(os.path.dirname(paths.log_file))
        brokered = ["--broker", paths.broker_socket, *(["--user", user] if user else [])]
        if systemd_is_init():
            unit, installed = _unit_name(paths)
            if installed:
                cmd = ["systemctl", "start", f"{unit}.service"]  # its unit pulls nsproxy-broker.service in
            else:
                broker_control.ensure_transient_unit(paths, user, timeout)
                cmd = [
                    "systemd-run",
                    "--unit",
                    unit,
                    "--collect",
                    "--quiet",
                    "-p",
                    "KillMode=mixed",
                    *daemon_argv(paths),
                    *brokered,
                ]
            out = subprocess.run(cmd, capture_output=True, text=True, check=False)
            if out.returncode != 0:
                raise DaemonError(f"{' '.join(cmd[:3])} failed: {out.stderr.strip() or out.stdout.strip()}")
            return None, unit
        try:
            log = open(paths.log_file, "ab")  # noqa: SIM115  # closed below, once the child has it
        except OSError as e:
            raise StateFileError(paths.log_file, "open the daemon's log", e) from None
        try:
            broker = broker_control.ensure_detached(paths, user, timeout)
        except BaseException:
            log.close()
            raise
        if broker is not None:
            self.children[broker.pid] = broker  # reaped and, in tests, killed like the daemon
        with log:
            # Its own log and its standard output (an access log of "stdout") in two files, which
            # it reopens by name on SIGUSR1; stderr is the log file already for what fails first.
            child = subprocess.Popen(
                [*daemon_argv(paths), "--log-file", paths.log_file, "--stdout-file", paths.access_log_file, *brokered],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=log,
                start_new_session=True,
                close_fds=True,
                cwd="/",
            )
        self.children[child.pid] = child
        return child.pid, None

    def _wait_for(self, paths: Paths, generation: str, deadline: float, pid: int | None, unit: str | None) -> None:
        """Poll /readyz until `generation` is active and nothing is draining, or raise with the reason."""
        last: dict[str, Any] | None = None
        polls = 0
        while True:
            polls += 1
            if unit is not None and polls % UNIT_CHECK_EVERY == 0 and _unit_failed(unit):
                raise DaemonError(f"unit {unit}.service failed; last log lines:\n{log_tail(paths, unit)}")
            if pid is not None and not self.is_nsproxyd(pid):
                raise DaemonError(
                    f"nsproxyd (pid {pid}) {self._describe_exit(pid)} before serving generation {generation}; "
                    f"last log lines:\n{log_tail(paths, unit)}"
                )
            last = _readiness(paths, timeout=max(0.1, min(STATUS_TIMEOUT, deadline - time.monotonic())))
            if last and _applied(last) and last.get("generation") == generation and not last.get("draining"):
                return
            if time.monotonic() >= deadline:
                seen = f"it reports generation {last.get('generation')}" if last else "its admin API did not answer"
                raise DaemonError(
                    f"nsproxyd did not report generation {generation} active in time ({seen}); "
                    f"last log lines:\n{log_tail(paths, unit)}"
                )
            time.sleep(POLL_INTERVAL)

    def _reload(self, paths: Paths, pid: int, generation: str, deadline: float) -> None:
        """POST /reload (answers after removed tenants drained); SIGHUP when the admin API is unreachable."""
        try:
            code, body = admin_request(paths, "POST", "/reload", timeout=max(1.0, deadline - time.monotonic()))
        except OSError:
            os.kill(pid, signal.SIGHUP)
            self._wait_for(paths, generation, deadline, pid, None)
            return
        if code != 200 or not isinstance(body, dict) or not body.get("ok"):
            reason = body.get("error") if isinstance(body, dict) else body
            raise DaemonError(f"nsproxyd rejected the reload: {reason}")
        if body.get("generation") != generation:
            raise DaemonError(
                f"nsproxyd reloaded generation {body.get('generation')}, expected {generation} "
                f"(was {paths.config} rewritten meanwhile?)"
            )

    def ensure_daemon(self, paths: Paths, generation: str, *, timeout: float = DAEMON_TIMEOUT) -> DaemonAction:
        """Make the daemon serve config generation `generation` from paths.config.

        Launch if not running, reload if it serves another generation, nothing if it already serves
        this one. Returns only once the daemon reports `generation` active and listeners of removed
        tenants are closed (so their namespaces can be deleted). Raises DaemonError with the reason.
        """
        # A reload waits for removed tenants to drain, so allow the configured drain time on top.
        deadline = time.monotonic() + max(timeout, _drain_timeout(paths) + 5.0)
        current = self.status(paths)
        if current.running and current.pid is not None:
            if current.generation == generation and not _needs_retry(paths):
                self._wait_for(paths, generation, deadline, current.pid, None)  # returns at once unless draining
                return "unchanged"
            self._reload(paths, current.pid, generation, deadline)
            return "reloaded"
        start_deadline = time.monotonic() + timeout  # `timeout` bounds the whole start, broker included
        pid, unit = self.launch(paths, timeout)
        self._wait_for(paths, generation, start_deadline, pid, unit)
        return "launched"

    def stop(self, paths: Paths, timeout: float = STOP_TIMEOUT, *, keep_broker: bool = False) -> bool:
        """SIGTERM the daemon and wait for it to exit (SIGKILL after `timeout`), then the socket broker
        (it closes the listening sockets it kept: clients are refused from then on) unless
        `keep_broker` (a restart: the next daemon gets the same sockets). False if one had to be killed."""
        stopped = self._stop_daemon(paths, timeout)
        if keep_broker:
            return stopped
        broker_pid = broker_control.running_pid(paths)
        broker_stopped = broker_control.stop(paths, timeout)
        child = self.children.pop(broker_pid, None) if broker_pid is not None else None
        if child is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                child.wait(timeout=5)
        return stopped and broker_stopped

    def _stop_daemon(self, paths: Paths, timeout: float) -> bool:
        pid = _read_pid(paths.pidfile)
        if pid is None or not self.is_nsproxyd(pid):
            return True
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            child = self.children.get(pid)
            if child is not None:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    child.wait(timeout=POLL_INTERVAL)
            if not self.is_nsproxyd(pid):
                return True
            time.sleep(POLL_INTERVAL)
        if self.is_nsproxyd(pid):  # re-checked: never signal a recycled pid
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        child = self.children.pop(pid, None)
        if child is not None:
            child.wait()
        return False


def served_tenants(paths: Paths, timeout: float = STATUS_TIMEOUT) -> dict[str, ServedTenant] | None:
    """The tenants the daemon serves, from /tenants (draining ones left out); None if it does not answer."""
    try:
        _, body = admin_request(paths, "GET", "/tenants", timeout)
    except (OSError, ValueError):
        return None
    if not isinstance(body, dict) or not isinstance(body.get("tenants"), list):
        return None
    out = {}
    for t in body["tenants"]:
        if not isinstance(t, dict) or t.get("state") == "draining":
            continue
        netns = t.get("netns")
        identity = NetnsIdentity.from_json(netns.get("identity")) if isinstance(netns, dict) else None
        out[str(t.get("name"))] = ServedTenant(str(t.get("state")), identity, t.get("last_error"))
    return out


def await_tenants(paths: Paths, expected: dict[str, NetnsIdentity | None], timeout: float) -> dict[str, str]:
    """Wait until each tenant of `expected` serves in the namespace with that identity, or failed
    in it; returns the ones that do not serve, with why (empty: all serve).

    A tenant failed in another namespace than the kernel's (the daemon has not seen a namespace
    re-created just now yet) is waited for: the daemon rebinds by itself within a second.
    """
    deadline = time.monotonic() + timeout
    while True:
        served = served_tenants(paths, timeout=max(0.1, min(STATUS_TIMEOUT, deadline - time.monotonic())))
        pending: dict[str, str] = {}
        failed: dict[str, str] = {}
        for name, identity in expected.items():
            seen = (served or {}).get(name)
            if seen is None:
                pending[name] = "the daemon does not report it" if served is not None else "the daemon does not answer"
                continue
            here = identity is not None and identity.same(seen.identity)
            if seen.state == "serving" and here:
                continue
            if seen.state == "serving":
                pending[name] = f"serving in namespace {seen.identity}, not in {identity}"
            elif seen.state == "failed" and here:
                failed[name] = seen.error or "failed"
            else:
                pending[name] = f"{seen.state}: {seen.error}" if seen.error else seen.state
        if not pending or time.monotonic() >= deadline:
            return {**failed, **{name: f"{why} (after {timeout:g} s)" for name, why in pending.items()}}
        time.sleep(POLL_INTERVAL * 5)


def _applied(ready: dict[str, Any]) -> bool:
    """The daemon applied its config (/readyz "applied"; older daemons only said "ready")."""
    return bool(ready.get("applied", ready.get("ready")))


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


SUPERVISOR = DaemonSupervisor()  # this process's; the module functions below are its methods
status = SUPERVISOR.status
ensure_daemon = SUPERVISOR.ensure_daemon
stop = SUPERVISOR.stop
is_nsproxyd = SUPERVISOR.is_nsproxyd
