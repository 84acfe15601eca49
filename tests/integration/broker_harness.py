"""Shared helpers for the socket broker and least-privilege tests (test_broker_*.py, test_privilege_*.py).

Everything is real: the broker and the daemon are their own processes, the daemon runs as a real
system user without capabilities, sockets are made in namespaces the test created. The runtime and
state dirs live under a directory the daemon's user can reach (pytest's tmp_path is root-only).
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from support import wait_until

from nsproxy_appliance import broker_control, daemon_control, netns
from nsproxy_appliance.broker import protocol
from nsproxy_appliance.runtime_config import Paths

SERVICE_USER = "nsproxy"


# ---- the daemon's user and directories it can reach ---------------------------------------------


@pytest.fixture(scope="session")
def service_user() -> Iterator[pwd.struct_passwd]:
    """The system user `nsproxy` (as the role creates it); made for the session when missing."""
    created = False
    try:
        entry = pwd.getpwnam(SERVICE_USER)
    except KeyError:
        subprocess.run(
            ["useradd", "--system", "--no-create-home", "--home-dir", "/nonexistent", "--shell", "/usr/sbin/nologin",
             "--user-group", SERVICE_USER],
            check=True, capture_output=True, text=True,
        )  # fmt: skip
        created = True
        entry = pwd.getpwnam(SERVICE_USER)
    yield entry
    if created:
        subprocess.run(["userdel", SERVICE_USER], check=False, capture_output=True)


@pytest.fixture
def open_paths() -> Iterator[Paths]:
    """State and runtime dirs under a fresh /tmp directory every user may traverse (mode 0755)."""
    root = tempfile.mkdtemp(prefix="nsproxy-lp-", dir="/tmp")
    os.chmod(root, 0o755)
    paths = Paths(state_dir=os.path.join(root, "state"), runtime_dir=os.path.join(root, "run"))
    os.makedirs(paths.state_dir)
    os.makedirs(paths.runtime_dir)
    yield paths
    shutil.rmtree(root, ignore_errors=True)


def proc_status(pid: int) -> dict[str, str]:
    with open(f"/proc/{pid}/status") as f:
        return {k: v.strip() for k, _, v in (line.partition(":") for line in f)}


def capabilities(pid: int) -> dict[str, int]:
    status = proc_status(pid)
    return {name: int(status[name], 16) for name in ("CapEff", "CapPrm", "CapInh", "CapBnd", "CapAmb")}


# ---- a broker process ---------------------------------------------------------------------------


@dataclass
class BrokerProc:
    paths: Paths
    proc: subprocess.Popen[bytes]
    log: str

    @property
    def pid(self) -> int:
        return self.proc.pid

    def request(self, message: dict[str, Any], fds: list[int] | None = None) -> tuple[dict[str, Any], list[int]]:
        with BlockingClient(self.paths.broker_socket) as client:
            return client.request(message, fds)

    def held(self) -> list[dict[str, Any]]:
        reply, _ = self.request({"op": "status"})
        return reply["held"]

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode

    def log_text(self) -> str:
        try:
            with open(self.log, errors="replace") as f:
                return f.read()
        except FileNotFoundError:
            return ""


def start_broker(
    paths: Paths, *extra: str, env: dict[str, str] | None = None, python: str = sys.executable
) -> BrokerProc:
    """nsproxy-broker for `paths` (its log in the state dir); returns once it answers."""
    os.makedirs(paths.state_dir, exist_ok=True)
    log = paths.broker_log_file
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            [python, "-m", "nsproxy_appliance.broker.server", "--runtime-dir", paths.runtime_dir,
             "--pidfile", paths.broker_pidfile, *extra],
            # cwd /: `python -m` puts the cwd first on sys.path, and the checkout's package (and
            # egg-info) there would shadow the release a test runs from PYTHONPATH
            stdout=out, stderr=out, stdin=subprocess.DEVNULL, env=env, cwd="/",
        )  # fmt: skip
    broker = BrokerProc(paths, proc, log)
    try:
        wait_until(lambda: broker_control.answers(paths) or proc.poll() is not None, what="the broker answering")
    except AssertionError:
        broker.stop()
        raise
    if proc.poll() is not None:
        raise AssertionError(f"nsproxy-broker exited with {proc.returncode}:\n{broker.log_text()}")
    return broker


@pytest.fixture
def brokers() -> Iterator[list[BrokerProc]]:
    """Append started brokers; they are stopped after the test, pass or fail."""
    started: list[BrokerProc] = []
    yield started
    for broker in started:
        broker.stop()


class BlockingClient:
    """The broker protocol from a test: one request at a time, blocking."""

    def __init__(self, path: str) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.sock.settimeout(10)
        self.sock.connect(path)
        self._id = 0

    def request(self, message: dict[str, Any], fds: list[int] | None = None) -> tuple[dict[str, Any], list[int]]:
        self._id += 1
        protocol.send(self.sock, {**message, "id": self._id}, fds)
        got = protocol.receive(self.sock)
        assert got is not None, "the broker closed the connection"
        reply, fds_back = got
        assert reply.get("id") == self._id
        return reply, fds_back

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> BlockingClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def sockets_of(fds: list[int]) -> list[socket.socket]:
    return [socket.socket(fileno=fd) for fd in fds]


# ---- servers and load inside namespaces ---------------------------------------------------------


class EchoInNetns:
    """A tiny HTTP server listening inside a namespace (a `from: tenant` upstream): answers every
    request with 200 and the tenant header it got."""

    def __init__(self, ns_path: str, host: str = "127.0.0.1", port: int = 9000) -> None:
        self.sock = netns.socket_in(ns_path, socket.AF_INET)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((host, port))
        self.sock.listen(128)
        self.requests = 0
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._answer, args=(conn,), daemon=True).start()

    def _answer(self, conn: socket.socket) -> None:
        with conn:
            buf = b""
            while True:
                while b"\r\n\r\n" not in buf:
                    chunk = conn.recv(65536)
                    if not chunk:
                        return
                    buf += chunk
                head, _, buf = buf.partition(b"\r\n\r\n")
                tenant = b""
                for line in head.split(b"\r\n")[1:]:
                    name, _, value = line.partition(b":")
                    if name.strip().lower() == b"x-tenant-id":
                        tenant = value.strip()
                self.requests += 1
                body = b"in-netns " + tenant
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))

    def close(self) -> None:
        self.sock.close()


@dataclass
class LoadResult:
    ok: int = 0
    failed: list[str] = field(default_factory=list)

    def add_failure(self, why: str) -> None:
        if len(self.failed) < 50:
            self.failed.append(why)
        else:
            self.failed.append("...")


class Load:
    """Continuous requests from inside tenant namespaces, one new connection per request (so every
    refused connection and every failed request is counted), from `workers` threads."""

    def __init__(self, targets: list[tuple[str, str, int, Callable[[bytes], bool]]], workers: int = 4) -> None:
        self.targets = targets  # (netns path, host, port, check(body))
        self.result = LoadResult()
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._run, args=(i,), daemon=True) for i in range(workers)]

    def __enter__(self) -> Load:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=30)

    def _one(self, ns_path: str, host: str, port: int, check: Callable[[bytes], bool]) -> str | None:
        sock = netns.socket_in(ns_path, socket.AF_INET)
        sock.settimeout(20)
        try:
            sock.connect((host, port))
            sock.sendall(b"GET /load HTTP/1.1\r\nHost: load\r\nConnection: close\r\n\r\n")
            data = b""
            while chunk := sock.recv(65536):
                data += chunk
        except OSError as e:
            return f"{ns_path} {host}:{port}: {type(e).__name__}: {e}"
        finally:
            sock.close()
        head, _, body = data.partition(b"\r\n\r\n")
        if not head.startswith(b"HTTP/1.1 200 "):
            return f"{ns_path}: {head[:60]!r}"
        if not check(body):
            return f"{ns_path}: unexpected body {body[:80]!r}"
        return None

    def _run(self, index: int) -> None:
        n = index
        while not self._stop.is_set():
            target = self.targets[n % len(self.targets)]
            n += 1
            why = self._one(*target)
            with self._lock:
                if why is None:
                    self.result.ok += 1
                else:
                    self.result.add_failure(why)

    def served(self) -> int:
        with self._lock:
            return self.result.ok


def stop_everything(paths: Paths) -> None:
    """Stop the daemon and the broker of `paths` (test teardown)."""
    with contextlib.suppress(Exception):
        daemon_control.stop(paths, timeout=15)
    daemon_control.SUPERVISOR.kill_children()


SYSTEM_PYTHON = "/usr/bin/python3"


@pytest.fixture(scope="session")
def service_python() -> Iterator[str]:
    """An interpreter the daemon's user can read after dropping root: a venv of the system Python
    with this checkout's packages. (This venv's interpreter may live under /root, which only root
    can read: a daemon started from it could not import a module after dropping its privileges.)"""
    version = subprocess.run(
        [SYSTEM_PYTHON, "-c", "import sys; print(sys.version_info[:2] == (3, 11))"], capture_output=True, text=True
    )
    assert version.stdout.strip() == "True", f"{SYSTEM_PYTHON} must be Python 3.11 like this venv: {version}"
    root = tempfile.mkdtemp(prefix="nsproxy-lp-python-", dir="/tmp")
    os.chmod(root, 0o755)
    subprocess.run([SYSTEM_PYTHON, "-m", "venv", "--without-pip", root], check=True)
    site_packages = next(p for p in sys.path if p.endswith("site-packages") and p.startswith(sys.prefix))
    with open(os.path.join(root, "lib", "python3.11", "site-packages", "nsproxy-test.pth"), "w") as f:
        f.write(f"import site; site.addsitedir({site_packages!r})\n")
    yield os.path.join(root, "bin", "python3")
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def service_launcher(monkeypatch, open_paths, service_user, service_python) -> Iterator[Paths]:
    """ensure_daemon launches the broker (root) and the daemon as the nsproxy user, detached, for
    `open_paths`, both with `service_python`; both are stopped after the test."""
    monkeypatch.setattr(daemon_control, "systemd_is_init", lambda: False)
    monkeypatch.setattr(sys, "executable", service_python)
    monkeypatch.setenv(broker_control.ENV_DAEMON_USER, service_user.pw_name)
    yield open_paths
    stop_everything(open_paths)
