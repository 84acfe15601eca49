"""The one base of every error nsproxy reports to a person: a message and the exit code it means.

Like nmstate's error.py and ifstate's exit_code(): the CLI catches NsproxyError once and prints
str(error); nothing expected ever reaches the user as a traceback. Errors that are also OS errors
(namespace and netlink failures, state-file I/O) subclass OSError too, so code that handles OSError
keeps working.
"""

from __future__ import annotations

import os
from typing import ClassVar

from .exitcodes import ExitCode


class NsproxyError(Exception):
    """An expected failure: the message says what, where and what to do."""

    exit_code: ClassVar[ExitCode] = ExitCode.ERROR


class UserError(NsproxyError):
    """A run that cannot go ahead as asked (not root, bad arguments)."""


class StateFileError(NsproxyError, OSError):
    """Reading or writing one of nsproxy's files failed: names the file and the operation."""

    def __init__(self, path: str, operation: str, error: OSError) -> None:
        code = error.errno or 0
        reason = error.strerror or os.strerror(code) if code else str(error)
        OSError.__init__(self, code, f"{path}: {operation}: {reason}")
        self.filename = path
        self.operation = operation

    def __str__(self) -> str:
        return str(self.strerror)


class LedgerError(NsproxyError):
    """The ledger is unreadable or has an unknown format; the message says which file and why."""


class LockTimeout(NsproxyError):
    """Another run held the apply lock for longer than the timeout."""


class DaemonError(NsproxyError):
    """The daemon could not be started or did not take the new config; the message says why."""


class RuntimeConfigError(NsproxyError):
    """The runtime config file cannot be used; the message names the file, field and problem."""
