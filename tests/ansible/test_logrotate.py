"""The logrotate snippet: the role's template renders deploy/logrotate/nsproxy for its defaults,
follows the host's paths and the manifest's access_log, is valid for logrotate, and the role
installs it; the real logrotate with the installed snippet rotates a role-launched daemon's logs,
which follows into the new files."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
from ansible_support import REPO, TARGET_PYTHON, VENV_BIN, Fleet, curl_in_netns
from support import wait_until

from nsproxy_appliance import daemon_control
from nsproxy_appliance.paths import Paths

needs_logrotate = pytest.mark.skipif(
    shutil.which("logrotate") is None, reason="logrotate not installed (scripts/setup.sh installs it)"
)


def render(tmp_path: Path, **overrides: object) -> str:
    extra = tmp_path / "vars.json"
    extra.write_text(json.dumps({"ansible_python_interpreter": TARGET_PYTHON, **overrides}))
    out = tmp_path / "nsproxy"
    run = subprocess.run(
        [
            str(VENV_BIN / "ansible-playbook"),
            "-i",
            "localhost,",
            "-c",
            "local",
            "tests/ansible/playbooks/render_logrotate.yml",
            "-e",
            f"out={out}",
            "-e",
            f"@{extra}",
        ],
        cwd=REPO,
        env={"ANSIBLE_CONFIG": str(REPO / "ansible.cfg"), "PATH": f"{VENV_BIN}:/usr/sbin:/usr/bin:/sbin:/bin"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    return out.read_text()


def stanza(text: str) -> list[str]:
    """The configuration without its comments."""
    return [line for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]


def manifest_with(access_log: str) -> str:
    return f'version: 1\ndaemon:\n  access_log: "{access_log}"\ntenants: []\n'


def logrotate_accepts(tmp_path: Path, text: str) -> subprocess.CompletedProcess[str]:
    config = tmp_path / "check.conf"
    config.write_text(text)
    return subprocess.run(
        ["logrotate", "--debug", "--state", str(tmp_path / "state"), str(config)],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_the_template_renders_the_shipped_snippet_for_the_defaults(tmp_path: Path) -> None:
    rendered = render(tmp_path)
    assert rendered.startswith("# Ansible managed")
    assert stanza(rendered) == stanza((REPO / "deploy" / "logrotate" / "nsproxy").read_text())


@needs_logrotate
def test_the_snippet_follows_the_hosts_paths_and_a_file_access_log(tmp_path: Path) -> None:
    rendered = render(
        tmp_path,
        nsproxy_state_dir="/srv/nsproxy/state",
        nsproxy_runtime_dir="/run/nsp-test",
        nsproxy__manifest_text=manifest_with("/srv/log/tenants access.log"),
    )
    lines = stanza(rendered)
    own = "/srv/nsproxy/state/nsproxyd.log /srv/nsproxy/state/access.log"
    assert lines[0] == f'{own} /var/log/nsproxy/*.log "/srv/log/tenants access.log" {{'
    signal = 'pid=$(cat /run/nsp-test/nsproxyd.pid 2>/dev/null) && kill -USR1 "$pid" 2>/dev/null || true'
    assert signal in [line.strip() for line in lines]
    check = logrotate_accepts(tmp_path, rendered)
    assert check.returncode == 0 and "error" not in check.stderr.lower(), check.stderr


@needs_logrotate
@pytest.mark.parametrize("access_log", ["/var/log/nsproxy/access.log", "stdout", "off", "/var/lib/nsproxy/access.log"])
def test_a_file_the_snippet_names_already_is_not_named_twice(tmp_path: Path, access_log: str) -> None:
    """logrotate refuses a file named by two patterns ("duplicate log entry")."""
    rendered = render(tmp_path, nsproxy__manifest_text=manifest_with(access_log))
    assert stanza(rendered) == stanza(render(tmp_path))
    check = logrotate_accepts(tmp_path, rendered)
    assert check.returncode == 0 and "error" not in check.stderr.lower(), check.stderr


@pytest.mark.root
@needs_logrotate
def test_the_role_installs_it_and_logrotate_then_reopens_the_daemons_logs(
    fleet: Fleet, echo_upstream: str, tmp_path: Path
) -> None:
    h = fleet.host("h1")
    tenant = fleet.tenant(h, "rot", echo_upstream)
    h.vars["nsproxy_tenants"] = [tenant]
    off = fleet.host("h2", nsproxy_logrotate=False)
    off.vars["nsproxy_tenants"] = [fleet.tenant(off, "off", echo_upstream)]
    run = fleet.run()
    assert run.rc == 0, run.output
    snippet = Path(h.vars["nsproxy_logrotate_path"])
    assert not Path(off.vars["nsproxy_logrotate_path"]).exists()
    assert stanza(snippet.read_text())[0].startswith(f"{h.state_dir}/nsproxyd.log {h.state_dir}/access.log ")
    assert snippet.stat().st_mode & 0o022 == 0  # logrotate skips a snippet others may write

    paths = Paths(state_dir=str(h.state_dir), runtime_dir=str(h.runtime_dir))
    assert curl_in_netns(tenant["name"], "http://127.0.0.1:8080/before").returncode == 0
    wait_until(lambda: "/before" in _read(paths.access_log_file), what="the first access line")
    rotate = subprocess.run(
        ["logrotate", "--force", "--state", str(tmp_path / "logrotate.state"), str(snippet)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert rotate.returncode == 0, rotate.stderr
    rotated = Path(paths.log_file + ".1")
    assert "serving generation=" in rotated.read_text()
    assert daemon_control.status(paths).running
    wait_until(lambda: "log files reopened" in _read(paths.log_file), what="the daemon's reopen after postrotate")
    assert curl_in_netns(tenant["name"], "http://127.0.0.1:8080/after").returncode == 0
    wait_until(lambda: "/after" in _read(paths.access_log_file), what="the access line in the new access.log")
    assert "/after" not in _read(paths.access_log_file + ".1")
    assert "/before" in _read(paths.access_log_file + ".1")


def _read(path: str) -> str:
    try:
        return Path(path).read_text()
    except FileNotFoundError:
        return ""
