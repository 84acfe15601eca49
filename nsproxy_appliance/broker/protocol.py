"""The broker's wire format: one JSON object per SOCK_SEQPACKET message, fds as SCM_RIGHTS.

SOCK_SEQPACKET keeps message boundaries (no framing of our own) and carries ancillary data with
the message it belongs to. Requests carry an "id" the reply repeats, so the daemon may have many
requests in flight on one connection; the broker answers them in order.

    request  {"id": 7, "op": "listen", "tenant": "acme", "listen": ["127.0.0.1:8080"], "backlog": 1024}
    reply    {"id": 7, "ok": true, "identity": {"dev", "ino", "cookie"},
              "sockets": [{"listen": "127.0.0.1:8080", "fd": 0, "error": null}]}   + fds

`fd` is the index of the socket's fd among the message's fds. A reply with "ok": false has an
"error" (and "unavailable": true when the tenant's namespace cannot be entered). Operations:
hello, listen, upstream, release, adopt (server.py documents each).
"""

from __future__ import annotations

import contextlib
import os
import socket
import struct
from typing import Any

import orjson

VERSION = 1
MAX_MESSAGE = 256 * 1024  # bytes of JSON in one message (a listen reply of a tenant with many listeners)
MAX_FDS = 250  # fds in one message (the kernel's SCM_MAX_FD is 253)
SOCKET_NAME = "broker.sock"  # in the runtime dir
PIDFILE_NAME = "nsproxy-broker.pid"

_UCRED = struct.Struct("3i")  # pid, uid, gid


class ProtocolError(Exception):
    """A message that cannot be read: too long, truncated, not a JSON object, too many fds."""


# orjson, not json: a third of the broker's and the daemon's work per listen round trip was json's,
# and json.loads raises RecursionError (not ValueError) for a message of 256 KiB of "[": a peer
# could have stopped the broker with one message. orjson refuses nesting deeper than 1024 levels.


def encode(message: dict[str, Any]) -> bytes:
    try:
        data = orjson.dumps(message)
    except orjson.JSONEncodeError as e:  # nothing orjson decoded fails here; a bug must cost one message
        raise ProtocolError(f"message cannot be encoded: {e}") from None
    if len(data) > MAX_MESSAGE:
        raise ProtocolError(f"message of {len(data)} bytes is over the limit of {MAX_MESSAGE}")
    return data


def decode(data: bytes, flags: int) -> dict[str, Any]:
    if flags & (socket.MSG_TRUNC | socket.MSG_CTRUNC):
        raise ProtocolError("message or its fds were truncated")
    try:
        message = orjson.loads(data)
    except orjson.JSONDecodeError as e:  # a ValueError: invalid UTF-8 and too deep nesting included
        raise ProtocolError(f"not JSON: {e}") from None
    if not isinstance(message, dict):
        raise ProtocolError("not a JSON object")
    return message


def send(sock: socket.socket, message: dict[str, Any], fds: list[int] | None = None) -> None:
    """Send one message (and its fds); raises OSError (BlockingIOError when the peer's queue is full)."""
    if fds and len(fds) > MAX_FDS:
        raise ProtocolError(f"{len(fds)} fds in one message (at most {MAX_FDS})")
    data = encode(message)
    if fds:
        socket.send_fds(sock, [data], fds)
    else:
        sock.send(data)


def receive(sock: socket.socket) -> tuple[dict[str, Any], list[int]] | None:
    """One message and the fds that came with it; None at EOF. The caller owns (and closes) the fds.

    Raises ProtocolError for a message that cannot be read (its fds are closed), OSError from the
    socket (BlockingIOError when nothing is there on a non-blocking one).
    """
    data, fds, flags, _ = socket.recv_fds(sock, MAX_MESSAGE, MAX_FDS, socket.MSG_CMSG_CLOEXEC)
    if not data and not fds:
        return None
    try:
        return decode(data, flags), fds
    except ProtocolError:
        close_fds(fds)
        raise


def close_fds(fds: list[int]) -> None:
    for fd in fds:
        with contextlib.suppress(OSError):
            os.close(fd)


def peer_credentials(sock: socket.socket) -> tuple[int, int, int]:
    """(pid, uid, gid) of the process at the other end of a unix socket (SO_PEERCRED)."""
    pid, uid, gid = _UCRED.unpack(sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size))
    return pid, uid, gid


def listen_key(host: str, port: int) -> str:
    """How a listen address is written on the wire: 127.0.0.1:8080, [::1]:8080 (as model.Listen prints)."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def parse_listen(text: str) -> tuple[str, int]:
    """'127.0.0.1:8080' / '[::1]:8080' -> (host, port); ValueError for anything else."""
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(f"not HOST:PORT: {text!r}")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return host, int(port)
