"""The repository as the Ansible collection nsproxy.appliance: built with ansible-galaxy, installed
into a private path, documented and used by its FQCNs from there (and not from this checkout)."""

from __future__ import annotations

import importlib.metadata
import json
import os
import re
import subprocess
import tarfile
import tomllib
from pathlib import Path

import pytest
import yaml
from ansible_support import REPO, TARGET_PYTHON, VENV_BIN, Fleet, curl_in_netns
from packaging.specifiers import SpecifierSet
from packaging.version import Version
from support import header_values

GALAXY = yaml.safe_load((REPO / "galaxy.yml").read_text())
FQCN_MODULE = "nsproxy.appliance.nsproxy_apply"
FQCN_ROLE = "nsproxy.appliance.nsproxy"


def isolated_env(tmp: Path, collections: Path | None) -> dict[str, str]:
    """Ansible that knows only `collections` (never this checkout's ansible.cfg or collections/)."""
    cfg = tmp / "ansible.cfg"
    cfg.write_text("[defaults]\n")
    env = {
        **os.environ,
        "ANSIBLE_CONFIG": str(cfg),
        "ANSIBLE_HOME": str(tmp / "ansible-home"),
        "ANSIBLE_LOCAL_TEMP": str(tmp / "ansible-local"),
        "ANSIBLE_REMOTE_TEMP": str(tmp / "ansible-remote"),
        "ANSIBLE_NOCOLOR": "1",
        "ANSIBLE_LOCALHOST_WARNING": "0",
        "ANSIBLE_INVENTORY_UNPARSED_WARNING": "0",
        "PATH": f"{VENV_BIN}:{os.environ.get('PATH', '/usr/bin:/bin')}",
    }
    if collections is not None:
        env["ANSIBLE_COLLECTIONS_PATH"] = str(collections)
    return env


def run(cmd: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, subprocess.CompletedProcess[str]]:
    out = tmp_path_factory.mktemp("collection-build")
    env = isolated_env(out, None)
    proc = run(
        [str(VENV_BIN / "ansible-galaxy"), "collection", "build", str(REPO), "--output-path", str(out)], env, out
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return out / f"nsproxy-appliance-{GALAXY['version']}.tar.gz", proc


@pytest.fixture(scope="module")
def installed(built: tuple[Path, subprocess.CompletedProcess[str]], tmp_path_factory: pytest.TempPathFactory) -> Path:
    tarball, _ = built
    root = tmp_path_factory.mktemp("collection-install")
    env = isolated_env(root, root / "collections")
    proc = run(
        [str(VENV_BIN / "ansible-galaxy"), "collection", "install", str(tarball), "-p", str(root / "collections")],
        env,
        root,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert (root / "collections" / "ansible_collections" / "nsproxy" / "appliance" / "MANIFEST.json").exists()
    return root / "collections"


def test_the_collection_version_is_the_package_version() -> None:
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert GALAXY["version"] == pyproject["version"] == importlib.metadata.version("nsproxy-appliance")
    assert (GALAXY["namespace"], GALAXY["name"]) == ("nsproxy", "appliance")


def test_required_ansible_matches_the_pinned_ansible_core() -> None:
    pins = dict(line.split("==") for line in (REPO / "constraints.txt").read_text().split() if "==" in line)
    pinned = Version(pins["ansible-core"])
    required = yaml.safe_load((REPO / "meta" / "runtime.yml").read_text())["requires_ansible"]
    assert pinned in SpecifierSet(required)
    floor = Version(re.search(r">=\s*([0-9.]+)", required)[1])
    assert (floor.major, floor.minor) == (pinned.major, pinned.minor), "requires_ansible should say what is tested"
    role_meta = yaml.safe_load((REPO / "roles" / "nsproxy" / "meta" / "main.yml").read_text())["galaxy_info"]
    assert role_meta["min_ansible_version"] == f"{pinned.major}.{pinned.minor}"


def test_role_python_floor_is_the_packages() -> None:
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    role_vars = yaml.safe_load((REPO / "roles" / "nsproxy" / "vars" / "main.yml").read_text())
    assert pyproject["requires-python"] == f">={role_vars['nsproxy__python_minimum']}"


def test_build_ships_the_ansible_content_only(built: tuple[Path, subprocess.CompletedProcess[str]]) -> None:
    tarball, proc = built
    assert "WARNING" not in (proc.stdout + proc.stderr).upper(), proc.stdout + proc.stderr
    with tarfile.open(tarball) as tar:
        names = set(tar.getnames())
        manifest = json.load(tar.extractfile("MANIFEST.json"))  # type: ignore[arg-type]
    for wanted in (
        "plugins/modules/nsproxy_apply.py",
        "roles/nsproxy/tasks/main.yml",
        "roles/nsproxy/meta/argument_specs.yml",
        "meta/runtime.yml",
        "README.md",
        "LICENSE",
        "CHANGELOG.md",
        "docs/ansible.md",
    ):
        assert wanted in names, wanted
    # Nothing of the Python project (tests, .venv, caches, nsproxy_appliance/, the collections/
    # symlinks, build output): exactly the collection's own top-level entries.
    tops = {name.split("/")[0] for name in names}
    assert tops == {
        "CHANGELOG.md",
        "FILES.json",
        "LICENSE",
        "MANIFEST.json",
        "README.md",
        "docs",
        "extensions",
        "meta",
        "plugins",
        "roles",
    }, sorted(tops)
    assert not any(n.endswith((".pyc", ".tar.gz")) or "__pycache__" in n for n in names)
    assert manifest["collection_info"]["version"] == GALAXY["version"]
    assert manifest["collection_info"]["license"] == ["Apache-2.0"]


def test_ansible_doc_documents_the_installed_module_and_role(installed: Path, tmp_path: Path) -> None:
    env = isolated_env(tmp_path, installed)
    module = run([str(VENV_BIN / "ansible-doc"), "--json", FQCN_MODULE], env, tmp_path)
    assert module.returncode == 0, module.stderr
    entry = json.loads(module.stdout)[FQCN_MODULE]
    assert entry["doc"]["filename"].startswith(str(installed)), entry["doc"]["filename"]
    assert "daemon_timeout" in entry["doc"]["options"]
    role = run([str(VENV_BIN / "ansible-doc"), "-t", "role", "--json", FQCN_ROLE], env, tmp_path)
    assert role.returncode == 0, role.stderr
    assert "main" in json.loads(role.stdout)[FQCN_ROLE]["entry_points"]


def test_without_the_collection_the_fqcn_is_unknown(tmp_path: Path) -> None:
    # The counterpart of the tests above: they only pass because of the installed collection.
    empty = tmp_path / "none"
    empty.mkdir()
    out = run([str(VENV_BIN / "ansible-doc"), FQCN_MODULE], isolated_env(tmp_path, empty), tmp_path)
    assert out.returncode != 0 or "not found" in out.stderr.lower(), out.stdout


def test_the_installed_module_runs_by_fqcn(installed: Path, tmp_path: Path) -> None:
    args = json.dumps({"content": "version: 1\ntenants: []\n", "executable": str(tmp_path / "no" / "nsproxy-apply")})
    out = run(
        [
            str(VENV_BIN / "ansible"),
            "localhost",
            "-c",
            "local",
            "-e",
            f"ansible_python_interpreter={TARGET_PYTHON}",
            "-m",
            FQCN_MODULE,
            "-a",
            args,
            "--check",
        ],
        isolated_env(tmp_path, installed),
        tmp_path,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert "is not installed yet; applying would create every tenant" in out.stdout


@pytest.mark.root
def test_the_installed_role_converges_a_host_by_fqcn(
    installed: Path, fleet: Fleet, echo_upstream: str, tmp_path: Path
) -> None:
    playbook = tmp_path / "play.yml"
    playbook.write_text(
        yaml.safe_dump(
            [{"name": "Roll out", "hosts": "nsproxy_hosts", "gather_facts": False, "roles": [{"role": FQCN_ROLE}]}]
        )
    )
    h = fleet.host("h1")
    tenant = fleet.tenant(h, "fqcn", echo_upstream)
    h.vars["nsproxy_tenants"] = [tenant]
    env = isolated_env(tmp_path, installed)
    run_ = fleet.run(
        playbook=str(playbook),
        extra_env={"ANSIBLE_CONFIG": env["ANSIBLE_CONFIG"], "ANSIBLE_COLLECTIONS_PATH": str(installed)},
    )
    assert run_.rc == 0, run_.output
    assert f"TASK [{FQCN_ROLE} : Converge the host to the manifest]" in run_.stdout
    served = curl_in_netns(tenant["name"], "http://127.0.0.1:8080/")
    assert served.returncode == 0, served.stderr
    assert header_values(json.loads(served.stdout)["headers"], "X-Tenant-ID") == [tenant["name"]]


def test_the_build_artefact_stays_out_of_git() -> None:
    name = f"nsproxy-appliance-{GALAXY['version']}.tar.gz"
    out = subprocess.run(["git", "check-ignore", "-q", name], cwd=REPO, capture_output=True, timeout=30)
    assert out.returncode == 0, f"{name} is not ignored by .gitignore"
