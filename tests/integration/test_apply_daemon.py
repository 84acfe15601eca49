"""The hand-off to the daemon, end to end through the CLI (no --no-daemon): launch, serve,
nothing on a no-op, reload, drain removed tenants before their namespace is pruned."""

from __future__ import annotations

import pytest
from daemon_harness import get_in
from support import header_values

from nsproxy_appliance import daemon_control, netns

pytestmark = pytest.mark.root


@pytest.fixture
def stop_daemon(paths):
    yield
    daemon_control.stop(paths, timeout=15)


def apply(cli, manifest, *args):
    run = cli.run(manifest, "--lock-timeout", "60", *args, daemon=True)
    return run.rc, run.data


def test_apply_launches_the_daemon_then_leaves_it_alone_then_reloads_and_drains(cli, unique, echo, stop_daemon):
    a, b = unique("a"), unique("b")
    tenants = [{"name": a, "upstream": echo.url}, {"name": b, "upstream": echo.url, "tenant_id": "bee"}]
    m = cli.manifest(tenants)
    rc, out = apply(cli, m)
    assert rc == 0, out["errors"]
    assert out["daemon"]["action"] == "launched" and out["in_sync"]
    status = daemon_control.status(cli.paths)
    assert status.running and status.generation == out["daemon"]["generation"]
    response = get_in(netns.named_path(b), "127.0.0.1", 8080, "/hello")
    assert response.status == 200 and header_values(response.json()["headers"], "X-Tenant-Id") == ["bee"]

    rc, again = apply(cli, m)
    assert (rc, again["changed"], again["actions"], again["daemon"]["action"]) == (0, False, [], "unchanged")
    rc, check = apply(cli, m, "--check")
    assert rc == 0 and check["daemon"]["action"] == "unchanged"

    m = cli.manifest([tenants[0]])  # b leaves: the daemon lets go of it before its netns goes
    rc, check = apply(cli, m, "--check")
    assert rc == 2 and check["daemon"]["action"] == "pending"
    rc, out = apply(cli, m)
    assert rc == 0, out["errors"]
    assert out["daemon"]["action"] == "reloaded"
    assert [(x["op"], x["status"]) for x in out["actions"]] == [
        ("update_daemon_config", "done"),
        ("delete_netns", "done"),
    ]
    assert not netns.exists(b)
    assert daemon_control.status(cli.paths).generation == out["daemon"]["generation"]
    assert get_in(netns.named_path(a), "127.0.0.1", 8080).status == 200


def test_daemon_is_relaunched_when_it_is_not_running(cli, unique, echo, stop_daemon):
    m = cli.manifest([{"name": unique("a"), "upstream": echo.url}])
    assert apply(cli, m)[0] == 0
    assert daemon_control.stop(cli.paths, timeout=15)
    rc, check = apply(cli, m, "--check")
    assert rc == 2 and [x["op"] for x in check["actions"]] == ["update_daemon_config"]
    assert "daemon not running" in check["actions"][0]["detail"]
    rc, out = apply(cli, m)
    assert rc == 0 and out["daemon"]["action"] == "launched" and out["changed"]
