"""Parsers for single manifest values, each raising FieldError with a message that says what is
wrong and what is expected.

They are used twice: by the builder (on values the schema accepted) and by the schema error
humaniser (to explain why a value failed a pattern), so a bad value reads the same either way.
"""

from __future__ import annotations

import ipaddress
import math
import re
from urllib.parse import urlsplit

from ..model import IFNAMSIZ_MAX, Listen, Upstream, UpstreamTls

DEFAULT_TENANT_HEADER = "X-Tenant-ID"
NETNS_NAME_MAX = 64
TENANT_ID_MAX = 256
UNIX_PATH_MAX = 107  # sun_path is 108 bytes including the trailing NUL

# Headers the proxy writes or interprets itself; a tenant header with one of these names would
# be overwritten or would change how the request is framed.
RESERVED_HEADERS = frozenset(
    h.lower()
    for h in (
        "Host",
        "Content-Length",
        "Transfer-Encoding",
        "Connection",
        "Upgrade",
        "Expect",
        "Keep-Alive",
        "Proxy-Connection",
        "Proxy-Authenticate",
        "Proxy-Authorization",
        "TE",
        "Trailer",
        "Forwarded",
        "X-Forwarded-For",
        "X-Forwarded-Proto",
        "X-Forwarded-Host",
        "X-Forwarded-Port",
    )
)

_TENANT_NAME = re.compile(r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?")
_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_HOSTNAME_LABEL = re.compile(r"[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?")
_LISTEN = re.compile(r"(?:\[(?P<v6>[^\]]*)\]|(?P<v4>[^:\[\]]*)):(?P<port>[^:]*)")


class FieldError(ValueError):
    """A value is invalid; str() is the human message."""


def tenant_name(value: str) -> str:
    if _TENANT_NAME.fullmatch(value):
        return value
    if len(value) > 63:
        raise FieldError(f"tenant name is {len(value)} characters long; at most 63 are allowed")
    raise FieldError(
        f"invalid tenant name {value!r}: expected lowercase letters, digits and '-', "
        "starting and ending with a letter or digit"
    )


def netns_name(value: str) -> str:
    if value in ("", ".", ".."):
        raise FieldError(f"invalid netns name {value!r}: it cannot be empty, '.' or '..'")
    if len(value) > NETNS_NAME_MAX:
        raise FieldError(f"netns name is {len(value)} characters long; at most {NETNS_NAME_MAX} are allowed")
    bad = [c for c in value if c == "/" or not "!" <= c <= "~"]
    if bad:
        raise FieldError(
            f"invalid netns name {value!r}: {_describe_char(bad[0])} is not allowed; "
            "expected visible ASCII without '/' (for a namespace given by path use netns: {path: /abs/path})"
        )
    return value


def absolute_path(value: str, what: str = "path") -> str:
    if not value.startswith("/"):
        raise FieldError(f"{what} {value!r} is not absolute: expected a path starting with '/'")
    bad = [c for c in value if not c.isprintable()]
    if bad:
        raise FieldError(f"{what} {value!r} contains {_describe_char(bad[0])}")
    return value


def link_name(value: str) -> str:
    size = len(value.encode())
    if size > IFNAMSIZ_MAX:
        raise FieldError(
            f"link name {value!r} is {size} bytes long; the kernel allows at most {IFNAMSIZ_MAX} (IFNAMSIZ)"
        )
    if value in ("", ".", ".."):
        raise FieldError(f"invalid link name {value!r}: it cannot be empty, '.' or '..'")
    bad = [c for c in value if c in "/:%" or c.isspace() or not c.isprintable()]
    if bad:
        raise FieldError(f"invalid link name {value!r}: {_describe_char(bad[0])} is not allowed in an interface name")
    if value == "lo":
        raise FieldError("link name 'lo' is taken by the loopback device; choose another name")
    return value


def cidr(value: str) -> str:
    """An interface address 'ADDRESS/PREFIX', normalised ('fd00::5/64'); host bits allowed."""
    if "/" not in value:
        try:
            ip = ipaddress.ip_address(value)
            example = f"{ip}/{ip.max_prefixlen}"
        except ValueError:
            example = "10.0.0.5/24"
        raise FieldError(f"address {value!r} has no prefix length: expected ADDRESS/PREFIX, e.g. {example}")
    if "%" in value:
        raise FieldError(f"address {value!r}: zone indexes ('%') are not supported")
    expected = "expected ADDRESS/PREFIX, e.g. 10.0.0.5/24 or fd00::5/64"
    address, _, prefix = value.partition("/")
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        raise FieldError(f"invalid address {value!r}: {address!r} is not an IP address; {expected}") from None
    if not prefix.isascii() or not prefix.isdigit() or int(prefix) > ip.max_prefixlen:
        raise FieldError(
            f"invalid address {value!r}: prefix length {prefix!r} is not a number from 0 to {ip.max_prefixlen}; "
            f"{expected}"
        )
    return str(ipaddress.ip_interface(f"{ip}/{int(prefix)}"))


def listen(value: str) -> Listen:
    """'IPv4:PORT' or '[IPv6]:PORT' → Listen with the address in its normal form."""
    expected = "expected IPv4:PORT or [IPv6]:PORT, e.g. 127.0.0.1:8080 or [::1]:8080"
    m = _LISTEN.fullmatch(value)
    if not m:
        if value.count(":") > 1 and not value.startswith("["):
            raise FieldError(f"invalid listen address {value!r}: put an IPv6 address in brackets, {expected}")
        raise FieldError(f"invalid listen address {value!r}: {expected}")
    host = m.group("v6") if m.group("v6") is not None else m.group("v4")
    try:
        if "%" in host:
            raise ValueError("zone indexes ('%') are not supported")
        addr = ipaddress.ip_address(host)
    except ValueError as e:
        reason = str(e) if "%" in host else f"{host!r} is not an IP address"
        raise FieldError(f"invalid listen address {value!r}: {reason}; {expected}") from None
    if m.group("v6") is not None and addr.version != 6:
        raise FieldError(f"invalid listen address {value!r}: brackets are only for IPv6; {expected}")
    if m.group("v4") is not None and addr.version != 4:
        raise FieldError(f"invalid listen address {value!r}: {expected}")
    return Listen(host=str(addr), port=port(m.group("port"), f"listen address {value!r}"))


def port(text: str, where: str) -> int:
    if not text.isascii() or not text.isdigit():
        raise FieldError(f"{where}: port {text!r} is not a number; expected 1-65535")
    number = int(text)
    if not 1 <= number <= 65535:
        raise FieldError(f"{where}: port {number} is out of range; expected 1-65535")
    return number


def upstream_url(value: str, from_ns: str = "host") -> Upstream:
    """http(s)://HOST[:PORT][/] → Upstream(kind="http"), with tls for https (verified against the
    system's trust store until the builder says otherwise); HOST must be an IP literal when from_ns
    is tenant."""
    url = value.strip()
    scheme = url.split("://", 1)[0] if "://" in url else ""
    if scheme.lower() in ("http", "https") and scheme not in ("http", "https"):
        raise FieldError(f"upstream {value!r}: write the scheme in lowercase, {scheme.lower()}://")
    if scheme not in ("http", "https"):
        raise FieldError(
            f"upstream {value!r} is not an http or https URL: expected http://HOST[:PORT] or https://HOST[:PORT], "
            "e.g. http://127.0.0.1:9000"
        )
    netloc = url[len(scheme) + 3 :].split("/", 1)[0].split("?", 1)[0].split("#", 1)[0]
    if netloc.count(":") > 1 and "[" not in netloc:
        raise FieldError(f"upstream {value!r}: put an IPv6 address in brackets, e.g. http://[::1]:9000")
    try:
        parts = urlsplit(url)
        port_number = parts.port
    except ValueError:
        text = netloc.rsplit("]", 1)[-1].rsplit(":", 1)[-1]
        port(text, f"upstream {value!r}")  # raises with the reason
        raise FieldError(f"invalid upstream URL {value!r}: expected {scheme}://HOST[:PORT]") from None
    if parts.username is not None or parts.password is not None:
        raise FieldError(f"upstream {value!r}: credentials in the URL are not supported")
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise FieldError(
            f"upstream {value!r}: a path, query or fragment is not supported; requests keep their own path, "
            f"expected {scheme}://HOST[:PORT]"
        )
    host = parts.hostname or ""
    if not host:
        raise FieldError(f"upstream {value!r} has no host: expected {scheme}://HOST[:PORT]")
    if port_number == 0:
        raise FieldError(f"upstream {value!r}: port 0 is out of range; expected 1-65535")
    bracketed = parts.netloc.rsplit("@", 1)[-1].startswith("[")
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        ip = None
    if ip is None:
        if bracketed:
            raise FieldError(f"upstream {value!r}: {host!r} in brackets is not an IPv6 address")
        if from_ns == "tenant":
            raise FieldError(
                f"upstream {value!r}: with from: tenant the host must be an IP address, "
                "because there is no DNS inside a tenant netns"
            )
        if not _is_hostname(host):
            raise FieldError(f"upstream {value!r}: {host!r} is neither an IP address nor a valid host name")
    elif ip.version == 6 and not bracketed:
        raise FieldError(f"upstream {value!r}: put an IPv6 address in brackets, e.g. http://[::1]:9000")
    return Upstream(
        kind="http",
        host=str(ip) if ip is not None else host,
        port=port_number or (443 if scheme == "https" else 80),
        from_ns="tenant" if from_ns == "tenant" else "host",
        url=url,
        tls=UpstreamTls() if scheme == "https" else None,
    )


def unix_socket(value: str) -> Upstream:
    absolute_path(value, "unix socket path")
    size = len(value.encode())
    if size > UNIX_PATH_MAX:
        raise FieldError(f"unix socket path is {size} bytes long; the kernel allows at most {UNIX_PATH_MAX}")
    return Upstream(kind="unix", path=value)


def tenant_header(value: str) -> str:
    if not value:
        raise FieldError("tenant header name is empty: expected an HTTP header name such as X-Tenant-ID")
    if not _TOKEN.fullmatch(value):
        bad = next(c for c in value if not _TOKEN.fullmatch(c))
        raise FieldError(
            f"invalid tenant header name {value!r}: {_describe_char(bad)} is not allowed in a header name "
            "(RFC 9110 token: letters, digits and !#$%&'*+-.^_`|~)"
        )
    # Some servers treat '_' and '-' alike in header names (X_Forwarded_For == X-Forwarded-For).
    if value.lower().replace("_", "-") in RESERVED_HEADERS:
        raise FieldError(
            f"tenant header {value!r} is a header the proxy manages itself; choose another name, e.g. X-Tenant-ID"
        )
    return value


# What a client certificate header cannot be named: the headers above, and those nsproxy sets itself.
MANAGED_BY_NSPROXY = RESERVED_HEADERS | {"x-real-ip", "x-request-id"}


def header_name(value: str, what: str = "header name") -> str:
    """An HTTP header name nsproxy may set (not one it manages itself), e.g. a client certificate header."""
    if not value:
        raise FieldError(f"{what} is empty: expected an HTTP header name")
    if not _TOKEN.fullmatch(value):
        bad = next(c for c in value if not _TOKEN.fullmatch(c))
        raise FieldError(
            f"invalid {what} {value!r}: {_describe_char(bad)} is not allowed in a header name "
            "(RFC 9110 token: letters, digits and !#$%&'*+-.^_`|~)"
        )
    if value.lower().replace("_", "-") in MANAGED_BY_NSPROXY:
        raise FieldError(f"{what} {value!r} is a header the proxy manages itself; choose another name")
    return value


def dns_name(value: str, what: str = "name") -> str:
    """A host name (lowercased, without a final dot); a leading '*.' matches one label."""
    name = value.lower().rstrip(".")
    bare = name[2:] if name.startswith("*.") else name
    if not bare or not _is_hostname(bare) or "*" in bare:
        raise FieldError(
            f"invalid {what} {value!r}: expected a host name such as api.example.com "
            "(or *.example.com for any one label)"
        )
    return name


def tenant_id(value: str) -> str:
    """A header value that cannot inject anything: visible ASCII, inner spaces allowed."""
    if not value:
        raise FieldError("tenant_id is empty: expected visible ASCII characters")
    for i, c in enumerate(value):
        if c in "\r\n":
            raise FieldError(
                f"tenant_id contains {_describe_char(c)} at position {i + 1}: it would inject a header; "
                "expected visible ASCII characters"
            )
        if not (" " <= c <= "~"):
            raise FieldError(
                f"tenant_id contains {_describe_char(c)} at position {i + 1}; expected visible ASCII characters "
                "(inner spaces allowed)"
            )
    if value[0] == " " or value[-1] == " ":
        raise FieldError(f"tenant_id {value!r} starts or ends with a space; header values are trimmed, remove it")
    if len(value) > TENANT_ID_MAX:
        raise FieldError(f"tenant_id is {len(value)} characters long; at most {TENANT_ID_MAX} are allowed")
    return value


def access_log(value: str) -> str:
    if value in ("stdout", "off"):
        return value
    if value.startswith("/"):
        return absolute_path(value, "access_log path")
    raise FieldError(f'invalid access_log {value!r}: expected "stdout", "off" or an absolute file path')


def seconds(value: float, what: str) -> float:
    if not math.isfinite(value):
        raise FieldError(f"{what} must be a finite number of seconds, got {value}")
    return float(value)


def _is_hostname(host: str) -> bool:
    labels = host.rstrip(".").split(".")
    return len(host) <= 253 and all(_HOSTNAME_LABEL.fullmatch(label) for label in labels)


def _describe_char(c: str) -> str:
    names = {"\r": "a carriage return (CR)", "\n": "a line feed (LF)", "\t": "a tab", " ": "a space", "\0": "NUL"}
    if c in names:
        return names[c]
    if c.isprintable():
        return f"{c!r}"
    return f"the control character U+{ord(c):04X}"
