"""Network namespace primitives: identity, enter-and-restore, sockets made inside a netns,
and named-namespace create/delete without forking.

A thread's network namespace is per OS thread (see shared/seeds). Everything here switches the
*calling* thread only, and always switches back before returning. If switching back ever fails
the process exits at once: code must never keep running in the wrong namespace.

Where named namespaces live is NetnsRef's business (model.py); the helpers taking a name here
ask it for the path.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import socket
import struct
import sys
import threading
from collections.abc import Iterator

from .errors import NsproxyError
from .identity import NetnsIdentity
from .model import NETNS_RUN_DIR, NetnsRef

__all__ = ["NetnsError", "NetnsIdentity"]

CLONE_NEWNET = 0x40000000
MS_BIND = 0x1000
MS_REC = 0x4000
MS_SHARED = 1 << 20
MNT_DETACH = 0x2
EXIT_WRONG_NAMESPACE = 70  # EX_SOFTWARE
SO_NETNS_COOKIE = 71  # Linux 5.14+: a 64-bit id never reused while the system runs

_libc = ctypes.CDLL(None, use_errno=True)
_libc.setns.argtypes = [ctypes.c_int, ctypes.c_int]
_libc.unshare.argtypes = [ctypes.c_int]
_libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_void_p]
_libc.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]

_home_lock = threading.Lock()
_home_fd: int | None = None


class NetnsError(NsproxyError, OSError):
    """A namespace operation failed; the message says which namespace and why."""


def identity(path: str) -> NetnsIdentity:
    """(st_dev, st_ino) of the namespace at `path`; its cookie needs a socket inside (cookie_of)."""
    st = os.stat(path)
    return NetnsIdentity(st.st_dev, st.st_ino)


def cookie_of(sock: socket.socket) -> int | None:
    """The cookie of the namespace `sock` was made in; None on kernels without SO_NETNS_COOKIE."""
    try:
        return int(struct.unpack("=Q", sock.getsockopt(socket.SOL_SOCKET, SO_NETNS_COOKIE, 8))[0])
    except OSError:
        return None


def named_path(name: str) -> str:
    return NetnsRef.named(name).path


def _check(rc: int, what: str) -> None:
    if rc != 0:
        err = ctypes.get_errno()
        raise NetnsError(err, f"{what}: {os.strerror(err)}")


def home_fd() -> int:
    """An fd on the namespace the process started in (the host netns), opened once."""
    global _home_fd
    with _home_lock:
        if _home_fd is None:
            _home_fd = os.open("/proc/self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
        return _home_fd


def _restore(fd: int) -> None:
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        sys.stderr.write(f"nsproxy: FATAL: cannot switch back to the host network namespace: {os.strerror(err)}\n")
        sys.stderr.flush()
        os._exit(EXIT_WRONG_NAMESPACE)


@contextlib.contextmanager
def entered(path: str) -> Iterator[NetnsIdentity]:
    """Run the block with the calling thread inside the netns at `path`, then switch back.

    Yields the identity (dev, ino) of the namespace actually entered, read from the fd that was
    entered: whatever replaces the file at `path` meanwhile, that is where the block ran.
    """
    home = home_fd()
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as e:
        raise NetnsError(e.errno or 0, f"cannot open network namespace {path}: {e.strerror}") from None
    try:
        st = os.fstat(fd)
        _check(_libc.setns(fd, CLONE_NEWNET), f"cannot enter network namespace {path}")
    finally:
        os.close(fd)
    try:
        yield NetnsIdentity(st.st_dev, st.st_ino)
    finally:
        _restore(home)


def socket_in(path: str | None, family: int, type_: int = socket.SOCK_STREAM) -> socket.socket:
    """A socket created inside the netns at `path` (None: the host netns).

    A socket belongs to the namespace it was created in for its whole life, so the thread only
    needs to be inside the namespace for the socket() call itself.
    """
    if path is None:
        return socket.socket(family, type_)
    with entered(path):
        return socket.socket(family, type_)


def socket_in_new_netns(family: int, type_: int, proto: int = 0) -> socket.socket:
    """A socket inside a brand-new unnamed netns that lives exactly as long as the socket.

    For probes that must leave nothing behind (e.g. "can this kernel make a dummy link?").
    """
    home = home_fd()
    _check(_libc.unshare(CLONE_NEWNET), "cannot create a throwaway network namespace")
    try:
        return socket.socket(family, type_, proto)
    finally:
        _restore(home)


def unshared(what: str = "a network namespace") -> int:
    """A new, still anonymous namespace, held by the returned fd (close it to let it go).

    Nothing names it yet: if the process dies now, the namespace dies with it. bind_named() gives
    it its name; in between the caller can learn its identity (fd_identity) and record it.
    """
    home = home_fd()
    _check(_libc.unshare(CLONE_NEWNET), f"cannot create {what}")
    try:
        return os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    finally:
        _restore(home)


def fd_path(fd: int) -> str:
    """A path that opens the namespace held by `fd` (for entered() and socket_in())."""
    return f"/proc/self/fd/{fd}"


def fd_identity(fd: int) -> NetnsIdentity:
    st = os.fstat(fd)
    return NetnsIdentity(st.st_dev, st.st_ino)


def is_mounted(path: str) -> bool:
    """Whether a namespace is bound at `path` (not a stale mount point file left after a reboot).

    A live one is an nsfs bind mount, so its device differs from its directory's.
    """
    try:
        return os.stat(path).st_dev != os.stat(os.path.dirname(path) or "/").st_dev
    except FileNotFoundError:
        return False


def mounted_identity(path: str, parent_devs: dict[str, int] | None = None) -> NetnsIdentity | None:
    """The identity of the namespace bound at `path`, or None (nothing there, or a stale mount point
    file: see is_mounted). One stat of `path`; its directory's device is remembered in `parent_devs`
    across calls (a check of 10,000 tenants stats their directory once)."""
    try:
        st = os.stat(path)
        parent = os.path.dirname(path) or "/"
        dev = parent_devs.get(parent) if parent_devs is not None else None
        if dev is None:
            dev = os.stat(parent).st_dev
            if parent_devs is not None:
                parent_devs[parent] = dev
    except OSError:
        return None
    return NetnsIdentity(st.st_dev, st.st_ino) if st.st_dev != dev else None


def exists(name: str) -> bool:
    """Whether the named namespace `name` is a live namespace."""
    return is_mounted(named_path(name))


def _ensure_run_dir() -> None:
    """Make /run/netns a shared mount point, as iproute2 does, so mounts propagate."""
    os.makedirs(NETNS_RUN_DIR, mode=0o755, exist_ok=True)
    target = NETNS_RUN_DIR.encode()
    if _libc.mount(b"none", target, b"none", MS_SHARED | MS_REC, None) == 0:
        return
    if ctypes.get_errno() != errno.EINVAL:
        _check(-1, f"cannot make {NETNS_RUN_DIR} shared")
    _check(_libc.mount(target, target, b"none", MS_BIND | MS_REC, None), f"cannot bind-mount {NETNS_RUN_DIR}")
    _check(_libc.mount(b"none", target, b"none", MS_SHARED | MS_REC, None), f"cannot make {NETNS_RUN_DIR} shared")


def bind_named(fd: int, name: str) -> NetnsIdentity:
    """Name the namespace held by `fd`: bind it to /run/netns/<name>, like `ip netns add` does."""
    _ensure_run_dir()
    path = named_path(name)
    try:
        mount_point = os.open(path, os.O_RDONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0)
    except FileExistsError:
        if is_mounted(path):
            raise NetnsError(errno.EEXIST, f"network namespace {name} already exists") from None
        # A stale mount point file (e.g. left by a crash): reuse it.
    else:
        os.close(mount_point)
    try:
        _check(
            _libc.mount(fd_path(fd).encode(), path.encode(), b"none", MS_BIND, None),
            f"cannot bind network namespace {name} to {path}",
        )
    except NetnsError:
        with contextlib.suppress(OSError):
            os.unlink(path)
        raise
    return identity(path)


def create_named(name: str) -> NetnsIdentity:
    """Create /run/netns/<name> like `ip netns add`, in this thread, without a fork."""
    fd = unshared(f"network namespace {name}")
    try:
        return bind_named(fd, name)
    finally:
        os.close(fd)


def delete_named(name: str) -> None:
    """Remove /run/netns/<name> like `ip netns delete` (the netns dies with its last user)."""
    path = named_path(name)
    if _libc.umount2(path.encode(), MNT_DETACH) != 0 and ctypes.get_errno() not in (errno.EINVAL, errno.ENOENT):
        _check(-1, f"cannot unmount network namespace {name}")
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


def pids_in(ident: NetnsIdentity) -> list[int]:
    """Processes whose network namespace is `ident` (used to refuse pruning a busy netns)."""
    return pids_by_inode([ident.inode]).get(ident.inode, [])


def pids_by_inode(inodes: list[tuple[int, int]] | set[tuple[int, int]]) -> dict[tuple[int, int], list[int]]:
    """Processes inside each namespace of `inodes` ((dev, ino) pairs), from one pass over /proc."""
    wanted: dict[tuple[int, int], list[int]] = {inode: [] for inode in inodes}
    if not wanted:
        return {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            st = os.stat(f"/proc/{entry.name}/ns/net")
        except OSError:
            continue
        found = wanted.get((st.st_dev, st.st_ino))
        if found is not None:
            found.append(int(entry.name))
    return wanted
