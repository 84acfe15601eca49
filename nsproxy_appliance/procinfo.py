"""Whether a pid is a running nsproxyd, read from /proc (shared by the daemon and its controller)."""

from __future__ import annotations

import time

CMDLINE_ATTEMPTS = 10
_NSPROXYD_MODULE = b"nsproxy_appliance.daemon.main"


def nsproxyd_alive(pid: int) -> bool | None:
    """True: a live (not zombie) nsproxyd. False: gone, a zombie, or another program.

    None: alive, but its cmdline stayed empty on every read, so the caller decides.
    """
    for attempt in range(CMDLINE_ATTEMPTS):
        try:
            with open(f"/proc/{pid}/stat", "rb") as f:
                state = f.read().rsplit(b")", 1)[1].split()[0]
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                args = f.read().split(b"\0")
        except (OSError, IndexError):
            return False
        if state in (b"Z", b"X"):
            return False
        if args != [b""]:
            return any(a.endswith(b"nsproxyd") or a == _NSPROXYD_MODULE for a in args[:4])
        # An empty cmdline on a live process is transient (the kernel could not read its memory
        # just then, e.g. while it maps memory under load): read again.
        time.sleep(0.005 * (attempt + 1))
    return None
