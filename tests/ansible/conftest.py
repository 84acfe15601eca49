"""Fixtures for the Ansible suite (helpers in ansible_support.py)."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import yaml
from ansible_support import REPO, TARGET_PYTHON, VENV_BIN, Fleet, install_vars, run_playbook


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "molecule: runs `molecule test` (slow: about a minute)")


def _require_root() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root (network namespaces)")


@pytest.fixture(scope="session")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """nsproxy built on the controller, as a user would: `pip wheel --no-deps`."""
    out = tmp_path_factory.mktemp("wheel")
    build = tmp_path_factory.mktemp("wheel-src")
    # Build from a copy of the sources so parallel runs never share a build/ directory.
    src = build / "src"
    shutil.copytree(
        REPO,
        src,
        ignore=shutil.ignore_patterns(
            ".venv", ".git", "build", "dist", "*.egg-info", "__pycache__", ".*cache", "tests", "collections"
        ),
    )
    subprocess.run(
        [str(VENV_BIN / "pip"), "wheel", "--quiet", "--no-deps", "-w", str(out), str(src)],
        check=True,
        capture_output=True,
        text=True,
        timeout=300,
    )
    (whl,) = out.glob("nsproxy_appliance-*.whl")
    return whl


@pytest.fixture(scope="session")
def role_venv(tmp_path_factory: pytest.TempPathFactory, wheel: Path) -> Iterator[Path]:
    """A virtualenv on the "target" installed once by the role's own install path, from the wheel
    (dependencies from the package index, pinned by constraints.txt). Tests then share it, as
    hosts with a pre-provisioned venv (nsproxy_install: false) would. It lives in a directory the
    daemon's own user can read (pytest's tmp dirs are root's only), as /opt/nsproxy would be."""
    _require_root()
    tmp = tmp_path_factory.mktemp("install")
    readable = Path(tempfile.mkdtemp(prefix="nsproxy-role-venv-", dir="/tmp"))
    try:
        readable.chmod(0o755)
        venv = readable / "venv"
        inventory = tmp / "inventory.yml"
        inventory.write_text(
            yaml.safe_dump(
                {
                    "nsproxy_hosts": {
                        "hosts": {
                            "installer": {
                                "ansible_connection": "local",
                                "ansible_python_interpreter": TARGET_PYTHON,
                                **install_vars(venv, wheel, tmp),
                                # Only used by the restart handler (which finds no daemon here).
                                "nsproxy_state_dir": str(tmp / "state"),
                                "nsproxy_runtime_dir": str(tmp / "run"),
                            }
                        }
                    }
                }
            )
        )
        run = run_playbook(inventory, playbook=str(Path(__file__).parent / "playbooks" / "install.yml"), tmp=tmp)
        assert run.rc == 0, run.output
        assert run.recap["installer"]["changed"] > 0, run.output
        assert (venv / "bin" / "nsproxy-apply").exists()
        assert (venv / "bin" / "nsproxyd").exists()
        yield venv
    finally:  # also when the install fails: nothing of it left in /tmp
        shutil.rmtree(readable, ignore_errors=True)


@pytest.fixture
def fleet(tmp_path: Path, role_venv: Path, unique: Callable[[str], str]) -> Iterator[Fleet]:
    f = Fleet(tmp_path, role_venv, unique)
    try:
        yield f
    finally:
        f.teardown()


@pytest.fixture
def closed_port() -> Iterator[str]:
    """http://127.0.0.1:<port> where nothing listens: the port stays bound (not listening) during
    the test so no one else takes it, and connecting is refused."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        yield f"http://127.0.0.1:{s.getsockname()[1]}"
