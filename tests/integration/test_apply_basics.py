"""nsproxy-apply on the host kernel: cold apply, idempotence, --check, --diff, bad manifests."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest
from apply_harness import APPLY, NSPROXY, lo_is_up

from nsproxy_appliance import netns

pytestmark = pytest.mark.root


def test_cold_apply_creates_namespaces_with_lo_up_and_writes_ledger_and_config(cli, unique):
    a, b = unique("a"), unique("b")
    m = cli.manifest([{"name": a}, {"name": "globex", "netns": b, "tenant_id": "globex-7f3a"}])
    run = cli.run(m)
    assert run.rc == 0, run.stdout
    assert run.data["changed"] is True and run.data["in_sync"] is True and run.data["errors"] == []
    assert run.ops("done") == [
        ("create_netns", a),
        ("set_lo_up", f"{a}/lo"),
        ("create_netns", b),
        ("set_lo_up", f"{b}/lo"),
        ("update_daemon_config", cli.paths.config),
    ]
    assert netns.exists(a) and netns.exists(b) and lo_is_up(a) and lo_is_up(b)
    owned = cli.ledger()
    assert owned.owns_netns(a, netns.identity(netns.named_path(a)))
    assert owned.namespaces[b].tenant == "globex"
    config = cli.config()
    assert config["generation"] == run.data["daemon"]["generation"]
    assert [(t["name"], t["tenant_id"], t["netns"]["path"]) for t in config["tenants"]] == [
        (a, a, netns.named_path(a)),
        ("globex", "globex-7f3a", netns.named_path(b)),
    ]
    assert run.data["daemon"]["action"] == "skipped"  # --no-daemon


def test_second_apply_is_a_no_op_and_check_exits_0(cli, unique):
    m = cli.manifest([{"name": unique("a")}, {"name": unique("b")}])
    assert cli.run(m).rc == 0
    ledger_before = Path(cli.paths.ledger).stat().st_mtime_ns
    again = cli.run(m)
    assert (again.rc, again.data["changed"], again.data["actions"], again.data["in_sync"]) == (0, False, [], True)
    assert Path(cli.paths.ledger).stat().st_mtime_ns == ledger_before  # nothing rewritten
    check = cli.run(m, "--check")
    assert (check.rc, check.data["changed"], check.data["in_sync"]) == (0, False, True)
    text = cli.run(m, "--check", output="text")
    assert text.rc == 0 and "No changes" in text.stdout


def test_check_reports_pending_changes_with_exit_2_and_changes_nothing(cli, unique):
    name = unique("a")
    m = cli.manifest([{"name": name}])
    run = cli.run(m, "--check")
    assert run.rc == 2
    assert run.data["changed"] is True and run.data["in_sync"] is False
    assert {a["status"] for a in run.data["actions"]} == {"pending"}
    assert run.ops()[:2] == [("create_netns", name), ("set_lo_up", f"{name}/lo")]
    assert not netns.exists(name)
    assert not Path(cli.paths.state_dir).exists() and not Path(cli.paths.runtime_dir).exists()
    text = cli.run(m, "--check", output="text")
    assert text.rc == 2 and "Plan: 1 to add, 2 to change, 0 to destroy." in text.stdout
    assert f"  + create_netns          {name}" in text.stdout


def test_nsproxy_plan_and_apply_subcommands_match_nsproxy_apply(cli, unique):
    name = unique("a")
    m = cli.manifest([{"name": name}])
    plan = cli.nsproxy("plan", str(m), "--no-daemon")
    assert plan.rc == 2 and not netns.exists(name)
    apply = cli.nsproxy("apply", str(m), "--no-daemon")
    assert apply.rc == 0 and netns.exists(name)
    status = cli.nsproxy("status")
    assert '"state": "present"' in status.stdout and name in status.stdout
    # --no-daemon: nothing serves the tenant, and status says so (exit 1)
    assert status.rc == 1 and status.data["not_serving"] == {name: "the daemon is not running"}


def test_diff_shows_before_and_after_per_tenant(cli, unique):
    name = unique("a")
    m = cli.manifest([{"name": name}])
    run = cli.run(m, "--check", "--diff")
    diff = run.data["diff"][name]
    assert diff["before"] == {"netns": None, "links": {}, "config": None}
    assert diff["after"]["netns"] == name and diff["after"]["lo"] == "up"
    assert diff["after"]["config"]["listen"] == [{"host": "127.0.0.1", "port": 8080}]
    assert cli.run(m).rc == 0
    m = cli.manifest([{"name": name, "listen": ["127.0.0.1:8081"]}])
    text = cli.run(m, "--check", "--diff", output="text")
    assert text.rc == 2
    assert f"--- {name} (before)" in text.stdout and '-        "port": 8080' in text.stdout
    assert '+        "port": 8081' in text.stdout
    assert cli.run(m, "--check").data["diff"] == {}  # only with --diff


def test_bad_manifest_exits_1_with_file_line_and_changes_nothing(cli, unique):
    name = unique("a")
    path = cli.tmp / "bad.yaml"
    path.write_text(
        f"version: 1\ntenants:\n  - name: {name}\n    upstream: http://127.0.0.1:9\n"
        '    listen: ["127.0.0.1:8080"]\n    bogus: 1\n'
    )
    cli.cleanup.append(name)
    for output in ("json", "text"):
        run = cli.run(path, output=output)
        assert run.rc == 1
        message = run.data["errors"][0] if output == "json" else run.stderr
        assert f"{path}:6:" in message and "bogus" in message
    assert not netns.exists(name) and not Path(cli.paths.ledger).exists()


@pytest.fixture
def public_dir():
    """A directory an unprivileged user can read (pytest's tmp_path sits under a 0700 parent)."""
    path = Path(tempfile.mkdtemp(prefix="nsproxy-test-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path)


def test_validate_only_needs_no_root(cli, unique, public_dir):
    good = public_dir / "good.yaml"
    good.write_text(cli.manifest([{"name": unique("a")}]).read_text())
    bad = public_dir / "bad.yaml"
    bad.write_text('version: 1\ntenants:\n  - name: Bad_Name\n    listen: ["127.0.0.1:8080"]\n')
    nobody = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
    # validation never imports pyroute2 (no kernel access), and runs as an unprivileged user
    probe = "import sys; from nsproxy_appliance import cli; rc = cli.apply_main(sys.argv[1:]); "
    probe += "assert 'pyroute2' not in sys.modules, 'pyroute2 imported'; sys.exit(rc)"
    python = str(APPLY.parent / "python")
    ok = subprocess.run([*nobody, python, "-c", probe, str(good), "--validate-only"], capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    assert "valid (1 tenant)" in ok.stdout
    ko = subprocess.run([*nobody, str(APPLY), str(bad), "--validate-only"], capture_output=True, text=True)
    assert ko.returncode == 1 and f"{bad}:3:" in ko.stderr and "Traceback" not in ko.stderr
    both = subprocess.run(
        [*nobody, str(NSPROXY), "validate", str(good), str(bad), "--output", "json"], capture_output=True, text=True
    )
    assert both.returncode == 1 and '"valid": false' in both.stdout


def test_apply_as_non_root_is_a_clear_error(cli, unique, public_dir):
    m = public_dir / "tenants.yaml"
    m.write_text(cli.manifest([{"name": unique("a")}]).read_text())
    run = subprocess.run(
        ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", str(APPLY), str(m), "--check"],
        capture_output=True,
        text=True,
    )
    assert run.returncode == 1 and "needs root" in run.stderr and "Traceback" not in run.stderr


def test_usage_errors_exit_1_not_2():
    """2 means "changes pending" to tools following terraform's -detailed-exitcode."""
    for argv in ([str(APPLY)], [str(APPLY), "m.yaml", "--output", "xml"], [str(NSPROXY), "bogus"]):
        run = subprocess.run(argv, capture_output=True, text=True)
        assert run.returncode == 1 and "usage:" in run.stderr, argv
