"""The ledger file (atomic writes, format checks) and the apply lock (a real second process)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from nsproxy_appliance import ledger
from nsproxy_appliance.ledger import Ledger, LedgerError, LockTimeout
from nsproxy_appliance.netns import NetnsIdentity

A = NetnsIdentity(4, 4026531001)
B = NetnsIdentity(4, 4026531002)

HOLDER = """
import sys
from nsproxy_appliance import ledger
with ledger.locked(sys.argv[1], timeout=5):
    print("locked", flush=True)
    sys.stdin.readline()  # hold the lock until the test closes stdin
"""


def sample() -> Ledger:
    led = Ledger()
    led.own_netns("acme", A, "acme")
    led.own_link("/run/netns/acme", A, "nsp0", "dummy", 2, "acme")
    led.own_link("/var/run/docker/netns/x", B, "nsp1", "dummy", 7, "initech")
    return led


def test_round_trip(tmp_path):
    path = str(tmp_path / "state" / "ledger.json")
    ledger.save(sample(), path)
    loaded = ledger.load(path)
    assert loaded == sample()
    assert loaded.owns_netns("acme", A) and not loaded.owns_netns("acme", B) and not loaded.owns_netns("x", A)
    assert loaded.owned_link("/run/netns/acme", "nsp0").ifindex == 2
    assert json.loads(Path(path).read_text())["format"] == ledger.FORMAT_VERSION


def test_missing_file_is_an_empty_ledger(tmp_path):
    assert ledger.load(str(tmp_path / "nope.json")) == Ledger()


def test_save_is_atomic_old_content_survives_a_failed_write(tmp_path, monkeypatch):
    path = str(tmp_path / "ledger.json")
    ledger.save(sample(), path)
    before = Path(path).read_text()

    def fail(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", fail)
    with pytest.raises(OSError):
        ledger.save(Ledger(), path)
    assert Path(path).read_text() == before
    assert os.listdir(tmp_path) == ["ledger.json"]  # no temp file left behind


def test_corrupt_ledger_is_a_clear_error(tmp_path):
    path = tmp_path / "ledger.json"
    path.write_text('{"format": 1, "namespaces": [')
    with pytest.raises(LedgerError, match=r"ledger.json: not valid JSON .*nothing was changed"):
        ledger.load(str(path))
    # json raised RecursionError and UnicodeDecodeError for these: tracebacks
    for damage in (b"[" * 100_000, b'{"format": 1, "namespaces": ["\xff"]}'):
        path.write_bytes(damage)
        with pytest.raises(LedgerError, match=r"ledger.json: not valid JSON .*nothing was changed"):
            ledger.load(str(path))
    path.write_text('{"format": 99}')
    with pytest.raises(LedgerError, match="unknown ledger format 99"):
        ledger.load(str(path))
    path.write_text('{"format": 1, "namespaces": [{"name": "x"}]}')
    with pytest.raises(LedgerError, match="malformed ledger entry"):
        ledger.load(str(path))


def test_recreating_a_netns_forgets_links_of_its_previous_incarnation():
    led = sample()
    revision = led.revision
    led.own_netns("acme", B, "acme")
    assert led.owned_link("/run/netns/acme", "nsp0") is None
    assert led.owned_link("/var/run/docker/netns/x", "nsp1") is not None
    led.disown_netns("acme")
    assert "acme" not in led.namespaces and led.revision > revision


def start_holder(lock_path: str) -> subprocess.Popen:
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, lock_path], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    assert holder.stdout.readline().strip() == "locked"
    return holder


def test_lock_timeout_names_the_holder(tmp_path):
    lock_path = str(tmp_path / "apply.lock")
    holder = start_holder(lock_path)
    try:
        with pytest.raises(LockTimeout) as excinfo, ledger.locked(lock_path, timeout=0.3):
            pass
        message = str(excinfo.value)
        assert f"process {holder.pid} holds {lock_path}" in message and "--lock-timeout" in message
    finally:
        holder.stdin.close()
        holder.wait(timeout=10)


def test_second_locker_waits_and_gets_the_lock_once_released(tmp_path):
    lock_path = str(tmp_path / "apply.lock")
    holder = start_holder(lock_path)
    acquired = threading.Event()

    def wait_for_lock():
        with ledger.locked(lock_path, timeout=30):
            acquired.set()

    waiter = threading.Thread(target=wait_for_lock)
    try:
        waiter.start()
        assert not acquired.wait(0.3)  # still held by the other process
    finally:
        holder.stdin.close()
        holder.wait(timeout=10)
    waiter.join(timeout=30)
    assert acquired.is_set()
    with open(lock_path) as f:
        assert f.read() == ""  # released: the holder's pid is cleared
