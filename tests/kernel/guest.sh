#!/bin/sh
# Runs inside the kernel-stage VM (started by tests/kernel/stage.py): the kernel-marked tests
# given as arguments, between two marker lines the host uses to time the boot and the suite.
# The guest sees the host's filesystem read-only; /run and /tmp are the guest's own.
echo "@@nsproxy-kernel-stage guest-up kernel=$(uname -r) cpus=$(nproc) uptime=$(cut -d' ' -f1 /proc/uptime)s"
ip link set lo up
# Debian builds dummy as a module; creating a link autoloads it, loading it here makes a
# missing module an explicit message rather than a confusing test failure.
modprobe dummy || echo "kernel stage: modprobe dummy failed (is /lib/modules/$(uname -r) there?)"

export NSPROXY_KERNEL_STAGE=1       # the suite fails rather than skips when something is missing
export NSPROXY_KERNEL_CLI_IN_PROCESS=1  # one Python start here costs ~20 s: see kernel_support.py
export PYTHONDONTWRITEBYTECODE=1    # the checkout is read-only here
export PYTHONUNBUFFERED=1
# Scanning every installed package for pytest plugins costs seconds here; the suite uses none.
export PYTEST_DISABLE_PLUGIN_AUTOLOAD=1
.venv/bin/python -m pytest -p no:cacheprovider --basetemp=/run/nsproxy-kernel-stage -m kernel -v --durations=8 "$@"
rc=$?
echo "@@nsproxy-kernel-stage pytest-exit=$rc"
exit "$rc"
