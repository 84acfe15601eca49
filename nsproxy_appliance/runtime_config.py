"""The runtime config: the only thing the applier hands to the daemon.

The applier renders it from the Manifest (after the kernel objects exist) and writes it
atomically; the daemon reads it at start and on every reload. Its `generation` is a hash of
the content, so "did the config change?" is a string comparison, and the daemon can report
which generation it is serving. Namespaces are named by name or path, never by identity: the
daemon resolves the identity whenever it binds (and reports it), so a namespace re-created at the
same place needs no new config.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, BinaryIO, TypeVar, cast

import orjson

from . import atomicfile
from .errors import RuntimeConfigError
from .model import (
    CLIENT_AUTH,
    LOG_FORMATS,
    TLS_VERSIONS,
    Certificate,
    DaemonSettings,
    Limits,
    Listen,
    ListenTls,
    Manifest,
    NetnsRef,
    Tenant,
    TenantTls,
    Upstream,
    UpstreamTls,
)
from .paths import Paths

__all__ = ["FORMAT_VERSION", "Loader", "Paths", "RuntimeConfig", "load", "parse", "render", "write"]

FORMAT_VERSION = 1


def render(
    manifest: Manifest,
    paths: Paths,
    *,
    all_tenants: Sequence[str] | None = None,
    excluded: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """The runtime config serving `manifest`'s tenants, as a JSON-ready dict with its generation.

    `all_tenants` names every tenant of the manifest applied (default: those served) and
    `excluded` says why the applier left some out: the daemon's /readyz and `nsproxy status` report
    them as not serving.
    """
    names = list(all_tenants) if all_tenants is not None else [t.name for t in manifest.tenants]
    body = {
        "format": FORMAT_VERSION,
        "admin_socket": paths.admin_socket,
        "daemon": _daemon_settings(manifest.daemon),
        "manifest": {"tenants": names, "excluded": dict(sorted((excluded or {}).items()))},
        "tenants": [_tenant(t) for t in manifest.tenants],
    }
    return {"generation": generation_of(body), **body}


# Daemon settings added after format 1, written only when they differ from their default: a config
# that does not use one reads the same to the daemon of the version before (which would reject an
# unknown field), so upgrading the applier first neither changes the generation nor breaks a reload.
_WRITTEN_ONLY_WHEN_SET = {"log_format": DaemonSettings().log_format}


def _daemon_settings(settings: DaemonSettings) -> dict[str, Any]:
    out = dict(vars(settings))
    for name, default in _WRITTEN_ONLY_WHEN_SET.items():
        if out[name] == default:
            del out[name]
    return out


def generation_of(body: dict[str, Any]) -> str:
    canonical = json.dumps({k: v for k, v in body.items() if k not in ("generation", DELTA_KEY)}, sort_keys=True)
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def _tenant(t: Tenant) -> dict[str, Any]:
    return {
        "name": t.name,
        "tenant_id": t.tenant_id,
        "tenant_header": t.tenant_header,
        "netns": {"name": t.netns.name, "path": t.netns.path},
        "listen": [_listen(listen) for listen in t.listen],
        # vars() rather than dataclasses.asdict: these are flat, and asdict's deep copy is slow at 1000 tenants.
        "upstream": _upstream(t.upstream),
        "limits": dict(vars(t.limits)),
        **({} if t.tls == _DEFAULT_TENANT_TLS else {"tls": dict(vars(t.tls))}),
    }


# The TLS parts are written only where they are used (a TLS listener, an https upstream, TLS settings
# other than the defaults): a tenant without them reads the same to the daemon of the version before,
# and keeps its generation.
_DEFAULT_TENANT_TLS = TenantTls()


def _listen(listen: Listen) -> dict[str, Any]:
    if listen.tls is None:
        return {"host": listen.host, "port": listen.port}
    tls = dict(vars(listen.tls))
    tls["certificates"] = [{**vars(c), "names": list(c.names)} for c in listen.tls.certificates]
    return {"host": listen.host, "port": listen.port, "tls": tls}


def _upstream(upstream: Upstream) -> dict[str, Any]:
    out = dict(vars(upstream))
    tls = out.pop("tls")
    if tls is not None:
        out["tls"] = dict(vars(tls))
    return out


_TENANTS_START = ', "tenants": [\n'  # the layout _dump writes and Loader reads back
_TENANTS_END = "\n]}\n"
_TENANTS_START_B = _TENANTS_START.encode()
_TENANTS_END_B = _TENANTS_END.encode()


# A config written over another lists the tenants whose line changed (with the generation it was
# written over): the daemon then reads just those lines. Not part of the generation (not content).
# The delta also carries the changed tenants' new entries ("changed"; a removed one is named but has
# none), so a reader holding the `from` generation reads the head alone: at 10,000 tenants the whole
# file is 4 MB, and reading and searching it was most of a one-tenant reload, in the daemon and again
# in the broker. "tenants" stays what the version before reads (it finds those lines in the body).
DELTA_KEY = "delta"
DELTA_MAX = 256  # changed tenants a delta names at most; beyond that the daemon compares every line
HEAD_READ = 1 << 16  # bytes read at a time while looking for the end of the head
_NAME_KEY = re.compile(rb'"name": ("(?:[^"\\]|\\.)*"), "netns": ')  # a tenant line's own name (sorted keys)


def _dump(config: dict[str, Any], delta: dict[str, Any] | None = None, lines: list[str] | None = None) -> str:
    head = {k: v for k, v in config.items() if k != "tenants"}
    if delta is not None:
        head[DELTA_KEY] = delta
    if lines is None:
        lines = _lines(config)
    body = json.dumps(head, sort_keys=True)[:-1]
    return body + _TENANTS_START + ",\n".join(lines) + _TENANTS_END


def _lines(config: dict[str, Any]) -> list[str]:
    return [json.dumps(t, sort_keys=True) for t in config.get("tenants", [])]


def write(config: dict[str, Any], path: str) -> bool:
    """Atomically write `config` to `path`; returns False when the file already holds it."""
    try:
        with open(path, "rb") as f:
            old: bytes | None = f.read()
    except OSError:
        old = None  # absent or unreadable: replace it
    lines = _lines(config)
    old_head = _head_of(old) if old is not None else None
    if old_head is not None and old_head.get("generation") == config["generation"]:
        if old == _dump(config, old_head.get(DELTA_KEY), lines).encode():
            return False  # the file holds this config (with the delta it was written with)
        delta = None  # the same generation but other bytes (edited by hand?): rewrite it whole
    else:
        delta = _delta(old, old_head, config, lines) if old is not None and old_head is not None else None
    # One tenant per line: readable and diffable, and without indent= json uses its C encoder.
    # The runtime dir is tmpfs (/run) by default: the rename need not survive a power cut. Readable by
    # the daemon's user (and the broker); writable by root only (broker/registry.py checks that).
    atomicfile.write_text(path, _dump(config, delta, lines), sync_directory=False, mode=0o644)
    return True


def _head_of(data: bytes) -> dict[str, Any] | None:
    """Everything but the tenants of a config file in _dump's layout; None for any other file."""
    start = data.find(_TENANTS_START_B)
    if start < 0 or not data.endswith(_TENANTS_END_B):
        return None
    return _decoded_head(data, start)


_MANIFEST_B = b'"manifest": {'
_MANIFEST_NAMES_B = b', "tenants": ['


def _decoded_head(data: bytes, start: int) -> dict[str, Any] | None:
    """The head of _dump's layout, `data` up to `start` (where its tenants begin), without the names
    of the manifest's tenants; None if unreadable.

    Those names (for `nsproxy status`, which reads the file whole) are most of the head, and decoding
    them was the largest part of a one-tenant reload at 10,000 tenants, in the daemon and again in the
    broker; neither uses them. `manifest` is the head's last member and `tenants` its last (sorted
    keys), so they are the text from the last `, "tenants": [` on: JSON strings escape their quotes,
    so neither pattern occurs inside the names or reasons.
    """
    head = data[:start]
    names_at = head.rfind(_MANIFEST_NAMES_B)
    if 0 <= head.rfind(_MANIFEST_B) < names_at and head.endswith(b"]}"):
        head = head[:names_at] + b"}"
    try:
        decoded = orjson.loads(head + b', "tenants": []}')
    except orjson.JSONDecodeError:
        return None
    return decoded if isinstance(decoded, dict) else None


def _read_head(f: BinaryIO) -> tuple[bytes, int]:
    """The file read up to where its tenants begin in _dump's layout, and where that is (a raw
    newline first occurs there: JSON strings escape theirs); (the whole file, -1) in any other layout."""
    buf = bytearray()
    while chunk := f.read(HEAD_READ):
        searched = max(0, len(buf) - len(_TENANTS_START_B) + 1)
        buf += chunk
        at = buf.find(_TENANTS_START_B, searched)
        if at >= 0:
            return bytes(buf), at
    return bytes(buf), -1


def _delta(old: bytes, old_head: dict[str, Any], config: dict[str, Any], lines: list[str]) -> dict[str, Any] | None:
    """Which tenants' lines differ between `old` (a config file) and `config` (added and removed
    ones included), or None when there are too many to be worth listing."""
    start = old.find(_TENANTS_START_B) + len(_TENANTS_START_B)
    body = old[start : len(old) - len(_TENANTS_END_B)]
    old_lines = body.decode("utf-8", "replace").split(",\n") if body else []
    unchanged = set(old_lines).intersection(lines)  # in C: most lines are the same text
    names = {t["name"] for t, line in zip(config.get("tenants", []), lines, strict=True) if line not in unchanged}
    for line in old_lines:
        if line not in unchanged:
            m = _NAME_KEY.search(line.encode())
            if m is None:
                return None
            names.add(json.loads(m.group(1)))
    if len(names) > DELTA_MAX or not isinstance(old_head.get("generation"), str):
        return None
    entries = {t["name"]: t for t in config.get("tenants", []) if t["name"] in names}
    return {"from": old_head["generation"], "tenants": sorted(names), "changed": entries}


def read(path: str) -> dict[str, Any] | None:
    """The config on disk as plain JSON, or None when it is absent or unreadable (for planning)."""
    try:  # orjson: json raises RecursionError, not ValueError, for a file of deeply nested lists
        with open(path, "rb") as f:
            data = orjson.loads(f.read())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


@dataclass(frozen=True)
class RuntimeConfig:
    """The daemon's parsed view of config.json."""

    generation: str
    admin_socket: str
    daemon: DaemonSettings
    tenants: tuple[Tenant, ...]
    excluded: Mapping[str, str] = dataclasses.field(default_factory=dict)  # manifest tenants not served: why


def load(path: str) -> RuntimeConfig:
    """The runtime config at `path`, or RuntimeConfigError naming the file and the problem."""
    try:  # orjson, as read() (invalid UTF-8 is a JSONDecodeError there)
        with open(path, "rb") as f:
            data = orjson.loads(f.read())
    except FileNotFoundError:
        raise RuntimeConfigError(f"{path}: no such file (write it with nsproxy-apply)") from None
    except orjson.JSONDecodeError as e:
        raise RuntimeConfigError(f"{path}:{e.lineno}:{e.colno}: invalid JSON: {e.msg}") from None
    except OSError as e:
        raise RuntimeConfigError(f"{path}: cannot read: {e.strerror}") from None
    try:
        return parse(data)
    except RuntimeConfigError as e:
        raise RuntimeConfigError(f"{path}: {e}") from None


class Loader:
    """Loads the runtime config at `path` again and again (the daemon's reloads), reusing the Tenant
    of every tenant whose line did not change since the last load.

    A config is one tenant per line (_dump), and a reload usually changes a few of 10,000 lines.
    When the file names its delta (the tenants changed since the generation this loader loaded
    last), only those lines are found and decoded; otherwise every line is compared with the last
    load's and only the new ones decoded. Either way an unchanged tenant keeps its very object, so
    the reconciler can tell it by identity. After a load, `changed` holds the tenants decoded anew
    and `removed` the ones gone (a changed tenant is in both, as its new and its old version);
    `incremental` is False when nothing was reused (the first load, or a file not in _dump's
    layout, which is read whole, as `load` does).
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self._tenants: dict[str, Tenant] = {}  # by tenant name, in the config's order
        self._generation: str | None = None
        self.changed: list[Tenant] = []
        self.removed: list[Tenant] = []
        self.incremental = False

    def load(self) -> RuntimeConfig:
        path = self.path
        try:
            with open(path, "rb") as f:  # bytes: orjson reads them as they are
                return self.load_file(f)
        except FileNotFoundError:
            raise RuntimeConfigError(f"{path}: no such file (write it with nsproxy-apply)") from None
        except OSError as e:
            raise RuntimeConfigError(f"{path}: cannot read: {e.strerror}") from None

    def load_file(self, f: BinaryIO) -> RuntimeConfig:
        """load(), from the file opened by the caller (the broker opens it only after checking who
        could have written it). Only the head is read when its delta carries every change since the
        generation this loader has; otherwise the whole file."""
        if self._generation is None:  # the first load: every line is needed
            return self.load_bytes(f.read())
        data, start = _read_head(f)
        if start >= 0:
            head = _decoded_head(data, start)
            if head is not None:
                result = self._by_delta(head)
                if result is not None:
                    return result
        return self.load_bytes(data + f.read())

    def load_bytes(self, data: bytes) -> RuntimeConfig:
        """load(), of the file's whole content."""
        head = _head_of(data)
        if head is None:
            return self._whole(data)
        start = data.find(_TENANTS_START_B) + len(_TENANTS_START_B)
        end = len(data) - len(_TENANTS_END_B)
        delta = head.get(DELTA_KEY)
        if (
            isinstance(delta, dict)
            and self._generation is not None
            and delta.get("from") == self._generation
            and isinstance(delta.get("tenants"), list)
        ):
            result = self._by_names(data, start, end, head, [str(n) for n in delta["tenants"]])
            if result is not None:
                return result
        return self._by_lines(data, start, end, head)

    def _by_delta(self, head: dict[str, Any]) -> RuntimeConfig | None:
        """The config from its head alone, when the head's delta is from this loader's generation and
        carries the changed tenants' entries; None when it does not (then the whole file is read)."""
        delta = head.get(DELTA_KEY)
        if not isinstance(delta, dict) or delta.get("from") != self._generation:
            return None
        names, entries = delta.get("tenants"), delta.get("changed")
        if not isinstance(names, list) or not isinstance(entries, dict):
            return None  # a delta of the version before: its lines are found in the body
        changed: list[Tenant] = []
        removed: list[Tenant] = []
        for name in names:
            if not isinstance(name, str):
                return None
            old = self._tenants.get(name)
            if old is not None:
                removed.append(old)
            raw = entries.get(name)
            if raw is None:  # gone
                continue
            try:
                tenant = _tenant_of(raw)
            except RuntimeConfigError as e:
                raise RuntimeConfigError(f"{self.path}: delta, tenant {name!r}: {e}") from None
            if tenant.name != name:
                return None
            changed.append(tenant)
        try:
            config = _parse(head, ())  # before anything changes: a bad head leaves this loader as it was
        except RuntimeConfigError as e:
            raise RuntimeConfigError(f"{self.path}: {e}") from None
        tenants = self._tenants  # changed in place: copying 10,000 entries was a reload's largest cost left
        still = {t.name for t in changed}
        for old in removed:
            if old.name not in still:
                del tenants[old.name]
        for tenant in changed:
            tenants[tenant.name] = tenant  # in place when it was there, as in the file
        self._generation = config.generation
        self.incremental, self.changed, self.removed = True, changed, removed
        return dataclasses.replace(config, tenants=tuple(tenants.values()))

    def _by_names(
        self, data: bytes, start: int, end: int, head: dict[str, Any], names: list[str]
    ) -> RuntimeConfig | None:
        """Only the delta's tenants' lines (the writer listed every line it changed since the generation
        this loader has, `from`); None when a line does not say what the delta says (then every line)."""
        tenants = dict(self._tenants)
        changed: list[Tenant] = []
        removed: list[Tenant] = []
        for name in names:
            at = data.find(b'"name": ' + json.dumps(name).encode() + b', "netns": ', start, end)
            old = tenants.get(name)
            if old is not None:
                removed.append(old)
            if at < 0:  # gone
                tenants.pop(name, None)
                continue
            line_start = data.rfind(b"\n", start - 1, at) + 1
            line_end = data.find(b"\n", at, end + 1)
            line = data[line_start : line_end if line_end >= 0 else end].removesuffix(b",")
            tenant = self._decode(line, data.count(b"\n", 0, line_start) + 1)
            if tenant.name != name:
                return None
            changed.append(tenant)
            tenants[name] = tenant  # in place when it was there (the order is not significant otherwise)
        return self._done(head, tenants, changed, removed)

    def _by_lines(self, data: bytes, start: int, end: int, head: dict[str, Any]) -> RuntimeConfig:
        """Every line compared with the tenants of the last load (written out again: this is the
        rare path); only new ones decoded."""
        body = data[start:end]
        found = body.split(b",\n") if body else []  # a JSON line holds no raw newline: the split is exact
        previous = {json.dumps(_tenant(t), sort_keys=True).encode(): t for t in self._tenants.values()}
        first_line = data.count(b"\n", 0, start) + 1  # the file line of the first tenant
        tenants: dict[str, Tenant] = {}
        changed: list[Tenant] = []
        for i, line in enumerate(found):
            tenant = previous.get(line)
            if tenant is None:
                tenant = self._decode(line, first_line + i)
                changed.append(tenant)
            tenants[tenant.name] = tenant
        if len(tenants) != len(found):
            raise RuntimeConfigError(f"{self.path}: two tenants with one name")
        gone = self._tenants.keys() - tenants.keys()
        removed = [self._tenants[name] for name in gone]
        removed += [self._tenants[t.name] for t in changed if t.name in self._tenants]
        return self._done(head, tenants, changed, removed)

    def _decode(self, line: bytes, line_number: int) -> Tenant:
        try:  # orjson: a third of the daemon's start-up with 10,000 tenants was json decoding these lines
            return _tenant_of(orjson.loads(line))
        except orjson.JSONDecodeError as e:  # invalid UTF-8 included
            raise RuntimeConfigError(f"{self.path}:{line_number}:{e.colno}: invalid JSON: {e.msg}") from None
        except RuntimeConfigError as e:
            raise RuntimeConfigError(f"{self.path}:{line_number}: {e}") from None

    def _done(
        self, head: dict[str, Any], tenants: dict[str, Tenant], changed: list[Tenant], removed: list[Tenant]
    ) -> RuntimeConfig:
        try:
            config = _parse(head, tuple(tenants.values()))
        except RuntimeConfigError as e:
            raise RuntimeConfigError(f"{self.path}: {e}") from None
        self.incremental = self._generation is not None
        self._tenants, self._generation = tenants, config.generation
        self.changed, self.removed = changed, removed
        return config

    def _whole(self, data: bytes) -> RuntimeConfig:
        try:  # orjson, as load()
            doc = orjson.loads(data)
        except orjson.JSONDecodeError as e:
            raise RuntimeConfigError(f"{self.path}:{e.lineno}:{e.colno}: invalid JSON: {e.msg}") from None
        try:
            config = parse(doc)
        except RuntimeConfigError as e:
            raise RuntimeConfigError(f"{self.path}: {e}") from None
        self._tenants, self._generation = {t.name: t for t in config.tenants}, config.generation
        self.incremental = False
        self.changed, self.removed = list(config.tenants), []
        return config


T = TypeVar("T")
_FIELD_NAMES: dict[type, frozenset[str]] = {}


def _field(raw: Any, key: str, kind: type | tuple[type, ...] = object) -> Any:
    if not isinstance(raw, dict):
        raise RuntimeConfigError(f"expected an object with {key!r}, got {type(raw).__name__}")
    if key not in raw:
        raise RuntimeConfigError(f"missing field {key!r}")
    value = raw[key]
    if not isinstance(value, kind):
        raise RuntimeConfigError(f"field {key!r} has the wrong type ({type(value).__name__})")
    return value


def _record(cls: type[T], raw: Any, where: str) -> T:
    """A flat dataclass from a JSON object: unknown or ill-typed fields are errors, not TypeErrors."""
    if not isinstance(raw, dict):
        raise RuntimeConfigError(f"{where}: expected an object, got {type(raw).__name__}")
    known = _FIELD_NAMES.get(cls)
    if known is None:  # once per class: dataclasses.fields() per record showed at 10,000 tenants
        known = _FIELD_NAMES[cls] = frozenset(f.name for f in dataclasses.fields(cls))  # type: ignore[arg-type]  # cls is a dataclass type
    unknown = sorted(set(raw) - known)
    if unknown:
        raise RuntimeConfigError(f"unknown field {unknown[0]!r} ({cls.__name__})")
    try:
        return _interned(cls(**raw))
    except TypeError as e:  # a required field is missing, or a value is not hashable
        raise RuntimeConfigError(f"{where}: {e}") from None


_INTERNED: dict[Any, Any] = {}
_INTERN_MAX = 100_000


def _interned(value: T) -> T:
    """One object for equal frozen values: 10,000 tenants mostly share their limits, upstream and
    listeners, and one copy each keeps the daemon's memory flat (docs/performance.md)."""
    if len(_INTERNED) >= _INTERN_MAX:
        _INTERNED.clear()
    return cast(T, _INTERNED.setdefault(value, value))


def _tenant_of(raw: Any) -> Tenant:
    if not isinstance(raw, dict):
        raise RuntimeConfigError(f"a tenant entry is not an object: {raw!r}")
    netns = _field(raw, "netns", dict)
    listen = _field(raw, "listen", list)
    return Tenant(
        name=_field(raw, "name", str),
        tenant_id=_field(raw, "tenant_id", str),
        tenant_header=_field(raw, "tenant_header", str),
        netns=NetnsRef(path=_field(netns, "path", str), name=_field(netns, "name", (str, type(None)))),
        listen=_interned(tuple(_listen_of(x) for x in listen)),
        upstream=_upstream_of(_field(raw, "upstream", dict)),
        limits=_record(Limits, _field(raw, "limits", dict), "limits"),
        tls=_record(TenantTls, raw["tls"], "tls") if "tls" in raw else _DEFAULT_TENANT_TLS,
    )


def _listen_of(raw: Any) -> Listen:
    host, port = _field(raw, "host", str), _field(raw, "port", int)
    if "tls" not in raw:
        return _interned(Listen(host=host, port=port))
    tls = dict(_field(raw, "tls", dict))
    certificates = tls.pop("certificates", None)
    if not isinstance(certificates, list) or not certificates:
        raise RuntimeConfigError(f"listener {host}:{port}: tls needs a non-empty list of certificates")
    certs = []
    for raw_cert in certificates:
        names = raw_cert.get("names", []) if isinstance(raw_cert, dict) else []
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise RuntimeConfigError(f"listener {host}:{port}: certificate names must be a list of strings")
        fields = {**raw_cert, "names": tuple(names)} if isinstance(raw_cert, dict) else raw_cert  # hashable
        certs.append(_record(Certificate, fields, "certificate"))
    listen_tls = _record(ListenTls, {**tls, "certificates": tuple(certs)}, "tls")
    if listen_tls.min_version not in TLS_VERSIONS or listen_tls.client_auth not in CLIENT_AUTH:
        raise RuntimeConfigError(f"listener {host}:{port}: unknown min_version or client_auth")
    return _interned(Listen(host=host, port=port, tls=listen_tls))


def _upstream_of(raw: dict[str, Any]) -> Upstream:
    if "tls" not in raw:
        return _record(Upstream, raw, "upstream")
    rest = {k: v for k, v in raw.items() if k != "tls"}
    tls = _record(UpstreamTls, raw["tls"], "upstream tls")
    return _interned(dataclasses.replace(_record(Upstream, rest, "upstream"), tls=tls))


def parse(data: Any) -> RuntimeConfig:
    """A RuntimeConfig from the JSON document; RuntimeConfigError says what is wrong."""
    if not isinstance(data, dict):
        raise RuntimeConfigError(f"expected a JSON object, got {type(data).__name__}")
    return _parse(data, tuple(_tenant_of(t) for t in _field(data, "tenants", list)))


def _parse(data: dict[str, Any], tenants: tuple[Tenant, ...]) -> RuntimeConfig:
    """Everything but the tenants (already decoded) from the JSON document."""
    if data.get("format") != FORMAT_VERSION:
        raise RuntimeConfigError(f"unsupported runtime config format {data.get('format')!r}")
    generation = _field(data, "generation", str)
    admin_socket = _field(data, "admin_socket", str)
    daemon = _record(DaemonSettings, _field(data, "daemon", dict), "daemon")
    if daemon.log_format not in LOG_FORMATS:
        raise RuntimeConfigError(
            f"daemon: log_format must be one of {', '.join(LOG_FORMATS)}, got {daemon.log_format!r}"
        )
    applied = data.get("manifest")  # optional: configs written before it existed lack it
    excluded = applied.get("excluded") if isinstance(applied, dict) else None
    if not isinstance(excluded, dict):
        excluded = {}
    return RuntimeConfig(
        generation=generation,
        admin_socket=admin_socket,
        daemon=daemon,
        tenants=tenants,
        excluded={str(k): str(v) for k, v in excluded.items()},
    )
