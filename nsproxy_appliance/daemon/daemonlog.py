"""The daemon's own log: text or JSON lines with levels and structured fields, written to standard
error; standard error and standard output pointed at files that SIGUSR1 reopens after rotation.

    log.info("reload", extra=fields(trigger="SIGHUP", generation=g, added=["acme"]))

text:  2026-12-01 10:00:00,123 nsproxyd[42] INFO reload trigger=SIGHUP generation=9a41c0de added=acme
json:  {"time": "2026-12-01T10:00:00.123Z", "level": "info", "logger": "nsproxyd", "pid": 42,
        "message": "reload", "trigger": "SIGHUP", "generation": "9a41c0de", "added": ["acme"]}

Files are attached to the file descriptors themselves (dup2 onto 2 and 1), not only to a logging
handler: a traceback, a warning or an access log line to `stdout` lands in the same file, and
reopening re-points the descriptor, so nothing keeps writing into a rotated file.
"""

from __future__ import annotations

import json
import logging
import os
import re
import sys
import time
from collections.abc import Iterator, Mapping
from typing import Any

from ..model import LOG_FORMATS

__all__ = ["LOG_FORMATS", "JsonFormatter", "TextFormatter", "fields", "reopen", "setup", "use_format"]

FIELDS = "nsproxy_fields"  # the LogRecord attribute that carries the structured fields
FILE_MODE = 0o640
TEXT_FORMAT = "%(asctime)s nsproxyd[%(process)d] %(levelname)s %(message)s"
_BARE = re.compile(r'[^\s"=\\]+')  # a text value that needs no quotes

_handler: logging.Handler | None = None  # the one setup() installed
_files: dict[int, str] = {}  # fd -> the path it writes to (--log-file: 2, --stdout-file: 1)


def fields(**values: Any) -> dict[str, Any]:
    """`extra=` for a log call: structured fields, `key=value` in text and keys of the JSON object."""
    return {FIELDS: values}


def _fields_of(record: logging.LogRecord) -> Mapping[str, Any]:
    values = getattr(record, FIELDS, None)
    return values if isinstance(values, Mapping) else {}


# ---- formats ---------------------------------------------------------------------------------


def _scalar(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _text_value(value: Any) -> str:
    """A value as text: lists comma-joined; quoted as a JSON string if it has spaces, quotes or `=`."""
    if isinstance(value, (set, frozenset)):
        value = sorted(value, key=str)
    text = ",".join(map(_scalar, value)) if isinstance(value, (list, tuple)) else _scalar(value)
    return text if _BARE.fullmatch(text) else json.dumps(text, ensure_ascii=False)


def _flat(values: Mapping[str, Any], prefix: str = "") -> Iterator[tuple[str, Any]]:
    """Nested mappings as dotted keys (drained.connections=3); empty values are left out of text."""
    for key, value in values.items():
        if isinstance(value, Mapping):
            yield from _flat(value, f"{prefix}{key}.")
        elif value is not None and value != [] and value != ():
            yield f"{prefix}{key}", value


class TextFormatter(logging.Formatter):
    """`TIME nsproxyd[PID] LEVEL message key=value ...`: values with spaces, quotes or `=` are quoted
    as JSON strings, so a line is always one line and splits back into its fields."""

    def __init__(self) -> None:
        super().__init__(TEXT_FORMAT)

    def formatMessage(self, record: logging.LogRecord) -> str:  # logging's name
        line = super().formatMessage(record)
        pairs = " ".join(f"{key}={_text_value(value)}" for key, value in _flat(_fields_of(record)))
        return f"{line} {pairs}" if pairs else line


_RESERVED = ("time", "level", "logger", "pid", "message")


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time (UTC, ms), level, logger, pid, message, then the fields
    (which never override those five); `exception` holds a traceback when there is one."""

    _encode = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), default=str).encode

    def format(self, record: logging.LogRecord) -> str:
        seconds = int(record.created)
        out: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "pid": record.process,
            "message": record.getMessage(),
        }
        for key, value in _fields_of(record).items():
            if key not in _RESERVED:
                out[key] = sorted(value, key=str) if isinstance(value, (set, frozenset)) else value
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        if record.stack_info:
            out["stack"] = self.formatStack(record.stack_info)
        return self._encode(out)


def formatter(log_format: str) -> logging.Formatter:
    return JsonFormatter() if log_format == "json" else TextFormatter()


# ---- where it goes -----------------------------------------------------------------------------


def _point(fd: int, path: str) -> None:
    """Make `fd` write (append) to `path`, created if missing; OSError if it cannot be opened."""
    new = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, FILE_MODE)
    try:
        stream = sys.stderr if fd == 2 else sys.stdout if fd == 1 else None
        if stream is not None:
            stream.flush()  # what is buffered belongs to the old file
        os.dup2(new, fd)
    finally:
        os.close(new)


def setup(log_file: str | None = None, stdout_file: str | None = None, log_format: str = "text") -> None:
    """Log at INFO to standard error; with `log_file`, standard error is that file, and with
    `stdout_file`, standard output is that one. Raises OSError naming the file that cannot be opened."""
    global _handler
    _files.clear()
    for fd, path in ((2, log_file), (1, stdout_file)):
        if path:
            os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
            _point(fd, path)
            _files[fd] = path
    root = logging.getLogger()
    if _handler is not None:
        root.removeHandler(_handler)
    _handler = logging.StreamHandler(sys.stderr)
    _handler.setFormatter(formatter(log_format))
    root.addHandler(_handler)
    root.setLevel(logging.INFO)


def use_format(log_format: str) -> None:
    """Switch the format (a reload may change daemon.log_format); no-op before setup()."""
    if _handler is not None:
        _handler.setFormatter(formatter(log_format))


def reopen() -> list[str]:
    """Re-point standard error and output at their files by name (SIGUSR1, after logrotate renamed
    them); returns the files that could not be reopened, which keep the old ones."""
    failed = []
    for fd, path in _files.items():
        try:
            _point(fd, path)
        except OSError as e:
            failed.append(f"{path}: {e.strerror or e}")
    return failed
