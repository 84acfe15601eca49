"""sd_notify, as systemd's Type=notify and WatchdogSec= see it: the notifications arrive on a real
unix datagram socket given as NOTIFY_SOCKET, READY=1 only once every listener is bound."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time

import pytest
from broker_harness import start_broker
from daemon_harness import connect_in, tenant, write_config

pytestmark = pytest.mark.root


class NotifySocket:
    """What systemd listens on: a datagram socket; messages() gives every notification so far."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(path)
        self.received: list[tuple[float, dict[str, str]]] = []

    def wait_for(self, key: str, value: str | None = None, timeout: float = 20.0) -> dict[str, str]:
        """The first notification from now on with key (=value)."""
        deadline = time.monotonic() + timeout
        while True:
            self.sock.settimeout(max(0.01, deadline - time.monotonic()))
            try:
                data = self.sock.recv(4096)
            except TimeoutError:
                raise AssertionError(f"no {key}={value or '*'} within {timeout:g} s; got {self.received}") from None
            fields = dict(line.partition("=")[::2] for line in data.decode().splitlines())
            self.received.append((time.monotonic(), fields))
            if key in fields and (value is None or fields[key] == value):
                return fields

    def close(self) -> None:
        self.sock.close()


def test_ready_reloading_watchdog_and_stopping_reach_notify_socket(paths, tmp_path, make_netns, unique, echo, brokers):
    ns = unique("a")
    path = make_netns(ns)
    write_config(paths, [tenant("acme", ns, 8080, echo), tenant("beta", ns, 8081, echo)])
    broker_notify = NotifySocket(str(tmp_path / "broker-notify"))
    brokers.append(start_broker(paths, env={**os.environ, "NOTIFY_SOCKET": broker_notify.path}))
    assert broker_notify.wait_for("READY", "1")["STATUS"].startswith("serving generation")

    notify = NotifySocket(str(tmp_path / "notify"))
    env = {**os.environ, "NOTIFY_SOCKET": notify.path, "WATCHDOG_USEC": "300000"}
    daemon = subprocess.Popen(
        [sys.executable, "-m", "nsproxy_appliance.daemon.main", "--config", paths.config,
         "--broker", paths.broker_socket],
        env=env, stdin=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        ready = notify.wait_for("READY", "1")
        # READY=1 means every listener of the first generation is bound: both accept right now
        for port in (8080, 8081):
            connect_in(path, "127.0.0.1", port).close()
        assert ready["STATUS"].endswith("2 tenants, 0 failed"), ready
        notify.wait_for("WATCHDOG", "1")
        pings = sum(1 for _, f in notify.received if f.get("WATCHDOG") == "1")
        notify.wait_for("WATCHDOG", "1")  # and again: pinged from the running loop, more often than 0.3 s
        assert sum(1 for _, f in notify.received if f.get("WATCHDOG") == "1") > pings

        daemon.send_signal(signal.SIGHUP)
        reloading = notify.wait_for("RELOADING", "1")
        assert reloading["MONOTONIC_USEC"].isdigit()
        assert abs(int(reloading["MONOTONIC_USEC"]) / 1e6 - time.clock_gettime(time.CLOCK_MONOTONIC)) < 10
        assert notify.wait_for("READY", "1")["STATUS"].startswith("serving generation")

        daemon.send_signal(signal.SIGTERM)
        notify.wait_for("STOPPING", "1")
        assert daemon.wait(timeout=20) == 0
    finally:
        if daemon.poll() is None:
            daemon.kill()
            daemon.wait()
        notify.close()
        broker_notify.close()


def test_without_notify_socket_nothing_is_sent():
    from nsproxy_appliance.sdnotify import Notifier

    quiet = Notifier({})
    assert not quiet.enabled and quiet.ready("x") is False and quiet.watchdog_interval is None
    other = Notifier({"NOTIFY_SOCKET": "@abstract", "WATCHDOG_USEC": "1000000", "WATCHDOG_PID": "1"})
    assert other.enabled and other.watchdog_interval is None  # the watchdog is another process's
    mine = Notifier({"WATCHDOG_USEC": "1000000", "WATCHDOG_PID": str(os.getpid())})
    assert mine.watchdog_interval == 0.5
