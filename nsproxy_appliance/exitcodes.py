"""The CLI's exit codes (terraform's -detailed-exitcode contract), shared by the CLI and apply."""

EXIT_OK = 0  # success; with --check: in sync
EXIT_ERROR = 1  # invalid manifest, conflict, failed action, lock timeout, usage error
EXIT_PENDING = 2  # with --check only: changes pending
