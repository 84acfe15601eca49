"""What the applier reads from the daemon's admin API and decides from it (daemon_control.py):
whether a daemon serving the right generation still needs a reload (a failed tenant, a namespace
re-created under the same name), which tenants serve in which namespace, and what a reload's
answer means. The admin API is a small fake HTTP server on a real unix socket in tmp_path."""

from __future__ import annotations

import json
import os
import socketserver
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

import pytest

from nsproxy_appliance import daemon_control
from nsproxy_appliance.daemon_control import DaemonError, DaemonStatus
from nsproxy_appliance.identity import NetnsIdentity
from nsproxy_appliance.kernel.observed import ServedTenant
from nsproxy_appliance.runtime_config import Paths


class FakeAdmin:
    """Answers GET /tenants, GET /readyz and POST /reload with what the test sets."""

    def __init__(self, socket_path: str) -> None:
        self.routes: dict[tuple[str, str], tuple[int, Any]] = {}
        self.requests: list[tuple[str, str]] = []
        self.host_lines: list[tuple[str, str]] = []  # the Host lines of every request, as spelled
        admin = self

        class Handler(BaseHTTPRequestHandler):
            def _answer(self) -> None:
                admin.requests.append((self.command, self.path))
                admin.host_lines += [(k, v) for k, v in self.headers.items() if k.lower() == "host"]
                status, body = admin.routes.get((self.command, self.path), (404, {"error": "no route"}))
                # bytes: sent as they are, labelled JSON (a daemon answering garbage)
                text = body if isinstance(body, str | bytes) else json.dumps(body)
                data = text if isinstance(text, bytes) else text.encode()
                self.send_response(status)
                self.send_header("Content-Type", "text/plain" if isinstance(body, str) else "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = _answer

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = socketserver.ThreadingUnixStreamServer(socket_path, Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.01,), daemon=True)
        self.thread.start()

    def tenants(self, *tenants: dict[str, Any]) -> None:
        self.routes[("GET", "/tenants")] = (200, {"tenants": list(tenants)})

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=10)


@pytest.fixture
def paths(tmp_path: Path) -> Paths:
    p = Paths(state_dir=str(tmp_path / "state"), runtime_dir=str(tmp_path / "run"))
    os.makedirs(p.runtime_dir)
    return p


@pytest.fixture
def admin(paths: Paths) -> Iterator[FakeAdmin]:
    server = FakeAdmin(paths.admin_socket)
    yield server
    server.close()


def _netns(tmp_path: Path, name: str) -> tuple[str, dict[str, int]]:
    """A stand-in for a namespace file: a path and its (dev, ino) identity as the daemon reports it."""
    path = tmp_path / name
    path.write_text("")
    st = os.stat(path)
    return str(path), {"dev": st.st_dev, "ino": st.st_ino}


def _tenant(name: str, state: str, path: str, identity: Any, error: str | None = None) -> dict[str, Any]:
    return {"name": name, "state": state, "netns": {"path": path, "identity": identity}, "last_error": error}


# -- _needs_retry: same generation, but is a reload due? ------------------------------------------
def test_no_reload_when_every_tenant_serves_in_its_namespace(admin, paths, tmp_path):
    a, a_id = _netns(tmp_path, "a")
    b, b_id = _netns(tmp_path, "b")
    admin.tenants(_tenant("a", "serving", a, a_id), _tenant("b", "serving", b, b_id))
    assert daemon_control._needs_retry(paths) is False
    assert admin.requests == [("GET", "/tenants")]


def test_a_failed_tenant_needs_a_reload(admin, paths, tmp_path):
    a, a_id = _netns(tmp_path, "a")
    b, b_id = _netns(tmp_path, "b")
    admin.tenants(_tenant("a", "serving", a, a_id), _tenant("b", "failed", b, b_id, "bind: address in use"))
    assert daemon_control._needs_retry(paths) is True


def test_a_namespace_recreated_under_the_same_name_needs_a_reload(admin, paths, tmp_path):
    a, a_id = _netns(tmp_path, "a")
    admin.tenants(_tenant("a", "serving", a, {"dev": a_id["dev"], "ino": a_id["ino"] + 1}))
    assert daemon_control._needs_retry(paths) is True
    admin.tenants(_tenant("a", "serving", a, {"dev": a_id["dev"] + 1, "ino": a_id["ino"]}))
    assert daemon_control._needs_retry(paths) is True


@pytest.mark.parametrize("identity", [None, {}])
def test_a_tenant_without_a_known_namespace_needs_a_reload(admin, paths, tmp_path, identity):
    a, _ = _netns(tmp_path, "a")
    admin.tenants(_tenant("a", "serving", a, identity))
    assert daemon_control._needs_retry(paths) is True


def test_a_namespace_that_is_gone_needs_a_reload(admin, paths, tmp_path):
    admin.tenants(_tenant("a", "serving", str(tmp_path / "gone"), {"dev": 1, "ino": 2}))
    assert daemon_control._needs_retry(paths) is True
    admin.tenants({"name": "a", "state": "serving"})  # no netns at all
    assert daemon_control._needs_retry(paths) is True


def test_draining_tenants_are_on_their_way_out_and_do_not_count(admin, paths, tmp_path):
    a, a_id = _netns(tmp_path, "a")
    admin.tenants(_tenant("old", "draining", str(tmp_path / "gone"), None), _tenant("a", "serving", a, a_id))
    assert daemon_control._needs_retry(paths) is False


def test_an_unreachable_daemon_needs_a_reload(paths):
    assert daemon_control._needs_retry(paths) is True  # nothing listens on the admin socket


def test_an_answer_without_tenants_needs_no_reload(admin, paths):
    admin.routes[("GET", "/tenants")] = (200, ["not", "a", "dict"])
    assert daemon_control._needs_retry(paths) is False
    admin.routes[("GET", "/tenants")] = (200, {"tenants": []})
    assert daemon_control._needs_retry(paths) is False


# -- what the daemon serves ------------------------------------------------------------------------
def test_served_tenants_report_state_namespace_and_error_without_draining_ones(admin, paths):
    admin.tenants(
        _tenant("a", "serving", "/run/netns/a", {"dev": 4, "ino": 10, "cookie": 7}),
        _tenant("b", "failed", "/run/netns/b", {"dev": 4, "ino": 11}, "netns gone"),
        _tenant("c", "draining", "/run/netns/c", {"dev": 4, "ino": 12}),
        {"name": "d", "state": "starting"},
        "not a tenant",
    )
    assert daemon_control.served_tenants(paths) == {
        "a": ServedTenant("serving", NetnsIdentity(4, 10, 7), None),
        "b": ServedTenant("failed", NetnsIdentity(4, 11, None), "netns gone"),
        "d": ServedTenant("starting", None, None),
    }


@pytest.mark.parametrize("body", [{"tenants": "x"}, ["x"], "plain text"])
def test_served_tenants_of_a_confused_daemon_are_unknown(admin, paths, body):
    admin.routes[("GET", "/tenants")] = (200, body)
    assert daemon_control.served_tenants(paths) is None


def test_served_tenants_of_an_unreachable_daemon_are_unknown(paths):
    assert daemon_control.served_tenants(paths) is None


def test_await_tenants_returns_at_once_when_all_serve_where_expected(admin, paths):
    admin.tenants(_tenant("a", "serving", "/x", {"dev": 1, "ino": 2, "cookie": 3}))
    assert daemon_control.await_tenants(paths, {"a": NetnsIdentity(1, 2, 3)}, timeout=3.0) == {}
    assert admin.requests == [("GET", "/tenants")]


def test_await_tenants_reports_failures_in_the_expected_namespace_at_once(admin, paths):
    admin.tenants(
        _tenant("a", "failed", "/x", {"dev": 1, "ino": 2}, "bind failed"),
        _tenant("b", "failed", "/y", {"dev": 1, "ino": 3}),
    )
    assert daemon_control.await_tenants(paths, {"a": NetnsIdentity(1, 2), "b": NetnsIdentity(1, 3)}, timeout=3.0) == {
        "a": "bind failed",
        "b": "failed",
    }


def test_await_tenants_gives_up_with_the_reason_for_each(admin, paths):
    admin.tenants(
        _tenant("a", "serving", "/x", {"dev": 1, "ino": 9}),
        _tenant("b", "failed", "/y", {"dev": 1, "ino": 9}, "old netns"),
        _tenant("c", "starting", "/z", None),
    )
    expected = {"a": NetnsIdentity(1, 2), "b": NetnsIdentity(1, 3), "c": NetnsIdentity(1, 4), "d": None}
    assert daemon_control.await_tenants(paths, expected, timeout=0.2) == {
        "a": "serving in namespace 1:9, not in 1:2 (after 0.2 s)",
        "b": "failed: old netns (after 0.2 s)",
        "c": "starting (after 0.2 s)",
        "d": "the daemon does not report it (after 0.2 s)",
    }


def test_await_tenants_of_an_unreachable_daemon(paths):
    assert daemon_control.await_tenants(paths, {"a": None}, timeout=0.1) == {
        "a": "the daemon does not answer (after 0.1 s)"
    }


# -- reloading -------------------------------------------------------------------------------------
def test_a_reload_that_applied_the_generation(admin, paths):
    admin.routes[("POST", "/reload")] = (200, {"ok": True, "generation": "g2"})
    daemon_control.SUPERVISOR._reload(paths, os.getpid(), "g2", deadline=_soon())
    assert admin.requests == [("POST", "/reload")]


@pytest.mark.parametrize(
    ("answer", "message"),
    [
        ((500, {"ok": False, "error": "bad config"}), "nsproxyd rejected the reload: bad config"),
        ((200, {"ok": False, "error": "bad config"}), "nsproxyd rejected the reload: bad config"),
        ((200, "not json"), "nsproxyd rejected the reload: not json"),
        (
            (200, {"ok": True, "generation": "g1"}),
            "nsproxyd reloaded generation g1, expected g2 (was {config} rewritten meanwhile?)",
        ),
    ],
)
def test_a_reload_the_daemon_did_not_apply_is_an_error(admin, paths, answer, message):
    admin.routes[("POST", "/reload")] = answer
    with pytest.raises(DaemonError) as err:
        daemon_control.SUPERVISOR._reload(paths, os.getpid(), "g2", deadline=_soon())
    assert str(err.value) == message.format(config=paths.config)


def _soon() -> float:
    import time

    return time.monotonic() + 10.0


@pytest.mark.parametrize(
    ("generation", "needs_retry", "action"),
    [("g2", False, "unchanged"), ("g2", True, "reloaded"), ("g1", False, "reloaded")],
)
def test_ensure_daemon_reloads_only_what_needs_it(monkeypatch, paths, generation, needs_retry, action):
    calls: list[str] = []
    sup = daemon_control.DaemonSupervisor()
    monkeypatch.setattr(sup, "status", lambda p: DaemonStatus(running=True, pid=42, generation=generation))
    monkeypatch.setattr(daemon_control, "_needs_retry", lambda p: needs_retry)
    monkeypatch.setattr(sup, "_wait_for", lambda *a: calls.append("wait"))
    monkeypatch.setattr(sup, "_reload", lambda p, pid, gen, deadline: calls.append(f"reload {pid} {gen}"))
    monkeypatch.setattr(sup, "launch", lambda p, timeout: calls.append("launch"))
    assert sup.ensure_daemon(paths, "g2", timeout=5.0) == action
    assert calls == (["wait"] if action == "unchanged" else ["reload 42 g2"])


def test_ensure_daemon_launches_when_nothing_runs(monkeypatch, paths):
    calls: list[Any] = []
    sup = daemon_control.DaemonSupervisor()
    monkeypatch.setattr(sup, "status", lambda p: DaemonStatus(running=False))
    monkeypatch.setattr(sup, "launch", lambda p, timeout: (calls.append("launch"), (77, None))[1])
    monkeypatch.setattr(sup, "_wait_for", lambda p, gen, deadline, pid, unit: calls.append(("wait", gen, pid, unit)))
    assert sup.ensure_daemon(paths, "g2", timeout=5.0) == "launched"
    assert calls == ["launch", ("wait", "g2", 77, None)]
