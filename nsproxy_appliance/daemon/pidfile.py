"""nsproxyd's pidfile: written at start (refused while another live nsproxyd holds it), removed on exit."""

from __future__ import annotations

import os
from collections.abc import Callable

from .. import procinfo
from ..errors import NsproxyError


class PidfileError(NsproxyError):
    """Another nsproxyd runs, or the pidfile cannot be written; the message says which."""


def write(path: str, alive: Callable[[int], bool | None] = procinfo.nsproxyd_alive, what: str = "nsproxyd") -> None:
    """Write our pid; refuse when the file names another live nsproxyd (or `what`, as `alive` tells)."""
    try:
        with open(path) as f:
            other = int(f.read().strip() or 0)
    except (FileNotFoundError, ValueError):
        other = 0
    except OSError as e:
        raise PidfileError(f"cannot read the pidfile {path}: {e.strerror}") from None
    if other and other != os.getpid() and alive(other) is not False:
        # an unreadable live process counts: better to refuse than to start a second daemon
        raise PidfileError(f"{what} is already running (pid {other}, pidfile {path})")
    tmp = f"{path}.{os.getpid()}.tmp"
    try:
        os.makedirs(os.path.dirname(path) or ".", mode=0o755, exist_ok=True)
        with open(tmp, "w") as f:
            f.write(f"{os.getpid()}\n")
        os.replace(tmp, path)
    except OSError as e:
        raise PidfileError(f"cannot write the pidfile {path}: {e.strerror}") from None


def remove(path: str) -> None:
    try:
        with open(path) as f:
            if f.read().strip() != str(os.getpid()):
                return
        os.unlink(path)
    except OSError:
        pass
