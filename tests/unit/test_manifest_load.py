"""Loading valid manifests: the examples, the issue's normative example, defaults, normalisation."""

from __future__ import annotations

import os
import textwrap
from pathlib import Path

import pytest

from nsproxy_appliance import manifest
from nsproxy_appliance.model import DaemonSettings, Limits, Link, Listen, NetnsRef, Upstream

ROOT = Path(__file__).resolve().parents[2]
DATA = Path(__file__).resolve().parent / "data"


def parse(text: str) -> manifest.Manifest:
    return manifest.parse(textwrap.dedent(text), "t.yaml")


def test_issue_example_means_what_its_comments_say() -> None:
    m = manifest.load(str(DATA / "issue-example.yaml"))
    assert m.version == 1
    assert m.source == str(DATA / "issue-example.yaml")
    assert [t.name for t in m.tenants] == ["acme", "globex", "initech", "umbrella", "hooli"]
    default_upstream = Upstream(kind="http", host="127.0.0.1", port=9000, from_ns="host", url="http://127.0.0.1:9000")
    for t in m.tenants:
        assert t.tenant_header == "X-Tenant-ID"  # header the upstream reads to know the tenant
        assert t.limits == Limits()

    acme = m.tenant("acme")  # owned dummy link in its own netns named after the tenant
    assert acme.netns == NetnsRef.named("acme") and not acme.netns.external
    assert acme.links == (Link(name="nsp0", kind="dummy", addresses=("169.254.169.254/32", "fd00:a9fe::254/128")),)
    assert acme.listen == (Listen("169.254.169.254", 80), Listen("fd00:a9fe::254", 80))
    assert acme.upstream == default_upstream  # default: connected from the host namespace
    assert acme.tenant_id == "acme"  # default: the name

    globex = m.tenant("globex")  # named netns, value sent in the tenant header
    assert globex.netns == NetnsRef(path="/run/netns/globex-prod", name="globex-prod")
    assert globex.listen == (Listen("127.0.0.1", 8080),)
    assert globex.upstream == Upstream(kind="http", host="127.0.0.1", port=9001, url="http://127.0.0.1:9001")
    assert globex.tenant_id == "globex-7f3a"
    assert globex.links == ()

    initech = m.tenant("initech")  # an existing namespace nsproxy never creates or deletes
    assert initech.netns.external
    assert initech.netns == NetnsRef(path="/var/run/docker/netns/4f2c9a", name=None)
    assert initech.upstream == default_upstream

    umbrella = m.tenant("umbrella")  # connect from inside the tenant netns
    assert umbrella.netns == NetnsRef.named("umbrella")
    assert umbrella.upstream == Upstream(
        kind="http", host="10.0.0.5", port=8000, from_ns="tenant", url="http://10.0.0.5:8000"
    )

    hooli = m.tenant("hooli")  # a unix socket in the host
    assert hooli.upstream == Upstream(kind="unix", path="/run/metadata.sock")
    assert hooli.upstream.describe() == "unix:/run/metadata.sock"

    assert m.daemon == DaemonSettings()


def test_quickstart_example_runs_without_dummy_links() -> None:
    m = manifest.load(str(ROOT / "examples" / "tenants.yaml"))
    assert 2 <= len(m.tenants) <= 3
    netns_names = [t.netns.name for t in m.tenants]
    assert None not in netns_names and len(set(netns_names)) == len(netns_names)  # each its own named netns
    for t in m.tenants:
        assert t.links == ()
        assert t.listen == (Listen("127.0.0.1", 8080),)
        assert t.upstream == Upstream(kind="http", host="127.0.0.1", port=9000, url="http://127.0.0.1:9000")
    assert any(t.tenant_id != t.name for t in m.tenants)


def test_metadata_vip_example() -> None:
    m = manifest.load(str(ROOT / "examples" / "metadata-vip.yaml"))
    (t,) = m.tenants
    assert t.links == (Link(name="nsp0", addresses=("169.254.169.254/32", "fd00:a9fe::254/128")),)
    assert t.listen == (Listen("169.254.169.254", 80), Listen("fd00:a9fe::254", 80))


@pytest.mark.parametrize("path", ["examples/tenants.yaml", "examples/metadata-vip.yaml"])
def test_examples_carry_the_schema_modeline(path: str) -> None:
    first = (ROOT / path).read_text().splitlines()[0]
    assert first == "# yaml-language-server: $schema=../schemas/tenants.schema.json"
    target = (ROOT / path).parent / "../schemas/tenants.schema.json"
    assert target.resolve().is_file()


def test_defaults_merge_field_by_field() -> None:
    m = parse(
        """
        version: 1
        defaults:
          tenant_header: X-Customer
          upstream: {url: "http://10.1.2.3:8000", from: tenant}
          limits: {header_timeout: 2.5, max_connections: 10}
        tenants:
          - name: a
            listen: ["127.0.0.1:80"]
          - name: b
            listen: ["127.0.0.1:80"]
            tenant_header: X-Other
            upstream: http://upstream.example:8080
            limits: {max_connections: 20, read_timeout: 1}
        """
    )
    a, b = m.tenants
    assert a.tenant_header == "X-Customer"
    assert a.upstream == Upstream(kind="http", host="10.1.2.3", port=8000, from_ns="tenant", url="http://10.1.2.3:8000")
    assert a.limits == Limits(header_timeout=2.5, max_connections=10)
    assert b.tenant_header == "X-Other"
    assert b.upstream == Upstream(kind="http", host="upstream.example", port=8080, url="http://upstream.example:8080")
    # b's limits: its own fields, then the defaults' fields, then the built-in defaults
    assert b.limits == Limits(header_timeout=2.5, max_connections=20, read_timeout=1.0)
    assert isinstance(b.limits.read_timeout, float) and isinstance(b.limits.max_connections, int)


def test_body_timeout_merges_like_the_other_limits() -> None:
    m = parse(
        """
        version: 1
        defaults:
          upstream: http://127.0.0.1:9000
          limits: {body_timeout: 30}
        tenants:
          - {name: a, listen: ["127.0.0.1:80"]}
          - {name: b, listen: ["127.0.0.1:80"], limits: {body_timeout: 2.5}}
        """
    )
    assert [t.limits.body_timeout for t in m.tenants] == [30.0, 2.5]
    assert Limits().body_timeout == 60.0 and isinstance(m.tenants[0].limits.body_timeout, float)


def test_builtin_defaults() -> None:
    m = parse(
        """
        version: 1
        tenants:
          - name: solo
            listen: ["0.0.0.0:80"]
            upstream: http://127.0.0.1
        """
    )
    (t,) = m.tenants
    assert t.tenant_header == "X-Tenant-ID"
    assert t.tenant_id == "solo"
    assert t.netns == NetnsRef.named("solo")
    assert t.upstream.port == 80  # http default port
    assert t.limits == Limits()
    assert m.daemon == DaemonSettings(access_log="stdout", admin_listen=None, drain_timeout=30.0)


def test_normalisation() -> None:
    m = parse(
        """
        version: 1
        tenants:
          - name: n
            netns: {path: /var/run/netns/../netns//x/}
            links:
              - name: nsp0
                addresses: ["10.0.0.5/24", "FD00:0:0::0005/64", "192.168.1.1/32"]
                mtu: 9000
            listen: ["[FD00::5]:80", "[0:0::0]:81", "10.0.0.5:82"]
            upstream: {url: "http://[FD00::1]:8080/", from: tenant}
        """
    )
    (t,) = m.tenants
    assert t.netns == NetnsRef(path="/var/run/netns/x", name=None)
    assert t.links[0].addresses == ("10.0.0.5/24", "fd00::5/64", "192.168.1.1/32")  # host bits kept
    assert t.links[0].kind == "dummy" and t.links[0].mtu == 9000
    assert t.listen == (Listen("fd00::5", 80), Listen("::", 81), Listen("10.0.0.5", 82))
    assert [str(x) for x in t.listen] == ["[fd00::5]:80", "[::]:81", "10.0.0.5:82"]
    assert t.upstream.host == "fd00::1" and t.upstream.port == 8080 and t.upstream.from_ns == "tenant"


def test_daemon_settings() -> None:
    m = parse(
        """
        version: 1
        daemon: {access_log: /var/log/nsproxy/access.log, admin_listen: "127.0.0.1:9901", drain_timeout: 0}
        tenants: []
        """
    )
    assert m.tenants == ()
    assert m.daemon == DaemonSettings(
        access_log="/var/log/nsproxy/access.log", admin_listen="127.0.0.1:9901", drain_timeout=0.0
    )
    m = parse('version: 1\ndaemon: {access_log: "off", admin_listen: "[::1]:9901"}\ntenants: []\n')
    assert m.daemon.access_log == "off" and m.daemon.admin_listen == "[::1]:9901"


def test_tenants_sharing_an_external_netns() -> None:
    m = parse(
        """
        version: 1
        defaults: {upstream: "http://127.0.0.1:9000"}
        tenants:
          - {name: a, netns: {path: /proc/1/ns/net}, listen: ["127.0.0.1:80", "[::]:80"]}
          - {name: b, netns: {path: /proc/1/ns/net}, listen: ["127.0.0.1:81", "0.0.0.0:82", "10.9.9.9:83"]}
        """
    )
    assert {t.netns for t in m.tenants} == {NetnsRef(path="/proc/1/ns/net")}


def test_ipv4_and_ipv6_wildcards_on_one_port_do_not_collide() -> None:
    m = parse(
        """
        version: 1
        defaults: {upstream: "http://127.0.0.1:9000"}
        tenants:
          - {name: a, listen: ["0.0.0.0:80", "[::]:80", "127.0.0.1:81", "127.0.0.2:81"]}
        """
    )
    assert len(m.tenants[0].listen) == 4


def test_yaml_anchors_and_merge_keys() -> None:
    # Unknown top-level keys are rejected, so an anchor lives on its first use.
    m = parse(
        """
        version: 1
        tenants:
          - &base
            name: a
            listen: ["127.0.0.1:80"]
            upstream: http://127.0.0.1:9000
          - <<: *base
            name: b
            listen: ["127.0.0.1:81"]
        """
    )
    assert [(t.name, t.listen) for t in m.tenants] == [
        ("a", (Listen("127.0.0.1", 80),)),
        ("b", (Listen("127.0.0.1", 81),)),
    ]
    assert m.tenants[1].upstream.port == 9000


def test_load_reads_the_file(tmp_path: Path) -> None:
    path = tmp_path / "m.yaml"
    path.write_text("version: 1\ntenants: []\n")
    m = manifest.load(str(path))
    assert m.source == str(path) and m.tenants == ()


def test_manifest_module_needs_no_kernel_libraries() -> None:
    import subprocess
    import sys

    code = (
        "import sys; import nsproxy_appliance.manifest as m; "
        "m.load(sys.argv[1]); "
        "bad = [x for x in ('pyroute2', 'aiohttp') if x in sys.modules]; "
        "sys.exit(repr(bad) if bad else 0)"
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    result = subprocess.run(
        [sys.executable, "-c", code, str(DATA / "issue-example.yaml")], capture_output=True, text=True, env=env
    )
    assert result.returncode == 0, result.stderr
