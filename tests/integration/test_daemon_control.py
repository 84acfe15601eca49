"""daemon_control: status(), ensure_daemon() launched/reloaded/unchanged and its waits, stop()."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading

import pytest
from daemon_harness import admin, child_of, get_in, refused_in, tenant, write_config

from nsproxy_appliance import daemon_control, netns
from nsproxy_appliance.runtime_config import Paths

pytestmark = pytest.mark.root


def test_status_without_daemon(paths):
    assert daemon_control.status(paths) == daemon_control.DaemonStatus(running=False)
    os.makedirs(paths.runtime_dir)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    with open(paths.pidfile, "w") as f:
        f.write(f"{dead.pid}\n")
    assert daemon_control.status(paths).running is False  # a dead pid
    with open(paths.pidfile, "w") as f:
        f.write(f"{os.getpid()}\n")
    assert daemon_control.status(paths).running is False  # alive, but not nsproxyd
    with open(paths.pidfile, "w") as f:
        f.write("garbage\n")
    assert daemon_control.status(paths).running is False
    assert daemon_control.stop(paths, timeout=1) is True  # nothing to stop


def test_launched_unchanged_reloaded(daemon_launcher, make_netns, unique, echo):
    paths = daemon_launcher
    ns_a, ns_b = unique("a"), unique("b")
    path_a, path_b = make_netns(ns_a), make_netns(ns_b)
    gen1 = write_config(paths, [tenant("acme", ns_a, 8080, echo)])
    assert daemon_control.ensure_daemon(paths, gen1, timeout=20) == "launched"
    first = daemon_control.status(paths)
    assert first.running and first.generation == gen1
    with open(paths.pidfile) as f:
        assert int(f.read()) == first.pid

    assert daemon_control.ensure_daemon(paths, gen1, timeout=20) == "unchanged"

    gen2 = write_config(paths, [tenant("acme", ns_a, 8080, echo), tenant("globex", ns_b, 8080, echo)])
    assert daemon_control.ensure_daemon(paths, gen2, timeout=20) == "reloaded"
    second = daemon_control.status(paths)
    assert second.pid == first.pid  # reloaded in place, not restarted
    assert second.generation == gen2
    assert get_in(path_b, "127.0.0.1", 8080).status == 200

    assert daemon_control.stop(paths, timeout=15) is True
    assert not os.path.exists(paths.pidfile)
    assert daemon_control.status(paths).running is False
    assert refused_in(path_a, "127.0.0.1", 8080)


def test_launch_failure_reports_the_reason(daemon_launcher, tmp_path, unique, echo):
    # A runtime dir so long that the socket paths exceed sun_path: the socket broker (started first)
    # exits at start, with the reason.
    long_runtime = str(tmp_path / ("r" * 110))
    paths = Paths(state_dir=daemon_launcher.state_dir, runtime_dir=long_runtime)
    gen = write_config(paths, [tenant("acme", unique("x"), 8080, echo)])
    with pytest.raises(daemon_control.DaemonError) as err:
        daemon_control.ensure_daemon(paths, gen, timeout=20)
    message = str(err.value)
    assert "exited with status 1" in message
    assert "path too long" in message


def test_bad_config_at_launch(daemon_launcher):
    paths = daemon_launcher
    os.makedirs(paths.runtime_dir, exist_ok=True)
    with open(paths.config, "w") as f:
        f.write("{\n  broken\n")
    with pytest.raises(daemon_control.DaemonError, match=r"config.json:2:3: invalid JSON"):
        daemon_control.ensure_daemon(paths, "0000000000000000", timeout=20)


def test_generation_wait_fails_with_the_reason(daemon_launcher, make_netns, unique, echo):
    paths = daemon_launcher
    ns = unique("a")
    make_netns(ns)
    gen = write_config(paths, [tenant("acme", ns, 8080, echo)])
    with pytest.raises(daemon_control.DaemonError, match=f"did not report generation ffff.*reports generation {gen}"):
        daemon_control.ensure_daemon(paths, "ffffffffffffffff", timeout=1.5)


def test_reload_returns_after_removed_tenant_is_closed(daemon_launcher, make_netns, unique, echo):
    """The applier deletes a removed tenant's netns right after ensure_daemon returns."""
    paths = daemon_launcher
    ns_keep, ns_gone = unique("k"), unique("g")
    make_netns(ns_keep)
    path_gone = make_netns(ns_gone)
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(4)
    got = threading.Event()

    def hold() -> None:  # an upstream that never answers: the request stays in flight
        conn, _ = srv.accept()
        conn.recv(4096)
        got.set()
        conn.recv(4096)  # until the daemon gives up and closes
        conn.close()

    threading.Thread(target=hold, daemon=True).start()
    try:
        slow = f"http://127.0.0.1:{srv.getsockname()[1]}"
        gen = write_config(paths, [tenant("keep", ns_keep, 8080, echo), tenant("gone", ns_gone, 8080, slow)])
        daemon_control.ensure_daemon(paths, gen, timeout=20)
        client = netns.socket_in(path_gone, socket.AF_INET)
        client.settimeout(20)
        client.connect(("127.0.0.1", 8080))
        client.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        assert got.wait(10)

        gen2 = write_config(paths, [tenant("keep", ns_keep, 8080, echo)], drain_timeout=1.0)
        assert daemon_control.ensure_daemon(paths, gen2, timeout=20) == "reloaded"
        # Returned: nothing of the daemon is left in the removed tenant's namespace.
        pid = daemon_control.status(paths).pid
        inside = subprocess.run(
            ["ip", "netns", "exec", ns_gone, "ss", "-Htanp"], capture_output=True, text=True, check=True
        )
        assert f"pid={pid}," not in inside.stdout
        try:
            rest = client.recv(4096)
        except ConnectionResetError:
            rest = b""
        assert rest == b""  # the in-flight request was aborted after the drain timeout
        client.close()
        _, ready = admin(paths, "GET", "/readyz")
        assert ready["draining"] == []
    finally:
        srv.close()


def test_relaunch_after_a_crash_reuses_stale_pidfile_and_socket(daemon_launcher, make_netns, unique, echo):
    paths = daemon_launcher
    ns = unique("a")
    path = make_netns(ns)
    gen = write_config(paths, [tenant("acme", ns, 8080, echo)])
    daemon_control.ensure_daemon(paths, gen, timeout=20)
    crashed = daemon_control.status(paths).pid
    child = child_of(crashed)
    child.kill()  # SIGKILL: no cleanup, pidfile and admin socket stay behind
    child.wait(timeout=10)
    assert os.path.exists(paths.pidfile) and os.path.exists(paths.admin_socket)
    assert daemon_control.status(paths).running is False

    assert daemon_control.ensure_daemon(paths, gen, timeout=20) == "launched"
    assert daemon_control.status(paths).pid != crashed
    assert get_in(path, "127.0.0.1", 8080).status == 200
