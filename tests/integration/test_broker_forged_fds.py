"""The daemon refuses every wrong socket it is handed: a fake broker (root, in this test process)
answers the real daemon's requests with forged fds, and the tenant fails with the reason instead of
serving a socket of the wrong family, type, address or namespace."""

from __future__ import annotations

import dataclasses
import os
import re
import socket
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from daemon_harness import admin, get_in, tenant, tenants_by_name, write_config
from support import wait_until

from nsproxy_appliance import netns
from nsproxy_appliance.broker import protocol
from nsproxy_appliance.daemon import fdcheck
from nsproxy_appliance.identity import NetnsIdentity
from nsproxy_appliance.model import Listen

pytestmark = pytest.mark.root

Answer = Callable[[dict[str, Any]], tuple[dict[str, Any], list[socket.socket]]]


def identity_of(path: str) -> NetnsIdentity:
    st = os.stat(path)
    with netns.socket_in(path, socket.AF_INET) as probe:
        return NetnsIdentity(st.st_dev, st.st_ino, netns.cookie_of(probe))


def listening_in(path: str | None, host: str = "127.0.0.1", port: int = 8080, listen: bool = True) -> socket.socket:
    sock = netns.socket_in(path, socket.AF_INET)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    if listen:
        sock.listen(8)
    return sock


class FakeBroker:
    """Speaks the broker protocol at `path`; `answer(request)` decides each listen/upstream reply."""

    def __init__(self, path: str, answer: Answer) -> None:
        self.answer = answer
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.sock.bind(path)
        self.sock.listen(4)
        self.requests: list[dict[str, Any]] = []
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._client, args=(conn,), daemon=True).start()

    def _client(self, conn: socket.socket) -> None:
        with conn:
            while True:
                try:
                    got = protocol.receive(conn)
                except OSError:
                    return
                if got is None:
                    return
                request, fds = got
                protocol.close_fds(fds)
                self.requests.append(request)
                reply: dict[str, Any] = {"ok": True, "version": protocol.VERSION, "pid": os.getpid()}
                out: list[socket.socket] = []
                if request["op"] in ("listen", "upstream"):
                    reply, out = self.answer(request)
                    reply.setdefault("ok", True)
                protocol.send(conn, {**reply, "id": request["id"]}, [s.fileno() for s in out])
                for s in out:
                    s.close()

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def daemon_with(paths, tmp_path) -> Iterator[Callable[..., subprocess.Popen[bytes]]]:
    """Start the real nsproxyd for `paths` against a given broker socket."""
    procs: list[subprocess.Popen[bytes]] = []

    def start(broker_path: str) -> subprocess.Popen[bytes]:
        log = open(tmp_path / "nsproxyd.log", "ab")  # noqa: SIM115
        proc = subprocess.Popen(
            [sys.executable, "-m", "nsproxy_appliance.daemon.main", "--config", paths.config, "--broker", broker_path],
            stdout=log, stderr=log, stdin=subprocess.DEVNULL,
        )  # fmt: skip
        log.close()
        procs.append(proc)

        def applied() -> bool:
            try:
                return bool(admin(paths, "GET", "/readyz", timeout=2)[1].get("applied"))
            except OSError:
                return False

        wait_until(applied, what="the config applied")
        return proc

    yield start
    for proc in procs:
        proc.terminate()
        proc.wait(timeout=20)


def forged(kind: str, tenant_path: str, other_path: str) -> Answer:
    """A listen answer: one forged socket for the tenant's 127.0.0.1:8080, and the identity claimed."""

    def answer(request: dict[str, Any]) -> tuple[dict[str, Any], list[socket.socket]]:
        claimed = identity_of(tenant_path)
        if kind == "unix":
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        elif kind == "udp":
            sock = netns.socket_in(tenant_path, socket.AF_INET, socket.SOCK_DGRAM)
            sock.bind(("127.0.0.1", 8080))
        elif kind == "not listening":
            sock = listening_in(tenant_path, listen=False)
        elif kind == "other address":
            sock = listening_in(tenant_path, port=8099)
        elif kind == "other namespace":
            sock = listening_in(other_path)
        elif kind == "other namespace, its identity claimed":
            sock = listening_in(other_path)
            claimed = identity_of(other_path)
        elif kind == "host namespace":
            sock = listening_in(None, port=0)
            claimed = NetnsIdentity(claimed.dev, claimed.ino, netns.cookie_of(sock))
        else:
            raise AssertionError(kind)
        reply = {"identity": claimed.to_json(), "sockets": [{"listen": "127.0.0.1:8080", "fd": 0, "error": None}]}
        return reply, [sock]

    return answer


@pytest.mark.parametrize(
    ("kind", "reason"),
    [
        ("unix", "family"),
        ("udp", "expected a TCP stream socket"),
        ("not listening", "not listening"),
        ("other address", "bound to 127.0.0.1:8099, expected 127.0.0.1:8080"),
        ("other namespace", "made in another network namespace"),
        ("other namespace, its identity claimed", "but /run/netns/"),
        ("host namespace", "the daemon's own (host) namespace"),
    ],
)
def test_a_forged_listener_is_refused_and_the_tenant_fails_with_the_reason(
    paths, make_netns, unique, echo, daemon_with, kind, reason
):
    ns = unique("a")
    path = make_netns(ns)
    other = make_netns(unique("o"))
    write_config(paths, [tenant("acme", ns, 8080, echo)])
    fake = FakeBroker(str(paths.runtime_dir) + "/fake-broker.sock", forged(kind, path, other))
    try:
        daemon_with(fake.sock.getsockname())
        acme = tenants_by_name(paths)["acme"]
        assert acme["state"] == "failed", acme
        assert "from the broker" in acme["last_error"] and reason in acme["last_error"], acme["last_error"]
        assert not acme["listeners"][0]["listening"]
    finally:
        fake.close()


def test_a_forged_upstream_socket_is_refused_and_the_request_gets_502(paths, make_netns, unique, daemon_with):
    ns = unique("a")
    path = make_netns(ns)
    t = tenant("acme", ns, 8080, "http://127.0.0.1:9000")
    t = dataclasses.replace(t, upstream=dataclasses.replace(t.upstream, from_ns="tenant"))
    write_config(paths, [t])

    def answer(request: dict[str, Any]) -> tuple[dict[str, Any], list[socket.socket]]:
        me = identity_of(path)
        if request["op"] == "listen":  # the real listener: the tenant serves
            reply = {"identity": me.to_json(), "sockets": [{"listen": "127.0.0.1:8080", "fd": 0, "error": None}]}
            return reply, [listening_in(path)]
        host_sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)  # made in the host namespace
        return {"identity": me.to_json(), "count": 1}, [host_sock]

    fake = FakeBroker(str(paths.runtime_dir) + "/fake-broker.sock", answer)
    try:
        daemon_with(fake.sock.getsockname())
        assert tenants_by_name(paths)["acme"]["state"] == "serving"
        assert get_in(path, "127.0.0.1", 8080).status == 502
        assert any(r["op"] == "upstream" for r in fake.requests)
    finally:
        fake.close()


# ---- the checks themselves, on real sockets --------------------------------------------------------


def test_check_listener_accepts_the_right_socket_only(make_netns, unique):
    path, other = make_netns(unique("a")), make_netns(unique("o"))
    ident = identity_of(path)
    listen = Listen("127.0.0.1", 8080)
    with listening_in(path) as good:
        fdcheck.check_listener(good, listen, ident)
        with pytest.raises(fdcheck.RefusedSocket, match=re.escape("bound to 127.0.0.1:8080, expected 127.0.0.1:8081")):
            fdcheck.check_listener(good, Listen("127.0.0.1", 8081), ident)
        with pytest.raises(fdcheck.RefusedSocket, match="another network namespace"):
            fdcheck.check_listener(good, listen, identity_of(other))
        with pytest.raises(fdcheck.RefusedSocket, match="listening, expected an unconnected socket"):
            fdcheck.check_unconnected(good, socket.AF_INET, ident)
    with netns.socket_in(path, socket.AF_INET6) as v6:
        with pytest.raises(fdcheck.RefusedSocket, match="family"):
            fdcheck.check_unconnected(v6, socket.AF_INET, ident)
        fdcheck.check_unconnected(v6, socket.AF_INET6, ident)


def test_the_cookie_book_refuses_the_host_and_a_cookie_seen_for_another_namespace(make_netns, unique):
    a, b = make_netns(unique("a")), make_netns(unique("b"))
    book = fdcheck.CookieBook()
    ia, ib = identity_of(a), identity_of(b)
    book.check(ia, a)
    book.check(ib, b)
    with pytest.raises(fdcheck.RefusedSocket, match=f"cookie {ib.cookie} belongs to namespace"):
        book.check(NetnsIdentity(ia.dev, ia.ino, ib.cookie), a)  # b's socket offered as a's
    with pytest.raises(fdcheck.RefusedSocket, match=re.escape("own (host) namespace")):
        book.check(NetnsIdentity(ia.dev, ia.ino, fdcheck.host_cookie()), a)
    with pytest.raises(fdcheck.RefusedSocket, match=r"but .* is namespace"):
        book.check(ib, a)
