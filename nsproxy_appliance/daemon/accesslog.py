"""The access log: one JSON line per request, to stdout or a file, or off.

The event loop never writes to the file itself: lines are batched in memory and handed to one
writer thread (a slow pipe or disk must not stall every tenant). If the writer falls too far
behind, whole batches are dropped and counted instead of growing memory without bound.

Records are encoded with orjson: the stdlib encoder cost ~60,000 CPU instructions per record (25
fields), most of the access log's cost per request (bench/request_cost.py --callgrind).
"""

from __future__ import annotations

import asyncio
import json
import os
import queue
import threading
import time
from typing import Any

import orjson

FLUSH_INTERVAL = 0.05  # seconds a line may wait in the batch
FLUSH_LINES = 256  # hand over a batch at this many lines even before the interval
MAX_PENDING_BYTES = 8 * 1024 * 1024  # batches waiting for the writer thread beyond this are dropped

_fallback = json.JSONEncoder(separators=(",", ":"), ensure_ascii=True, default=str).encode


def encode(record: dict[str, Any]) -> bytes:
    """One JSON object, UTF-8; never raises for what a record can hold. orjson refuses a few things
    the stdlib encodes (a lone surrogate, a key that is not a string, a huge int): those go through
    the stdlib encoder, ASCII-escaped so any string survives."""
    try:
        return orjson.dumps(record, default=str)
    except (orjson.JSONEncodeError, TypeError):
        return _fallback(record).encode()


class AccessLog:
    """Callable taking one request record (a dict); see TenantContext.access_log."""

    def __init__(self, target: str, loop: asyncio.AbstractEventLoop) -> None:
        self.target = target
        self._loop = loop
        self._fd = self._open()
        self._batch: list[bytes] = []
        self._timer: asyncio.TimerHandle | None = None
        self._queue: queue.SimpleQueue[bytes | None] = queue.SimpleQueue()  # None: stop, b"": reopen
        self._pending = 0  # bytes queued and not yet written (approximate, updated from both threads)
        self._lock = threading.Lock()
        self.dropped_lines = 0
        self.write_errors = 0
        self._second = -1
        self._second_text = b""
        self._thread = threading.Thread(target=self._writer, name="nsproxyd-accesslog", daemon=True)
        self._thread.start()

    def _open(self) -> int:
        if self.target == "stdout":
            return os.dup(1)
        return os.open(self.target, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o640)

    def reopen(self) -> None:
        """Reopen the file after rotation (SIGUSR1); lines batched so far go to the old one."""
        self.flush()
        self._queue.put(b"")

    def _time_member(self) -> bytes:
        """`{"time":"2026-12-01T15:00:00.123Z",` -- the start of a line: time first, for people."""
        now = time.time()
        second = int(now)
        if second != self._second:
            self._second = second
            self._second_text = time.strftime('{"time":"%Y-%m-%dT%H:%M:%S', time.gmtime(second)).encode()
        return b'%s.%03dZ",' % (self._second_text, int((now - second) * 1000))

    def __call__(self, record: dict[str, Any]) -> None:
        line = encode(record)
        if "time" not in record:
            # the record's own members follow the time: no copy of the dict to put it first
            line = self._time_member() + line[1:] if len(line) > 2 else self._time_member()[:-1] + b"}"
        self._batch.append(line)
        if len(self._batch) >= FLUSH_LINES:
            self.flush()
        elif self._timer is None:
            self._timer = self._loop.call_later(FLUSH_INTERVAL, self.flush)

    def flush(self) -> None:
        """Hand the current batch to the writer thread (never blocks on I/O)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if not self._batch:
            return
        lines = len(self._batch)
        self._batch.append(b"")  # the last line's newline
        data = b"\n".join(self._batch)
        self._batch = []
        with self._lock:
            if self._pending + len(data) > MAX_PENDING_BYTES:
                self.dropped_lines += lines
                return
            self._pending += len(data)
        self._queue.put(data)

    def _writer(self) -> None:
        while True:
            data = self._queue.get()
            if data is None:
                return
            if not data:
                try:
                    fd = self._open()
                except OSError:
                    self.write_errors += 1  # keep writing to the old file
                else:
                    os.close(self._fd)
                    self._fd = fd
                continue
            size = len(data)
            view = memoryview(data)
            try:
                while view:
                    view = view[os.write(self._fd, view) :]
            except OSError:
                self.write_errors += 1
            with self._lock:
                self._pending -= size

    def close(self, timeout: float = 5.0) -> None:
        """Write what is buffered, stop the writer thread and close the file."""
        self.flush()
        self._queue.put(None)
        self._thread.join(timeout)
        os.close(self._fd)
