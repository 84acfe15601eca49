"""The access log writer: JSON lines, batching off the loop thread, bounded when the sink stalls."""

from __future__ import annotations

import asyncio
import json
import os
import threading

from nsproxy_appliance.daemon import accesslog
from nsproxy_appliance.daemon.accesslog import AccessLog


def test_lines_are_json_and_complete(tmp_path):
    path = tmp_path / "access.log"

    async def run() -> None:
        log = AccessLog(str(path), asyncio.get_running_loop())
        for i in range(1000):
            log({"tenant": "acme", "path": f"/{i}", "status": 200})
        log.close()

    asyncio.run(run())
    lines = path.read_text().splitlines()
    assert len(lines) == 1000
    records = [json.loads(line) for line in lines]
    assert [r["path"] for r in records] == [f"/{i}" for i in range(1000)]
    assert all(r["time"].endswith("Z") and len(r["time"]) == 24 for r in records)


def test_batches_are_flushed_by_the_timer(tmp_path):
    path = tmp_path / "access.log"

    async def run() -> list[str]:
        log = AccessLog(str(path), asyncio.get_running_loop())
        log({"tenant": "acme"})
        for _ in range(500):  # wait (bounded) for the timer flush and the writer thread
            await asyncio.sleep(accesslog.FLUSH_INTERVAL / 5)
            if path.exists() and path.read_text():
                break
        text = path.read_text()
        log.close()
        return text.splitlines()

    assert len(asyncio.run(run())) == 1


def test_stalled_sink_drops_and_counts_instead_of_growing(tmp_path, monkeypatch):
    monkeypatch.setattr(accesslog, "MAX_PENDING_BYTES", 256 * 1024)
    fifo = str(tmp_path / "fifo")
    os.mkfifo(fifo)
    reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)  # never read until the end: the pipe fills

    async def run() -> AccessLog:
        log = AccessLog(fifo, asyncio.get_running_loop())
        for i in range(20000):
            log({"tenant": "acme", "path": "/" + "x" * 100, "i": i})
        log.flush()
        return log

    log = asyncio.run(run())
    try:
        assert log.dropped_lines > 0
        assert log._pending <= accesslog.MAX_PENDING_BYTES
    finally:
        # Drain the pipe so the writer thread can finish.
        done = threading.Event()

        def drain() -> None:
            while not done.is_set():
                try:
                    os.read(reader, 1 << 16)
                except BlockingIOError:
                    done.wait(0.01)

        t = threading.Thread(target=drain)
        t.start()
        log.close(timeout=10)
        done.set()
        t.join()
        os.close(reader)


def test_reopen_after_rotation(tmp_path):
    path = tmp_path / "access.log"
    rotated = tmp_path / "access.log.1"

    async def run() -> None:
        log = AccessLog(str(path), asyncio.get_running_loop())
        log({"n": 1})
        log.flush()
        os.rename(path, rotated)  # logrotate moves the file, then signals the daemon
        log({"n": 2})
        log.reopen()
        log({"n": 3})
        log.close()

    asyncio.run(run())
    assert [json.loads(x)["n"] for x in rotated.read_text().splitlines()] == [1, 2]
    assert [json.loads(x)["n"] for x in path.read_text().splitlines()] == [3]


def test_every_record_is_one_json_line_with_the_time_first(tmp_path):
    """What the data plane logs (strings from the wire decoded as latin-1: quotes, backslashes,
    control characters, bytes 0x80-0xff), what orjson refuses (a lone surrogate, an int key, a huge
    int) and an empty record: each one line of valid JSON, its time first, the values intact."""
    path = tmp_path / "access.log"
    records = [
        {"tenant": "acme", "path": '/a"b\\c\x01\x7f', "host": "caf\xe9", "status": 200, "duration": 0.000123},
        {"tenant": "acme", "user_agent": None, "upstream_status": None, "bytes": 0},
        {"odd": "\ud800"},
        {1: "int key"},
        {"big": 1 << 70},
        {"other": object()},
        {},
        {"time": "given", "n": 1},
    ]

    async def run() -> None:
        log = AccessLog(str(path), asyncio.get_running_loop())
        for record in records:
            log(record)
        log.close()

    asyncio.run(run())
    lines = path.read_bytes().split(b"\n")
    assert lines[-1] == b"" and len(lines) == len(records) + 1
    parsed = [json.loads(line) for line in lines[:-1]]
    for record, got in zip(records[:2], parsed[:2], strict=True):
        assert next(iter(got)) == "time" and {k: v for k, v in got.items() if k != "time"} == record
    assert parsed[2]["odd"] == "\ud800" and parsed[3]["1"] == "int key" and parsed[4]["big"] == 1 << 70
    assert parsed[5]["other"].startswith("<object object")
    assert list(parsed[6]) == ["time"] and parsed[7] == {"time": "given", "n": 1}
    assert all(len(p["time"]) == 24 and p["time"].endswith("Z") for p in parsed[:7])
