"""Whether a pid is a running nsproxyd, read from /proc (shared by the daemon and its controller)."""

from __future__ import annotations

import time

CMDLINE_ATTEMPTS = 10
_NSPROXYD_MODULE = b"nsproxy_appliance.daemon.main"
_BROKER_PROGRAM = b"nsproxy-broker"
_BROKER_MODULE = b"nsproxy_appliance.broker.server"


def nsproxyd_alive(pid: int) -> bool | None:
    """True: a live (not zombie) nsproxyd. False: gone, a zombie, or another program.

    None: it could not be told (its cmdline stayed empty, or /proc kept failing with another error
    than "no such process"), so the caller decides.
    """
    return _alive(pid, b"nsproxyd", _NSPROXYD_MODULE)


def broker_alive(pid: int) -> bool | None:
    """The same for nsproxy-broker."""
    return _alive(pid, _BROKER_PROGRAM, _BROKER_MODULE)


def _alive(pid: int, program: bytes, module: bytes) -> bool | None:
    for attempt in range(CMDLINE_ATTEMPTS):
        try:
            with open(f"/proc/{pid}/stat", "rb") as f:
                state = f.read().rsplit(b")", 1)[1].split()[0]
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                args = f.read().split(b"\0")
        except (FileNotFoundError, ProcessLookupError):
            return False  # gone
        except (OSError, IndexError):
            # Only "no such process" says it is gone: another error (EIO, a short read) is /proc
            # failing just then, and taking it for an exit made apply report a daemon that was
            # still starting as "exited before serving". Read again, like an empty cmdline.
            state, args = b"", [b""]
        if state in (b"Z", b"X"):
            return False
        if state and args != [b""]:
            return any(a.endswith(program) or a == module for a in args[:4])
        # An empty cmdline on a live process is transient (the kernel could not read its memory
        # just then, e.g. while it maps memory under load): read again.
        time.sleep(0.005 * (attempt + 1))
    return None
