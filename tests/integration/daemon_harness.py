"""Shared helpers and fixtures for the nsproxyd integration tests (test_daemon_*.py).

Everything is real: named namespaces from the make_netns fixture, the daemon as its own process
(launched through daemon_control.ensure_daemon), an echo upstream on 127.0.0.1 port 0 in the host,
and clients whose sockets are created inside the tenant namespace.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import socket
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import support
from support import REPO, Response, split_response, wait_until

from nsproxy_appliance import daemon_control, model, netns, runtime_config
from nsproxy_appliance.runtime_config import Paths

__all__ = ["Response", "wait_until"]  # re-exported for the test modules that import them from here


# ---- upstream ----------------------------------------------------------------------------------


def _load_echo_module() -> Any:
    spec = importlib.util.spec_from_file_location("echo_upstream", REPO / "examples" / "echo_upstream.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


echo_module = _load_echo_module()


class CountingEchoHandler(echo_module.EchoHandler):
    def _answer(self) -> None:
        self.server.requests += 1  # type: ignore[attr-defined]
        super()._answer()

    do_GET = do_POST = do_HEAD = _answer


@dataclass
class Echo:
    port: int
    server: Any

    @property
    def requests(self) -> int:
        return self.server.requests

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


@contextlib.contextmanager
def run_echo() -> Iterator[Echo]:
    server = echo_module.TCPServer(("127.0.0.1", 0), CountingEchoHandler)
    server.requests = 0
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield Echo(server.server_address[1], server)
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def echo() -> Iterator[Echo]:
    with run_echo() as e:
        yield e


@pytest.fixture
def echo2() -> Iterator[Echo]:
    with run_echo() as e:
        yield e


# ---- config ------------------------------------------------------------------------------------


def tenant(
    name: str,
    ns_name: str,
    port: int,
    upstream: Echo | str,
    *,
    host: str = "127.0.0.1",
    extra_listen: tuple[tuple[str, int], ...] = (),
    tenant_id: str | None = None,
    header: str = "X-Tenant-Id",
) -> model.Tenant:
    url = upstream.url if isinstance(upstream, Echo) else upstream
    return support.tenant(
        name, ns_name, port=port, host=host, extra_listen=extra_listen, upstream_url=url, tenant_id=tenant_id,
        header=header,
    )  # fmt: skip


def write_config(paths: Paths, tenants: list[model.Tenant], **daemon: Any) -> str:
    settings = {"access_log": "off", "drain_timeout": 5.0, **daemon}
    manifest = model.Manifest(version=1, tenants=tuple(tenants), daemon=model.DaemonSettings(**settings))
    config = runtime_config.render(manifest, paths)
    runtime_config.write(config, paths.config)
    return config["generation"]


# ---- the daemon --------------------------------------------------------------------------------


def daemon_argv(paths: Paths) -> list[str]:
    """The command ensure_daemon runs when systemd is not PID 1."""
    return daemon_control.daemon_argv(paths)


def child_of(pid: int) -> subprocess.Popen[bytes]:
    """The Popen of a daemon this test process launched (to kill it, or wait for its exit)."""
    return daemon_control.SUPERVISOR.children[pid]


@pytest.fixture
def daemon_launcher(monkeypatch, paths: Paths) -> Iterator[Paths]:
    """ensure_daemon launches the daemon for `paths` detached; it is stopped (or killed) after the test."""
    monkeypatch.setattr(daemon_control, "systemd_is_init", lambda: False)
    os.makedirs(paths.state_dir, exist_ok=True)
    yield paths
    if not daemon_control.stop(paths, timeout=15):
        print("daemon had to be killed; log:\n" + daemon_control.log_tail(paths))
    # Daemons this test launched that are still running (e.g. another runtime dir): only our own
    # unreaped children, so a recycled pid is never signalled.
    daemon_control.SUPERVISOR.kill_children()


def admin(paths: Paths, method: str, path: str, timeout: float = 30.0) -> tuple[int, Any]:
    return daemon_control.admin_request(paths, method, path, timeout)


def tenants_by_name(paths: Paths) -> dict[str, dict[str, Any]]:
    _, body = admin(paths, "GET", "/tenants")
    return {t["name"]: t for t in body["tenants"]}


def log_text(paths: Paths) -> str:
    try:
        return Path(paths.log_file).read_text(errors="replace")
    except FileNotFoundError:
        return ""


# ---- clients -----------------------------------------------------------------------------------


def connect_in(ns_path: str | None, host: str, port: int, timeout: float = 10.0) -> socket.socket:
    """A TCP connection made from inside the netns at `ns_path` (None: the host)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = netns.socket_in(ns_path, family)
    sock.settimeout(timeout)
    try:
        sock.connect((host, port))
    except OSError:
        sock.close()
        raise
    return sock


def read_response(sock: socket.socket) -> Response:
    """One response read until the peer closes (requests are sent with Connection: close)."""
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    return split_response(data)[0]


class KeepAliveClient:
    """One persistent HTTP/1.1 connection from inside a netns; responses must carry Content-Length."""

    def __init__(self, ns_path: str, host: str, port: int) -> None:
        self.sock = connect_in(ns_path, host, port)
        self.buf = b""

    def get(self, path: str) -> int:
        self.sock.sendall(f"GET {path} HTTP/1.1\r\nHost: ka\r\n\r\n".encode())
        while True:
            try:
                response, self.buf = split_response(self.buf)
                return response.status
            except ValueError:  # not complete yet
                chunk = self.sock.recv(65536)
                if not chunk:
                    raise ConnectionError("closed by the proxy") from None
                self.buf += chunk

    def close(self) -> None:
        self.sock.close()


def get_in(
    ns_path: str | None, host: str, port: int, path: str = "/", headers: dict[str, str] | None = None
) -> Response:
    sock = connect_in(ns_path, host, port)
    try:
        authority = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        hdrs = {"Host": authority, "Connection": "close", **(headers or {})}
        head = f"GET {path} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in hdrs.items()) + "\r\n"
        sock.sendall(head.encode())
        return read_response(sock)
    finally:
        sock.close()


def curl_in(ns_name: str, url: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["ip", "netns", "exec", ns_name, "curl", "-sS", "--max-time", "10", *args, url],
        capture_output=True,
        text=True,
        check=False,
        timeout=30,
    )


def refused_in(ns_path: str | None, host: str, port: int) -> bool:
    try:
        connect_in(ns_path, host, port, timeout=2).close()
    except ConnectionRefusedError:
        return True
    return False


def echoed_headers(resp: Response) -> dict[str, list[str]]:
    """Headers the echo upstream saw, lower-cased name -> values."""
    out: dict[str, list[str]] = {}
    for k, v in resp.json()["headers"]:
        out.setdefault(k.lower(), []).append(v)
    return out
