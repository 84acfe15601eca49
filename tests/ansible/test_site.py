"""site.yml and the nsproxy role, run for real by ansible-playbook against this machine.

Each test simulates inventory hosts (connection local) with their own state/runtime dirs and
uniquely named namespaces; the applier launches one daemon per simulated host, and the echo
upstream answers the health gate's request through a tenant listener.
"""

from __future__ import annotations

import json
import shutil
import zipfile
from pathlib import Path

import pytest
import yaml
from ansible_support import CONTROLLER_NSPROXY, Fleet, SimHost, curl_in_netns, install_vars, netns_exists
from support import header_values

pytestmark = pytest.mark.root


def assert_serves(tenant: dict) -> None:
    """A request from inside the tenant's netns reaches the upstream, tagged with the tenant."""
    name = tenant["name"]
    out = curl_in_netns(name, "http://127.0.0.1:8080/probe")
    assert out.returncode == 0, out.stderr
    assert header_values(json.loads(out.stdout)["headers"], "X-Tenant-ID") == [tenant.get("tenant_id", name)]


def snapshot(host: SimHost, names: list[str]) -> dict:
    """What a check-mode run must leave alone: namespaces, ledger, runtime config, manifest."""

    def read(p: Path) -> bytes | None:
        return p.read_bytes() if p.exists() else None

    return {
        "netns": {n: netns_exists(n) for n in names},
        "ledger": read(host.ledger),
        "config": read(host.runtime_dir / "config.json"),
        "manifest": read(host.manifest_path),
        "files": host.files(),
    }


def test_converge_from_nothing_then_second_run_changes_nothing(
    fleet: Fleet, echo_upstream: str, wheel: Path, tmp_path: Path
) -> None:
    # This host also runs the install path (on the shared venv: already installed, so pip has
    # nothing to do, and the freshly copied wheel is force-reinstalled once).
    h = fleet.host("h1", nsproxy_service_manager="auto", **install_vars(fleet.venv, wheel, tmp_path / "h1-install"))
    tenants = [fleet.tenant(h, "a", echo_upstream), fleet.tenant(h, "b", echo_upstream, tenant_id="b-7f3a")]
    h.vars["nsproxy_tenants"] = tenants

    first = fleet.run()
    assert first.rc == 0, first.output
    assert first.recap["h1"]["changed"] > 0
    assert first.recap["h1"]["failed"] == 0
    for t in tenants:
        assert netns_exists(t["name"])
        assert_serves(t)
    manifest = yaml.safe_load(h.manifest_path.read_text())
    assert [t["name"] for t in manifest["tenants"]] == [t["name"] for t in tenants]
    ledger_before = h.ledger.read_bytes()

    second = fleet.run()
    assert second.rc == 0, second.output
    assert second.recap["h1"]["changed"] == 0, f"changed on the second run: {second.changed_tasks()}"
    assert second.changed_tasks() == []
    assert h.ledger.read_bytes() == ledger_before
    for t in tenants:
        assert_serves(t)
    check = fleet.run("--check")  # check mode agrees, install tasks included
    assert check.rc == 0, check.output
    assert check.changed_tasks() == []


def test_a_rebuilt_package_restarts_the_daemon_through_nsproxy_stop(
    fleet: Fleet, echo_upstream: str, wheel: Path, tmp_path: Path
) -> None:
    # A rebuilt package (same version, other bytes) is reinstalled, and the daemon the applier
    # launched is restarted on the new code: `nsproxy stop` (it drains), then launched again.
    h = fleet.host("h1", **install_vars(fleet.venv, wheel, tmp_path / "h1-install"))
    tenants = [fleet.tenant(h, "a", echo_upstream)]
    h.vars["nsproxy_tenants"] = tenants
    assert (first := fleet.run()).rc == 0, first.output
    pid_before = (h.runtime_dir / "nsproxyd.pid").read_text().strip()

    rebuilt = tmp_path / "rebuilt" / wheel.name
    rebuilt.parent.mkdir()
    shutil.copy(wheel, rebuilt)
    with zipfile.ZipFile(rebuilt, "a") as z:
        z.comment = b"rebuilt"
    h.vars["nsproxy_package_src"] = str(rebuilt)
    upgrade = fleet.run()
    assert upgrade.rc == 0, upgrade.output
    changed = upgrade.changed_tasks()
    for task in ("Reinstall a rebuilt package", "Stop the daemon the applier launched", "Relaunch nsproxyd"):
        assert any(task in c for c in changed), changed
    assert (h.runtime_dir / "nsproxyd.pid").read_text().strip() != pid_before
    for t in tenants:
        assert_serves(t)

    # With nothing rebuilt, nothing is stopped: the handler is not even notified.
    again = fleet.run()
    assert again.rc == 0, again.output
    assert again.changed_tasks() == []


def test_validation_leaves_no_scratch_file_on_the_controller(fleet: Fleet, echo_upstream: str, tmp_path: Path) -> None:
    # Two hosts, validated twice each (site.yml's pre-flight play, then the role, which skips
    # text it already validated): every scratch manifest the controller wrote is removed. The
    # validator is wrapped to record the scratch paths it was given, so the test knows where
    # they were and that validation really ran.
    scratch = tmp_path / "controller-tmp"
    scratch.mkdir()
    seen = tmp_path / "validated.txt"
    wrapper = tmp_path / "validate.sh"
    wrapper.write_text(f'#!/bin/sh\necho "$1" >> {seen}\nexec {CONTROLLER_NSPROXY} validate "$1"\n')
    wrapper.chmod(0o755)
    for label in ("h1", "h2"):
        h = fleet.host(label, nsproxy_validate_command=str(wrapper))
        h.vars["nsproxy_tenants"] = [fleet.tenant(h, label, echo_upstream)]
    before = sorted(scratch.glob("nsproxy-manifest-*.yaml"))

    run = fleet.run(extra_env={"TMPDIR": str(scratch)})

    assert run.rc == 0, run.output
    validated = seen.read_text().split()
    assert len(validated) == 2, validated  # once per host: the role skipped the re-validation
    assert all(Path(p).parent == scratch and Path(p).name.startswith("nsproxy-manifest-") for p in validated)
    assert sorted(scratch.glob("nsproxy-manifest-*.yaml")) == before == []


PYTHON_310 = sorted(Path("/root/.pyenv/versions").glob("3.10.*/bin/python3.10"))


def old_python(tmp_path: Path) -> str:
    """A real Python 3.10 when this machine has one (pyenv), else a stand-in that answers as one."""
    if PYTHON_310:
        return str(PYTHON_310[-1])
    stub = tmp_path / "python3.10"
    stub.write_text("#!/bin/sh\necho 3.10.12\n")
    stub.chmod(0o755)
    return str(stub)


def test_a_python_older_than_3_11_stops_the_host_before_anything_changes(
    fleet: Fleet, echo_upstream: str, wheel: Path, tmp_path: Path
) -> None:
    h = fleet.host("h1", **install_vars(tmp_path / "new-venv", wheel, tmp_path / "h1-install"))
    h.vars["nsproxy_python"] = old_python(tmp_path)
    h.vars["nsproxy_tenants"] = [fleet.tenant(h, "old", echo_upstream)]

    run = fleet.run()

    assert run.rc != 0
    assert run.recap["h1"]["failed"] == 1, run.output
    assert f"nsproxy needs Python >= 3.11 on h1, but {h.vars['nsproxy_python']} is Python 3.10." in run.stdout
    assert "Set nsproxy_python to a Python 3.11+ interpreter" in run.stdout
    assert h.files() == [], h.files()
    assert not (tmp_path / "new-venv").exists()
    assert not (tmp_path / "h1-install").exists()
    assert not any(netns_exists(n) for n in fleet.netns_names)


def test_check_diff_reports_a_manifest_change_and_changes_nothing(
    fleet: Fleet, echo_upstream: str, tmp_path: Path
) -> None:
    # The manifest comes from a file in the "config repo" (nsproxy_manifest_src).
    h = fleet.host("h1")
    kept = fleet.tenant(h, "keep", echo_upstream)
    added = fleet.tenant(h, "add", echo_upstream)
    src = tmp_path / "repo" / "tenants.yaml"
    src.parent.mkdir()
    src.write_text(yaml.safe_dump({"version": 1, "tenants": [kept]}))
    h.vars["nsproxy_manifest_src"] = str(src)
    assert (run := fleet.run()).rc == 0, run.output

    before = snapshot(h, [kept["name"], added["name"]])
    src.write_text(yaml.safe_dump({"version": 1, "tenants": [kept, added]}))
    check = fleet.run("--check", "--diff")

    assert check.rc == 0, check.output
    assert check.recap["h1"]["changed"] > 0
    changed = check.changed_tasks()
    assert any(t.startswith("nsproxy : Converge the host to the manifest") for t in changed), changed
    assert f"--- before: tenant {added['name']} (before)" in check.stdout  # the applier's per-tenant diff
    assert f"tenant {kept['name']} (" not in check.stdout  # unchanged tenants are not in the diff
    assert snapshot(h, [kept["name"], added["name"]]) == before
    assert not netns_exists(added["name"])
    assert_serves(kept)


def test_removing_a_tenant_from_the_inventory_prunes_it(fleet: Fleet, echo_upstream: str) -> None:
    h = fleet.host("h1")
    kept = fleet.tenant(h, "keep", echo_upstream)
    gone = fleet.tenant(h, "gone", echo_upstream)
    h.vars["nsproxy_tenants"] = [kept, gone]
    assert (run := fleet.run()).rc == 0, run.output
    assert netns_exists(gone["name"])

    h.vars["nsproxy_tenants"] = [kept]
    prune = fleet.run()
    assert prune.rc == 0, prune.output
    assert prune.recap["h1"]["changed"] > 0
    assert not netns_exists(gone["name"])
    assert netns_exists(kept["name"])
    assert_serves(kept)
    assert gone["name"] not in h.ledger.read_text()


def test_invalid_manifest_fails_on_the_controller_before_any_host_changes(
    fleet: Fleet, echo_upstream: str, tmp_path: Path
) -> None:
    # h1's manifest is fine; h2's manifest file has a typo on line 6. The pre-flight play checks
    # them all on the controller, so the rollout stops before h1 is touched either.
    good = fleet.host("h1")
    good.vars["nsproxy_tenants"] = [fleet.tenant(good, "ok", echo_upstream)]
    bad = fleet.host("h2")
    typo = fleet.tenant(bad, "typo", echo_upstream)
    src = tmp_path / "repo" / "h2.yaml"
    src.parent.mkdir()
    src.write_text(
        "version: 1\n"
        "tenants:\n"
        f"  - name: {typo['name']}\n"
        "    listen: ['127.0.0.1:8080']\n"
        f"    upstream: {echo_upstream}\n"
        f"    upstreem: {echo_upstream}\n"
    )
    bad.vars["nsproxy_manifest_src"] = str(src)
    # h3's manifest is rendered from inventory: errors point into the rendered text, shown too.
    rendered = fleet.host("h3")
    rendered.vars["nsproxy_tenants"] = [
        {**fleet.tenant(rendered, "port", echo_upstream), "listen": ["127.0.0.1:99999"]}
    ]

    run = fleet.run()

    assert run.rc != 0
    assert f"{src}:6:" in run.stdout, run.output  # the error points at the file and line
    assert "upstreem" in run.stdout
    assert "<manifest rendered from nsproxy_tenants for h3>:" in run.stdout
    assert "The rendered manifest:" in run.stdout and "99999" in run.stdout
    assert "Roll nsproxy out" not in run.stdout  # the rolling play never started
    for h in (good, bad, rendered):
        assert h.files() == [], f"{h.name} was touched: {h.files()}"
    for name in fleet.netns_names:
        assert not netns_exists(name)


def test_failed_health_gate_stops_a_serial_rollout_and_later_hosts_stay_untouched(
    fleet: Fleet, echo_upstream: str, closed_port: str
) -> None:
    # Three hosts on this machine, one at a time. h2's tenant forwards to a port where nothing
    # listens: apply works, but the real request through its listener gets a 502.
    hosts = [fleet.host(f"h{i}", nsproxy_health_retries=2) for i in (1, 2, 3)]
    tenants = {}
    for h in hosts:
        upstream = closed_port if h.name == "h2" else echo_upstream
        tenants[h.name] = fleet.tenant(h, h.name, upstream)
        h.vars["nsproxy_tenants"] = [tenants[h.name]]

    run = fleet.run("-e", "nsproxy_serial=1", "-e", "nsproxy_max_fail_percentage=0")

    assert run.rc != 0
    assert run.recap["h2"]["failed"] == 1, run.output
    assert "health gate" in run.stdout and tenants["h2"]["name"] in run.stdout, run.output
    assert_serves(tenants["h1"])  # the first batch rolled out and serves
    assert netns_exists(tenants["h2"]["name"])  # applied, then failed its gate
    assert not netns_exists(tenants["h3"]["name"])  # never reached
    assert hosts[2].files() == []


def test_role_inputs_are_checked_before_any_task_runs(fleet: Fleet, echo_upstream: str) -> None:
    h = fleet.host("h1", nsproxy_service_manager="upstart", nsproxy_health_retries="many")
    h.vars["nsproxy_tenants"] = [fleet.tenant(h, "a", echo_upstream)]

    run = fleet.run()

    assert run.rc != 0
    assert "nsproxy_service_manager" in run.stdout and "upstart" in run.stdout, run.output
    assert "nsproxy_health_retries" in run.stdout
    assert h.files() == []
    assert not any(netns_exists(n) for n in fleet.netns_names)
