"""Every error class, with its exact position and JSON path, and all of them at once."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from nsproxy_appliance import manifest
from nsproxy_appliance.manifest import ManifestError


def errors(text: str, filename: str = "t.yaml") -> list[str]:
    with pytest.raises(ManifestError) as info:
        manifest.parse(textwrap.dedent(text).lstrip("\n"), filename)
    err = info.value
    assert str(err) == "\n".join(err.errors)
    return err.errors


def only(text: str) -> str:
    """The single error `text` produces."""
    found = errors(text)
    assert len(found) == 1, found
    return found[0]


def assert_error(error: str, where: str, *fragments: str) -> None:
    """`where` is 'LINE:COL: $.path'; every fragment must appear in the message."""
    assert error.startswith(f"t.yaml:{where}: "), error
    for fragment in fragments:
        assert fragment in error, error


# --- YAML itself ---------------------------------------------------------------------------


def test_yaml_syntax_error_is_the_only_error_reported() -> None:
    error = only(
        """
        version: 2
        tenants:
          - name: BAD
            listen: ["127.0.0.1:80", oops
          - name: b
        """
    )
    assert_error(error, "5:9: $", "YAML syntax error", "flow sequence at line 4, column 13")


def test_yaml_bad_indentation() -> None:
    error = only(
        """
        version: 1
        tenants:
          - name: a
           listen: []
        """
    )
    assert error.startswith("t.yaml:4:"), error
    assert "YAML syntax error" in error


def test_yaml_control_character() -> None:
    error = only("version: 1\ntenants:\n  - name: a\x07b\n")
    assert_error(error, "3:12: $", "U+0007")


def test_duplicate_keys_anywhere() -> None:
    found = errors(
        """
        version: 1
        version: 1
        defaults:
          upstream: http://127.0.0.1:9000
        tenants:
          - name: a
            listen: ["127.0.0.1:80"]
            upstream: http://127.0.0.1:9001
            upstream: http://127.0.0.1:9002
            links:
              - {name: nsp0, addresses: ["10.0.0.1/32"], addresses: ["10.0.0.2/32"]}
        """
    )
    assert len(found) == 3, found
    assert_error(found[0], "2:1: $.version", "duplicate key 'version' (first at line 1)")
    assert_error(found[1], "9:5: $.tenants[0].upstream", "duplicate key 'upstream' (first at line 8)")
    assert_error(found[2], "11:50: $.tenants[0].links[0].addresses", "first at line 11")


def test_merge_key_overrides_are_not_duplicates() -> None:
    m = manifest.parse(
        textwrap.dedent(
            """
            version: 1
            tenants:
              - &a {name: a, listen: ["127.0.0.1:80"], upstream: "http://127.0.0.1:1"}
              - {<<: *a, name: b}
            """
        ),
        "t.yaml",
    )
    assert [t.name for t in m.tenants] == ["a", "b"]


def test_recursive_alias() -> None:
    error = only("version: 1\ntenants: &t [*t]\n")
    assert "recursive alias" in error


@pytest.mark.parametrize(
    ("text", "where", "fragment"),
    [
        ("", "1:1: $", "expected a mapping, got an empty value"),
        ("- a\n", "1:1: $", "expected a mapping, got a list"),
        ("version: 1\ntenants: {a: 1}\n", "2:10: $.tenants", "expected a list, got a mapping"),
    ],
)
def test_document_shape(text: str, where: str, fragment: str) -> None:
    assert_error(only(text), where, fragment)


# --- schema violations -----------------------------------------------------------------------

VALID_HEAD = """
version: 1
defaults:
  upstream: http://127.0.0.1:9000
tenants:
"""


def tenant_errors(tenant_yaml: str) -> list[str]:
    """Errors of a manifest made of VALID_HEAD and `tenant_yaml` (which starts at line 5)."""
    items = textwrap.indent(textwrap.dedent(tenant_yaml).lstrip("\n"), "  ")
    return errors(textwrap.dedent(VALID_HEAD).lstrip("\n") + items)


def tenant_error(tenant_yaml: str) -> str:
    found = tenant_errors(tenant_yaml)
    assert len(found) == 1, found
    return found[0]


def test_unknown_field_points_at_the_key() -> None:
    error = tenant_error(
        """
        - name: a
          listen: ["127.0.0.1:80"]
          lsiten: ["127.0.0.1:81"]
        """
    )
    assert_error(error, "7:5: $.tenants[0].lsiten", "unknown field 'lsiten'", "expected one of:", "listen")


def test_unknown_top_level_field() -> None:
    error = only("version: 1\ntenants: []\ntennants: []\n")
    assert_error(
        error, "3:1: $.tennants", "unknown field 'tennants'; expected one of: daemon, defaults, tenants, version"
    )


def test_missing_required_fields() -> None:
    found = errors("tenants:\n  - name: a\n    upstream: http://127.0.0.1:1\n")
    assert_error(found[0], "1:1: $", "missing required field 'version'")
    assert_error(found[1], "2:5: $.tenants[0]", "missing required field 'listen'")


def test_wrong_version() -> None:
    assert_error(only("version: 2\ntenants: []\n"), "1:10: $.version", "unsupported manifest version 2", "version 1")


def test_wrong_type_suggests_quoting() -> None:
    error = tenant_error(
        """
        - name: a
          listen: ["127.0.0.1:80"]
          tenant_id: 2024-01-01
        """
    )
    assert_error(error, "7:16: $.tenants[0].tenant_id", "expected a string, got the date 2024-01-01; quote it")


def test_listen_needs_at_least_one_address() -> None:
    error = tenant_error(
        """
        - name: a
          listen: []
        """
    )
    assert_error(error, "6:13: $.tenants[0].listen", "at least one listen address")


@pytest.mark.parametrize(
    ("upstream", "where", "fragments"),
    [
        ("HTTPS://10.0.0.1", "7:15: $.tenants[0].upstream", ("write the scheme in lowercase, https://",)),
        ("ftp://10.0.0.1", "7:15: $.tenants[0].upstream", ("not an http or https URL", "http://HOST[:PORT]")),
        ("{url: 'https://'}", "7:21: $.tenants[0].upstream.url", ("has no host", "https://HOST[:PORT]")),
        ("{url: 'http://x', tls: {ca: /ca.pem}}", "7:38: $.tenants[0].upstream.tls", ("https upstreams only",)),
        ("{url: 'https://x', tls: {cert: /c.pem}}", "7:46: $.tenants[0].upstream.tls.cert", ("cert needs key",)),
        (
            "{url: 'https://x', tls: {server_hostname: '*.x'}}",
            "7:57: $.tenants[0].upstream.tls.server_hostname",
            ("cannot be a wildcard",),
        ),
        ("{url: 'https://x', tls: {ca: ca.pem}}", "7:44: $.tenants[0].upstream.tls.ca", ("not absolute",)),
        ("{url: 'http://x', from: guest}", "7:39: $.tenants[0].upstream.from", ("expected one of: host, tenant",)),
        ("{url: 'http://x', form: tenant}", "7:33: $.tenants[0].upstream.form", ("unknown field 'form'",)),
        ("{unix: run/x.sock}", "7:22: $.tenants[0].upstream.unix", ("not absolute",)),
        (
            "{url: 'http://x', unix: /x}",
            "7:15: $.tenants[0].upstream",
            ("expected an upstream: a URL string", "{unix: /path/to.sock}"),
        ),
        ("{}", "7:15: $.tenants[0].upstream", ("expected an upstream", "got a mapping (empty)")),
        ("8080", "7:15: $.tenants[0].upstream", ("expected an upstream", "got the integer 8080")),
        ("http://10.0.0.1:99999", "7:15: $.tenants[0].upstream", ("port 99999 is out of range; expected 1-65535",)),
        ("http://10.0.0.1:x", "7:15: $.tenants[0].upstream", ("port 'x' is not a number",)),
        ("http://10.0.0.1/api", "7:15: $.tenants[0].upstream", ("a path, query or fragment is not supported",)),
        ("http://user:pw@10.0.0.1", "7:15: $.tenants[0].upstream", ("credentials",)),
        ("http://::1:80", "7:15: $.tenants[0].upstream", ("put an IPv6 address in brackets",)),
        ("http://bad_host:80", "7:15: $.tenants[0].upstream", ("neither an IP address nor a valid host name",)),
    ],
)
def test_upstream_forms(upstream: str, where: str, fragments: tuple[str, ...]) -> None:
    error = tenant_error(
        f"""
        - name: a
          listen: ["127.0.0.1:80"]
          upstream: {upstream}
        """
    )
    assert_error(error, where, *fragments)


def test_upstream_from_tenant_needs_an_ip_literal() -> None:
    error = tenant_error(
        """
        - name: a
          listen: ["127.0.0.1:80"]
          upstream: {url: "http://metadata.internal:80", from: tenant}
        """
    )
    assert_error(error, "7:21: $.tenants[0].upstream.url", "must be an IP address", "no DNS inside a tenant netns")


def test_upstream_from_tenant_in_defaults_is_reported_once_at_the_defaults() -> None:
    found = errors(
        """
        version: 1
        defaults:
          upstream: {url: "http://metadata", from: tenant}
        tenants:
          - {name: a, listen: ["127.0.0.1:80"]}
          - {name: b, listen: ["127.0.0.1:80"]}
        """
    )
    assert len(found) == 1, found
    assert_error(found[0], "3:19: $.defaults.upstream.url", "must be an IP address")


def test_unix_socket_path_too_long() -> None:
    error = tenant_error(
        f"""
        - name: a
          listen: ["127.0.0.1:80"]
          upstream: {{unix: /{"s" * 120}}}
        """
    )
    assert_error(error, "7:22: $.tenants[0].upstream.unix", "at most 107")


def test_no_upstream_anywhere() -> None:
    error = only(
        """
        version: 1
        tenants:
          - name: a
            listen: ["127.0.0.1:80"]
        """
    )
    assert_error(error, "3:5: $.tenants[0]", "no upstream and defaults.upstream is not set")


@pytest.mark.parametrize(
    ("netns", "where", "fragments"),
    [
        ("a/b", "6:12: $.tenants[0].netns", ("'/' is not allowed", "netns: {path: /abs/path}")),
        ("'..'", "6:12: $.tenants[0].netns", ("cannot be empty, '.' or '..'",)),
        ("{name: x}", "6:12: $.tenants[0].netns", ("expected a netns name", "{path: /absolute/path")),
        ("{path: relative/x}", "6:19: $.tenants[0].netns.path", ("not absolute",)),
        ("{path: /x, name: y}", "6:23: $.tenants[0].netns.name", ("unknown field 'name'; expected one of: path",)),
    ],
)
def test_netns_forms(netns: str, where: str, fragments: tuple[str, ...]) -> None:
    error = tenant_error(
        f"""
        - name: a
          netns: {netns}
          listen: ["127.0.0.1:80"]
        """
    )
    assert_error(error, where, *fragments)


@pytest.mark.parametrize(
    ("name", "fragment"),
    [
        ("Acme", "invalid tenant name 'Acme'"),
        ("-acme", "starting and ending with a letter or digit"),
        ("ac_me", "lowercase letters, digits and '-'"),
        ("a" * 64, "at most 63"),
    ],
)
def test_tenant_name(name: str, fragment: str) -> None:
    error = tenant_error(f'- {{name: "{name}", listen: ["127.0.0.1:80"]}}\n')
    assert_error(error, "5:12: $.tenants[0].name", fragment)


@pytest.mark.parametrize(
    ("header", "fragment"),
    [
        ("X Tenant", "a space is not allowed in a header name"),
        ("X-Tenant:", "':' is not allowed"),
        ("host", "a header the proxy manages itself"),
        ("X-Forwarded-For", "a header the proxy manages itself"),
        ("Transfer-Encoding", "a header the proxy manages itself"),
        ("connection", "a header the proxy manages itself"),
        ("X_Forwarded_For", "a header the proxy manages itself"),
        ("Expect", "a header the proxy manages itself"),
    ],
)
def test_tenant_header(header: str, fragment: str) -> None:
    found = errors(f'version: 1\ndefaults:\n  tenant_header: "{header}"\ntenants: []\n')
    assert len(found) == 1, found
    assert_error(found[0], "3:18: $.defaults.tenant_header", fragment)


@pytest.mark.parametrize(
    ("tenant_id", "fragment"),
    [
        (r'"acme\r\nX-Admin: yes"', "carriage return (CR) at position 5: it would inject a header"),
        (r'"acme\nX"', "line feed (LF)"),
        (r'"a\tb"', "a tab at position 2"),
        (r'"a\x01b"', "control character U+0001"),
        (r'"caf\u00e9"', "'é' at position 4"),
        ('" acme"', "starts or ends with a space"),
        ('""', "tenant_id is empty"),
        ('"' + "x" * 257 + '"', "at most 256"),
    ],
)
def test_tenant_id_cannot_inject_a_header(tenant_id: str, fragment: str) -> None:
    error = tenant_error(
        f"""
        - name: a
          listen: ["127.0.0.1:80"]
          tenant_id: {tenant_id}
        """
    )
    assert_error(error, "7:16: $.tenants[0].tenant_id", fragment)


def test_tenant_id_with_inner_spaces_is_fine() -> None:
    m = manifest.parse(
        'version: 1\ntenants: [{name: a, listen: ["127.0.0.1:80"], upstream: "http://h", tenant_id: "Acme Corp #1"}]\n',
        "t.yaml",
    )
    assert m.tenants[0].tenant_id == "Acme Corp #1"


@pytest.mark.parametrize(
    ("listen", "fragment"),
    [
        ("127.0.0.1", "expected IPv4:PORT or [IPv6]:PORT"),
        ("127.0.0.1:0", "port 0 is out of range"),
        ("127.0.0.1:65536", "port 65536 is out of range"),
        ("127.1:80", "'127.1' is not an IP address"),
        ("::1:80", "put an IPv6 address in brackets"),
        ("[127.0.0.1]:80", "brackets are only for IPv6"),
        ("localhost:80", "expected IPv4:PORT or [IPv6]:PORT"),
        ("[fe80::1%eth0]:80", "expected IPv4:PORT or [IPv6]:PORT"),
    ],
)
def test_listen_syntax(listen: str, fragment: str) -> None:
    error = tenant_error(f'- {{name: a, listen: ["127.0.0.1:1", "{listen}"]}}\n')
    assert_error(error, "5:39: $.tenants[0].listen[1]", fragment)


@pytest.mark.parametrize(
    ("limits", "col", "field", "fragment"),
    [
        ("{header_timeout: 0}", 30, "header_timeout", "header_timeout must be > 0, got 0"),
        ("{idle_timeout: -1}", 28, "idle_timeout", "must be > 0"),
        ("{read_timeout: .nan}", 28, "read_timeout", "finite number"),
        ("{body_timeout: 0}", 28, "body_timeout", "body_timeout must be > 0"),
        ("{body_timeout: 86401}", 28, "body_timeout", "body_timeout must be <= 86400"),
        ("{max_connections: 0}", 31, "max_connections", "max_connections must be >= 1"),
        ("{max_body_bytes: 1.5}", 30, "max_body_bytes", "expected an integer, got the number 1.5"),
        ("{max_header_bytes: '8k'}", 32, "max_header_bytes", "expected an integer, got '8k'"),
        ("{connect_timeout: true}", 31, "connect_timeout", "expected a number, got the boolean true"),
        ("{timeout: 5}", 14, "timeout", "unknown field 'timeout'"),
    ],
)
def test_limits(limits: str, col: int, field: str, fragment: str) -> None:
    error = tenant_error(
        f"""
        - name: a
          listen: ["127.0.0.1:80"]
          limits: {limits}
        """
    )
    assert_error(error, f"7:{col}: $.tenants[0].limits.{field}", fragment)


def test_limits_in_defaults() -> None:
    error = only("version: 1\ndefaults:\n  limits: {max_connections: 0}\ntenants: []\n")
    assert_error(error, "3:29: $.defaults.limits.max_connections", "must be >= 1")


@pytest.mark.parametrize(
    ("daemon", "where", "fragment"),
    [
        ("{access_log: stderr}", "2:22: $.daemon.access_log", 'expected "stdout", "off" or an absolute file path'),
        ("{admin_listen: 'localhost:9901'}", "2:24: $.daemon.admin_listen", "expected IPv4:PORT"),
        ("{drain_timeout: -1}", "2:25: $.daemon.drain_timeout", "drain_timeout must be >= 0"),
        (
            "{log: x}",
            "2:10: $.daemon.log",
            "unknown field 'log'; expected one of: access_log, admin_listen, drain_timeout",
        ),
    ],
)
def test_daemon_settings(daemon: str, where: str, fragment: str) -> None:
    assert_error(only(f"version: 1\ndaemon: {daemon}\ntenants: []\n"), where, fragment)


# --- semantic checks -------------------------------------------------------------------------


def test_duplicate_tenant_names() -> None:
    error = tenant_error(
        """
        - name: acme
          listen: ["127.0.0.1:80"]
        - name: acme
          netns: acme-2
          listen: ["127.0.0.1:80"]
        """
    )
    assert_error(error, "7:11: $.tenants[1].name", "duplicate tenant name 'acme' (first at line 5)")


def test_two_tenants_on_one_named_netns() -> None:
    found = tenant_errors(
        """
        - name: acme
          listen: ["127.0.0.1:80"]
        - name: globex
          netns: acme
          listen: ["127.0.0.1:81"]
        - name: shared
          listen: ["127.0.0.1:82"]
        - name: initech
          netns: shared
          listen: ["127.0.0.1:83"]
        """
    )
    assert len(found) == 2, found
    assert_error(found[0], "8:12: $.tenants[1].netns", "netns 'acme' is already the netns of tenant 'acme' (line 5)")
    assert_error(found[1], "13:12: $.tenants[3].netns", "netns 'shared' is already the netns of tenant 'shared'")


def test_external_path_of_an_owned_netns() -> None:
    error = tenant_error(
        """
        - name: acme
          listen: ["127.0.0.1:80"]
        - name: spy
          netns: {path: /run/netns/acme}
          listen: ["127.0.0.1:81"]
        """
    )
    assert_error(error, "8:19: $.tenants[1].netns.path", "the named netns 'acme' that nsproxy owns")


def test_listen_address_must_exist_in_an_owned_netns() -> None:
    error = tenant_error(
        """
        - name: acme
          links:
            - name: nsp0
              addresses: [10.0.0.5/24]
          listen:
            - "10.0.0.5:80"
            - "10.0.0.6:80"
            - "127.9.9.9:80"
            - "[::1]:80"
            - "0.0.0.0:81"
            - "[::]:81"
        """
    )
    assert_error(
        error,
        "11:9: $.tenants[0].listen[1]",
        "listen address 10.0.0.6 is not in netns acme",
        "link addresses: 10.0.0.5",
        "add it to a link's addresses",
    )


def test_listen_address_in_an_external_netns_is_not_checked_against_links() -> None:
    m = manifest.parse(
        'version: 1\ntenants: [{name: a, netns: {path: /proc/1/ns/net}, listen: ["10.1.2.3:80"], upstream: "http://h"}]\n',
        "t.yaml",
    )
    assert m.tenants[0].listen[0].host == "10.1.2.3"


def test_listener_collisions() -> None:
    found = tenant_errors(
        """
        - name: a
          netns: {path: /var/run/docker/netns/c1}
          listen: ["127.0.0.1:80", "0.0.0.0:443", "[::1]:80"]
        - name: b
          netns: {path: /var/run/docker/netns/c1}
          listen: ["127.0.0.1:80", "10.0.0.1:443", "[::]:80", "0.0.0.0:8080"]
        - name: c
          listen: ["127.0.0.1:80", "127.0.0.1:80"]
        """
    )
    assert len(found) == 4, found
    assert_error(
        found[0],
        "10:14: $.tenants[1].listen[0]",
        "127.0.0.1:80 collides with 127.0.0.1:80 of tenant 'a' (line 7)",
        "path:/var/run/docker/netns/c1",
    )
    assert_error(found[1], "10:30: $.tenants[1].listen[1]", "10.0.0.1:443 collides with 0.0.0.0:443 of tenant 'a'")
    assert_error(found[2], "10:46: $.tenants[1].listen[2]", "[::]:80 collides with [::1]:80 of tenant 'a'")
    assert_error(found[3], "12:30: $.tenants[2].listen[1]", "collides with 127.0.0.1:80 of this tenant (line 12)")


@pytest.mark.parametrize(
    ("address", "fragment"),
    [
        ("10.0.0.300/24", "'10.0.0.300' is not an IP address"),
        ("10.0.0.1/33", "prefix length '33' is not a number from 0 to 32"),
        ("fd00::1/129", "from 0 to 128"),
        ("10.0.0.1", "has no prefix length: expected ADDRESS/PREFIX, e.g. 10.0.0.1/32"),
        ("'fd00::1'", "has no prefix length"),
        ("10.0.0.1/x", "expected ADDRESS/PREFIX"),
    ],
)
def test_invalid_cidr(address: str, fragment: str) -> None:
    error = tenant_error(
        f"""
        - name: a
          links: [{{name: nsp0, addresses: [10.0.0.2/24, {address}]}}]
          listen: ["127.0.0.1:80"]
        """
    )
    assert_error(error, "6:51: $.tenants[0].links[0].addresses[1]", fragment)


def test_duplicate_address_on_a_link() -> None:
    error = tenant_error(
        """
        - name: a
          links: [{name: nsp0, addresses: [10.0.0.2/24, 10.0.0.2/24]}]
          listen: ["127.0.0.1:80"]
        """
    )
    assert_error(error, "6:51: $.tenants[0].links[0].addresses[1]", "listed twice")


@pytest.mark.parametrize(
    ("name", "fragment"),
    [
        ("nsproxy-tenant-0", "is 16 bytes long; the kernel allows at most 15 (IFNAMSIZ)"),
        ("éééééééé", "is 16 bytes long"),  # 8 characters, 16 bytes: only a byte count catches it
        ("eth:0", "':' is not allowed"),
        ("nsp%d", "'%' is not allowed"),
        ("lo", "taken by the loopback device"),
    ],
)
def test_link_names(name: str, fragment: str) -> None:
    error = tenant_error(
        f"""
        - name: a
          links: [{{name: "{name}"}}]
          listen: ["127.0.0.1:80"]
        """
    )
    assert_error(error, "6:20: $.tenants[0].links[0].name", fragment)


def test_duplicate_link_names_in_one_netns() -> None:
    found = tenant_errors(
        """
        - name: a
          netns: {path: /proc/1/ns/net}
          links: [{name: nsp0}, {name: nsp0}]
          listen: ["127.0.0.1:80"]
        - name: b
          netns: {path: /proc/1/ns/net}
          links: [{name: nsp0}]
          listen: ["127.0.0.1:81"]
        - name: c
          links: [{name: nsp0}]
          listen: ["127.0.0.1:82"]
        """
    )
    assert len(found) == 2, found
    assert_error(found[0], "7:34: $.tenants[0].links[1].name", "duplicate link name 'nsp0' (first at line 7)")
    assert_error(found[1], "11:20: $.tenants[1].links[0].name", "link 'nsp0' is also defined by tenant 'a' (line 7)")


def test_link_kind_and_mtu() -> None:
    found = tenant_errors(
        """
        - name: a
          links:
            - {name: nsp0, kind: veth}
            - {name: nsp1, mtu: 1000, addresses: ["fd00::1/64"]}
            - {name: nsp2, mtu: 20}
          listen: ["127.0.0.1:80"]
        """
    )
    assert len(found) == 3, found
    assert_error(found[0], "7:28: $.tenants[0].links[0].kind", "expected one of: dummy; got 'veth'")
    assert_error(found[1], "8:27: $.tenants[0].links[1].mtu", "below 1280, the minimum for IPv6")
    assert_error(found[2], "9:27: $.tenants[0].links[2].mtu", "mtu must be >= 68")


# --- all at once, files ----------------------------------------------------------------------


def test_all_errors_at_once_sorted_by_line() -> None:
    found = errors(
        """
        version: 1
        defaults:
          tenant_header: Host
          upstream: http://127.0.0.1:9000
        tenants:
          - name: acme
            links: [{name: averyverylongname0, addresses: [10.0.0.1/40]}]
            listen: ["10.9.9.9:80"]
            tenant_id: "a\\r\\nb"
            bogus: 1
          - name: acme
            listen: ["127.0.0.1:80", "127.0.0.1:80"]
            listen: ["127.0.0.1:80"]
          - name: bad_name
            listen: ["127.0.0.1:80"]
            upstream: ftp://example.com
        """
    )
    expected = [
        ("3:18: $.defaults.tenant_header", "manages itself"),
        ("7:20: $.tenants[0].links[0].name", "at most 15"),
        ("7:52: $.tenants[0].links[0].addresses[0]", "prefix length"),
        ("9:16: $.tenants[0].tenant_id", "inject a header"),
        ("10:5: $.tenants[0].bogus", "unknown field"),
        ("11:11: $.tenants[1].name", "duplicate tenant name"),
        ("13:5: $.tenants[1].listen", "duplicate key 'listen' (first at line 12)"),
        ("14:11: $.tenants[2].name", "invalid tenant name 'bad_name'"),
        ("16:15: $.tenants[2].upstream", "not an http or https URL"),
    ]
    assert len(found) == len(expected), found
    for error, (where, fragment) in zip(found, expected, strict=True):
        assert_error(error, where, fragment)


def test_unreadable_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope.yaml"
    with pytest.raises(ManifestError) as info:
        manifest.load(str(missing))
    assert info.value.errors == [f"{missing}:1:1: $: cannot read the manifest: No such file or directory"]

    with pytest.raises(ManifestError) as info:
        manifest.load(str(tmp_path))
    assert info.value.errors == [f"{tmp_path}:1:1: $: cannot read the manifest: Is a directory"]

    binary = tmp_path / "latin1.yaml"
    binary.write_bytes(b"version: 1\ntenants: []\n# caf\xe9\n")
    with pytest.raises(ManifestError) as info:
        manifest.load(str(binary))
    assert info.value.errors == [
        f"{binary}:3:6: $: the manifest is not UTF-8 text: byte 0xE9 invalid continuation byte"
    ]


def test_errors_name_the_file_as_given(tmp_path: Path) -> None:
    path = tmp_path / "tenants.yaml"
    path.write_text("version: 1\ntenants:\n  - {name: a, upstream: 'http://h', listen: ['127.0.0.1:0']}\n")
    with pytest.raises(ManifestError) as info:
        manifest.load(str(path))
    assert info.value.errors == [
        f"{path}:3:46: $.tenants[0].listen[0]: listen address '127.0.0.1:0': port 0 is out of range; expected 1-65535"
    ]
    assert info.value.problems[0].line == 3 and info.value.problems[0].path == ("tenants", 0, "listen", 0)


def test_json_paths_quote_keys_that_are_not_identifiers() -> None:
    assert manifest.format_path(("tenants", 1, "listen", 0)) == "$.tenants[1].listen[0]"
    error = only('version: 1\ntenants: []\n"my field": 1\n')
    assert_error(error, "3:1: $['my field']", "unknown field 'my field'")
