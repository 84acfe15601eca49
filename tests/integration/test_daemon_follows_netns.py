"""The daemon follows its tenants' namespaces without an apply: a deleted one fails its tenant and
releases its sockets, one made again at the same name or path is served again within 2 s.

The heal times are printed (pytest -s) for the issue's figures.
"""

from __future__ import annotations

import ctypes
import dataclasses
import os
import socket
import subprocess
import time
from collections.abc import Iterator

import pytest
from daemon_harness import admin, get_in, tenant, tenants_by_name, wait_until, write_config

from nsproxy_appliance import daemon_control, netns
from nsproxy_appliance.model import NetnsRef

pytestmark = pytest.mark.root

HEAL_GOAL = 2.0  # seconds: a container restart heals with no operator action
NOTICE_GOAL = 1.0

_libc = ctypes.CDLL(None, use_errno=True)
MS_BIND, MNT_DETACH = 0x1000, 0x2


def _connect_via_fd(ns_fd: int, port: int) -> None:
    """Connect to 127.0.0.1:port inside the namespace held by `ns_fd` (it may have no name any more)."""
    with netns.socket_in(netns.fd_path(ns_fd), socket.AF_INET) as sock:
        sock.settimeout(2)
        sock.connect(("127.0.0.1", port))


def _serves(path: str) -> bool:
    try:
        return get_in(path, "127.0.0.1", 8080).status == 200
    except OSError:
        return False


def test_named_namespace_deleted_and_made_again_is_served_again_without_an_apply(
    daemon_launcher, make_netns, unique, echo
):
    paths = daemon_launcher
    ns_a, ns_b = unique("a"), unique("b")
    path_a, path_b = make_netns(ns_a), make_netns(ns_b)
    gen = write_config(paths, [tenant("steady", ns_a, 8080, echo), tenant("fragile", ns_b, 8080, echo)])
    daemon_control.ensure_daemon(paths, gen, timeout=20)
    assert _serves(path_b)
    old_ns = os.open(path_b, os.O_RDONLY | os.O_CLOEXEC)  # keeps the old namespace alive, to look inside
    try:
        deleted = time.monotonic()
        netns.delete_named(ns_b)  # what `ip netns del` does
        wait_until(lambda: tenants_by_name(paths)["fragile"]["state"] == "failed", NOTICE_GOAL, "fragile failed")
        noticed = time.monotonic() - deleted
        info = tenants_by_name(paths)["fragile"]
        assert "unavailable" in info["last_error"] and info["netns"]["identity"] is None
        # its sockets are released: nothing listens in the dead namespace any more
        with pytest.raises(ConnectionRefusedError):
            _connect_via_fd(old_ns, 8080)
    finally:
        os.close(old_ns)
    code, ready = admin(paths, "GET", "/readyz")
    assert code == 503 and list(ready["not_serving"]) == ["fragile"]
    assert _serves(path_a)  # the other tenant never noticed

    made = time.monotonic()
    subprocess.run(["ip", "netns", "add", ns_b], check=True)  # a new namespace at the same name
    subprocess.run(["ip", "-n", ns_b, "link", "set", "lo", "up"], check=True)
    wait_until(lambda: _serves(path_b), HEAL_GOAL, "fragile served again")
    healed = time.monotonic() - made
    new = netns.identity(path_b)
    assert tenants_by_name(paths)["fragile"]["netns"]["identity"]["ino"] == new.ino
    assert admin(paths, "GET", "/readyz")[0] == 200
    print(f"\nnamed netns: deletion noticed in {noticed:.3f} s, served again {healed:.3f} s after `ip netns add`")


@pytest.fixture
def mount_point(tmp_path) -> Iterator[str]:
    """A file a namespace can be bind-mounted on, as a container runtime does; unmounted afterwards."""
    path = tmp_path / "netns-file"
    path.write_text("")
    yield str(path)
    while _libc.umount2(str(path).encode(), MNT_DETACH) == 0:
        pass


def _bind(source: str, target: str) -> None:
    if _libc.mount(source.encode(), target.encode(), None, MS_BIND, None) != 0:
        raise OSError(ctypes.get_errno(), f"mount --bind {source} {target}")


def test_path_namespace_replaced_by_a_new_bind_mount_is_served_again(
    daemon_launcher, make_netns, unique, echo, mount_point
):
    paths = daemon_launcher
    first, second = make_netns(unique("c1")), make_netns(unique("c2"))
    _bind(first, mount_point)
    t = dataclasses.replace(tenant("initech", unique("x"), 8080, echo), netns=NetnsRef(path=mount_point))
    gen = write_config(paths, [t])
    daemon_control.ensure_daemon(paths, gen, timeout=20)
    assert _serves(mount_point) and _serves(first)

    # The container restarts: its old namespace goes, a new one is mounted at the same path.
    assert _libc.umount2(mount_point.encode(), MNT_DETACH) == 0
    replaced = time.monotonic()
    _bind(second, mount_point)
    wait_until(lambda: _serves(second), HEAL_GOAL, "initech served in the new namespace")
    healed = time.monotonic() - replaced
    ident = netns.identity(second)
    info = tenants_by_name(paths)["initech"]
    assert (info["netns"]["identity"]["dev"], info["netns"]["identity"]["ino"]) == (ident.dev, ident.ino)
    wait_until(lambda: not _serves(first), 2.0, "the old namespace's listener closed")
    assert admin(paths, "GET", "/readyz")[0] == 200
    print(f"\n{{path}} netns: served in the replacement {healed:.3f} s after its bind mount")
