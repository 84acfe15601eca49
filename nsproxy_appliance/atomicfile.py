"""Replace a file so a reader sees the old content or the new, never a half-written one.

Every failure is a StateFileError naming the file and the step that failed (a full disk shows as
`PATH: write: No space left on device`), and leaves the old file and no temporary file behind.
"""

from __future__ import annotations

import contextlib
import glob
import os
import tempfile

from .errors import StateFileError

TEMP_SUFFIX = ".tmp"


def _temp_prefix(path: str) -> str:
    return f".{os.path.basename(path)}."


def ensure_dir(directory: str) -> None:
    try:
        os.makedirs(directory, mode=0o755, exist_ok=True)
    except OSError as e:
        raise StateFileError(directory, "create directory", e) from None


def write_text(path: str, text: str, *, sync_directory: bool, mode: int | None = None) -> None:
    """Write `text` to `path` via a fsynced temp file in the same directory and a rename.

    With `sync_directory` the directory is fsynced too, so the rename itself survives a power cut
    (the ledger needs that; files on tmpfs do not). `mode`: the file's permissions (default 0600,
    mkstemp's), set before the rename so the file never appears with others.
    """
    directory = os.path.dirname(path) or "."
    ensure_dir(directory)
    try:
        fd, tmp = tempfile.mkstemp(dir=directory, prefix=_temp_prefix(path), suffix=TEMP_SUFFIX)
    except OSError as e:
        raise StateFileError(path, "create a temporary file", e) from None
    step = "write"
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            if mode is not None:
                step = "chmod"
                os.fchmod(f.fileno(), mode)
                step = "write"
            f.write(text)
            f.flush()
            step = "fsync"
            os.fsync(f.fileno())
            step = "write"  # close() may still report a deferred write error
        step = "rename"
        os.replace(tmp, path)
    except OSError as e:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise StateFileError(path, step, e) from None
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    if sync_directory:
        try:
            dir_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)
        except OSError as e:
            raise StateFileError(directory, "fsync directory", e) from None


def remove_stale_temps(path: str) -> list[str]:
    """Delete temporary files a killed writer of `path` left behind; only call under its lock."""
    directory = os.path.dirname(path) or "."
    removed = []
    for tmp in glob.glob(os.path.join(glob.escape(directory), glob.escape(_temp_prefix(path)) + "*" + TEMP_SUFFIX)):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
            removed.append(tmp)
    return removed
