"""The real nsproxyd for the hostile suite: launched as its own process (optionally under an
RLIMIT_NOFILE the test chooses), with named namespaces the suite creates and always deletes.

Also the process measurements the exhaustion tests and the bench read from /proc (fd count, RSS,
the soft/hard NOFILE limits) and helpers that open many client sockets inside a namespace.
"""

from __future__ import annotations

import contextlib
import os
import resource
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from nsproxy_appliance import daemon_control, netns
from nsproxy_appliance.runtime_config import Paths

READY_TIMEOUT = 30.0


def daemon_command(paths: Paths) -> list[str]:
    return [sys.executable, "-m", "nsproxy_appliance.daemon.main", "--config", paths.config, "--pidfile", paths.pidfile]


@dataclass
class Daemon:
    proc: subprocess.Popen[bytes]
    paths: Paths
    log_path: str

    @property
    def pid(self) -> int:
        return self.proc.pid

    def fds(self) -> int:
        return len(os.listdir(f"/proc/{self.pid}/fd"))

    def rss_kb(self) -> int:
        with open(f"/proc/{self.pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
        return 0

    def nofile(self) -> tuple[int, int]:
        """(soft, hard) RLIMIT_NOFILE of the running daemon."""
        with open(f"/proc/{self.pid}/limits") as f:
            for line in f:
                if line.startswith("Max open files"):
                    soft, hard = line.split()[3:5]
                    return int(soft), int(hard)
        raise AssertionError("no 'Max open files' in /proc/PID/limits")

    def admin(self, method: str, path: str, timeout: float = 10.0) -> tuple[int, Any]:
        return daemon_control.admin_request(self.paths, method, path, timeout)

    def tenant_counters(self, name: str) -> dict[str, Any]:
        _, body = self.admin("GET", "/tenants")
        for t in body["tenants"]:
            if t["name"] == name:
                return t["counters"]
        raise AssertionError(f"no tenant {name} in /tenants")

    def log(self) -> str:
        try:
            with open(self.log_path, errors="replace") as f:
                return f.read()
        except FileNotFoundError:
            return ""

    def alive(self) -> bool:
        return self.proc.poll() is None


@contextlib.contextmanager
def running_daemon(paths: Paths, generation: str, *, nofile: tuple[int, int] | None = None) -> Iterator[Daemon]:
    """nsproxyd serving the config already written at paths.config; stopped (or killed) afterwards.

    `nofile` = (soft, hard) RLIMIT_NOFILE set in the child before exec, as a service manager would.
    """
    os.makedirs(paths.runtime_dir, exist_ok=True)
    os.makedirs(paths.state_dir, exist_ok=True)
    log_path = os.path.join(paths.state_dir, "nsproxyd-hostile.log")

    def limit() -> None:
        if nofile is not None:
            resource.setrlimit(resource.RLIMIT_NOFILE, nofile)

    with open(log_path, "ab") as log:
        proc = subprocess.Popen(
            [*daemon_command(paths), "--log-file", log_path],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=limit,
            cwd="/",
        )
    daemon = Daemon(proc, paths, log_path)
    try:
        _wait_ready(daemon, generation)
        yield daemon
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def _wait_ready(daemon: Daemon, generation: str) -> None:
    deadline = time.monotonic() + READY_TIMEOUT
    last: Any = None
    while time.monotonic() < deadline:
        if not daemon.alive():
            raise AssertionError(f"nsproxyd exited with {daemon.proc.returncode}; log:\n{daemon.log()[-3000:]}")
        try:
            _, last = daemon.admin("GET", "/readyz", timeout=2.0)
        except OSError:
            last = None
        if isinstance(last, dict) and last.get("ready") and last.get("generation") == generation:
            return
        time.sleep(0.02)
    raise AssertionError(f"nsproxyd not ready with generation {generation}: {last}; log:\n{daemon.log()[-3000:]}")


def poll(predicate: Callable[[], Any], timeout: float, what: str, interval: float = 0.05) -> Any:
    """Poll with a deadline; the last value is in the failure message."""
    deadline = time.monotonic() + timeout
    value = None
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what} (last: {value!r})")


# ---- namespaces the suite owns --------------------------------------------------------------


@contextlib.contextmanager
def named_netns(prefix: str) -> Iterator[tuple[str, str]]:
    """A fresh named netns with lo up; yields (name, path); deleted afterwards, pass or fail."""
    from pyroute2 import IPRoute

    name = f"th{secrets.token_hex(3)}-{prefix}"[:15]
    netns.create_named(name)
    try:
        path = netns.named_path(name)
        with netns.entered(path):
            ipr = IPRoute()
        with ipr:
            ipr.link("set", index=ipr.link_lookup(ifname="lo")[0], state="up")
        yield name, path
    finally:
        netns.delete_named(name)


# ---- many client sockets --------------------------------------------------------------------


def open_connections(ns_path: str, host: str, port: int, count: int, timeout: float = 10.0) -> list[socket.socket]:
    """`count` TCP connections made from inside the netns (sockets created there, connected here)."""
    with netns.entered(ns_path):
        socks = [socket.socket(socket.AF_INET, socket.SOCK_STREAM) for _ in range(count)]
    opened = []
    try:
        for sock in socks:
            sock.settimeout(timeout)
            sock.connect((host, port))
            opened.append(sock)
    except BaseException:
        for sock in socks:
            sock.close()
        raise
    return opened


def close_all(socks: list[socket.socket]) -> None:
    for sock in socks:
        with contextlib.suppress(OSError):
            sock.close()
    socks.clear()
