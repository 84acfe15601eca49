"""Fixtures shared by every suite: unique names and cleanup of the kernel objects tests create."""

from __future__ import annotations

import contextlib
import os
import secrets
import selectors
import subprocess
import sys
from collections.abc import Callable, Iterator

import pytest
from support import REPO

from nsproxy_appliance import netns
from nsproxy_appliance.runtime_config import Paths

# Every kernel object a test creates carries this run's token, so parallel or crashed runs never
# collide, and leftovers are recognisable.
RUN_TOKEN = secrets.token_hex(2)


@pytest.fixture
def unique() -> Callable[[str], str]:
    """unique("acme") -> "t3f9a-acme-1": short (netns and link names have limits) and distinct."""
    counter = iter(range(1, 1_000_000))

    def make(prefix: str = "t") -> str:
        return f"t{RUN_TOKEN}{secrets.token_hex(1)}-{prefix}{next(counter)}"

    return make


@pytest.fixture
def paths(tmp_path) -> Paths:
    """State and runtime dirs private to this test."""
    return Paths(state_dir=str(tmp_path / "state"), runtime_dir=str(tmp_path / "run"))


@pytest.fixture
def netns_cleanup() -> Iterator[list[str]]:
    """Append netns names to the yielded list; they are deleted after the test, pass or fail."""
    names: list[str] = []
    yield names
    for name in names:
        netns.delete_named(name)


@pytest.fixture
def make_netns(netns_cleanup: list[str]) -> Callable[[str], str]:
    """Create a named netns with lo up (cleaned up after the test); returns its path."""

    def make(name: str) -> str:
        from pyroute2 import IPRoute

        netns.create_named(name)
        netns_cleanup.append(name)
        path = netns.named_path(name)
        with netns.entered(path):
            ipr = IPRoute()
        with ipr:
            ipr.link("set", index=ipr.link_lookup(ifname="lo")[0], state="up")
        return path

    return make


ECHO_STARTUP_TIMEOUT = 120.0  # a Python start in the kernel stage's software-emulated VM takes seconds


@pytest.fixture
def echo_upstream() -> Iterator[str]:
    """examples/echo_upstream.py on 127.0.0.1, a free port, in the host namespace; yields its URL."""
    proc = subprocess.Popen(
        [sys.executable, str(REPO / "examples" / "echo_upstream.py"), "--listen", "127.0.0.1:0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        with selectors.DefaultSelector() as sel:
            sel.register(proc.stdout, selectors.EVENT_READ)
            if not sel.select(timeout=ECHO_STARTUP_TIMEOUT):
                raise AssertionError(f"echo upstream printed nothing within {ECHO_STARTUP_TIMEOUT:.0f} s")
        line = proc.stdout.readline().strip()  # "echo upstream listening on http://127.0.0.1:PORT"
        assert line.startswith("echo upstream listening on http://127.0.0.1:"), line
        yield line.rsplit(" ", 1)[1]
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def pytest_collection_modifyitems(config, items):
    if os.geteuid() != 0:
        skip = pytest.mark.skip(reason="needs root (network namespaces)")
        for item in items:
            if "root" in item.keywords or "kernel" in item.keywords:
                item.add_marker(skip)


def pytest_sessionstart(session):
    """Refuse to test a stale compiled data plane: Python would import the old extension, not the
    edited source (nsproxy_appliance/daemon/compiled.py)."""
    from nsproxy_appliance.daemon import compiled

    stale = compiled.stale_modules()
    if stale:
        pytest.exit(
            f"the compiled data plane is older than its source ({', '.join(stale)}): "
            "run `bash scripts/setup.sh` to rebuild it",
            returncode=3,
        )


def _processes_under(root: str) -> list[tuple[int, str]]:
    """Processes (other than this one) whose command line names a path under `root`."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                argv = f.read().split(b"\0")
        except OSError:
            continue
        if any(root.encode() in arg for arg in argv):
            found.append((int(entry), b" ".join(argv).decode(errors="replace")[:200]))
    return found


def pytest_sessionfinish(session, exitstatus):
    """A safety net behind every test's own clean-up: a daemon or broker started for a test (its
    paths are under this session's tmp dir) must not outlive the run, even after a failure that
    skipped a teardown. Killed here, and named, so the leak is seen."""
    import signal

    try:
        root = str(session.config._tmp_path_factory.getbasetemp())
    except Exception:  # no tmp dir was made: nothing can have been started under it
        return
    leftovers = _processes_under(root)
    for pid, _ in leftovers:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    if leftovers:
        named = "".join(f"  {pid} {cmd}\n" for pid, cmd in leftovers)
        sys.stderr.write(f"\nprocesses left behind by tests, killed:\n{named}")
