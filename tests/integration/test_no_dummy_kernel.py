"""On a kernel without dummy links (this CI machine's), a dummy-link manifest fails at plan time:
exit 1, a message that names the dummy module, and nothing created. Skipped where dummy links work
(the kernel stage's VM, a normal host): there the kernel suite applies the same manifest."""

from __future__ import annotations

import importlib.util
import json
import os
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml
from support import REPO, run_cli

from nsproxy_appliance import ledger, netns
from nsproxy_appliance.runtime_config import Paths

pytestmark = pytest.mark.root


def _probe() -> tuple[bool, str]:
    # The kernel suite's probe (a dummy link in a throwaway netns), independent of nsproxy's own.
    spec = importlib.util.spec_from_file_location("kernel_probe", REPO / "tests" / "kernel" / "kernel_probe.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.dummy_links_supported()


HAS_DUMMY = os.geteuid() == 0 and _probe()[0]


@pytest.mark.skipif(HAS_DUMMY, reason="this kernel can create dummy links (the kernel suite covers them)")
@pytest.mark.parametrize("output", ["text", "json"])
def test_dummy_link_manifest_fails_at_plan_time_and_creates_nothing(
    output: str, tmp_path: Path, paths: Paths, unique: Callable[[str], str], netns_cleanup: list[str]
) -> None:
    data = yaml.safe_load((REPO / "examples" / "metadata-vip.yaml").read_text())
    name = unique("vip")
    data["tenants"][0]["name"] = name  # its netns defaults to the same name
    netns_cleanup.append(name)  # only matters if the applier wrongly creates it
    manifest = tmp_path / "metadata-vip.yaml"
    manifest.write_text(yaml.safe_dump(data, sort_keys=False))

    argv = [str(manifest), "--state-dir", paths.state_dir, "--runtime-dir", paths.runtime_dir]
    run = run_cli("nsproxy-apply", *argv, "--output", output, timeout=60)

    said = run.stdout + run.stderr
    assert run.returncode == 1, said
    assert "Traceback" not in said
    assert "modprobe dummy" in said and "dummy links" in said, said
    assert name in said  # which tenant needs them
    if output == "json":
        [error] = [e for e in json.loads(run.stdout)["errors"] if "dummy" in e]
        assert "modprobe dummy" in error
    assert not netns.exists(name)
    owned = ledger.load(paths.ledger)
    assert owned.namespaces == {} and owned.links == {}
    assert not os.path.exists(paths.config)  # the daemon was not handed a config either
    assert not os.path.exists(paths.pidfile)
