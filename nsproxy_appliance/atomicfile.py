"""Replace a file so a reader sees the old content or the new, never a half-written one."""

from __future__ import annotations

import contextlib
import os
import tempfile


def write_text(path: str, text: str, *, sync_directory: bool) -> None:
    """Write `text` to `path` via a fsynced temp file in the same directory and a rename.

    With `sync_directory` the directory is fsynced too, so the rename itself survives a power cut
    (the ledger needs that; files on tmpfs do not).
    """
    directory = os.path.dirname(path) or "."
    os.makedirs(directory, mode=0o755, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{os.path.basename(path)}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    if sync_directory:
        dir_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
