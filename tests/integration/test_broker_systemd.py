"""The role under a real systemd (PID 1 of a systemd-nspawn container booting this host's root,
booted below): site.yml installs the user, the units and the timer and starts nsproxy.target; the
applier makes the tenants' namespaces, the broker and the daemon start (Type=notify: the target is
reached only after READY=1), and the tenants answer -- one through a `from: tenant` upstream inside
its own namespace. Then: the daemon as the nsproxy user with no capability, a reload
(RELOADING=1/READY=1), a restart served from the broker's listeners, the reconcile unit's drift on
/metrics, and a second run and a check-mode run that change nothing.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from support import REPO, header_values, wait_until

from nsproxy_appliance.daemon_user import PRIVATE_TMP, PROTECTED_HOME

VENV_BIN = Path(REPO) / ".venv" / "bin"
BOOT_TIMEOUT = 90.0
SHUTDOWN_TIMEOUT = 30.0
SYSTEM_PYTHON = "/usr/bin/python3"
# the console scripts of the venv the units run (a venv of the system Python, see Machine.venv)
SCRIPTS = {
    "nsproxyd": "nsproxy_appliance.daemon.main",
    "nsproxy-apply": "nsproxy_appliance.cli",
    "nsproxy-broker": "nsproxy_appliance.broker.server",
    "nsproxy-reconcile": "nsproxy_appliance.reconcile",
    "nsproxy": "nsproxy_appliance.cli",
}
ENTRY = {"nsproxy-apply": "apply_main"}


# ── the container ──
# A real systemd to run the role's units under: systemd-nspawn booting this host's own root,
# read-only below a tmpfs overlay (--volatile=overlay: nothing the container writes reaches the
# host), with a private network namespace of its own (only lo; the tenants' namespaces and links
# are made in there). systemd is PID 1 inside; commands run there through nsenter.
#
# No machined and no system bus on this host (systemd is not its PID 1): hence --register=no,
# --keep-unit, and a random machine id (the host's would make nspawn link journals).


class Machine:
    """A booted container: run(cmd) inside it, as root, in all its namespaces."""

    def __init__(self, proc: subprocess.Popen[bytes], log: Path) -> None:
        self.proc = proc
        self.log = log
        self.leader = 0

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")[-4000:]

    def _find_leader(self) -> int:
        if self.proc.poll() is not None:
            raise AssertionError(f"systemd-nspawn exited with {self.proc.returncode}:\n{self.log_text()}")
        # nspawn's first child is a short-lived intermediate: the leader is the child running systemd
        out = subprocess.run(["pgrep", "-P", str(self.proc.pid), "-x", "systemd"], capture_output=True, text=True)
        pids = [int(p) for p in out.stdout.split()]
        return pids[0] if pids else 0

    def run(self, cmd: str, *, check: bool = True, timeout: float = 120.0, stdin: str | None = None) -> str:
        out = subprocess.run(
            ["nsenter", "-t", str(self.leader), "-a", "--", "/bin/sh", "-c", cmd],
            input=stdin, capture_output=True, text=True, timeout=timeout, check=False,
            env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8"},
        )  # fmt: skip
        if check and out.returncode != 0:
            raise AssertionError(f"in the container, `{cmd}` exited with {out.returncode}:\n{out.stdout}{out.stderr}")
        return out.stdout

    def state(self) -> str:
        return self.run("systemctl is-system-running || true").strip()

    def boot(self) -> None:
        self.leader = wait_until(self._find_leader, timeout=BOOT_TIMEOUT, what="the container's init")
        # degraded: a unit of the host's own set failed in a container (not ours, none runs yet)
        wait_until(lambda: self.state() in ("running", "degraded"), timeout=BOOT_TIMEOUT, what="systemd booted")

    def venv(self, path: str) -> None:
        """A venv of the system Python at `path` seeing this checkout's packages (what a role's
        install would be), with console scripts: this venv's interpreter lives under /root,
        which ProtectHome= hides."""
        site_packages = next((VENV_BIN.parent / "lib").glob("python3*/site-packages"))
        # the checkout is bound into the container (booted()); its venv's interpreter must be on /
        out = self.run(f"test -x {VENV_BIN}/python && echo seen || echo missing").strip()
        assert out == "seen", f"{VENV_BIN}/python is not visible in the container (is its interpreter on /?)"
        self.run(f"{SYSTEM_PYTHON} -m venv --without-pip {path}")
        pth = f"import site; site.addsitedir({str(site_packages)!r})\n"
        self.run(f"cat > {path}/lib/python3.11/site-packages/nsproxy-test.pth", stdin=pth)
        for script, module in SCRIPTS.items():
            entry = ENTRY.get(script, "main")
            text = f"#!{path}/bin/python3\nimport sys\nfrom {module} import {entry}\nsys.exit({entry}())\n"
            self.run(f"cat > {path}/bin/{script} && chmod 755 {path}/bin/{script}", stdin=text)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)  # --boot: nspawn asks init for an orderly poweroff
            try:
                self.proc.wait(timeout=SHUTDOWN_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=SHUTDOWN_TIMEOUT)


@contextmanager
def booted() -> Iterator[Machine]:
    """A container booted with systemd, powered off (or killed) and unmounted afterwards."""
    nspawn = shutil.which("systemd-nspawn")
    assert nspawn is not None, "systemd-nspawn is needed (apt package systemd-container, scripts/setup.sh)"
    work = Path(tempfile.mkdtemp(prefix="nsproxy-sd-"))
    root = work / "root"
    root.mkdir()
    # nspawn refuses / itself as the container's tree: a (non-recursive) bind mount of it is fine
    subprocess.run(["mount", "--bind", "/", str(root)], check=True)
    log = work / "nspawn.log"
    name = f"nsproxy-{uuid.uuid4().hex[:8]}"
    try:
        with open(log, "wb") as out:
            proc = subprocess.Popen(
                [nspawn, "--quiet", "-D", str(root), "--volatile=overlay", "--private-network", "--register=no",
                 "--keep-unit", "--link-journal=no", f"--uuid={uuid.uuid4().hex}", f"--machine={name}",
                 f"--bind={REPO}",  # the checkout wherever it is (nspawn gives the container its own /tmp)
                 "--console=pipe", "--boot"],
                stdin=subprocess.DEVNULL, stdout=out, stderr=out,
            )  # fmt: skip
        machine = Machine(proc, log)
        try:
            machine.boot()
            yield machine
        finally:
            machine.stop()
    finally:
        subprocess.run(["umount", "--lazy", str(root)], check=False)
        if not os.path.ismount(root):
            shutil.rmtree(work, ignore_errors=True)


# ── the test ──

pytestmark = pytest.mark.root

VENV = "/opt/nsproxy/venv"  # the role's default nsproxy_venv, provisioned (nsproxy_install: false)
CAP_SYS_ADMIN, CAP_NET_BIND_SERVICE = 21, 10
PLAY_TIMEOUT = 900.0
INVENTORY = f"""\
nsproxy_hosts:
  hosts:
    box:
      ansible_connection: local
      ansible_python_interpreter: {SYSTEM_PYTHON}
      nsproxy_install: false
      nsproxy_validate_command: {VENV}/bin/nsproxy validate
      nsproxy_health_retries: 10
      nsproxy_health_delay: 1
      nsproxy_tenant_defaults: {{upstream: "http://127.0.0.1:9000"}}
      nsproxy_tenants:
        - {{name: alpha, listen: ["127.0.0.1:8080"]}}
        - {{name: beta, listen: ["127.0.0.1:8080"], upstream: {{url: "http://127.0.0.1:9001", from: tenant}}}}
"""
RECAP = re.compile(r"^box\s+:\s+ok=(\d+)\s+changed=(\d+)\s+unreachable=(\d+)\s+failed=(\d+)", re.MULTILINE)


def site(machine: Machine, *args: str) -> int:
    """site.yml with the role against the container itself; the number of changed tasks."""
    out = machine.run(
        f"cd {REPO} && ANSIBLE_CONFIG={REPO}/ansible.cfg ANSIBLE_NOCOLOR=1 "
        f"{VENV_BIN}/ansible-playbook -i /root/inventory.yml site.yml {' '.join(args)} 2>&1",
        check=False, timeout=PLAY_TIMEOUT,
    )  # fmt: skip
    recap = RECAP.search(out)
    assert recap and recap.group(3) == recap.group(4) == "0", out[-6000:]
    return int(recap.group(2))


def status(machine: Machine, pid: int) -> dict[str, str]:
    text = machine.run(f"cat /proc/{pid}/status")
    return {k: v.strip() for k, _, v in (line.partition(":") for line in text.splitlines())}


def main_pid(machine: Machine, unit: str) -> int:
    return int(machine.run(f"systemctl show -P MainPID {unit}").strip())


def answer(machine: Machine, netns: str) -> dict[str, Any] | None:
    out = machine.run(f"ip netns exec {netns} curl -sf --max-time 5 http://127.0.0.1:8080/hello", check=False)
    try:
        return json.loads(out)
    except ValueError:
        return None


def echo(machine: Machine, unit: str, listen: str, netns: str | None = None) -> None:
    where = f"-p NetworkNamespacePath=/run/netns/{netns} " if netns else ""
    machine.run(
        f"systemd-run --unit={unit} {where}{VENV}/bin/python3 {REPO}/examples/echo_upstream.py --listen {listen}"
    )


def test_the_role_under_a_real_systemd_serves_the_tenants_without_privilege() -> None:
    # The hardened units give their services a private /tmp and /var/tmp and hide /home and /root
    # (PrivateTmp=, ProtectHome=): a checkout there, whose packages the units' venv uses, is
    # invisible to them. Say so rather than fail deep inside the rollout.
    hidden = [d for d in (*PRIVATE_TMP, *PROTECTED_HOME) if Path(REPO).resolve().is_relative_to(d)]
    assert not hidden, f"the checkout {REPO} is under {hidden[0]}, which the hardened units hide: clone it elsewhere"
    with booted() as machine:
        machine.venv(VENV)
        machine.run("cat > /root/inventory.yml", stdin=INVENTORY)
        echo(machine, "echo-host", "127.0.0.1:9000")
        # the role: user, tmpfiles, units, timer; starts nsproxy.target (the applier makes the
        # namespaces, then the broker and the daemon: reached only once the daemon said READY=1)
        assert site(machine) > 0
        for unit in ("nsproxy-apply.service", "nsproxy-broker.service", "nsproxyd.service", "nsproxy.target",
                     "nsproxy-reconcile.timer"):  # fmt: skip
            assert machine.run(f"systemctl is-active {unit} || true").strip() == "active", machine.run(
                f"systemctl status --no-pager -l {unit}; journalctl --no-pager -n 40 -u {unit}", check=False
            )
        echo(machine, "echo-beta", "127.0.0.1:9001", netns="beta")  # beta's `from: tenant` upstream
        for netns in ("alpha", "beta"):
            body = wait_until(lambda n=netns: answer(machine, n), timeout=30, what=f"tenant {netns} answering")
            assert header_values(body["headers"], "X-Tenant-ID") == [netns], body

        daemon, broker = main_pid(machine, "nsproxyd.service"), main_pid(machine, "nsproxy-broker.service")
        d, b = status(machine, daemon), status(machine, broker)
        assert d["Uid"].split()[0] == machine.run("id -u nsproxy").strip(), d
        assert int(d["CapEff"], 16) == 0 and int(d["CapBnd"], 16) == 0 and d["NoNewPrivs"] == "1", d
        assert int(b["CapEff"], 16) == (1 << CAP_SYS_ADMIN) | (1 << CAP_NET_BIND_SERVICE), b
        uid = d["Uid"].split()[0]
        print(f"\nunder systemd: nsproxyd uid {uid} CapEff {d['CapEff']}; nsproxy-broker CapEff {b['CapEff']}")

        # reload (RELOADING=1 ... READY=1: systemctl waits for it) and restart, still serving
        machine.run("systemctl reload nsproxyd.service", timeout=60)
        machine.run("systemctl restart nsproxyd.service", timeout=60)
        assert main_pid(machine, "nsproxyd.service") != daemon
        for netns in ("alpha", "beta"):
            wait_until(lambda n=netns: answer(machine, n), timeout=30, what=f"tenant {netns} after a restart")

        # the timer's service: in sync, exported on the daemon's /metrics
        machine.run("systemctl start nsproxy-reconcile.service", timeout=180)
        drift = json.loads(machine.run("cat /run/nsproxy/drift.json"))
        assert drift["result"] == "in_sync", drift
        metrics = machine.run("curl -s --unix-socket /run/nsproxy/admin.sock http://nsproxy/metrics")
        assert "\nnsproxy_drift 0\n" in metrics, metrics[-2000:]
        assert 'nsproxy_reconcile_result{result="in_sync"} 1' in metrics, metrics[-2000:]

        # idempotence and check mode, with the units and the user in place
        assert site(machine) == 0
        assert site(machine, "--check", "--diff") == 0
