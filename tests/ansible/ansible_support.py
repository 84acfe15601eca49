"""Helpers for the Ansible suite: the real role and site.yml, run by ansible-playbook against this
machine (connection local), with simulated hosts that each get their own state/runtime dirs and
uniquely named namespaces. Every daemon and namespace a test creates is removed afterwards."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from nsproxy_appliance import netns

REPO = Path(__file__).resolve().parents[2]
VENV_BIN = Path(sys.executable).parent
ANSIBLE_PLAYBOOK = str(VENV_BIN / "ansible-playbook")
CONTROLLER_NSPROXY = str(VENV_BIN / "nsproxy")
TARGET_PYTHON = "/usr/bin/python3"  # what Ansible's interpreter discovery picks on Debian
PLAYBOOK_TIMEOUT = 300

RECAP_LINE = re.compile(
    r"^(?P<host>\S+)\s+:\s+ok=(?P<ok>\d+)\s+changed=(?P<changed>\d+)\s+unreachable=(?P<unreachable>\d+)\s+"
    r"failed=(?P<failed>\d+)\s+skipped=(?P<skipped>\d+)\s+rescued=(?P<rescued>\d+)\s+ignored=(?P<ignored>\d+)",
    re.MULTILINE,
)


@dataclass
class Run:
    """One ansible-playbook run: exit code, output, and the PLAY RECAP per host."""

    rc: int
    stdout: str
    stderr: str
    recap: dict[str, dict[str, int]]

    @property
    def output(self) -> str:
        return f"--- stdout\n{self.stdout}\n--- stderr\n{self.stderr}"

    def changed_tasks(self) -> list[str]:
        """'TASK name [host]' for every task that reported changed (for assertion messages)."""
        found, task = [], "?"
        for line in self.stdout.splitlines():
            if m := re.match(r"^(?:TASK|RUNNING HANDLER) \[(.*)\]", line):
                task = m.group(1)
            elif m := re.match(r"^changed: \[([^\]]+)\]", line):
                found.append(f"{task} [{m.group(1)}]")
        return found


def run_playbook(
    inventory: Path, *args: str, playbook: str = "site.yml", tmp: Path, extra_env: dict[str, str] | None = None
) -> Run:
    """Run ansible-playbook from the repository root (its ansible.cfg applies), quietly and
    deterministically: no colours, no retry files, temp dirs private to the test."""
    env = {
        **os.environ,
        "ANSIBLE_CONFIG": str(REPO / "ansible.cfg"),
        "ANSIBLE_NOCOLOR": "1",
        "ANSIBLE_FORCE_COLOR": "0",
        "ANSIBLE_STDOUT_CALLBACK": "default",
        "ANSIBLE_CALLBACK_RESULT_FORMAT": "json",
        "ANSIBLE_RETRY_FILES_ENABLED": "0",
        "ANSIBLE_DEPRECATION_WARNINGS": "0",
        "ANSIBLE_LOCALHOST_WARNING": "0",
        "ANSIBLE_INVENTORY_UNPARSED_WARNING": "0",
        "ANSIBLE_LOCAL_TEMP": str(tmp / "ansible-local"),
        "ANSIBLE_REMOTE_TEMP": str(tmp / "ansible-remote"),
        "ANSIBLE_HOME": str(tmp / "ansible-home"),
        "ANSIBLE_FORKS": "5",
        "PATH": f"{VENV_BIN}:{os.environ.get('PATH', '/usr/sbin:/usr/bin:/sbin:/bin')}",
        **(extra_env or {}),
    }
    cmd = [ANSIBLE_PLAYBOOK, "-i", str(inventory), playbook, *args]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=PLAYBOOK_TIMEOUT)
    recap = {
        m["host"]: {k: int(v) for k, v in m.groupdict().items() if k != "host"}
        for m in RECAP_LINE.finditer(proc.stdout)
    }
    return Run(proc.returncode, proc.stdout, proc.stderr, recap)


@dataclass
class SimHost:
    """An inventory host simulated on this machine: own dirs, own namespaces, own daemon."""

    name: str
    root: Path
    vars: dict[str, Any] = field(default_factory=dict)

    @property
    def state_dir(self) -> Path:
        return self.root / "state"

    @property
    def runtime_dir(self) -> Path:
        return self.root / "run"

    @property
    def manifest_path(self) -> Path:
        return self.root / "etc" / "tenants.yaml"

    @property
    def ledger(self) -> Path:
        return self.state_dir / "ledger.json"

    def files(self) -> list[str]:
        """Every file below this host's directories (to prove nothing was written)."""
        return sorted(str(p.relative_to(self.root)) for p in self.root.rglob("*"))


class Fleet:
    """Builds simulated hosts and their inventory; tears down their daemons and namespaces."""

    def __init__(self, tmp: Path, venv: Path, unique: Callable[[str], str]) -> None:
        self.tmp = tmp
        self.venv = venv
        self.unique = unique
        self.hosts: list[SimHost] = []
        self.netns_names: set[str] = set()

    def host(self, label: str, **overrides: Any) -> SimHost:
        root = self.tmp / label
        root.mkdir(parents=True, exist_ok=True)
        h = SimHost(name=label, root=root)
        h.vars = {
            "ansible_connection": "local",
            "ansible_python_interpreter": TARGET_PYTHON,
            "nsproxy_install": False,
            "nsproxy_venv": str(self.venv),
            "nsproxy_validate_command": f"{CONTROLLER_NSPROXY} validate",
            "nsproxy_config_dir": str(root / "etc"),
            "nsproxy_state_dir": str(h.state_dir),
            "nsproxy_runtime_dir": str(h.runtime_dir),
            # The daemon stays root here: these hosts live in pytest's root-only tmp dirs, which its own
            # user could not reach (tests/integration/test_broker_systemd.py runs the role with it).
            "nsproxy_user": "",
            "nsproxy_logrotate_path": str(root / "etc" / "logrotate.d" / "nsproxy"),  # never the machine's /etc
            # This machine has no systemd as PID 1: "none" is what "auto" picks here, without the
            # fact gathering (the converge test keeps "auto" to cover that path).
            "nsproxy_service_manager": "none",
            "nsproxy_health_retries": 3,
            "nsproxy_health_delay": 1,
            "nsproxy_health_timeout": 5,
            "nsproxy_tenants": [],
            **overrides,
        }
        self.hosts.append(h)
        return h

    def tenant(self, host: SimHost, prefix: str, upstream: str, **extra: Any) -> dict[str, Any]:
        """A tenant with its own unique netns, listening on loopback inside it."""
        name = self.unique(prefix)
        self.netns_names.add(name)
        return {"name": name, "listen": ["127.0.0.1:8080"], "upstream": upstream, **extra}

    def write_inventory(self) -> Path:
        inventory = {"nsproxy_hosts": {"hosts": {h.name: h.vars for h in self.hosts}}}
        path = self.tmp / "inventory.yml"
        path.write_text(yaml.safe_dump(inventory, sort_keys=False))
        return path

    def run(self, *args: str, **kwargs: Any) -> Run:
        return run_playbook(self.write_inventory(), *args, tmp=self.tmp, **kwargs)

    def teardown(self) -> None:
        for h in self.hosts:
            stop_daemon(h.runtime_dir / "nsproxyd.pid")
        for name in self.netns_names:
            netns.delete_named(name)


def stop_daemon(pidfile: Path, timeout: float = 10.0) -> None:
    """SIGTERM the daemon a test's applier launched (its pidfile), then the socket broker it started
    (its pidfile next to the daemon's); SIGKILL what lingers."""
    _stop_by_pidfile(pidfile, timeout)
    _stop_by_pidfile(pidfile.parent / "nsproxy-broker.pid", timeout)


def _stop_by_pidfile(pidfile: Path, timeout: float) -> None:
    try:
        pid = int(pidfile.read_text().strip())
    except (OSError, ValueError):
        return
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return
    if b"nsproxy" not in cmdline:  # a stale pidfile whose pid was reused: not ours
        return
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not Path(f"/proc/{pid}").exists():
            return
        time.sleep(0.05)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)


def netns_exists(name: str) -> bool:
    return netns.exists(name)


def install_vars(venv: Path, wheel: Path, tmp: Path) -> dict[str, Any]:
    """Role variables for a real install from the wheel (packages already present: no apt update)."""
    return {
        "nsproxy_install": True,
        "nsproxy_venv": str(venv),
        "nsproxy_package_src": str(wheel),
        "nsproxy_package_dir": str(tmp / "dist"),
        "nsproxy_pip_constraints_src": str(REPO / "constraints.txt"),
        "nsproxy_apt_update_cache": False,
    }


def curl_in_netns(name: str, url: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["ip", "netns", "exec", name, "curl", "-sS", "--max-time", "5", url],
        capture_output=True,
        text=True,
        timeout=30,
    )
