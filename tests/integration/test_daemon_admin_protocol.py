"""The admin API's HTTP handling on the unix socket: keep-alive, methods, malformed and large input."""

from __future__ import annotations

import json
import socket

import pytest
from daemon_harness import tenant, write_config
from support import split_response

from nsproxy_appliance import daemon_control

pytestmark = pytest.mark.root


@pytest.fixture
def admin_sock(daemon_launcher, make_netns, unique, echo):
    paths = daemon_launcher
    ns = unique("a")
    make_netns(ns)
    gen = write_config(paths, [tenant("acme", ns, 8080, echo)])
    daemon_control.ensure_daemon(paths, gen, timeout=20)

    def connect() -> socket.socket:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(10)
        sock.connect(paths.admin_socket)
        return sock

    return connect


def _read_one(sock: socket.socket, buf: bytearray) -> tuple[int, dict[str, str], bytes]:
    """One response with Content-Length from `sock`; leftover bytes stay in `buf`."""
    while True:
        try:
            response, rest = split_response(bytes(buf))
        except ValueError:  # not complete yet
            chunk = sock.recv(65536)
            if not chunk:
                raise ConnectionError(f"closed before a full response: {bytes(buf)!r}") from None
            buf += chunk
            continue
        buf[:] = rest
        return response.status, response.headers, response.body


def test_keep_alive_and_pipelining(admin_sock):
    sock = admin_sock()
    sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: a\r\n\r\nGET /readyz HTTP/1.1\r\nHost: a\r\n\r\n")
    buf = bytearray()
    first = _read_one(sock, buf)
    second = _read_one(sock, buf)
    assert first[0] == 200 and json.loads(first[2]) == {"status": "ok"}
    assert second[0] == 200 and json.loads(second[2])["ready"] is True
    # Reload on the same connection, then another request after it: answered in order.
    sock.sendall(
        b"POST /reload HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\nGET /healthz HTTP/1.1\r\nHost: a\r\n\r\n"
    )
    third = _read_one(sock, buf)
    fourth = _read_one(sock, buf)
    assert third[0] == 200 and json.loads(third[2])["ok"] is True
    assert fourth[0] == 200
    sock.close()


def test_methods_and_unknown_paths(admin_sock):
    sock = admin_sock()
    buf = bytearray()
    sock.sendall(b"POST /healthz HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n")
    status, _, body = _read_one(sock, buf)
    assert status == 405 and json.loads(body)["allow"] == ["GET"]
    sock.sendall(b"GET /reload HTTP/1.1\r\nHost: a\r\n\r\n")
    status, _, body = _read_one(sock, buf)
    assert status == 405 and json.loads(body)["allow"] == ["POST"]
    sock.sendall(b"GET /nope HTTP/1.1\r\nHost: a\r\n\r\n")
    assert _read_one(sock, buf)[0] == 404
    sock.sendall(b"HEAD /metrics HTTP/1.1\r\nHost: a\r\n\r\n")
    sock.settimeout(2)
    head = sock.recv(65536)
    assert head.startswith(b"HTTP/1.1 200 ") and head.endswith(b"\r\n\r\n")  # no body after a HEAD
    assert b"text/plain; version=0.0.4" in head
    sock.close()


def test_malformed_and_oversized_requests_are_refused(admin_sock):
    sock = admin_sock()
    sock.sendall(b"BLAH\x00 / HTTP/1.1\r\n\r\n")
    status, headers, _ = _read_one(sock, bytearray())
    assert status == 400 and headers["connection"] == "close"
    assert sock.recv(10) == b""
    sock.close()

    sock = admin_sock()
    sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: a\r\nX-Big: " + b"a" * 20000 + b"\r\n\r\n")
    status, headers, _ = _read_one(sock, bytearray())
    assert status == 431 and headers["connection"] == "close"
    sock.close()

    sock = admin_sock()
    sock.sendall(b"POST /reload HTTP/1.1\r\nHost: a\r\nContent-Length: 100000\r\n\r\n" + b"x" * 100000)
    status, _, _ = _read_one(sock, bytearray())
    assert status == 413
    sock.close()
