"""Checks of every socket the daemon is handed by the broker, before it serves or dials with it.

The broker is root and trusted, but a socket in the wrong namespace would serve one tenant's
endpoint to another (or the host), so nothing is taken on trust: the family, the type, listening
or not, the bound address, and the namespace cookie (SO_NETNS_COOKIE: readable without privilege,
never reused while the system runs). The cookie must be the one the broker reports for the
namespace it entered, whose (dev, ino) must be what the daemon itself sees at the tenant's path;
it may not be the daemon's own (host) namespace, and a cookie already seen for one namespace may
not come back for another (a socket of tenant B offered as tenant A's). A refused socket is closed
and the tenant fails with the reason.
"""

from __future__ import annotations

import errno
import os
import socket

from .. import netns
from ..identity import NetnsIdentity
from ..model import Listen


class RefusedSocket(Exception):
    """A socket from the broker that fails a check; the message says which and why."""


_host_cookie: int | None = None
_host_cookie_read = False


def host_cookie() -> int | None:
    """The cookie of the daemon's own network namespace (read once)."""
    global _host_cookie, _host_cookie_read
    if not _host_cookie_read:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            _host_cookie = netns.cookie_of(probe)
        _host_cookie_read = True
    return _host_cookie


class CookieBook:
    """Which namespace (dev, ino) each cookie was first reported for: a cookie is never reused, so
    the same cookie offered for another namespace is a wrong socket."""

    def __init__(self) -> None:
        self._inode_of: dict[int, tuple[int, int]] = {}

    def check(self, identity: NetnsIdentity, path: str) -> None:
        """The broker's identity for the namespace at `path`: the one the daemon sees there, and not
        the host's. Raises RefusedSocket."""
        try:
            st = os.stat(path)
        except OSError as e:
            raise RefusedSocket(f"the namespace at {path} cannot be checked: {e.strerror or e}") from None
        if (st.st_dev, st.st_ino) != identity.inode:
            raise RefusedSocket(
                f"the broker made it in namespace {identity}, but {path} is namespace {st.st_dev}:{st.st_ino}"
            )
        cookie = identity.cookie
        if cookie is None:
            return  # a kernel without SO_NETNS_COOKIE: nothing more to compare
        if cookie == host_cookie():
            raise RefusedSocket(f"the broker reports the daemon's own (host) namespace for {path}")
        known = self._inode_of.setdefault(cookie, identity.inode)
        if known != identity.inode:
            raise RefusedSocket(f"cookie {cookie} belongs to namespace {known[0]}:{known[1]}, not {identity}")


def _check_common(sock: socket.socket, family: int, identity: NetnsIdentity) -> None:
    if sock.family != family:
        raise RefusedSocket(f"family {sock.family!r}, expected {socket.AddressFamily(family)!r}")
    if sock.type != socket.SOCK_STREAM or sock.getsockopt(socket.SOL_SOCKET, socket.SO_PROTOCOL) not in (
        0,
        socket.IPPROTO_TCP,
    ):
        raise RefusedSocket(f"type {sock.type!r}, expected a TCP stream socket")
    cookie = netns.cookie_of(sock)
    if identity.cookie is not None and cookie != identity.cookie:
        raise RefusedSocket(f"made in another network namespace (cookie {cookie}, expected {identity.cookie})")


def check_listener(sock: socket.socket, listen: Listen, identity: NetnsIdentity) -> None:
    """A listening TCP socket bound to `listen`, made in the namespace `identity`."""
    _check_common(sock, socket.AF_INET6 if listen.family == 6 else socket.AF_INET, identity)
    if not sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN):
        raise RefusedSocket("not listening")
    host, port = sock.getsockname()[:2]
    if (host, port) != (listen.host, listen.port):
        bound = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        raise RefusedSocket(f"bound to {bound}, expected {listen}")


def check_unconnected(sock: socket.socket, family: int, identity: NetnsIdentity) -> None:
    """A fresh TCP socket (neither listening nor connected), made in the namespace `identity`."""
    _check_common(sock, family, identity)
    if sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN):
        raise RefusedSocket("listening, expected an unconnected socket")
    try:
        sock.getpeername()
    except OSError as e:
        if e.errno != errno.ENOTCONN:
            raise RefusedSocket(f"getpeername: {e.strerror or e}") from None
    else:
        raise RefusedSocket("already connected")
