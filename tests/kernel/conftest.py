"""Fixtures for the kernel suite: nsproxy-apply and nsproxyd on dummy links (docs/kernel-stage.md).

The tests drive the real CLI (its own process; inside the VM its entry point in the test process,
see kernel_support.IN_PROCESS), each with private state/runtime dirs and a tenant whose netns and
link names are unique (the example manifest's names rewritten). Kernel state is observed with
iproute2's JSON output (`ip -n NS -j ...`), independently of nsproxy's own netlink code.
Namespaces are deleted and the daemon stopped after each test, pass or fail.

On a kernel without dummy links these tests are skipped with the way to run them — except inside
the kernel stage (NSPROXY_KERNEL_STAGE=1), where a skip would hide a broken stage and fails.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from kernel_probe import dummy_links_supported
from kernel_support import Nsproxy, VipTenant

from nsproxy_appliance.runtime_config import Paths

KERNEL_DIR = Path(__file__).resolve().parent
IN_STAGE = os.environ.get("NSPROXY_KERNEL_STAGE") == "1"


def _ours(item: pytest.Item) -> bool:
    return KERNEL_DIR in Path(str(item.path)).parents


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if IN_STAGE or not any(_ours(i) for i in items):
        return
    supported, detail = dummy_links_supported()
    if supported:
        return
    skip = pytest.mark.skip(
        reason=f"this kernel cannot create dummy links ({detail}): run `bash scripts/kernel-stage.sh`"
    )
    for item in items:
        if _ours(item):
            item.add_marker(skip)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]):
    outcome = yield
    report = outcome.get_result()
    if IN_STAGE and report.skipped and _ours(item):
        # The stage exists to run these tests: a skip there means the stage is broken.
        report.outcome = "failed"
        report.longrepr = f"skipped inside the kernel stage, which must run every kernel test: {report.longrepr}"


# ---- fixtures ----------------------------------------------------------------------------------


@pytest.fixture
def nsproxy(paths: Paths, netns_cleanup: list[str]) -> Iterator[Nsproxy]:
    # Depends on netns_cleanup so that its teardown (deleting the namespaces) runs after this one.
    tool = Nsproxy(paths)
    try:
        yield tool
    finally:
        tool.stop_daemon()


@pytest.fixture
def vip_tenant(tmp_path: Path, unique: Callable[[str], str], netns_cleanup: list[str]) -> VipTenant:
    tenant = VipTenant(name=unique("vip"), link=unique("l"), directory=tmp_path)
    netns_cleanup.append(tenant.name)  # nsproxy-apply creates it; deleted after the test whatever happens
    return tenant
