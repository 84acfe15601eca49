"""Sockets made inside a tenant's network namespace: the broker's privileged work, and nothing else.

The calling thread enters the namespace only for the socket() calls (netns.entered: enter, run,
restore; the process exits if restoring fails) and binds and listens from the host namespace
afterwards: a socket keeps the namespace it was created in. The identity reported is the one of the
namespace actually entered (read from the fd that was entered, plus the cookie of a socket made
there), so a namespace replaced at the same path meanwhile cannot be mistaken for it.
"""

from __future__ import annotations

import socket

from .. import netns
from ..identity import NetnsIdentity

MAX_BACKLOG = 65535


def _family(host: str) -> int:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def _identity(entered: NetnsIdentity, sockets: list[socket.socket]) -> NetnsIdentity:
    cookie = netns.cookie_of(sockets[0]) if sockets else None
    return entered.with_cookie(cookie)


def listeners(
    path: str, addresses: list[tuple[str, str, int]], backlog: int
) -> tuple[NetnsIdentity, dict[str, socket.socket], dict[str, str]]:
    """Bound, listening sockets for `addresses` ((key, host, port) each) in the netns at `path`.

    Returns the namespace's identity, the sockets by key, and the keys that could not be bound with
    why (one bad address does not cost the tenant its other listeners). Raises netns.NetnsError when
    the namespace cannot be entered.
    """
    raw: list[tuple[str, str, int, socket.socket]] = []
    with netns.entered(path) as entered:
        try:
            for key, host, port in addresses:
                raw.append((key, host, port, socket.socket(_family(host), socket.SOCK_STREAM)))
            probe = None if raw else socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        except OSError:
            for *_, sock in raw:
                sock.close()
            raise
    if probe is not None:  # nothing to make: still learn the namespace's cookie
        with probe:
            identity = _identity(entered, [probe])
    else:
        identity = _identity(entered, [sock for *_, sock in raw])
    made: dict[str, socket.socket] = {}
    errors: dict[str, str] = {}
    for key, host, port, sock in raw:
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if sock.family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind((host, port))
            sock.listen(max(1, min(backlog, MAX_BACKLOG)))
        except OSError as e:
            sock.close()
            errors[key] = f"cannot listen on {key} in {path}: {e.strerror or e}"
            continue
        made[key] = sock
    return identity, made, errors


def unconnected(path: str, family: int, count: int) -> tuple[NetnsIdentity, list[socket.socket]]:
    """`count` fresh TCP sockets of `family` made inside the netns at `path` (for `from: tenant`
    upstream connections: the daemon connects them). Raises netns.NetnsError or OSError."""
    made: list[socket.socket] = []
    with netns.entered(path) as entered:
        try:
            for _ in range(count):
                made.append(socket.socket(family, socket.SOCK_STREAM))
        except OSError:
            for sock in made:
                sock.close()
            raise
    return _identity(entered, made), made
