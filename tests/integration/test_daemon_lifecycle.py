"""nsproxyd start-up, listeners inside the tenant netns, the admin API, SIGTERM and start-up errors."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading

import pytest
from daemon_harness import (
    admin,
    child_of,
    curl_in,
    daemon_argv,
    echoed_headers,
    get_in,
    log_text,
    read_response,
    tenant,
    tenants_by_name,
    wait_until,
    write_config,
)
from support import header_values

from nsproxy_appliance import daemon_control, netns
from nsproxy_appliance.daemon.context import DURATION_BUCKETS

pytestmark = pytest.mark.root


def test_launch_serves_inside_the_tenant_netns(daemon_launcher, make_netns, unique, echo):
    paths = daemon_launcher
    ns_a, ns_b = unique("a"), unique("b")
    path_a, path_b = make_netns(ns_a), make_netns(ns_b)
    # Same address and port in both namespaces: only possible when each socket lives in its own netns.
    gen = write_config(paths, [tenant("acme", ns_a, 8080, echo), tenant("globex", ns_b, 8080, echo)])

    assert daemon_control.ensure_daemon(paths, gen, timeout=20) == "launched"

    a = get_in(path_a, "127.0.0.1", 8080, "/who")
    b = get_in(path_b, "127.0.0.1", 8080, "/who")
    assert (a.status, b.status) == (200, 200)
    assert header_values(a.json()["headers"], "X-Tenant-Id") == ["acme"]
    assert header_values(b.json()["headers"], "X-Tenant-Id") == ["globex"]
    assert a.json()["path"] == "/who"
    st = daemon_control.status(paths)
    inside = subprocess.run(
        ["ip", "netns", "exec", ns_a, "ss", "-Hltnp", "sport = :8080"], capture_output=True, text=True, check=True
    )
    assert "127.0.0.1:8080" in inside.stdout and f"pid={st.pid}," in inside.stdout
    # The daemon has no listener of its own in the host namespace (only the admin unix socket).
    host_tcp = subprocess.run(["ss", "-Hltnp"], capture_output=True, text=True, check=True)
    assert f"pid={st.pid}," not in host_tcp.stdout
    # And the daemon process itself stays in the host namespace on every thread.
    host = netns.identity("/proc/self/ns/net")
    for task in os.listdir(f"/proc/{st.pid}/task"):
        assert netns.identity(f"/proc/{st.pid}/task/{task}/ns/net") == host


def test_listener_identity_and_real_curl(daemon_launcher, make_netns, unique, echo):
    paths = daemon_launcher
    ns = unique("a")
    path = make_netns(ns)
    gen = write_config(paths, [tenant("acme", ns, 8080, echo, tenant_id="acme-42")])
    daemon_control.ensure_daemon(paths, gen, timeout=20)

    out = curl_in(ns, "http://127.0.0.1:8080/hello?x=1", "-H", "X-Tenant-Id: spoofed", "-H", "X_TENANT_ID: spoofed2")
    assert out.returncode == 0, out.stderr
    # The exact list: one copy, the tenant's own (a dict of headers would hide a forwarded duplicate).
    assert header_values(json.loads(out.stdout)["headers"], "X-Tenant-Id") == ["acme-42"]

    info = tenants_by_name(paths)["acme"]
    ident = netns.identity(path)
    with netns.entered(path):
        probe = socket.socket()
    with probe:
        cookie = netns.cookie_of(probe)  # the one identity: (dev, ino) and the namespace cookie
    assert info["netns"]["identity"] == {"dev": ident.dev, "ino": ident.ino, "cookie": cookie}
    assert info["netns"]["path"] == path
    assert info["state"] == "serving"
    assert info["last_error"] is None
    assert info["listeners"] == [{"address": "127.0.0.1:8080", "listening": True, "error": None}]
    assert info["counters"]["requests_by_class"]["2xx"] >= 1


def test_admin_endpoints(daemon_launcher, make_netns, unique, echo):
    paths = daemon_launcher
    ns = unique("a")
    path = make_netns(ns)
    gen = write_config(paths, [tenant("acme", ns, 8080, echo), tenant("ghost", unique("gone"), 8080, echo)])
    daemon_control.ensure_daemon(paths, gen, timeout=20)
    for _ in range(3):
        assert get_in(path, "127.0.0.1", 8080).status == 200

    assert admin(paths, "GET", "/healthz") == (200, {"status": "ok"})
    code, ready = admin(paths, "GET", "/readyz")
    assert code == 503  # ghost's namespace does not exist: not every tenant serves
    assert ready["ready"] is False and ready["applied"] is True
    assert ready["generation"] == gen
    assert ready["failed"] == ["ghost"]
    assert ready["serving"] == 1 and ready["tenants"] == 2

    code, text = admin(paths, "GET", "/metrics")
    assert code == 200
    assert 'nsproxy_requests_total{tenant="acme",class="2xx"} 3' in text
    assert 'nsproxy_tenant_state{tenant="ghost",state="failed"} 1' in text
    assert 'nsproxy_tenant_state{tenant="acme",state="failed"} 0' in text
    assert 'nsproxy_active_connections{tenant="acme"}' in text
    assert 'nsproxy_request_duration_seconds_count{tenant="acme"} 3' in text
    assert 'nsproxy_request_duration_seconds_bucket{tenant="acme",le="+Inf"} 3' in text
    assert f'le="{float(DURATION_BUCKETS[0])!r}"' in text
    assert "# TYPE nsproxy_upstream_errors_total counter" in text
    assert f'nsproxy_config_generation_info{{generation="{gen}"}} 1' in text

    tenants = tenants_by_name(paths)
    assert tenants["ghost"]["state"] == "failed"
    assert "unavailable" in tenants["ghost"]["last_error"]
    assert tenants["ghost"]["netns"]["identity"] is None
    assert tenants["acme"]["counters"]["requests"] == 3

    code, _ = admin(paths, "GET", "/nope")
    assert code == 404


def test_admin_tcp_listener_in_host_netns(daemon_launcher, make_netns, unique, echo):
    paths = daemon_launcher
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()
    gen = write_config(paths, [tenant("acme", unique("x"), 8080, echo)], admin_listen=f"127.0.0.1:{port}")
    daemon_control.ensure_daemon(paths, gen, timeout=20)
    url = f"http://127.0.0.1:{port}/readyz"
    out = subprocess.run(["curl", "-sS", url], capture_output=True, text=True, check=False)
    assert f'"generation": "{gen}"' in out.stdout


def _slow_upstream():
    """An upstream that holds each response until released; returns (port, got_request, release, stop)."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(8)
    got, release = threading.Event(), threading.Event()

    def serve():
        while True:
            try:
                conn, _ = srv.accept()
            except OSError:
                return
            with conn:
                data = b""
                while b"\r\n\r\n" not in data:
                    chunk = conn.recv(4096)
                    if not chunk:
                        break
                    data += chunk
                got.set()
                release.wait(30)
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\nConnection: close\r\n\r\nslow")

    threading.Thread(target=serve, daemon=True).start()
    return srv.getsockname()[1], got, release, srv.close


def test_sigterm_drains_in_flight_request_and_exits_0(daemon_launcher, make_netns, unique):
    paths = daemon_launcher
    ns = unique("a")
    path = make_netns(ns)
    port, got, release, stop_upstream = _slow_upstream()
    try:
        gen = write_config(paths, [tenant("acme", ns, 8080, f"http://127.0.0.1:{port}")], drain_timeout=20)
        daemon_control.ensure_daemon(paths, gen, timeout=20)
        pid = daemon_control.status(paths).pid
        child = child_of(pid)

        sock = netns.socket_in(path, socket.AF_INET)
        sock.settimeout(20)
        sock.connect(("127.0.0.1", 8080))
        sock.sendall(b"GET /slow HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        assert got.wait(10), "upstream never saw the request"

        os.kill(pid, signal.SIGTERM)
        # Stops accepting at once, while the in-flight request is still being served: a connection
        # made now waits in the listener's backlog (the socket broker keeps the listener) for the
        # next daemon instead of being refused.
        wait_until(lambda: "INFO stopping" in log_text(paths), what="the daemon stopping after SIGTERM")
        queued = netns.socket_in(path, socket.AF_INET)
        queued.settimeout(20)
        queued.connect(("127.0.0.1", 8080))
        queued.sendall(b"GET /queued HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        assert child.poll() is None
        release.set()
        resp = read_response(sock)
        sock.close()
        assert resp.status == 200
        assert resp.body == b"slow"
        assert child.wait(timeout=20) == 0
        assert not os.path.exists(paths.pidfile)
        assert not os.path.exists(paths.admin_socket)
        assert re.search(r" INFO drained connections=[1-9]\d* aborted=0$", log_text(paths), re.MULTILINE)
        assert daemon_control.ensure_daemon(paths, gen, timeout=20) == "launched"  # the next daemon serves it
        with queued:
            release.set()
            assert read_response(queued).status == 200
    finally:
        release.set()
        stop_upstream()


def _run_nsproxyd(paths, *extra, timeout=20):
    return subprocess.run(
        [*daemon_argv(paths)[:3], "--config", paths.config, *extra],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def test_config_errors_at_start_are_clear(paths, tmp_path):
    os.makedirs(paths.runtime_dir)
    missing = _run_nsproxyd(paths)
    assert missing.returncode != 0
    assert f"{paths.config}: no such file" in missing.stderr
    assert "Traceback" not in missing.stderr

    with open(paths.config, "w") as f:
        f.write('{"format": 1,\n  "tenants": [}\n')
    bad_json = _run_nsproxyd(paths)
    assert bad_json.returncode != 0
    assert f"{paths.config}:2:" in bad_json.stderr and "invalid JSON" in bad_json.stderr
    assert "Traceback" not in bad_json.stderr

    with open(paths.config, "w") as f:
        f.write('{"format": 1, "generation": "x", "tenants": []}\n')
    no_field = _run_nsproxyd(paths)
    assert no_field.returncode != 0
    assert "missing field 'admin_socket'" in no_field.stderr
    assert "Traceback" not in no_field.stderr


def test_second_instance_is_refused(daemon_launcher, make_netns, unique, echo):
    paths = daemon_launcher
    ns = unique("a")
    make_netns(ns)
    gen = write_config(paths, [tenant("acme", ns, 8080, echo)])
    daemon_control.ensure_daemon(paths, gen, timeout=20)
    second = _run_nsproxyd(paths, "--pidfile", paths.pidfile)
    assert second.returncode != 0
    assert "already running" in second.stderr
    assert daemon_control.status(paths).generation == gen  # the first one is untouched


def test_nsproxyd_entry_point_help():
    """`python -m nsproxy_appliance.daemon.main` (what ensure_daemon runs) parses its arguments."""
    out = subprocess.run(
        [sys.executable, "-m", "nsproxy_appliance.daemon.main", "--help"], capture_output=True, text=True, check=False
    )
    assert out.returncode == 0
    assert "--config" in out.stdout and "--pidfile" in out.stdout and "--log-file" in out.stdout


def test_ipv6_and_ipv4_listeners_on_the_same_port(daemon_launcher, make_netns, unique, echo):
    paths = daemon_launcher
    ns = unique("a")
    path = make_netns(ns)
    gen = write_config(paths, [tenant("acme", ns, 8080, echo, host="::1", extra_listen=(("127.0.0.1", 8080),))])
    daemon_control.ensure_daemon(paths, gen, timeout=20)
    assert tenants_by_name(paths)["acme"]["state"] == "serving"  # V6ONLY: no clash with the v4 socket
    v6 = get_in(path, "::1", 8080, "/v6")
    v4 = get_in(path, "127.0.0.1", 8080, "/v4")
    assert (v6.status, v4.status) == (200, 200)
    assert echoed_headers(v6)["x-forwarded-for"] == ["::1"]
