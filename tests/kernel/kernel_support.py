"""Helpers for the kernel suite: the nsproxy-apply CLI, the example tenant renamed, and kernel state
observed with iproute2's JSON output (`ip -n NS -j ...`), independently of nsproxy's netlink code.
"""

from __future__ import annotations

import contextlib
import copy
import io
import ipaddress
import json
import os
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from support import REPO, CliRun, program
from support.cli import CLI_TIMEOUT

from nsproxy_appliance import daemon_control
from nsproxy_appliance.runtime_config import Paths

EXAMPLE = REPO / "examples" / "metadata-vip.yaml"
NSPROXY_APPLY = program("nsproxy-apply")
# In the stage's software-emulated VM a Python start with nsproxy's imports costs about 20 s, so
# there the CLI runs inside the test process (its real entry point: argument parsing, exit code,
# JSON on stdout), paying the imports once; everywhere else it runs as its own process.
IN_PROCESS = os.environ.get("NSPROXY_KERNEL_CLI_IN_PROCESS") == "1"
# The daemon it launches is still its own process, and needs longer than the applier's default
# wait to start there (its imports alone take about 25 s).
VM_DAEMON_TIMEOUT = 180.0


# ---- the CLI -----------------------------------------------------------------------------------


@dataclass
class Nsproxy:
    """nsproxy-apply with this test's private state and runtime dirs."""

    paths: Paths

    def apply(self, manifest: Path, *args: str, daemon: bool = False) -> CliRun:
        argv = [NSPROXY_APPLY, str(manifest), "--state-dir", self.paths.state_dir]
        argv += ["--runtime-dir", self.paths.runtime_dir, "--output", "json", *args]
        if not daemon:
            argv.append("--no-daemon")
        if IN_PROCESS:
            return _apply_in_process(argv)
        out = subprocess.run(argv, capture_output=True, text=True, timeout=CLI_TIMEOUT, check=False)
        return CliRun(argv, out.returncode, out.stdout, out.stderr)

    def apply_ok(self, manifest: Path, *args: str, daemon: bool = False) -> dict[str, Any]:
        run = self.apply(manifest, *args, daemon=daemon)
        assert run.returncode == 0, str(run)
        return run.json

    def daemon_log(self) -> str:
        with contextlib.suppress(OSError), open(self.paths.log_file, errors="replace") as f:
            return f.read()[-4000:]
        return "(no daemon log)"

    def stop_daemon(self) -> None:
        daemon_control.stop(self.paths, timeout=30.0)  # nothing to do when none runs


def _apply_in_process(argv: list[str]) -> CliRun:
    from nsproxy_appliance import cli

    # The emulated CPU makes the daemon's start slow: allow it more than the default 30 s.
    argv = [*argv, "--daemon-timeout", str(VM_DAEMON_TIMEOUT)]
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = cli.apply_main(argv[1:])
        except SystemExit as e:  # argparse
            code = e.code if isinstance(e.code, int) else 1
    return CliRun([f"{argv[0]} (in process)", *argv[1:]], code, out.getvalue(), err.getvalue())


# ---- the tenant of examples/metadata-vip.yaml, renamed -----------------------------------------


def _example() -> dict[str, Any]:
    with open(EXAMPLE, encoding="utf-8") as f:
        data = yaml.safe_load(f)
    tenants = data["tenants"]
    assert len(tenants) == 1 and len(tenants[0]["links"]) == 1, f"{EXAMPLE} changed shape; adapt the kernel tests"
    return data


def cidrs(addresses: list[str] | tuple[str, ...] | set[str]) -> set[str]:
    """Normalised CIDR strings ("fd00:a9fe::254/128"), so manifest and kernel spellings compare."""
    return {str(ipaddress.ip_interface(a)) for a in addresses}


@dataclass
class VipTenant:
    """The example's tenant with unique names; writes manifests that vary only what a test asks."""

    name: str  # tenant and netns name (the manifest leaves netns to its default: the tenant name)
    link: str  # the dummy link (nsp0 in the example)
    directory: Path
    example: dict[str, Any] = field(default_factory=_example)
    written: int = 0

    @property
    def example_tenant(self) -> dict[str, Any]:
        return self.example["tenants"][0]

    @property
    def example_addresses(self) -> set[str]:
        return cidrs(self.example_tenant["links"][0]["addresses"])

    def manifest(
        self,
        *,
        addresses: list[str] | None = None,
        listen: list[str] | None = None,
        extra_links: Sequence[dict[str, Any]] = (),
        upstream: str | None = None,
    ) -> Path:
        data = copy.deepcopy(self.example)
        tenant = data["tenants"][0]
        tenant["name"] = self.name
        tenant["links"][0]["name"] = self.link
        if addresses is not None:
            tenant["links"][0]["addresses"] = addresses
        if listen is not None:
            tenant["listen"] = listen
        tenant["links"].extend(extra_links)
        if upstream is not None:
            data.setdefault("defaults", {})["upstream"] = upstream
        self.written += 1
        path = self.directory / f"manifest-{self.written}.yaml"
        path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
        return path


# ---- observing the kernel with iproute2 --------------------------------------------------------


def ip(netns_name: str, *args: str) -> str:
    out = subprocess.run(["ip", "-n", netns_name, *args], capture_output=True, text=True, check=False)
    assert out.returncode == 0, f"ip -n {netns_name} {' '.join(args)}: {out.stderr.strip()}"
    return out.stdout


def ip_json(netns_name: str, *args: str) -> list[dict[str, Any]]:
    return json.loads(ip(netns_name, "-j", *args) or "[]")


@dataclass(frozen=True)
class LinkState:
    ifindex: int
    kind: str | None
    up: bool
    addresses: frozenset[str]


def links(netns_name: str) -> dict[str, LinkState]:
    """Every link in the netns, with its kind, admin state and addresses (normalised CIDRs)."""
    addrs = {
        entry["ifname"]: cidrs([f"{a['local']}/{a['prefixlen']}" for a in entry.get("addr_info", [])])
        for entry in ip_json(netns_name, "addr", "show")
    }
    return {
        entry["ifname"]: LinkState(
            ifindex=entry["ifindex"],
            kind=entry.get("linkinfo", {}).get("info_kind"),
            up="UP" in entry.get("flags", []),
            addresses=frozenset(addrs.get(entry["ifname"], set())),
        )
        for entry in ip_json(netns_name, "-d", "link", "show")
    }
