"""The daemon's privileges: none. Started as root (detached, by nsproxy-apply) it drops to its user
before it opens anything; started unprivileged (systemd's User=) it only checks.

Dropping: every capability out of the bounding set (so nothing can be regained), the supplementary
groups, then the gid and the uid (all of real, effective and saved: the kernel then clears the
permitted and effective capability sets), and no_new_privs (no setuid binary or file capability
can raise them again). Then it is checked, from /proc/self/status, that CapEff and CapPrm are 0;
a daemon that still holds a capability refuses to start rather than run privileged by mistake.
"""

from __future__ import annotations

import ctypes
import errno
import grp
import os
import pwd
from dataclasses import dataclass

from ..errors import NsproxyError

PR_CAPBSET_DROP = 24
PR_SET_NO_NEW_PRIVS = 38
PR_CAP_AMBIENT = 47
PR_CAP_AMBIENT_CLEAR_ALL = 4

_libc = ctypes.CDLL(None, use_errno=True)
_libc.prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]


class PrivilegeError(NsproxyError):
    """The daemon cannot drop its privileges (or still holds some); the message says which."""


@dataclass(frozen=True)
class ProcessPrivileges:
    uid: int
    gid: int
    cap_eff: int
    cap_prm: int
    cap_bnd: int
    no_new_privs: bool

    def describe(self) -> str:
        try:
            user = pwd.getpwuid(self.uid).pw_name
        except KeyError:
            user = str(self.uid)
        return (
            f"user {user} (uid {self.uid}, gid {self.gid}), CapEff {self.cap_eff:016x}, CapPrm {self.cap_prm:016x}, "
            f"NoNewPrivs {int(self.no_new_privs)}"
        )


def current(status_path: str = "/proc/self/status") -> ProcessPrivileges:
    fields: dict[str, str] = {}
    with open(status_path) as f:
        for line in f:
            key, _, value = line.partition(":")
            fields[key] = value.strip()
    return ProcessPrivileges(
        uid=int(fields["Uid"].split()[1]),
        gid=int(fields["Gid"].split()[1]),
        cap_eff=int(fields["CapEff"], 16),
        cap_prm=int(fields["CapPrm"], 16),
        cap_bnd=int(fields["CapBnd"], 16),
        no_new_privs=fields.get("NoNewPrivs", "0") == "1",
    )


def _prctl(option: int, arg: int = 0, what: str = "") -> None:
    if _libc.prctl(option, arg, 0, 0, 0) != 0:
        err = ctypes.get_errno()
        raise PrivilegeError(f"cannot {what}: {os.strerror(err)}")


def _last_cap() -> int:
    try:
        with open("/proc/sys/kernel/cap_last_cap") as f:
            return int(f.read())
    except (OSError, ValueError):
        return 63


def resolve(user: str) -> tuple[int, int]:
    """(uid, gid) of `user` (a name or a number); PrivilegeError when there is no such user."""
    try:
        entry = pwd.getpwuid(int(user)) if user.isdigit() else pwd.getpwnam(user)
    except (KeyError, ValueError):
        if user.isdigit():
            return int(user), int(user)  # a bare uid without a passwd entry: its own group
        raise PrivilegeError(f"--user {user}: no such user (create it: useradd --system {user})") from None
    return entry.pw_uid, entry.pw_gid


def drop(user: str | None) -> ProcessPrivileges:
    """Run unprivileged from here on (as `user` when started as root) and prove it; raises
    PrivilegeError. Without `user` a root daemon keeps its uid, but not its capabilities' use:
    it still never enters a namespace (the broker does), it is just not confined."""
    if user is not None and os.geteuid() == 0:
        uid, gid = resolve(user)
        if uid == 0:
            raise PrivilegeError(f"--user {user} is root: give the daemon a user of its own")
        for cap in range(_last_cap() + 1):  # needs CAP_SETPCAP, which only root has: before setuid
            if _libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) != 0 and ctypes.get_errno() != errno.EINVAL:  # no such cap
                err = os.strerror(ctypes.get_errno())
                raise PrivilegeError(f"cannot drop capability {cap} from the bounding set: {err}")
        os.setgroups([])
        os.setresgid(gid, gid, gid)
        os.setresuid(uid, uid, uid)
    _libc.prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0)  # EINVAL on old kernels: nothing to clear
    _prctl(PR_SET_NO_NEW_PRIVS, 1, "set no_new_privs")
    now = current()
    if user is not None and (now.cap_eff or now.cap_prm or now.uid == 0):
        raise PrivilegeError(f"still privileged after dropping to {user}: {now.describe()}")
    return now


def group_of(user: str) -> int:
    """The primary gid of `user` (for the runtime dir the daemon writes its files into)."""
    return resolve(user)[1]


def group_name(gid: int) -> str:
    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return str(gid)
