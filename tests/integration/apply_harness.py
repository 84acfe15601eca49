"""Run the real `nsproxy-apply` CLI on manifests written to tmp_path, with private state dirs.

Every named netns that appears in a manifest written through the harness is deleted after the
test, pass or fail (the `netns_cleanup` fixture from tests/conftest.py).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml
from support import program, run_cli
from support.tenants import UNUSED_UPSTREAM

from nsproxy_appliance import ledger, netns
from nsproxy_appliance.runtime_config import Paths

APPLY = Path(program("nsproxy-apply"))
NSPROXY = Path(program("nsproxy"))
UPSTREAM = UNUSED_UPSTREAM  # never contacted: these tests run with --no-daemon


@dataclass
class Run:
    rc: int
    stdout: str
    stderr: str
    data: dict[str, Any] | None = None  # parsed --output json

    def ops(self, status: str | None = None) -> list[tuple[str, str]]:
        assert self.data is not None
        return [(a["op"], a["target"]) for a in self.data["actions"] if status is None or a["status"] == status]


@dataclass
class ApplyCli:
    tmp: Path
    paths: Paths
    cleanup: list[str]
    written: list[Path] = field(default_factory=list)

    def manifest(self, tenants: list[dict[str, Any]], name: str = "tenants.yaml") -> Path:
        """Write a manifest (defaults: a loopback listener, an unused upstream) and register cleanup."""
        for t in tenants:
            t.setdefault("listen", ["127.0.0.1:8080"])
            ref = t.get("netns", t["name"])
            if isinstance(ref, str) and ref not in self.cleanup:
                self.cleanup.append(ref)
        doc = {"version": 1, "defaults": {"upstream": UPSTREAM}, "tenants": tenants}
        path = self.tmp / name
        path.write_text(yaml.safe_dump(doc, sort_keys=False))
        self.written.append(path)
        return path

    def run(self, manifest: Path, *args: str, output: str = "json", daemon: bool = False) -> Run:
        """nsproxy-apply MANIFEST with this test's dirs (and --no-daemon unless `daemon`)."""
        argv = [str(manifest), *([] if daemon else ["--no-daemon"]), "--output", output]
        argv += ["--state-dir", self.paths.state_dir, "--runtime-dir", self.paths.runtime_dir, *args]
        proc = run_cli("nsproxy-apply", *argv)
        data = json.loads(proc.stdout) if output == "json" else None
        return Run(proc.returncode, proc.stdout, proc.stderr, data)

    def nsproxy(self, *args: str, output: str = "json") -> Run:
        """`nsproxy ARGS`, with --output and this test's dirs appended."""
        argv = [*args, "--output", output, "--state-dir", self.paths.state_dir, "--runtime-dir", self.paths.runtime_dir]
        proc = run_cli("nsproxy", *argv)
        data = json.loads(proc.stdout) if output == "json" and proc.stdout else None
        return Run(proc.returncode, proc.stdout, proc.stderr, data)

    def ledger(self) -> ledger.Ledger:
        return ledger.load(self.paths.ledger)

    def config(self) -> dict[str, Any]:
        return json.loads(Path(self.paths.config).read_text())


@pytest.fixture
def cli(tmp_path, paths, netns_cleanup) -> ApplyCli:
    return ApplyCli(tmp_path, paths, netns_cleanup)


def lo_is_up(name: str) -> bool:
    from pyroute2 import IPRoute

    with netns.entered(netns.named_path(name)):
        ipr = IPRoute()
    with ipr:
        return ipr.get_links(index=1)[0]["flags"] & 1 == 1


def set_lo_down(name: str) -> None:
    from pyroute2 import IPRoute

    with netns.entered(netns.named_path(name)):
        ipr = IPRoute()
    with ipr:
        ipr.link("set", index=1, state="down")
