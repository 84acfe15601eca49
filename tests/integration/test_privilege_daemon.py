"""nsproxyd serves every tenant with no privilege at all: it runs as the nsproxy user with empty
capability sets and no_new_privs, while the socket broker (root) makes its sockets, and it can
create no socket in a namespace itself."""

from __future__ import annotations

import dataclasses
import os
import re
import socket
import stat
import subprocess
import sys

import pytest
from broker_harness import EchoInNetns, capabilities, proc_status
from daemon_harness import get_in, tenant, tenants_by_name, write_config
from support import wait_until

from nsproxy_appliance import broker_control, daemon_control, netns

pytestmark = pytest.mark.root


def test_the_daemon_serves_tenants_in_several_namespaces_as_nsproxy_with_capeff_0(
    service_launcher, service_user, make_netns, unique, echo
):
    paths = service_launcher
    names = [unique(n) for n in ("a", "b", "c")]
    ns_paths = [make_netns(n) for n in names]
    inside = EchoInNetns(ns_paths[2])  # tenant c's upstream lives inside its namespace
    try:
        tenants = [tenant("a", names[0], 8080, echo), tenant("b", names[1], 80, echo)]
        c = tenant("c", names[2], 8080, "http://127.0.0.1:9000")
        tenants.append(dataclasses.replace(c, upstream=dataclasses.replace(c.upstream, from_ns="tenant")))
        gen = write_config(paths, tenants)
        assert daemon_control.ensure_daemon(paths, gen, timeout=30) == "launched"

        pid = daemon_control.status(paths).pid
        assert pid is not None
        for i, name in enumerate("ab"):
            resp = get_in(ns_paths[i], "127.0.0.1", 8080 if name == "a" else 80)
            assert resp.status == 200
        for _ in range(3):  # a `from: tenant` upstream: sockets from the broker's reserve
            resp = get_in(ns_paths[2], "127.0.0.1", 8080)
            assert resp.status == 200 and resp.body == b"in-netns c", resp
        assert inside.requests >= 1
        assert {t["state"] for t in tenants_by_name(paths).values()} == {"serving"}

        # ... while serving: the nsproxy user, nothing effective, permitted, inheritable, bounding or ambient
        status = proc_status(pid)
        assert status["Uid"].split() == [str(service_user.pw_uid)] * 4
        assert status["Gid"].split() == [str(service_user.pw_gid)] * 4
        assert status["Groups"] == ""
        assert status["NoNewPrivs"] == "1"
        assert capabilities(pid) == {"CapEff": 0, "CapPrm": 0, "CapInh": 0, "CapBnd": 0, "CapAmb": 0}
        broker_pid = broker_control.running_pid(paths)
        assert broker_pid is not None and proc_status(broker_pid)["Uid"].split()[0] == "0"

        # the files it writes are its own; the config stays root's, in a dir it cannot replace it in
        assert os.stat(paths.pidfile).st_uid == service_user.pw_uid
        assert os.stat(paths.admin_socket).st_uid == service_user.pw_uid
        assert os.stat(paths.config).st_uid == 0
        run = os.stat(paths.runtime_dir)
        assert (run.st_uid, run.st_gid, stat.S_IMODE(run.st_mode)) == (0, service_user.pw_gid, 0o1770)
        print(f"\nnsproxyd pid {pid}: CapEff {status['CapEff']}; nsproxy-broker pid {broker_pid}: "
              f"CapEff {proc_status(broker_pid)['CapEff']}")  # fmt: skip
    finally:
        inside.close()


def test_as_the_nsproxy_user_no_socket_can_be_made_in_a_namespace(service_user, make_netns, unique):
    """What the daemon could do on its own if it tried: nothing (setns needs CAP_SYS_ADMIN)."""
    path = make_netns(unique("a"))
    code = (
        "import sys, socket; from nsproxy_appliance import netns\n"
        "try:\n    netns.socket_in(sys.argv[1], socket.AF_INET)\nexcept OSError as e:\n    print(e)\n"
    )
    out = subprocess.run(
        ["setpriv", f"--reuid={service_user.pw_uid}", f"--regid={service_user.pw_gid}", "--clear-groups",
         sys.executable, "-c", code, path],
        capture_output=True, text=True, timeout=60, env={**os.environ},
    )  # fmt: skip
    assert "cannot enter network namespace" in out.stdout and "Operation not permitted" in out.stdout, out
    with socket.socket() as probe:  # the kernel has cookies, so the daemon's namespace checks apply
        assert netns.cookie_of(probe) is not None


def test_drift_found_by_nsproxy_reconcile_is_on_the_daemons_metrics(
    service_launcher, make_netns, unique, echo, tmp_path
):
    """The reconcile run (root) writes drift.json; the daemon (no privilege) exports it; a record
    it cannot read is left out, never an error."""
    paths = service_launcher
    served, missing = unique("a"), unique("m")
    make_netns(served)
    gen = write_config(paths, [tenant("a", served, 8080, echo)])
    assert daemon_control.ensure_daemon(paths, gen, timeout=30) == "launched"
    code, text = daemon_control.admin_request(paths, "GET", "/metrics", 5.0)
    assert code == 200 and "nsproxy_drift" not in text  # no reconcile run yet: no claim either way

    # a manifest whose tenant this host does not have: a namespace (and more) to add
    manifest = tmp_path / "tenants.yaml"
    manifest.write_text(f"version: 1\ntenants:\n  - name: {missing}\n    listen: ['127.0.0.1:8080']\n"
                        f"    upstream: {echo.url}\n")  # fmt: skip
    out = subprocess.run(
        [sys.executable, "-m", "nsproxy_appliance.reconcile", str(manifest), "--mode", "check",
         "--state-dir", paths.state_dir, "--runtime-dir", paths.runtime_dir],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert out.returncode == 0, out
    assert out.stdout.startswith("nsproxy-reconcile (check): drift;") and "to add" in out.stdout, out
    assert not os.path.exists(netns.named_path(missing))  # check mode changed nothing

    code, text = daemon_control.admin_request(paths, "GET", "/metrics", 5.0)
    assert code == 200
    drift = re.search(r"^nsproxy_drift (\d+)$", text, re.MULTILINE)
    assert drift and int(drift.group(1)) >= 1, text[-1500:]
    assert 'nsproxy_reconcile_result{result="drift"} 1' in text
    assert re.search(r'^nsproxy_reconcile_pending_changes\{action="add"\} [1-9]', text, re.MULTILINE)

    with open(paths.drift_file, "w") as f:  # torn or foreign: the metrics leave it out
        f.write('{"pending": ')
    code, text = daemon_control.admin_request(paths, "GET", "/metrics", 5.0)
    assert code == 200 and "nsproxy_drift" not in text and "nsproxy_build_info" in text


def test_without_privilege_the_daemon_follows_a_namespace_made_again(service_launcher, make_netns, unique, echo):
    """Namespace watching needs no privilege (inotify on /run/netns, stat and cookies); the new
    namespace's listeners come from the broker."""
    paths = service_launcher
    name = unique("f")
    path = make_netns(name)
    gen = write_config(paths, [tenant("fragile", name, 8080, echo)])
    assert daemon_control.ensure_daemon(paths, gen, timeout=30) == "launched"
    assert get_in(path, "127.0.0.1", 8080).status == 200
    netns.delete_named(name)  # `ip netns del`
    wait_until(lambda: tenants_by_name(paths)["fragile"]["state"] == "failed", timeout=10, what="fragile failed")
    subprocess.run(["ip", "netns", "add", name], check=True)  # a new namespace at the same name
    subprocess.run(["ip", "-n", name, "link", "set", "lo", "up"], check=True)
    wait_until(lambda: tenants_by_name(paths)["fragile"]["state"] == "serving", timeout=10, what="fragile again")
    assert get_in(path, "127.0.0.1", 8080).status == 200
    assert tenants_by_name(paths)["fragile"]["netns"]["identity"]["ino"] == netns.identity(path).ino
