"""examples/ci: the GitHub Actions workflow and the GitLab CI job for a config repository. The
commands are read from the two YAML files and run against a config repository the test makes,
with the checkout's nsproxy; only ssh is replaced, by a stand-in that runs the command on this
machine (the "host"), with the test's private state and runtime dirs."""

from __future__ import annotations

import os
import subprocess
import sys
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from gitops_support import REPO

CI = REPO / "examples" / "ci"
VERSION = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
NSPROXY = str(Path(sys.executable).parent / "nsproxy")


def github() -> dict[str, Any]:
    return yaml.safe_load((CI / "github-actions.yml").read_text())


def gitlab() -> dict[str, Any]:
    return yaml.safe_load((CI / "gitlab-ci.yml").read_text())


def github_step(job: str, name: str) -> tuple[str, dict[str, str]]:
    """The step's script and the environment GitHub gives it (workflow, job, step env)."""
    wf = github()
    (step,) = [s for s in wf["jobs"][job]["steps"] if s.get("name") == name]
    env = {**wf.get("env", {}), **wf["jobs"][job].get("env", {}), **step.get("env", {})}
    return step["run"], {k: str(v) for k, v in env.items()}


def gitlab_job(job: str) -> tuple[str, dict[str, str]]:
    ci = gitlab()
    env = {**ci.get("variables", {}), **ci[job].get("variables", {})}
    return "\n".join(ci[job]["script"]), {k: str(v) for k, v in env.items()}


# (pipeline, validate script, plan script): both files, the same checks.
PIPELINES = {
    "github": (
        lambda: github_step("validate", "Validate the manifests"),
        lambda: github_step("plan", "Plan on every host"),
    ),
    "gitlab": (lambda: gitlab_job("nsproxy-validate"), lambda: gitlab_job("nsproxy-plan")),
}


def run_script(script: str, env: dict[str, str], cwd: Path, extra: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """As the runners do: GitHub's `shell: bash` is `bash --noprofile --norc -eo pipefail`, and
    GitLab's bash runs the script lines with errexit and pipefail too."""
    path = os.environ.get("PATH", "/usr/bin:/bin")
    full = {**os.environ, **env, **extra, "PATH": f"{Path(sys.executable).parent}:{path}"}
    return subprocess.run(
        ["bash", "--noprofile", "--norc", "-eo", "pipefail", "-c", script],
        cwd=cwd,
        env=full,
        capture_output=True,
        text=True,
        timeout=300,
    )


def manifest(*tenants: str) -> str:
    return yaml.safe_dump(
        {
            "version": 1,
            "defaults": {"upstream": "http://127.0.0.1:9"},
            "tenants": [{"name": t, "listen": ["127.0.0.1:8080"]} for t in tenants],
        }
    )


@pytest.fixture
def config_repo(tmp_path: Path, unique: Callable[[str], str]) -> tuple[Path, dict[str, list[str]]]:
    repo = tmp_path / "config"
    (repo / "manifests").mkdir(parents=True)
    hosts = {"edge-01.example.net": [unique("ci")], "edge-02.example.net": [unique("ci"), unique("ci")]}
    for host, tenants in hosts.items():
        (repo / "manifests" / f"{host}.yaml").write_text(manifest(*tenants))
    return repo, hosts


def test_triggers_and_versions() -> None:
    wf = github()
    assert set(wf.get("on", wf.get(True))) == {"push", "pull_request"}  # YAML 1.1 reads `on` as true
    assert "if" not in wf["jobs"]["validate"]
    assert wf["jobs"]["plan"]["if"] == "github.event_name == 'pull_request'"
    assert wf["env"]["NSPROXY_VERSION"] == VERSION
    ci = gitlab()
    assert "rules" not in ci["nsproxy-validate"]
    assert ci["nsproxy-plan"]["rules"] == [{"if": '$CI_PIPELINE_SOURCE == "merge_request_event"'}]
    assert ci["variables"]["NSPROXY_VERSION"] == VERSION
    for install in (github_step("validate", "Install nsproxy")[0], " ".join(ci["nsproxy-validate"]["before_script"])):
        assert '"nsproxy-appliance==${NSPROXY_VERSION}"' in install


@pytest.mark.parametrize("pipeline", sorted(PIPELINES))
def test_validate_passes_valid_manifests_and_points_at_a_typo(
    pipeline: str, config_repo: tuple[Path, dict[str, list[str]]]
) -> None:
    repo, hosts = config_repo
    script, env = PIPELINES[pipeline][0]()
    ok = run_script(script, env, repo, {})
    assert ok.returncode == 0, ok.stdout + ok.stderr
    for host in hosts:
        assert f"manifests/{host}.yaml: valid" in ok.stdout

    (repo / "manifests" / "edge-03.example.net.yaml").write_text("version: 1\ntenants:\n  - name: Acme\n")
    bad = run_script(script, env, repo, {})
    assert bad.returncode == 1, bad.stdout + bad.stderr
    assert "manifests/edge-03.example.net.yaml:3:" in bad.stderr, bad.stderr


@pytest.mark.root
@pytest.mark.parametrize("pipeline", sorted(PIPELINES))
def test_plan_runs_on_every_host_and_fails_on_a_conflict(
    pipeline: str,
    config_repo: tuple[Path, dict[str, list[str]]],
    tmp_path: Path,
    make_netns: Callable[[str], str],
) -> None:
    repo, hosts = config_repo
    script, env = PIPELINES[pipeline][1]()
    assert env["NSPROXY_REMOTE"].startswith("ssh ") and env["NSPROXY_BIN"].startswith("sudo ")
    asked = tmp_path / "hosts-asked"
    shim = tmp_path / "ssh-to-this-machine"
    # Stands in for ssh: note the host it was asked for, then run the rest here.
    shim.write_text(f'#!/bin/sh\necho "$1" >> {asked}\nshift\nexec "$@"\n')
    shim.chmod(0o755)
    here = {
        "NSPROXY_REMOTE": str(shim),
        "NSPROXY_BIN": NSPROXY,
        "NSPROXY_STATE_DIR": str(tmp_path / "state"),
        "NSPROXY_RUNTIME_DIR": str(tmp_path / "run"),
    }

    pending = run_script(script, env, repo, here)
    assert pending.returncode == 0, pending.stdout + pending.stderr  # changes pending (2) is a success
    assert sorted(asked.read_text().split()) == sorted(hosts)
    for host, tenants in hosts.items():
        assert f"== nsproxy plan on {host}" in pending.stdout
        for name in tenants:
            assert f"create_netns          {name}" in pending.stdout, pending.stdout
    assert not (tmp_path / "state" / "ledger.json").exists()  # a plan changes nothing

    # A namespace nsproxy does not own, with the name one of edge-02's tenants wants: its plan
    # fails (exit 1), edge-01's is still shown, and the job fails.
    make_netns(hosts["edge-02.example.net"][0])
    conflict = run_script(script, env, repo, here)
    assert conflict.returncode == 1, conflict.stdout + conflict.stderr
    assert "nsproxy plan failed on edge-02.example.net" in conflict.stdout
    assert "nsproxy plan failed on edge-01.example.net" not in conflict.stdout
    assert f"create_netns          {hosts['edge-01.example.net'][0]}" in conflict.stdout
