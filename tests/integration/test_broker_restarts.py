"""Restarts and an upgrade lose nothing: under continuous load from inside three tenants'
namespaces (a new connection per request), the daemon is restarted 20 times, then nsproxy is
upgraded to a rebuilt wheel (the broker first, which takes the running daemon's listeners into its
keeping, then the daemon) -- and not one connection is refused, not one request fails.

Each restart is what `systemctl restart nsproxyd` does: SIGTERM (the daemon stops accepting,
drains its in-flight requests and exits), then a new daemon, which gets the very same listening
sockets from the broker; meanwhile the kernel queues connections in their backlog.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from broker_harness import Load, start_broker
from daemon_harness import tenant, write_config
from support import REPO, wait_until

from nsproxy_appliance import broker_control, daemon_control, netns
from nsproxy_appliance.runtime_config import Paths

pytestmark = pytest.mark.root

RESTARTS = 20
HELD_AT = 10  # the restart during which a request is in flight (its upstream holds the answer)
UPGRADED_VERSION = "0.1.0.post1"
BUILD_TIMEOUT = 600
STOPPING = re.compile(r' INFO stopping signal=SIGTERM|"message": "stopping"')


def build_wheel(out: Path, version: str | None) -> Path:
    """A wheel of this checkout (the data plane as Python: building with mypyc twice would cost minutes
    for what this test does not look at), optionally with another version."""
    src = out / "src"
    shutil.copytree(
        REPO, src,
        ignore=shutil.ignore_patterns(".venv", ".git", "build", "dist", "*.egg-info", "__pycache__", ".*cache",
                                      "tests", "collections", "*.so"),
    )  # fmt: skip
    if version is not None:
        pyproject = src / "pyproject.toml"
        pyproject.write_text(re.sub(r'(?m)^version = ".*"$', f'version = "{version}"', pyproject.read_text(), count=1))
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "-w", str(out), str(src)],
        check=True, capture_output=True, text=True, timeout=BUILD_TIMEOUT,
        env={**os.environ, "NSPROXY_PURE_PYTHON": "1"},
    )  # fmt: skip
    (whl,) = out.glob("nsproxy_appliance-*.whl")
    return whl


def install(wheel: Path, target: Path) -> Path:
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", str(target), str(wheel)],
        check=True, capture_output=True, text=True, timeout=BUILD_TIMEOUT,
    )  # fmt: skip
    os.chmod(target, 0o755)
    return target


@pytest.fixture
def releases(tmp_path_factory) -> Iterator[tuple[Path, Path]]:
    """Two installs of nsproxy the daemon's user can read: the current one, and a rebuilt wheel of
    the next version."""
    root = Path(tmp_path_factory.mktemp("releases"))
    shared = Path("/tmp") / f"nsproxy-lp-releases-{os.getpid()}-{time.monotonic_ns()}"
    shared.mkdir(mode=0o755)
    try:
        (root / "a").mkdir()
        (root / "b").mkdir()
        old = install(build_wheel(root / "a", None), shared / "a")
        new = install(build_wheel(root / "b", UPGRADED_VERSION), shared / "b")
        yield old, new
    finally:
        shutil.rmtree(shared, ignore_errors=True)


class HeldUpstream:
    """An upstream that answers only when released: a request to it is in flight for as long as the
    test wants (here: across a SIGTERM to the daemon)."""

    def __init__(self) -> None:
        self.arrived = 0
        self.release = threading.Event()
        held = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                held.arrived += 1
                held.release.wait(30)
                self.send_response(200)
                self.send_header("Content-Length", "4")
                self.end_headers()
                self.wfile.write(b"held")

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()


def request_in_thread(ns_path: str, port: int) -> tuple[threading.Thread, list[bytes]]:
    """One GET from inside `ns_path`, in a thread; the list gets the whole response."""
    got: list[bytes] = []

    def run() -> None:
        with netns.socket_in(ns_path, socket.AF_INET) as sock:
            sock.settimeout(30)
            sock.connect(("127.0.0.1", port))
            sock.sendall(b"GET /held HTTP/1.1\r\nHost: held\r\nConnection: close\r\n\r\n")
            data = b""
            while chunk := sock.recv(65536):
                data += chunk
            got.append(data)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, got


class Daemon:
    """nsproxyd from one release, as root dropping to the nsproxy user, with the shared broker."""

    def __init__(self, paths: Paths, python: str, release: Path, user: str) -> None:
        self.paths = paths
        env = {**os.environ, "PYTHONPATH": str(release)}
        with open(paths.log_file, "ab") as log:
            self.proc = subprocess.Popen(
                [python, "-m", "nsproxy_appliance.daemon.main", "--config", paths.config, "--pidfile", paths.pidfile,
                 "--broker", paths.broker_socket, "--user", user],
                env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=log,
                cwd="/",  # not the checkout: `python -m` would import its package, not the release's
            )  # fmt: skip

    def ready(self) -> bool:
        if self.proc.poll() is not None:
            raise AssertionError(f"nsproxyd exited with {self.proc.returncode}:\n{daemon_control.log_tail(self.paths)}")
        try:
            status, body = daemon_control.admin_request(self.paths, "GET", "/readyz", 2.0)
        except (OSError, ValueError):
            return False
        return status == 200 and isinstance(body, dict) and bool(body.get("ready"))

    def version(self) -> str:
        _, text = daemon_control.admin_request(self.paths, "GET", "/metrics", 5.0)
        match = re.search(r'nsproxy_build_info\{version="([^"]+)"', text)
        assert match, text[:500]
        return match.group(1)

    def stop(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=60)

    def stops_logged(self) -> int:
        """The "stopping" lines in the daemons' log (each daemon logs one when SIGTERM reaches it)."""
        with open(self.paths.log_file, errors="replace") as f:
            return len(STOPPING.findall(f.read()))


def test_twenty_restarts_and_an_upgrade_under_load_lose_no_request(
    open_paths, service_user, service_python, make_netns, unique, echo, releases
):
    paths = open_paths
    old, new = releases
    user = service_user.pw_name
    names = [unique(n) for n in ("a", "b", "c")]
    ns_paths = [make_netns(n) for n in names]
    held_ns, upstream = make_netns(unique("h")), HeldUpstream()
    tenants = [tenant(f"t{i}", n, 8080, echo) for i, n in enumerate(names)]
    gen = write_config(
        paths, [*tenants, tenant("held", os.path.basename(held_ns), 8080, upstream.url)], drain_timeout=10
    )
    broker_control.prepare_runtime_dir(paths, user)
    env_old = {**os.environ, "PYTHONPATH": str(old)}
    broker = start_broker(paths, "--daemon-user", user, python=service_python, env=env_old)
    daemon = Daemon(paths, service_python, old, user)
    timings: list[float] = []
    try:
        wait_until(daemon.ready, timeout=30, what="the first daemon ready")
        assert daemon.version() == "0.1.0"
        targets = [(p, "127.0.0.1", 8080, lambda body: b'"headers"' in body) for p in ns_paths]
        with Load(targets, workers=4) as load:
            wait_until(lambda: load.served() > 50, what="load flowing")
            for n in range(RESTARTS):
                before = load.served()
                began = time.monotonic()
                if n == HELD_AT:
                    # in flight when SIGTERM comes: the old daemon answers it before it exits
                    stops, (thread, got) = daemon.stops_logged(), request_in_thread(held_ns, 8080)
                    wait_until(lambda: upstream.arrived == 1, what="the held request at its upstream")
                    daemon.proc.send_signal(signal.SIGTERM)
                    wait_until(lambda d=daemon, k=stops: d.stops_logged() > k, what="the daemon draining")
                    upstream.release.set()
                    thread.join(timeout=30)
                    assert got and got[0].startswith(b"HTTP/1.1 200 ") and got[0].endswith(b"held"), got
                assert daemon.stop() == 0
                daemon = Daemon(paths, service_python, old, user)
                wait_until(daemon.ready, timeout=30, what="the restarted daemon ready")
                timings.append(time.monotonic() - began)
                wait_until(lambda before=before: load.served() > before + 20, what="requests served after a restart")

            # the upgrade: the new broker first (the daemon hands it its listeners), then the new daemon
            assert broker.stop() == 0
            broker = start_broker(paths, "--daemon-user", user, python=service_python,
                                  env={**os.environ, "PYTHONPATH": str(new)})  # fmt: skip
            wait_until(
                lambda: len(broker.held()) == len(names) + 1, what="the new broker keeping the daemon's listeners"
            )
            before = load.served()
            assert daemon.stop() == 0
            daemon = Daemon(paths, service_python, new, user)
            wait_until(daemon.ready, timeout=30, what="the upgraded daemon ready")
            assert daemon.version() == UPGRADED_VERSION
            wait_until(lambda: load.served() > before + 50, what="requests served after the upgrade")
        result = load.result
        print(
            f"\n{RESTARTS} restarts + 1 upgrade under load: {result.ok} requests served, {len(result.failed)} failed; "
            f"restart (SIGTERM -> new daemon ready) median {sorted(timings)[len(timings) // 2]:.2f} s, "
            f"max {max(timings):.2f} s"
        )
        assert result.failed == [], result.failed
        assert daemon_control.status(paths).generation == gen
    finally:
        if daemon.proc.poll() is None:
            daemon.stop()
        broker.stop()
        upstream.close()
