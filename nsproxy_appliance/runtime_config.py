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
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from . import atomicfile
from .errors import RuntimeConfigError
from .model import DaemonSettings, Limits, Listen, Manifest, NetnsRef, Tenant, Upstream
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
        "daemon": dict(vars(manifest.daemon)),
        "manifest": {"tenants": names, "excluded": dict(sorted((excluded or {}).items()))},
        "tenants": [_tenant(t) for t in manifest.tenants],
    }
    return {"generation": generation_of(body), **body}


def generation_of(body: dict[str, Any]) -> str:
    canonical = json.dumps({k: v for k, v in body.items() if k != "generation"}, sort_keys=True)
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def _tenant(t: Tenant) -> dict[str, Any]:
    return {
        "name": t.name,
        "tenant_id": t.tenant_id,
        "tenant_header": t.tenant_header,
        "netns": {"name": t.netns.name, "path": t.netns.path},
        "listen": [{"host": listen.host, "port": listen.port} for listen in t.listen],
        # vars() rather than dataclasses.asdict: these are flat, and asdict's deep copy is slow at 1000 tenants.
        "upstream": dict(vars(t.upstream)),
        "limits": dict(vars(t.limits)),
    }


_TENANTS_START = ', "tenants": [\n'  # the layout _dump writes and Loader reads back
_TENANTS_END = "\n]}\n"


def _dump(config: dict[str, Any]) -> str:
    head = {k: v for k, v in config.items() if k != "tenants"}
    lines = [json.dumps(t, sort_keys=True) for t in config.get("tenants", [])]
    body = json.dumps(head, sort_keys=True)[:-1]
    return body + _TENANTS_START + ",\n".join(lines) + _TENANTS_END


def write(config: dict[str, Any], path: str) -> bool:
    """Atomically write `config` to `path`; returns False when the file already holds it."""
    # One tenant per line: readable and diffable, and without indent= json uses its C encoder.
    text = _dump(config)
    try:
        with open(path, encoding="utf-8") as f:
            if f.read() == text:
                return False
    except FileNotFoundError:
        pass
    except OSError:
        pass  # unreadable: replace it
    # The runtime dir is tmpfs (/run) by default: the rename need not survive a power cut.
    atomicfile.write_text(path, text, sync_directory=False)
    return True


def read(path: str) -> dict[str, Any] | None:
    """The config on disk as plain JSON, or None when it is absent or unreadable (for planning)."""
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
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
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except FileNotFoundError:
        raise RuntimeConfigError(f"{path}: no such file (write it with nsproxy-apply)") from None
    except json.JSONDecodeError as e:
        raise RuntimeConfigError(f"{path}:{e.lineno}:{e.colno}: invalid JSON: {e.msg}") from None
    except (OSError, UnicodeDecodeError) as e:
        reason = e.strerror if isinstance(e, OSError) else str(e)
        raise RuntimeConfigError(f"{path}: cannot read: {reason}") from None
    try:
        return parse(data)
    except RuntimeConfigError as e:
        raise RuntimeConfigError(f"{path}: {e}") from None


class Loader:
    """Loads the runtime config at `path` again and again (the daemon's reloads), reusing the Tenant
    of every tenant line unchanged since the last load.

    A config is one tenant per line (_dump), and a reload usually changes a few of 10,000 lines: the
    same text gives the same Tenant object, so the reconciler can tell an unchanged tenant by
    identity, and only changed lines are decoded and validated. A file not in that layout is read
    whole, as `load` does.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self._by_line: dict[str, Tenant] = {}

    def load(self) -> RuntimeConfig:
        path = self.path
        try:
            with open(path, encoding="utf-8") as f:
                text = f.read()
        except FileNotFoundError:
            raise RuntimeConfigError(f"{path}: no such file (write it with nsproxy-apply)") from None
        except (OSError, UnicodeDecodeError) as e:
            reason = e.strerror if isinstance(e, OSError) else str(e)
            raise RuntimeConfigError(f"{path}: cannot read: {reason}") from None
        start = text.find(_TENANTS_START)
        if start < 0 or not text.endswith(_TENANTS_END):
            return self._whole(text)
        body = text[start + len(_TENANTS_START) : len(text) - len(_TENANTS_END)]
        lines = body.split(",\n") if body else []  # a JSON line holds no raw newline: this split is exact
        try:
            head = json.loads(text[:start] + ', "tenants": []}')
        except json.JSONDecodeError:
            return self._whole(text)
        previous, seen = self._by_line, {}
        tenants = []
        first_line = text.count("\n", 0, start) + 2  # the file line of the first tenant
        for i, line in enumerate(lines):
            tenant = previous.get(line)
            if tenant is None:
                try:
                    tenant = _tenant_of(json.loads(line))
                except json.JSONDecodeError as e:
                    raise RuntimeConfigError(f"{path}:{first_line + i}:{e.colno}: invalid JSON: {e.msg}") from None
                except RuntimeConfigError as e:
                    raise RuntimeConfigError(f"{path}:{first_line + i}: {e}") from None
            seen[line] = tenant
            tenants.append(tenant)
        try:
            config = _parse(head, tuple(tenants))
        except RuntimeConfigError as e:
            raise RuntimeConfigError(f"{path}: {e}") from None
        self._by_line = seen
        return config

    def _whole(self, text: str) -> RuntimeConfig:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise RuntimeConfigError(f"{self.path}:{e.lineno}:{e.colno}: invalid JSON: {e.msg}") from None
        try:
            config = parse(data)
        except RuntimeConfigError as e:
            raise RuntimeConfigError(f"{self.path}: {e}") from None
        self._by_line = {}
        return config


T = TypeVar("T")


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
    known = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]  # cls is a dataclass
    unknown = sorted(set(raw) - known)
    if unknown:
        raise RuntimeConfigError(f"unknown field {unknown[0]!r} ({cls.__name__})")
    try:
        return cls(**raw)
    except TypeError as e:  # a required field is missing
        raise RuntimeConfigError(f"{where}: {e}") from None


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
        listen=tuple(Listen(host=_field(x, "host", str), port=_field(x, "port", int)) for x in listen),
        upstream=_record(Upstream, _field(raw, "upstream", dict), "upstream"),
        limits=_record(Limits, _field(raw, "limits", dict), "limits"),
    )


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
