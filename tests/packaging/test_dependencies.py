"""Runtime dependencies are exactly what the package imports: aiohttp (tests only) is not one of
them, and nothing the package imports is left undeclared."""

from __future__ import annotations

import ast
import importlib.metadata
import re
import sys
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PACKAGE = REPO / "nsproxy_appliance"
PROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]


def top_level_imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def package_imports() -> dict[str, set[str]]:
    """Top-level module -> the package files importing it."""
    found: dict[str, set[str]] = {}
    for path in PACKAGE.rglob("*.py"):
        for name in top_level_imports(path):
            found.setdefault(name, set()).add(str(path.relative_to(REPO)))
    return found


def distribution_name(requirement: str) -> str:
    return re.split(r"[\s<>=!~\[;]", requirement, maxsplit=1)[0].lower().replace("_", "-")


def test_no_module_of_the_package_imports_aiohttp() -> None:
    assert "aiohttp" not in package_imports(), package_imports().get("aiohttp")
    assert "aiohttp" not in {distribution_name(r) for r in PROJECT["dependencies"]}
    assert "aiohttp" in {distribution_name(r) for r in PROJECT["optional-dependencies"]["test"]}


def test_every_third_party_import_is_a_declared_runtime_dependency() -> None:
    declared = {distribution_name(r) for r in PROJECT["dependencies"]}
    providers = importlib.metadata.packages_distributions()
    third_party = {
        name: files
        for name, files in package_imports().items()
        if name not in sys.stdlib_module_names and name != "nsproxy_appliance"
    }
    undeclared = {
        name: files
        for name, files in third_party.items()
        if not {d.lower().replace("_", "-") for d in providers.get(name, [name])} & declared
    }
    assert undeclared == {}
    # ...and every declared dependency is used.
    used = {d.lower().replace("_", "-") for name in third_party for d in providers.get(name, [])}
    assert declared <= used, declared - used


def test_dev_extra_includes_what_the_tests_need() -> None:
    dev = {distribution_name(r) for r in PROJECT["optional-dependencies"]["dev"]}
    assert "nsproxy-appliance" in dev  # nsproxy-appliance[test]
    assert any("[test]" in r for r in PROJECT["optional-dependencies"]["dev"])
