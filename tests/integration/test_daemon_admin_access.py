"""Who can reach what of the admin API: the unix socket (root only) controls the daemon; the optional
TCP listener (daemon.admin_listen) is read-only — /healthz, /readyz, /metrics — so nobody who can
reach it can reload the daemon or list the tenants."""

from __future__ import annotations

import os
import shutil
import socket
import stat
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from daemon_harness import admin, tenant, write_config
from support import split_response

from nsproxy_appliance import daemon_control
from nsproxy_appliance.paths import Paths

pytestmark = pytest.mark.root


def _free_port() -> int:
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()
    return port


def _tcp(port: int, method: str, path: str) -> tuple[int, bytes]:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(f"{method} {path} HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".encode())
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    response, _ = split_response(data)
    return response.status, response.body


@pytest.fixture
def admin_tcp(daemon_launcher, make_netns, unique, echo):
    paths = daemon_launcher
    ns = unique("a")
    make_netns(ns)
    port = _free_port()
    gen = write_config(paths, [tenant("acme", ns, 8080, echo)], admin_listen=f"127.0.0.1:{port}")
    daemon_control.ensure_daemon(paths, gen, timeout=20)
    return paths, port, gen


def test_tcp_listener_serves_health_readiness_and_metrics(admin_tcp):
    _, port, gen = admin_tcp
    assert _tcp(port, "GET", "/healthz")[0] == 200
    status, body = _tcp(port, "GET", "/readyz")
    assert status == 200 and f'"generation": "{gen}"'.encode() in body
    status, body = _tcp(port, "GET", "/metrics")
    assert status == 200 and b'nsproxy_config_generation_info{generation="' in body
    out = subprocess.run(["curl", "-sS", f"http://127.0.0.1:{port}/readyz"], capture_output=True, text=True)
    assert f'"generation": "{gen}"' in out.stdout


def test_tcp_listener_refuses_tenants_and_reload(admin_tcp):
    paths, port, _ = admin_tcp
    reloads_before = admin(paths, "GET", "/metrics")[1].count('nsproxy_reloads_total{result="ok"} 0')
    status, body = _tcp(port, "POST", "/reload")
    assert status == 403 and b"unix socket only" in body
    status, body = _tcp(port, "GET", "/tenants")
    assert status == 403 and b"acme" not in body
    assert _tcp(port, "GET", "/nope")[0] == 404
    # nothing was reloaded, and the unix socket still controls everything
    assert admin(paths, "GET", "/metrics")[1].count('nsproxy_reloads_total{result="ok"} 0') == reloads_before == 1
    code, result = admin(paths, "POST", "/reload")
    assert code == 200 and result["ok"]
    assert admin(paths, "GET", "/tenants")[1]["tenants"][0]["name"] == "acme"


@pytest.fixture
def public_runtime_dir(daemon_launcher) -> Iterator[Paths]:
    """Paths whose runtime dir any user can reach (pytest's tmp_path sits under a 0700 parent)."""
    top = Path(tempfile.mkdtemp(prefix="nsproxy-admin-"))
    top.chmod(0o755)
    paths = Paths(state_dir=daemon_launcher.state_dir, runtime_dir=str(top / "run"))
    try:
        yield paths
    finally:
        daemon_control.stop(paths, timeout=15)
        shutil.rmtree(top)


def test_unix_socket_is_root_only(public_runtime_dir, make_netns, unique, echo):
    paths = public_runtime_dir
    ns = unique("a")
    make_netns(ns)
    daemon_control.ensure_daemon(paths, write_config(paths, [tenant("acme", ns, 8080, echo)]), timeout=20)
    mode = stat.S_IMODE(os.stat(paths.admin_socket).st_mode)
    assert mode == 0o600, oct(mode)
    nobody = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", sys.executable, "-c"]
    reach = "import os, sys; os.stat(sys.argv[1])"  # the directory lets anyone reach the socket...
    assert subprocess.run([*nobody, reach, paths.admin_socket], capture_output=True).returncode == 0
    connect = "import socket, sys; s = socket.socket(socket.AF_UNIX); s.connect(sys.argv[1])"
    out = subprocess.run([*nobody, connect, paths.admin_socket], capture_output=True, text=True)
    assert out.returncode != 0 and "Permission denied" in out.stderr  # ...but only root may talk to it
