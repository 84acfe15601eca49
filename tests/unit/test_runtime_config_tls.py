"""The TLS parts of the runtime config: written only where used, read back to equal, hashable models."""

from __future__ import annotations

import dataclasses
import json

import pytest
from support import tenant

from nsproxy_appliance import runtime_config
from nsproxy_appliance.errors import RuntimeConfigError
from nsproxy_appliance.model import (
    Certificate,
    DaemonSettings,
    Listen,
    ListenTls,
    Manifest,
    TenantTls,
    Upstream,
    UpstreamTls,
)
from nsproxy_appliance.paths import Paths

LISTEN_TLS = ListenTls(
    certificates=(Certificate("/a.pem", "/a.key", digest="d1"), Certificate("/b.pem", "/b.key", ("b.test",), "d2")),
    client_ca="/ca.pem",
    client_auth="optional",
    min_version="1.3",
    client_ca_digest="d3",
)
UPSTREAM = Upstream(
    kind="http", host="api.test", port=8443, url="https://api.test:8443", tls=UpstreamTls(ca="/ca.pem", digest="d4")
)


def tls_tenant():
    base = tenant("acme", "acme")
    return dataclasses.replace(
        base,
        listen=(*base.listen, Listen("::1", 8443, LISTEN_TLS)),
        upstream=UPSTREAM,
        tls=TenantTls(handshake_timeout=3.0, subject_header="X-DN"),
    )


def write(tmp_path, tenants):
    paths = Paths(state_dir=str(tmp_path), runtime_dir=str(tmp_path))
    config = runtime_config.render(Manifest(1, tuple(tenants), DaemonSettings()), paths)
    runtime_config.write(config, paths.config)
    return paths.config, config


def test_tls_settings_round_trip_and_stay_hashable(tmp_path):
    t = tls_tenant()
    path, _ = write(tmp_path, [t, tenant("plain", "plain")])
    loaded = runtime_config.load(path)
    assert loaded.tenants[0] == t
    assert hash(loaded.tenants[0]) == hash(t)  # Listen is a dict key in the daemon
    assert {loaded.tenants[0].listen[1]: 1}[t.listen[1]] == 1
    again = runtime_config.Loader(path)
    first = again.load()
    assert again.load().tenants[0] is first.tenants[0]  # an unchanged line gives the same object


def test_a_tenant_without_tls_is_written_as_before(tmp_path):
    _, config = write(tmp_path, [tenant("plain", "plain")])
    entry = config["tenants"][0]
    assert "tls" not in entry and "tls" not in entry["upstream"]
    assert entry["listen"] == [{"host": "127.0.0.1", "port": 8080}]


def test_a_changed_certificate_changes_only_its_tenants_line(tmp_path):
    t = tls_tenant()
    _, before = write(tmp_path, [t, tenant("plain", "plain")])
    rotated = dataclasses.replace(
        t,
        listen=(
            t.listen[0],
            dataclasses.replace(t.listen[1], tls=dataclasses.replace(LISTEN_TLS, client_ca_digest="new")),
        ),
    )
    _, after = write(tmp_path, [rotated, tenant("plain", "plain")])
    assert before["generation"] != after["generation"]
    assert before["tenants"][1] == after["tenants"][1]
    assert before["tenants"][0]["listen"][1]["tls"]["client_ca_digest"] == "d3"


@pytest.mark.parametrize(
    "listen",
    [
        {"host": "::1", "port": 1, "tls": {"certificates": []}},
        {"host": "::1", "port": 1, "tls": {"certificates": [{"cert": "/a"}]}},
        {"host": "::1", "port": 1, "tls": {"certificates": [{"cert": "/a", "key": "/b", "names": "x"}]}},
        {"host": "::1", "port": 1, "tls": {"certificates": [{"cert": "/a", "key": "/b"}], "min_version": "1.0"}},
        {"host": "::1", "port": 1, "tls": {"certificates": [{"cert": "/a", "key": "/b"}], "bogus": 1}},
    ],
)
def test_a_bad_tls_entry_is_a_config_error(tmp_path, listen):
    path, config = write(tmp_path, [tenant("acme", "acme")])
    config["tenants"][0]["listen"] = [listen]
    with open(path, "w") as f:
        json.dump(config, f)
    with pytest.raises(RuntimeConfigError):
        runtime_config.load(path)
