"""The CLI's exit codes (terraform's -detailed-exitcode contract), shared by every command."""

from __future__ import annotations

from enum import IntEnum


class ExitCode(IntEnum):
    OK = 0  # success; with --check: in sync; status: every tenant serves
    ERROR = 1  # invalid manifest, conflict, failed action, lock timeout, usage error, a tenant not serving
    PENDING = 2  # with --check only: changes pending


EXIT_OK = ExitCode.OK
EXIT_ERROR = ExitCode.ERROR
EXIT_PENDING = ExitCode.PENDING
