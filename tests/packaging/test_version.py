"""One source for the version: the package metadata, exposed as nsproxy_appliance.__version__,
and the CHANGELOG has a section for it."""

from __future__ import annotations

import importlib.metadata
import platform
import re
import tomllib
from pathlib import Path

import nsproxy_appliance

REPO = Path(__file__).resolve().parents[2]
VERSION = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]


def test_version_comes_from_the_package_metadata() -> None:
    assert nsproxy_appliance.__version__ == importlib.metadata.version("nsproxy-appliance") == VERSION
    assert nsproxy_appliance.version_line("nsproxy") == f"nsproxy {VERSION} (Python {platform.python_version()})"


def test_no_module_hard_codes_the_version() -> None:
    pattern = re.compile(r"""__version__\s*=\s*["']""")
    offenders = [str(p) for p in (REPO / "nsproxy_appliance").rglob("*.py") if pattern.search(p.read_text())]
    assert offenders == []


def test_changelog_keeps_a_changelog_with_this_version() -> None:
    text = (REPO / "CHANGELOG.md").read_text()
    releases = re.findall(r"^## \[([^\]]+)\](?: - (\d{4}-\d{2}-\d{2}))?$", text, re.MULTILINE)
    assert releases[0] == ("Unreleased", "")
    dated = dict(releases[1:])
    assert dated.get(VERSION), f"no dated section for {VERSION}: {releases}"
    for name, _ in releases:  # every heading has its link reference at the bottom
        assert re.search(rf"^\[{re.escape(name)}\]: https://", text, re.MULTILINE), name
    sections = set(re.findall(r"^### (\w+)$", text, re.MULTILINE))
    assert sections <= {"Added", "Changed", "Deprecated", "Removed", "Fixed", "Security"}, sections


def test_the_example_inventory_installs_the_wheel_pip_builds() -> None:
    # No version or platform tag is written down: the wheel carries the compiled data plane, so its name
    # names the Python it was built for; the inventory takes the newest nsproxy_appliance-*.whl in dist/.
    group_vars = (REPO / "inventories" / "example" / "group_vars" / "nsproxy_hosts.yml").read_text()
    assert "/dist/nsproxy_appliance-*.whl" in group_vars
