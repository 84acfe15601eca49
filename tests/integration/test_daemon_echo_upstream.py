"""examples/echo_upstream.py: the quickstart upstream answers with what it received."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator

import pytest
from support import REPO

SCRIPT = REPO / "examples" / "echo_upstream.py"


@pytest.fixture
def run_echo() -> Iterator:
    procs: list[subprocess.Popen[str]] = []

    def start(*args: str) -> str:
        proc = subprocess.Popen([sys.executable, str(SCRIPT), *args], stdout=subprocess.PIPE, text=True)
        procs.append(proc)
        line = proc.stdout.readline()
        assert line.startswith("echo upstream listening on "), line
        return line.split(" on ", 1)[1].strip()

    yield start
    for proc in procs:
        proc.terminate()
        proc.wait(timeout=10)


def test_echo_over_tcp(run_echo):
    url = run_echo("--listen", "127.0.0.1:0")
    assert url.startswith("http://127.0.0.1:")
    out = subprocess.run(
        ["curl", "-sS", "-H", "X-Tenant-Id: acme", "--data", "hello", f"{url}/path?x=1"],
        capture_output=True,
        text=True,
        check=True,
    )
    body = json.loads(out.stdout)
    assert body["method"] == "POST"
    assert body["path"] == "/path?x=1"
    assert ["X-Tenant-Id", "acme"] in body["headers"]
    assert body["body_bytes"] == 5


def test_echo_over_unix_socket(run_echo, tmp_path):
    sock = str(tmp_path / "echo.sock")
    assert run_echo("--unix", sock) == f"unix:{sock}"
    out = subprocess.run(
        ["curl", "-sS", "--unix-socket", sock, "http://upstream/u"], capture_output=True, text=True, check=True
    )
    assert json.loads(out.stdout)["path"] == "/u"
