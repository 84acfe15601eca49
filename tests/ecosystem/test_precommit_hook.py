"""The nsproxy-validate pre-commit hook, tried the way a config repository would use it:
`pre-commit try-repo` installs it from (a copy of) this repository into its own virtualenv and
runs it on the repository's manifests. Slow the first time (pip installs nsproxy: about half a
minute); the hook's environment lives in the test's temporary directory."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from gitops_support import REPO, copy_checkout, git, init_repo

PRE_COMMIT = str(Path(sys.executable).parent / "pre-commit")
VALID = (REPO / "examples" / "tenants.yaml").read_text()
TYPO = "version: 1\ntenants:\n  - name: acme\n    listen: ['127.0.0.1:8080']\n    upstreem: http://127.0.0.1:9000\n"


@pytest.fixture(scope="module")
def hook_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return copy_checkout(tmp_path_factory.mktemp("hook-repo") / "nsproxy")


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("pre-commit-home")


def try_repo(config_repo: Path, hook_repo: Path, cache: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PRE_COMMIT_HOME": str(cache), "NO_COLOR": "1", "PRE_COMMIT_COLOR": "never"}
    return subprocess.run(
        [PRE_COMMIT, "try-repo", str(hook_repo), "nsproxy-validate", "--all-files", "--verbose"],
        cwd=config_repo,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


def test_the_hook_is_declared_for_pre_commit() -> None:
    (hook,) = yaml.safe_load((REPO / ".pre-commit-hooks.yaml").read_text())
    assert hook["id"] == "nsproxy-validate"
    assert hook["entry"] == "nsproxy validate"
    assert hook["language"] == "python"
    pattern = re.compile(hook["files"])
    for matched in ("tenants.yaml", "hosts/tenants-prod.yml", "manifests/edge-01.yaml", "a/manifests/b.yaml"):
        assert pattern.search(matched), matched
    for ignored in ("other.yaml", ".gitlab-ci.yml", "mytenants.yaml", "inventory/hosts.yml"):
        assert not pattern.search(ignored), ignored


def test_try_repo_fails_on_an_invalid_manifest_and_passes_once_it_is_fixed(
    hook_repo: Path, cache: Path, tmp_path: Path
) -> None:
    config = tmp_path / "config-repo"
    (config / "manifests").mkdir(parents=True)
    (config / "manifests" / "edge-01.yaml").write_text(VALID)
    (config / "manifests" / "edge-02.yaml").write_text(TYPO)
    (config / "inventory.yaml").write_text("not: [a manifest\n")  # not matched by the hook
    init_repo(config)

    failed = try_repo(config, hook_repo, cache)
    output = failed.stdout + failed.stderr
    assert failed.returncode == 1, output
    assert re.search(r"manifests/edge-02\.yaml:5:\d+: .*upstreem", output), output
    assert "inventory.yaml" not in output
    assert "Failed" in output

    (config / "manifests" / "edge-02.yaml").write_text(VALID)
    git(config, "commit", "-qam", "fix the typo")
    passed = try_repo(config, hook_repo, cache)
    output = passed.stdout + passed.stderr
    assert passed.returncode == 0, output
    assert "Passed" in output
    assert "manifests/edge-01.yaml: valid" in output and "manifests/edge-02.yaml: valid" in output
