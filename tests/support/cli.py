"""The one CLI runner: this virtualenv's entry points (found next to sys.executable), as processes."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

CLI_TIMEOUT = 120.0


def program(name: str) -> str:
    """The path of entry point `name` (nsproxy-apply, nsproxy, nsproxyd) of the running Python's venv."""
    return str(Path(sys.executable).parent / name)


@dataclass
class CliRun:
    argv: list[str]
    returncode: int
    stdout: str
    stderr: str

    @property
    def json(self) -> dict[str, Any]:
        try:
            data = json.loads(self.stdout)
        except json.JSONDecodeError:
            raise AssertionError(f"no JSON on stdout:\n{self}") from None
        assert isinstance(data, dict), str(self)
        return data

    def __str__(self) -> str:
        return f"$ {' '.join(self.argv)}\n-> exit {self.returncode}\nstdout:\n{self.stdout}\nstderr:\n{self.stderr}"


def run_cli(
    name: str, *args: str, timeout: float = CLI_TIMEOUT, check_traceback: bool = True, stdin: str | None = None
) -> CliRun:
    """Run entry point `name` with `args` (and `stdin` on its standard input, else /dev/null); a
    traceback on stderr fails the test (errors must be clear)."""
    argv = [program(name), *args]
    out = subprocess.run(
        argv,
        input=stdin,
        stdin=subprocess.DEVNULL if stdin is None else None,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    run = CliRun(argv, out.returncode, out.stdout, out.stderr)
    if check_traceback:
        assert "Traceback" not in out.stderr, str(run)
    return run
