"""`python -m build` of a clean copy of the tree: sdist and wheel build without a single warning,
carry the license, metadata, schemas, examples and docs, and declare aiohttp for tests only."""

from __future__ import annotations

import email.parser
import os
import shutil
import subprocess
import sys
import tarfile
import tomllib
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
VERSION = PROJECT["version"]


def source_files() -> list[Path]:
    """What a fresh clone holds (tracked plus new, not ignored, files), as paths under REPO."""
    out = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
        cwd=REPO,
        capture_output=True,
        check=True,
        timeout=60,
    )
    names = [n for n in out.stdout.decode().split("\0") if n]
    # collections/ is the Ansible view of this checkout (symlinks back into it): not Python source.
    return [Path(n) for n in names if not n.startswith("collections/") and (REPO / n).exists()]


def tree(top: str) -> set[str]:
    """Every source file below `top` (relative to REPO), caches left out."""
    return {str(p) for p in source_files() if p.parts[0] == top and "__pycache__" not in p.parts}


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, str]:
    src = tmp_path_factory.mktemp("build-src") / "nsproxy"
    for rel in source_files():
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / rel, src / rel, follow_symlinks=False)
    out = tmp_path_factory.mktemp("build-out")
    # PYTHONDONTWRITEBYTECODE (set on some machines) only makes setuptools warn that it skips
    # byte-compiling: a property of the environment, not of the project.
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    proc = subprocess.run(
        [sys.executable, "-m", "build", "--sdist", "--wheel", "--outdir", str(out), str(src)],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
    )
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log
    (sdist,) = out.glob("nsproxy_appliance-*.tar.gz")
    (wheel,) = out.glob("nsproxy_appliance-*.whl")
    return sdist, wheel, log


def warnings_in(log: str) -> list[str]:
    """Lines that warn (setuptools' "warning: ...", deprecation banners, a compiler's "warning:"),
    ignoring the -W... flags echoed in compiler command lines."""
    found = []
    for line in log.splitlines():
        words = " ".join(word for word in line.split() if not word.startswith("-W"))
        if "warn" in words.lower():
            found.append(line)
    return found


def test_build_prints_no_warning(built: tuple[Path, Path, str]) -> None:
    _, _, log = built
    assert warnings_in(log) == [], "\n".join(warnings_in(log))


def test_the_warning_filter_sees_warnings_and_skips_compiler_flags() -> None:
    assert warnings_in("gcc -Wall -Wno-unknown-warning-option -c x.c") == []
    for line in (
        "warning: no files found matching '*.md' under directory 'deploy'",
        "SetuptoolsDeprecationWarning: License classifiers are deprecated.",
        "x.c:3:5: warning: unused variable 'y'",
    ):
        assert warnings_in(line) == [line]


def test_sdist_carries_license_schemas_examples_and_docs(built: tuple[Path, Path, str]) -> None:
    sdist, _, _ = built
    top = f"nsproxy_appliance-{VERSION}/"
    with tarfile.open(sdist) as tar:
        names = {m.name.removeprefix(top) for m in tar.getmembers()}
        pkg_info = tar.extractfile(top + "PKG-INFO").read().decode()  # type: ignore[union-attr]
    wanted = {
        "LICENSE",
        "CHANGELOG.md",
        "README.md",
        "pyproject.toml",
        "schemas/tenants.schema.json",
        "nsproxy_appliance/tenants.schema.json",
        *tree("docs"),
        *tree("examples"),
        *tree("deploy"),
    }
    assert wanted <= names, sorted(wanted - names)
    assert not [n for n in names if "__pycache__" in n or n.endswith(".pyc") or n.startswith((".venv", "tests/"))]
    assert "License-Expression: Apache-2.0" in pkg_info


def test_wheel_metadata_license_and_extras(built: tuple[Path, Path, str]) -> None:
    _, wheel, _ = built
    dist_info = f"nsproxy_appliance-{VERSION}.dist-info"
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
        meta = email.parser.Parser().parsestr(z.read(f"{dist_info}/METADATA").decode())
        packaged_schema = z.read("nsproxy_appliance/tenants.schema.json")
        license_text = z.read(f"{dist_info}/licenses/LICENSE").decode()
    assert "Apache License" in license_text and "Version 2.0" in license_text
    assert packaged_schema == (REPO / "schemas" / "tenants.schema.json").read_bytes()
    assert not [n for n in names if n.startswith("tests/") or "__pycache__" in n]

    assert meta["Version"] == VERSION
    assert meta["License-Expression"] == "Apache-2.0"
    assert meta.get_all("License-File") == ["LICENSE"]
    assert "License" not in meta  # the legacy free-text field is gone with the SPDX expression
    classifiers = meta.get_all("Classifier")
    assert "Operating System :: POSIX :: Linux" in classifiers
    assert not [c for c in classifiers if c.startswith("License ::")]  # the expression says it
    urls = dict(u.split(", ", 1) for u in meta.get_all("Project-URL"))
    assert {"Homepage", "Repository", "Issues", "Changelog"} <= set(urls)
    assert all(u.startswith("https://github.com/nsproxy/nsproxy") for u in urls.values())

    requires = meta.get_all("Requires-Dist")
    aiohttp = [r for r in requires if r.startswith("aiohttp")]
    assert aiohttp and all('extra == "test"' in r for r in aiohttp), aiohttp
    assert "test" in meta.get_all("Provides-Extra") and "dev" in meta.get_all("Provides-Extra")
