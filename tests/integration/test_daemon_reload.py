"""Reload (POST /reload, SIGHUP, ensure_daemon): tenant diffs, re-binding, no loss under load."""

from __future__ import annotations

import os
import signal
import socket
import threading
import time

import pytest
from daemon_harness import (
    KeepAliveClient,
    admin,
    get_in,
    read_response,
    refused_in,
    tenant,
    tenants_by_name,
    wait_until,
    write_config,
)
from support import header_values

from nsproxy_appliance import daemon_control, netns

pytestmark = pytest.mark.root


def _open_idle(path: str, port: int) -> socket.socket:
    sock = netns.socket_in(path, socket.AF_INET)
    sock.settimeout(10)
    sock.connect(("127.0.0.1", port))
    return sock


def _request_on(sock: socket.socket, path: str = "/") -> int:
    sock.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
    return read_response(sock).status


def test_reload_adds_removes_and_changes_tenants(daemon_launcher, make_netns, unique, echo, echo2):
    paths = daemon_launcher
    ns = {k: unique(k) for k in "abcd"}
    p = {k: make_netns(v) for k, v in ns.items()}
    before = [
        tenant("changed", ns["a"], 8080, echo),
        tenant("removed", ns["b"], 8080, echo),
        tenant("same", ns["d"], 8080, echo),
    ]
    gen1 = write_config(paths, before)
    assert daemon_control.ensure_daemon(paths, gen1, timeout=20) == "launched"
    for k in "abd":
        assert get_in(p[k], "127.0.0.1", 8080).status == 200
    idle_same = _open_idle(p["d"], 8080)
    idle_changed = _open_idle(p["a"], 8080)
    ident_same = tenants_by_name(paths)["same"]["netns"]["identity"]

    after = [
        tenant("changed", ns["a"], 8080, echo2, tenant_id="changed-v2"),
        tenant("same", ns["d"], 8080, echo),
        tenant("added", ns["c"], 8080, echo),
    ]
    gen2 = write_config(paths, after)
    code, result = admin(paths, "POST", "/reload")
    assert code == 200, result
    assert result["ok"] is True
    assert result["generation"] == gen2
    assert {n: t["action"] for n, t in result["tenants"].items()} == {
        "changed": "changed",
        "removed": "removed",
        "added": "added",
    }
    assert result["unchanged"] == 1  # "same": left alone, only counted

    # The removed tenant's port refuses at once: its listener is closed when the reload answers.
    assert refused_in(p["b"], "127.0.0.1", 8080)
    assert get_in(p["c"], "127.0.0.1", 8080).status == 200
    # New requests of the changed tenant use its new upstream and id.
    served_by_echo2 = echo2.requests
    resp = get_in(p["a"], "127.0.0.1", 8080)
    assert header_values(resp.json()["headers"], "X-Tenant-Id") == ["changed-v2"]
    assert echo2.requests == served_by_echo2 + 1
    # Connections opened before the reload on kept tenants were left alone.
    assert _request_on(idle_same) == 200
    assert _request_on(idle_changed) == 200
    idle_same.close()
    idle_changed.close()
    tenants = tenants_by_name(paths)
    assert set(tenants) == {"changed", "same", "added"}
    assert tenants["same"]["netns"]["identity"] == ident_same
    assert daemon_control.status(paths).generation == gen2


def test_reload_rebinds_only_changed_addresses(daemon_launcher, make_netns, unique, echo):
    paths = daemon_launcher
    ns = unique("a")
    path = make_netns(ns)
    gen = write_config(paths, [tenant("acme", ns, 8080, echo, extra_listen=(("127.0.0.1", 8081),))])
    daemon_control.ensure_daemon(paths, gen, timeout=20)
    idle = _open_idle(path, 8080)

    gen = write_config(paths, [tenant("acme", ns, 8080, echo, extra_listen=(("127.0.0.1", 8082),))])
    assert daemon_control.ensure_daemon(paths, gen, timeout=20) == "reloaded"
    assert refused_in(path, "127.0.0.1", 8081)
    assert get_in(path, "127.0.0.1", 8082).status == 200
    assert _request_on(idle) == 200  # the 8080 listener was not re-made
    idle.close()
    listeners = tenants_by_name(paths)["acme"]["listeners"]
    assert [entry["address"] for entry in listeners] == ["127.0.0.1:8080", "127.0.0.1:8082"]
    assert all(entry["listening"] for entry in listeners)


def test_reload_under_load_loses_no_request(daemon_launcher, make_netns, unique, echo):
    paths = daemon_launcher
    ns_load = unique("load")
    path_load = make_netns(ns_load)
    others = [unique(f"o{i}") for i in range(3)]
    for name in others:
        make_netns(name)
    gen = write_config(paths, [tenant("steady", ns_load, 8080, echo)])
    daemon_control.ensure_daemon(paths, gen, timeout=20)

    stop = threading.Event()
    results = {"ok": 0, "failed": [], "ka_ok": 0}

    def keep_alive_load() -> None:
        # One connection for the whole test: an unchanged tenant's connections are never touched.
        client = KeepAliveClient(path_load, "127.0.0.1", 8080)
        deadline = time.monotonic() + 60
        try:
            while not stop.is_set() and time.monotonic() < deadline:
                status = client.get("/keep-alive")
                if status == 200:
                    results["ka_ok"] += 1
                else:
                    results["failed"].append(f"keep-alive {status}")
        except OSError as e:
            results["failed"].append(f"keep-alive {e!r}")
        finally:
            client.close()

    def load() -> None:
        deadline = time.monotonic() + 60  # bounded even if the test body fails
        while not stop.is_set() and time.monotonic() < deadline:
            try:
                status = get_in(path_load, "127.0.0.1", 8080, "/steady").status
            except OSError as e:
                results["failed"].append(repr(e))
                continue
            if status == 200:
                results["ok"] += 1
            else:
                results["failed"].append(status)

    workers = [threading.Thread(target=load), threading.Thread(target=keep_alive_load)]
    for worker in workers:
        worker.start()
    try:
        wait_until(lambda: results["ok"] >= 20 and results["ka_ok"] >= 20, what="load running")
        actions = []
        # Add and remove the other tenants in turns, with the steady one always present (8 reloads).
        for step in range(8):
            present = [name for i, name in enumerate(others) if (step + i) % 2 == 0]
            tenants = [tenant("steady", ns_load, 8080, echo)]
            tenants += [tenant(f"t-{name[-2:]}", name, 8080 + (step % 2), echo) for name in present]
            gen = write_config(paths, tenants)
            actions.append(daemon_control.ensure_daemon(paths, gen, timeout=20))
            count, ka_count = results["ok"], results["ka_ok"]
            wait_until(
                lambda c=count, k=ka_count: results["ok"] >= c + 5 and results["ka_ok"] >= k + 5,
                what="requests after reload",
            )
    finally:
        stop.set()
        for worker in workers:
            worker.join(30)
    assert actions == ["reloaded"] * 8
    assert results["failed"] == []
    assert results["ok"] >= 60 and results["ka_ok"] >= 60
    assert tenants_by_name(paths)["steady"]["counters"]["requests_by_class"]["5xx"] == 0


def test_sighup_reloads(daemon_launcher, make_netns, unique, echo):
    paths = daemon_launcher
    ns_a, ns_b = unique("a"), unique("b")
    path_a, path_b = make_netns(ns_a), make_netns(ns_b)
    gen1 = write_config(paths, [tenant("acme", ns_a, 8080, echo)])
    daemon_control.ensure_daemon(paths, gen1, timeout=20)
    gen2 = write_config(paths, [tenant("acme", ns_a, 8080, echo), tenant("globex", ns_b, 9090, echo)])
    os.kill(daemon_control.status(paths).pid, signal.SIGHUP)
    wait_until(lambda: daemon_control.status(paths).generation == gen2, what="generation after SIGHUP")
    assert header_values(get_in(path_b, "127.0.0.1", 9090).json()["headers"], "X-Tenant-Id") == ["globex"]
    assert get_in(path_a, "127.0.0.1", 8080).status == 200


def test_rejected_reload_keeps_serving(daemon_launcher, make_netns, unique, echo):
    paths = daemon_launcher
    ns = unique("a")
    path = make_netns(ns)
    gen = write_config(paths, [tenant("acme", ns, 8080, echo)])
    daemon_control.ensure_daemon(paths, gen, timeout=20)
    with open(paths.config, "w") as f:
        f.write("{not json")
    code, body = admin(paths, "POST", "/reload")
    assert code == 422
    assert body["ok"] is False
    assert "invalid JSON" in body["error"]
    assert body["generation"] == gen
    with pytest.raises(daemon_control.DaemonError, match="rejected the reload"):
        daemon_control.ensure_daemon(paths, "0123456789abcdef", timeout=5)
    assert get_in(path, "127.0.0.1", 8080).status == 200
    assert 'nsproxy_reloads_total{result="error"} 2' in admin(paths, "GET", "/metrics")[1]


def test_recreated_namespace_gets_new_listeners(daemon_launcher, make_netns, unique, echo):
    """Same name, new namespace (deleted and re-created): identity differs, listeners are re-made."""
    paths = daemon_launcher
    ns = unique("a")
    path = make_netns(ns)
    gen = write_config(paths, [tenant("acme", ns, 8080, echo)])
    daemon_control.ensure_daemon(paths, gen, timeout=20)
    old = tenants_by_name(paths)["acme"]["netns"]["identity"]

    netns.delete_named(ns)
    make_netns(ns)
    new = netns.identity(path)
    assert (new.dev, new.ino) != (old["dev"], old["ino"])
    # The config did not change; the daemon notices the new identity by itself and re-makes them.
    # (while the name has no namespace, between the delete and the re-creation, it serves none: None)
    served_in = lambda: (tenants_by_name(paths)["acme"]["netns"]["identity"] or {}).get("ino")  # noqa: E731
    wait_until(lambda: served_in() == new.ino, timeout=5, what="listeners re-made")
    info = tenants_by_name(paths)["acme"]
    assert (info["netns"]["identity"]["dev"], info["netns"]["identity"]["ino"]) == (new.dev, new.ino)
    assert info["state"] == "serving"
    assert get_in(path, "127.0.0.1", 8080).status == 200
    assert daemon_control.ensure_daemon(paths, gen, timeout=20) == "unchanged"


def test_removed_tenant_finishes_in_flight_request_before_reload_answers(daemon_launcher, make_netns, unique, echo):
    paths = daemon_launcher
    ns_keep, ns_gone = unique("k"), unique("g")
    make_netns(ns_keep)
    path_gone = make_netns(ns_gone)
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(4)
    got, release = threading.Event(), threading.Event()

    def slow_upstream() -> None:
        conn, _ = srv.accept()
        with conn:
            conn.recv(4096)
            got.set()
            release.wait(30)
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\ndone")

    threading.Thread(target=slow_upstream, daemon=True).start()
    try:
        slow = f"http://127.0.0.1:{srv.getsockname()[1]}"
        gen = write_config(paths, [tenant("keep", ns_keep, 8080, echo), tenant("gone", ns_gone, 8080, slow)])
        daemon_control.ensure_daemon(paths, gen, timeout=20)
        client = _open_idle(path_gone, 8080)
        client.sendall(b"GET /slow HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        assert got.wait(10)

        write_config(paths, [tenant("keep", ns_keep, 8080, echo)], drain_timeout=20)
        answer: dict = {}
        reloader = threading.Thread(target=lambda: answer.update(result=admin(paths, "POST", "/reload")))
        reloader.start()
        # Listener closed while the request is still in flight; the reload waits for it.
        wait_until(lambda: refused_in(path_gone, "127.0.0.1", 8080), what="removed listener closed")
        _, ready = admin(paths, "GET", "/readyz")
        assert ready["draining"] == ["gone"]
        assert "result" not in answer
        release.set()
        reloader.join(30)
        code, result = answer["result"]
        assert code == 200
        assert result["drained"]["aborted"] == 0 and result["drained"]["connections"] >= 1
        response = read_response(client)
        client.close()
        assert (response.status, response.body) == (200, b"done")
    finally:
        release.set()
        srv.close()
