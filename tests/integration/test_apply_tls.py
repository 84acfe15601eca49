"""TLS through the applier: the files checked at plan time with the manifest's positions, a
certificate expiring soon as a warning, and a rotation that the plan shows as a change of that
tenant only and the apply serves without dropping an established connection."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest
from support import run_cli
from support.tlscerts import Pki
from tls_harness import TlsKeepAlive, client_context, tls_get

from nsproxy_appliance import broker_control, daemon_control, netns

pytestmark = pytest.mark.root


@pytest.fixture
def stop_daemon(paths):
    yield
    daemon_control.stop(paths, timeout=15)


def tls_tenant(name: str, upstream: str, cert) -> dict:
    listener = {"address": "127.0.0.1:8443", "tls": {"certificates": [{"cert": cert.cert, "key": cert.key}]}}
    return {"name": name, "upstream": upstream, "listen": ["127.0.0.1:8080", listener]}


def test_plan_checks_the_files_and_a_rotation_changes_one_tenant(cli, unique, echo, stop_daemon, tmp_path):
    pki = Pki(tmp_path / "pki")
    a, b = unique("a"), unique("b")
    cert_a, cert_b = pki.server("a"), pki.server("b", days=10)  # b's expires within 14 days: a warning
    m = cli.manifest([tls_tenant(a, echo.url, cert_a), tls_tenant(b, echo.url, cert_b)])

    # a key others may read is an error at the field naming it; nothing is changed
    os.chmod(cert_a.key, 0o644)
    bad = cli.run(m, "--check")
    assert bad.rc == 1 and not netns.exists(a)
    assert len(bad.data["errors"]) == 1
    assert (
        f"$.tenants[0].listen[1].tls.certificates[0].key: key file {cert_a.key} has mode 0644" in bad.data["errors"][0]
    )
    # `nsproxy validate` (no files) accepts the same manifest
    assert run_cli("nsproxy", "validate", str(m)).returncode == 0
    os.chmod(cert_a.key, 0o600)

    run = cli.run(m, "--lock-timeout", "60", daemon=True)
    assert run.rc == 0, run.data["errors"]
    assert (
        len(run.data["warnings"]) == 1 and "$.tenants[1].listen[1].tls.certificates[0].cert" in run.data["warnings"][0]
    )
    assert "expires in 9 days" in run.data["warnings"][0]
    text = cli.run(m, "--check", output="text")
    assert text.rc == 0 and "Warnings:\n  ~ " in text.stdout and "expires in 9 days" in text.stdout

    path_a = netns.named_path(a)
    ctx = client_context(pki.ca_file)
    long_lived = TlsKeepAlive(path_a, 8443, ctx)
    assert long_lived.get("/before").status == 200 and long_lived.serial == cert_a.serial

    rotated = pki.server("a")  # new files at the same paths
    plan = cli.run(m, "--check")
    assert plan.rc == 2
    assert [x["op"] for x in plan.data["actions"]] == ["update_daemon_config"]
    text = cli.run(m, "--check", output="text").stdout
    assert f"(config changes for tenant {a})" in text
    run = cli.run(m, "--lock-timeout", "60", daemon=True)
    assert run.rc == 0 and run.data["daemon"]["action"] == "reloaded"
    assert tls_get(path_a, 8443, ctx).serial == rotated.serial
    assert long_lived.get("/after").status == 200  # the connection made before the rotation
    assert tls_get(netns.named_path(b), 8443, ctx).serial == cert_b.serial
    long_lived.close()
    assert Path(cert_a.cert).exists()


def test_plan_checks_the_files_as_the_user_the_daemon_will_run_as(cli, unique, echo, monkeypatch):
    """Plan runs as root; a key only root can read would pass it and fail in an unprivileged daemon."""
    root = tempfile.mkdtemp(prefix="nsproxy-tls-", dir="/var/tmp")
    try:
        os.chmod(root, 0o755)
        pki = Pki(Path(root) / "pki")
        os.chmod(pki.dir, 0o755)
        cert = pki.server("a")
        os.chmod(cert.cert, 0o644)
        m = cli.manifest([tls_tenant(unique("a"), echo.url, cert)])
        monkeypatch.setenv(broker_control.ENV_DAEMON_USER, "nobody")
        bad = cli.run(m, "--check", daemon=True)
        assert bad.rc == 1 and len(bad.data["errors"]) == 1, bad.data
        error = bad.data["errors"][0]
        assert "$.tenants[0].listen[1].tls.certificates[0].key: " in error
        assert "cannot be read by nobody (uid 65534), the user nsproxyd runs as: Permission denied" in error
        # 2: valid, changes pending (the tenant is new)
        no_daemon = cli.run(m, "--check")  # --no-daemon: nothing will read the files
        assert no_daemon.rc == 2 and not no_daemon.data["errors"], no_daemon.data
        monkeypatch.delenv(broker_control.ENV_DAEMON_USER)
        as_root = cli.run(m, "--check", daemon=True)  # a root daemon reads them
        assert as_root.rc == 2 and not as_root.data["errors"], as_root.data
    finally:
        shutil.rmtree(root, ignore_errors=True)
