"""The kernel stage: run the tests that need dummy links (pytest marker `kernel`) on a real kernel.

    python tests/kernel/stage.py [PYTEST_ARGS...]     (what scripts/kernel-stage.sh runs)

Without arguments it runs every kernel-marked test (collected on the host, so the guest imports
only the files that hold them); arguments replace that list (e.g. one file, or `-k drift tests/kernel`).

On a kernel that can create dummy links, the kernel-marked tests run directly. On one that cannot
(these CI machines: CONFIG_DUMMY unset) they run inside a throwaway VM: virtme-ng boots Debian's
packaged kernel (/boot/vmlinuz-*, modules from /lib/modules) under QEMU's software emulation, with
the host's filesystem as its read-only root, so the guest runs this very checkout and virtualenv.
Nested KVM stalls on these machines before the guest kernel prints anything, hence --disable-kvm.

Prints how long the boot and the suite took. The exit status is pytest's, except that "no tests
collected" (5) is a failure: this stage exists to run tests. When the VM cannot start, the stage
fails with the reason, unless told to skip it (NSPROXY_KERNEL_STAGE=skip): then it prints
SKIPPED and the reason, and exits 0.

Environment: NSPROXY_VM_KERNEL (kernel image), NSPROXY_VM_TIMEOUT (seconds, default 420),
NSPROXY_VM_CPUS (default 2), NSPROXY_VM_MEMORY (default 2G).
"""

from __future__ import annotations

import glob
import os
import queue
import re
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from kernel_probe import dummy_links_supported

REPO = Path(__file__).resolve().parents[2]
VENV_BIN = Path(sys.executable).parent
GUEST_SCRIPT = "tests/kernel/guest.sh"
MARK_UP = re.compile(r"@@nsproxy-kernel-stage guest-up (.*)")
MARK_EXIT = re.compile(r"@@nsproxy-kernel-stage pytest-exit=(\d+)")
SHUTDOWN_GRACE = 30.0  # seconds the VM gets to power off once the suite is done
COLLECT_TIMEOUT = 120.0


def suite_timeout() -> float:
    """A hang must not eat CI's time; the bound leaves room for a loaded machine (a quiet one needs ~60 s)."""
    return float(os.environ.get("NSPROXY_VM_TIMEOUT", "420"))


PYTEST_NO_TESTS = 5


class CannotStart(Exception):
    """The VM could not be started (missing pieces, or it never reached the guest command)."""


def log(msg: str) -> None:
    print(f"kernel stage: {msg}", flush=True)


SKIP_SETTING = "NSPROXY_KERNEL_STAGE"


def skip_allowed() -> bool:
    """Whoever runs the stage said a VM that cannot start may skip it (never the default: a
    skipped stage must be asked for, not found out about later)."""
    return os.environ.get(SKIP_SETTING) == "skip"


def pytest_exit(rc: int) -> int:
    if rc == PYTEST_NO_TESTS:
        log("pytest collected no tests: that is a failure here")
        return 1
    return rc


# ---- which tests --------------------------------------------------------------------------------


def kernel_test_files() -> list[str]:
    """Files holding kernel-marked tests, collected on the host (fast) so the guest imports only them."""
    out = subprocess.run(
        [sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider", "-m", "kernel", "tests"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=COLLECT_TIMEOUT,
        check=False,
    )
    files = sorted({line.split("::", 1)[0] for line in out.stdout.splitlines() if "::" in line})
    if out.returncode not in (0, PYTEST_NO_TESTS):
        sys.stdout.write(out.stdout + out.stderr)
        raise SystemExit(f"kernel stage: collecting the kernel tests failed (pytest exit {out.returncode})")
    if not files:
        sys.stdout.write(out.stdout)
        raise SystemExit("kernel stage: no test is marked `kernel`: the stage must run tests")
    return files


# ---- running directly ---------------------------------------------------------------------------


def run_direct(args: list[str]) -> int:
    log("this kernel has dummy links: running the kernel tests directly, without a VM")
    env = {**os.environ, "NSPROXY_KERNEL_STAGE": "1"}
    start, timeout = time.monotonic(), suite_timeout()
    try:
        rc = subprocess.run(
            [sys.executable, "-m", "pytest", "-m", "kernel", *args], cwd=REPO, env=env, timeout=timeout, check=False
        ).returncode
    except subprocess.TimeoutExpired:
        log(f"FAILED: the suite did not finish within {timeout:.0f} s")
        return 1
    log(f"suite {time.monotonic() - start:.1f} s (no VM), pytest exit {rc}")
    return pytest_exit(rc)


# ---- running in a VM ----------------------------------------------------------------------------


def _natural(text: str) -> list[object]:
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", text)]


def find_kernel() -> tuple[str, str]:
    """(image, version): NSPROXY_VM_KERNEL, else the newest /boot/vmlinuz-* that has its modules."""
    chosen = os.environ.get("NSPROXY_VM_KERNEL")
    candidates = [chosen] if chosen else sorted(glob.glob("/boot/vmlinuz-*"), key=_natural, reverse=True)
    for image in candidates:
        version = os.path.basename(image).removeprefix("vmlinuz-")
        if os.access(image, os.R_OK) and os.path.isdir(f"/lib/modules/{version}"):
            return image, version
    raise CannotStart(
        f"no usable kernel: {chosen or '/boot/vmlinuz-*'} missing or without /lib/modules/<version> "
        "(install linux-image-amd64: bash scripts/setup.sh)"
    )


def vm_command(image: str, args: list[str]) -> list[str]:
    vng = shutil.which("vng", path=f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}")
    if vng is None:
        raise CannotStart("vng (virtme-ng) not found: bash scripts/setup.sh installs it into .venv")
    if shutil.which("qemu-system-x86_64") is None:
        raise CannotStart("qemu-system-x86_64 not found: install qemu-system-x86 (bash scripts/setup.sh)")
    guest = shlex.join(["sh", GUEST_SCRIPT, *args])
    return [
        vng,
        "--run",
        image,
        "--disable-kvm",  # nested KVM stalls on these machines; TCG is slow but works
        "--user",
        "root",
        "--cpus",
        os.environ.get("NSPROXY_VM_CPUS", "2"),
        "--memory",
        os.environ.get("NSPROXY_VM_MEMORY", "2G"),
        "--",
        guest,
    ]


@dataclass
class VmRun:
    started: float
    up_at: float | None = None
    exit_at: float | None = None
    pytest_rc: int | None = None
    vm_rc: int | None = None
    timed_out: bool = False


def _pump(stream, lines: queue.Queue) -> None:
    for raw in iter(stream.readline, b""):
        lines.put((time.monotonic(), raw.decode(errors="replace")))
    lines.put((time.monotonic(), None))


def _stop(proc: subprocess.Popen) -> None:
    """End the VM and everything vng started (they share its session's process group)."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=10)
            return
        except subprocess.TimeoutExpired:
            continue


def run_vm(cmd: list[str], timeout: float) -> VmRun:
    env = {**os.environ, "PATH": f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}"}  # vng runs virtme-run
    run = VmRun(started=time.monotonic())
    proc = subprocess.Popen(
        cmd,
        cwd=REPO,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    lines: queue.Queue = queue.Queue()
    threading.Thread(target=_pump, args=(proc.stdout, lines), daemon=True).start()
    deadline = run.started + timeout
    try:
        while True:
            try:
                at, line = lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                run.timed_out = True
                break
            if line is None:
                break
            sys.stdout.write(line)
            sys.stdout.flush()
            if run.up_at is None and MARK_UP.search(line):
                run.up_at = at
            elif (m := MARK_EXIT.search(line)) is not None:
                run.exit_at, run.pytest_rc = at, int(m.group(1))
                deadline = min(deadline, at + SHUTDOWN_GRACE)  # a VM stuck powering off must not cost more
    except BaseException:
        _stop(proc)
        raise
    if run.timed_out:
        _stop(proc)
    else:
        try:
            proc.wait(timeout=SHUTDOWN_GRACE)
        except subprocess.TimeoutExpired:
            _stop(proc)
    run.vm_rc = proc.returncode
    return run


def run_in_vm(args: list[str]) -> int:
    timeout = suite_timeout()
    image, version = find_kernel()
    cmd = vm_command(image, args)
    log(f"this kernel has no dummy links: booting Debian's kernel {version} in a VM (software emulation)")
    log(f"running: {shlex.join(cmd)}  (timeout {timeout:.0f} s)")
    run = run_vm(cmd, timeout)
    end = run.exit_at or time.monotonic()
    if run.up_at is None:
        why = f"timed out after {timeout:.0f} s" if run.timed_out else f"vng exited with status {run.vm_rc}"
        raise CannotStart(f"the VM never reached the test command ({why})")
    boot, suite = run.up_at - run.started, end - run.up_at
    log(f"boot {boot:.1f} s, suite {suite:.1f} s, total {end - run.started:.1f} s")
    if run.pytest_rc is None:
        why = f"timed out after {timeout:.0f} s" if run.timed_out else f"the VM stopped (status {run.vm_rc})"
        log(f"FAILED: the suite did not finish in the VM: {why}")
        return 1
    return pytest_exit(run.pytest_rc)


def main(argv: list[str]) -> int:
    os.chdir(REPO)
    args = argv or kernel_test_files()
    log(f"pytest -m kernel {shlex.join(args)}")
    supported, detail = dummy_links_supported()
    if supported:
        return run_direct(args)
    log(f"dummy link probe: {detail}")
    try:
        return run_in_vm(args)
    except CannotStart as e:
        if skip_allowed():
            log(f"SKIPPED ({SKIP_SETTING}=skip): cannot start the VM: {e}")
            return 0
        log(f"FAILED: cannot start the VM: {e} (set {SKIP_SETTING}=skip to skip the stage where no VM can run)")
        return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
