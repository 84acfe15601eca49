"""The socket broker as a process: what it makes, for whom, what it keeps, and what it refuses.

A real nsproxy-broker reads a real runtime config and makes sockets in namespaces the test
created; the test speaks the protocol itself (broker_harness.BlockingClient).
"""

from __future__ import annotations

import dataclasses
import os
import pwd
import socket
import subprocess
import sys

import pytest
from broker_harness import BlockingClient, sockets_of, start_broker
from daemon_harness import refused_in, tenant, write_config
from support import run_cli, wait_until

from nsproxy_appliance import broker_control, netns
from nsproxy_appliance.broker import protocol

pytestmark = pytest.mark.root


@pytest.fixture
def two_tenants(open_paths, make_netns, unique, echo):
    """A runtime config with tenants a (two listeners) and b (a `from: tenant` upstream)."""
    ns_a, ns_b = unique("a"), unique("b")
    path_a, path_b = make_netns(ns_a), make_netns(ns_b)
    a = tenant("a", ns_a, 8080, echo, extra_listen=(("127.0.0.2", 8081),))
    b = tenant("b", ns_b, 80, "http://127.0.0.1:9000")
    b = dataclasses.replace(b, upstream=dataclasses.replace(b.upstream, from_ns="tenant"))
    write_config(open_paths, [a, b])
    return open_paths, path_a, path_b


def cookie(path: str) -> int | None:
    with netns.socket_in(path, socket.AF_INET) as probe:
        return netns.cookie_of(probe)


def test_listeners_are_made_inside_the_tenant_namespace_and_kept(two_tenants, brokers):
    paths, path_a, _ = two_tenants
    broker = start_broker(paths)
    brokers.append(broker)
    with BlockingClient(paths.broker_socket) as client:
        reply, fds = client.request({"op": "listen", "tenant": "a", "listen": ["127.0.0.1:8080"], "backlog": 16})
    assert reply["ok"], reply
    (sock,) = sockets_of(fds)
    with sock:
        assert reply["identity"]["cookie"] == cookie(path_a) == netns.cookie_of(sock)
        st = os.stat(path_a)
        assert (reply["identity"]["dev"], reply["identity"]["ino"]) == (st.st_dev, st.st_ino)
        assert sock.getsockname() == ("127.0.0.1", 8080)
        assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN) == 1
        first = os.fstat(sock.fileno()).st_ino
    made_in = reply["identity"]
    # This client's copy is closed; the broker kept its own: a connection made now waits in the backlog,
    # and the next client gets the very same socket, with the connection in it.
    waiting = netns.socket_in(path_a, socket.AF_INET)
    waiting.connect(("127.0.0.1", 8080))
    with waiting, BlockingClient(paths.broker_socket) as client:
        reply, fds = client.request({"op": "listen", "tenant": "a", "listen": ["127.0.0.1:8080"], "backlog": 16})
        (again,) = sockets_of(fds)
        with again:
            assert os.fstat(again.fileno()).st_ino == first
            assert reply["identity"] == made_in  # the kept socket's namespace, cookie and all
            conn, _ = again.accept()
            conn.close()
    assert [h["listen"] for h in broker.held()] == ["127.0.0.1:8080"]


def test_release_closes_the_kept_socket(two_tenants, brokers):
    paths, path_a, _ = two_tenants
    brokers.append(broker := start_broker(paths))
    with BlockingClient(paths.broker_socket) as client:
        _, fds = client.request({"op": "listen", "tenant": "a", "listen": ["127.0.0.1:8080", "127.0.0.2:8081"]})
        for s in sockets_of(fds):
            s.close()
        reply, _ = client.request({"op": "release", "tenant": "a", "listen": ["127.0.0.1:8080"]})
    assert reply == {"id": 2, "ok": True, "released": 1}
    assert refused_in(path_a, "127.0.0.1", 8080)  # nobody holds it any more
    assert [h["listen"] for h in broker.held()] == ["127.0.0.2:8081"]


@pytest.mark.parametrize(
    ("request_", "error"),
    [
        (
            {"op": "listen", "tenant": "nobody", "listen": ["127.0.0.1:8080"]},
            "tenant 'nobody' is not in the runtime config",
        ),
        (
            {"op": "listen", "tenant": "a", "listen": ["127.0.0.1:22"]},
            "127.0.0.1:22 is not a listen address of tenant a",
        ),
        ({"op": "upstream", "netns": "/proc/1/ns/net", "family": 2}, "no tenant of the runtime config dials"),
        ({"op": "frobnicate"}, "unknown operation 'frobnicate'"),
        ({"op": "hello", "version": 99}, "protocol version 99 not supported"),
    ],
)
def test_requests_outside_the_runtime_config_are_refused(two_tenants, brokers, request_, error):
    paths, _, _ = two_tenants
    brokers.append(start_broker(paths))
    with BlockingClient(paths.broker_socket) as client:
        reply, fds = client.request(request_)
    assert fds == [] and reply["ok"] is False and error in reply["error"], reply


@pytest.mark.parametrize(
    "message",
    [b"[" * 200_000, b'{"op": "\xff"}', b"[1, 2]", b"{"],
    ids=["nested-200000-deep", "not-utf8", "not-an-object", "truncated"],
)
def test_an_unreadable_message_costs_its_sender_the_connection_and_nothing_else(two_tenants, brokers, message):
    """json.loads raised RecursionError (not ValueError) for deep nesting: one message stopped the broker."""
    paths, _, _ = two_tenants
    brokers.append(broker := start_broker(paths))
    with BlockingClient(paths.broker_socket) as hostile:
        hostile.sock.send(message)
        assert hostile.sock.recv(4096) == b""  # disconnected, no answer
    with BlockingClient(paths.broker_socket) as client:
        reply, _ = client.request({"op": "hello", "version": protocol.VERSION})
    assert reply["ok"] and reply["pid"] == broker.pid
    assert "sent an unreadable message" in broker.log_text()


def test_upstream_sockets_are_unconnected_and_made_in_the_tenant_namespace(two_tenants, brokers):
    paths, _, path_b = two_tenants
    brokers.append(broker := start_broker(paths))
    with BlockingClient(paths.broker_socket) as client:
        reply, fds = client.request({"op": "upstream", "netns": path_b, "family": socket.AF_INET, "count": 3})
    socks = sockets_of(fds)
    try:
        assert reply["ok"] and reply["count"] == 3 and len(socks) == 3
        for s in socks:
            assert netns.cookie_of(s) == cookie(path_b) == reply["identity"]["cookie"]
            assert s.getsockname() == ("0.0.0.0", 0) and s.type == socket.SOCK_STREAM
    finally:
        for s in socks:
            s.close()
    assert broker.held() == []  # never kept


def test_a_deleted_namespace_is_not_pinned_by_what_the_broker_keeps(two_tenants, brokers, unique):
    paths, path_a, _ = two_tenants
    brokers.append(broker := start_broker(paths))
    with BlockingClient(paths.broker_socket) as client:
        _, fds = client.request({"op": "listen", "tenant": "a", "listen": ["127.0.0.1:8080"]})
    for s in sockets_of(fds):
        s.close()
    assert broker.held()
    netns.delete_named(os.path.basename(path_a))
    wait_until(lambda: broker.held() == [], what="the broker closing the socket of a deleted namespace")


def test_kept_listeners_close_when_no_daemon_comes_back(two_tenants, brokers):
    paths, path_a, _ = two_tenants
    brokers.append(broker := start_broker(paths, "--hold", "0.5"))
    with BlockingClient(paths.broker_socket) as client:
        _, fds = client.request({"op": "listen", "tenant": "a", "listen": ["127.0.0.1:8080"]})
    for s in sockets_of(fds):
        s.close()
    wait_until(lambda: refused_in(path_a, "127.0.0.1", 8080), what="the held listener closed after --hold")
    assert "no daemon for" in broker.log_text()


def test_a_restarted_broker_adopts_the_daemons_listeners_after_checking_them(two_tenants, brokers, make_netns, unique):
    paths, path_a, _ = two_tenants
    first = start_broker(paths)
    with BlockingClient(paths.broker_socket) as client:
        _, fds = client.request({"op": "listen", "tenant": "a", "listen": ["127.0.0.1:8080"]})
    (mine,) = sockets_of(fds)
    first.stop()
    brokers.append(second := start_broker(paths))
    assert second.held() == []
    other = make_netns(unique("o"))
    forged = netns.socket_in(other, socket.AF_INET)  # right address, wrong namespace
    forged.bind(("127.0.0.2", 8081))
    forged.listen(1)
    with mine, forged, BlockingClient(paths.broker_socket) as client:
        claims = [{"tenant": "a", "listen": "127.0.0.1:8080"}, {"tenant": "a", "listen": "127.0.0.2:8081"}]
        reply, _ = client.request({"op": "adopt", "sockets": claims}, [mine.fileno(), forged.fileno()])
    assert reply["adopted"] == 1, reply
    assert "made in another network namespace" in reply["refused"]["a/127.0.0.2:8081"]
    assert [h["listen"] for h in second.held()] == ["127.0.0.1:8080"]
    waiting = netns.socket_in(path_a, socket.AF_INET)
    with waiting:
        waiting.connect(("127.0.0.1", 8080))  # still listening: the broker's copy


def test_only_root_and_the_daemons_user_may_connect(two_tenants, brokers, service_user):
    paths, _, _ = two_tenants
    os.chmod(paths.runtime_dir, 0o755)
    brokers.append(broker := start_broker(paths, "--daemon-user", service_user.pw_name))
    probe = (
        "import socket, sys; s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET); s.connect(sys.argv[1]);"
        's.send(b\'{"id": 1, "op": "hello", "version": 1}\'); print(s.recv(4096))'
    )

    def as_user(user: str) -> subprocess.CompletedProcess[str]:
        entry = pwd.getpwnam(user)
        cmd = ["setpriv", f"--reuid={entry.pw_uid}", f"--regid={entry.pw_gid}", "--clear-groups", sys.executable]
        return subprocess.run([*cmd, "-c", probe, paths.broker_socket], capture_output=True, text=True, timeout=30)

    daemon_user = as_user(service_user.pw_name)
    assert daemon_user.returncode == 0 and '"ok":true' in daemon_user.stdout, daemon_user
    nobody = as_user("nobody")
    # connected (the socket file allows it), then closed unheard: nothing, or a reset
    assert '"ok"' not in nobody.stdout and (nobody.stdout.strip() == "b''" or "Error" in nobody.stderr), nobody
    assert "refused a connection from pid" in broker.log_text()


def test_a_config_others_could_have_written_is_not_used(two_tenants, brokers, service_user):
    paths, _, _ = two_tenants
    os.chown(paths.config, service_user.pw_uid, -1)
    brokers.append(start_broker(paths))
    with BlockingClient(paths.broker_socket) as client:
        reply, _ = client.request({"op": "listen", "tenant": "a", "listen": ["127.0.0.1:8080"]})
    assert not reply["ok"] and f"is owned by uid {service_user.pw_uid}, not root" in reply["error"]
    os.chown(paths.config, 0, -1)
    os.chmod(paths.runtime_dir, 0o775)  # group-writable, not sticky: the daemon could replace the config
    with BlockingClient(paths.broker_socket) as client:
        reply, _ = client.request({"op": "listen", "tenant": "a", "listen": ["127.0.0.1:8080"]})
    assert not reply["ok"] and "without the sticky bit" in reply["error"]
    os.chmod(paths.runtime_dir, 0o1775)  # sticky: only root may rename root's file
    with BlockingClient(paths.broker_socket) as client:
        reply, fds = client.request({"op": "listen", "tenant": "a", "listen": ["127.0.0.1:8080"]})
    for s in sockets_of(fds):
        s.close()
    assert reply["ok"], reply


def test_nsproxy_stop_without_a_daemon_stops_the_broker_unless_told_to_keep_the_listeners(two_tenants, brokers):
    """A broker outlives a daemon that died: `nsproxy stop` takes it down too, `--keep-listeners` keeps it."""
    paths, _, _ = two_tenants
    brokers.append(broker := start_broker(paths))
    dirs = ["--state-dir", paths.state_dir, "--runtime-dir", paths.runtime_dir]
    kept = run_cli("nsproxy", "stop", "--keep-listeners", *dirs)
    assert kept.returncode == 0 and kept.stdout == f"nsproxyd is not running ({paths.pidfile})\n", kept
    assert broker.proc.poll() is None and broker_control.answers(paths)
    stopped = run_cli("nsproxy", "stop", *dirs)
    assert stopped.returncode == 0, stopped
    assert stopped.stdout.splitlines() == [
        f"nsproxyd is not running ({paths.pidfile})",
        f"nsproxy-broker (pid {broker.proc.pid}) stopped",
    ]
    assert broker.proc.wait(timeout=10) == 0 and not broker_control.answers(paths)
