"""Who nsproxyd reads its files as, for the checks plan makes on its behalf (the TLS files).

The daemon reads the certificates and keys itself, after it dropped root: a key root can read but
the daemon cannot would pass plan and fail in the daemon. The user is the one the daemon is
started as: the installed unit's User= when that unit serves this config (daemon_control's
choice), else NSPROXY_DAEMON_USER (nsproxy-apply's own launch), else root (nothing to check).
The installed unit also hides some directories from the daemon (PrivateTmp=, ProtectHome=).
"""

from __future__ import annotations

import os
import pwd

from . import broker_control, daemon_control
from .manifest.tlsfiles import DaemonUser
from .paths import Paths

ROOT_NAMES = ("", "root", "0")
# What PrivateTmp=yes and ProtectHome=yes (or read-only/tmpfs) make invisible or empty to the unit.
PRIVATE_TMP = ("/tmp", "/var/tmp")
PROTECTED_HOME = ("/home", "/root", "/run/user")


def daemon_user(paths: Paths) -> DaemonUser | None:
    """The daemon's user for `paths` (None: root, or nsproxy-apply is not root and cannot check)."""
    if os.geteuid() != 0:
        return None
    hidden: tuple[str, ...] = ()
    props = _installed_unit(paths)
    if props is not None:
        name = props.get("User", "")
        hidden = (PRIVATE_TMP if props.get("PrivateTmp") == "yes" else ()) + (
            PROTECTED_HOME if props.get("ProtectHome", "no") != "no" else ()
        )
    else:
        name = broker_control.daemon_user() or ""
    if name in ROOT_NAMES:
        return None
    try:
        entry = pwd.getpwuid(int(name)) if name.isdigit() else pwd.getpwnam(name)
    except (KeyError, ValueError):
        return None  # the launch reports a user that does not exist, with the fix
    # systemd's User= gives the user its supplementary groups; nsproxy-apply's launch drops them all
    groups = tuple(os.getgrouplist(entry.pw_name, entry.pw_gid)) if props is not None else ()
    return DaemonUser(entry.pw_name, entry.pw_uid, entry.pw_gid, groups, hidden)


def _installed_unit(paths: Paths) -> dict[str, str] | None:
    """The properties of the installed nsproxyd.service that the launch would start (its user, what
    it hides), or None when the launch would not use it: one `systemctl show` for both questions."""
    if not daemon_control.systemd_is_init():
        return None
    names = (*daemon_control.UNIT_CHOICE, "User", "PrivateTmp", "ProtectHome")
    props = daemon_control.unit_properties(f"{daemon_control.UNIT}.service", names)
    _, installed = daemon_control._unit_name(paths, props)  # the launch's very choice
    return props if installed else None
