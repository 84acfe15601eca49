"""The runtime config: the only thing the applier hands to the daemon.

The applier renders it from the Manifest (after the kernel objects exist) and writes it
atomically; the daemon reads it at start and on every reload. Its `generation` is a hash of
the content, so "did the config change?" is a string comparison, and the daemon can report
which generation it is serving.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from typing import Any

from . import atomicfile
from .model import DaemonSettings, Limits, Listen, Manifest, NetnsRef, Tenant, Upstream

FORMAT_VERSION = 1


@dataclass(frozen=True)
class Paths:
    """Where nsproxy keeps its files; both overridable so tests and multi-instance hosts don't collide."""

    state_dir: str = "/var/lib/nsproxy"  # ledger (survives reboots)
    runtime_dir: str = "/run/nsproxy"  # daemon config, pidfile, admin socket (tmpfs)

    @property
    def ledger(self) -> str:
        return os.path.join(self.state_dir, "ledger.json")

    @property
    def lock(self) -> str:
        return os.path.join(self.state_dir, "apply.lock")

    @property
    def config(self) -> str:
        return os.path.join(self.runtime_dir, "config.json")

    @property
    def pidfile(self) -> str:
        return os.path.join(self.runtime_dir, "nsproxyd.pid")

    @property
    def admin_socket(self) -> str:
        return os.path.join(self.runtime_dir, "admin.sock")

    @property
    def log_file(self) -> str:
        return os.path.join(self.state_dir, "nsproxyd.log")


def render(manifest: Manifest, paths: Paths) -> dict[str, Any]:
    """The runtime config for `manifest`, as a JSON-ready dict including its generation."""
    body = {
        "format": FORMAT_VERSION,
        "admin_socket": paths.admin_socket,
        "daemon": dict(vars(manifest.daemon)),
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


def _dump(config: dict[str, Any]) -> str:
    head = {k: v for k, v in config.items() if k != "tenants"}
    lines = [json.dumps(t, sort_keys=True) for t in config.get("tenants", [])]
    body = json.dumps(head, sort_keys=True)[:-1]
    return body + ', "tenants": [\n' + ",\n".join(lines) + "\n]}\n"


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
    # The runtime dir is tmpfs (/run) by default: the rename need not survive a power cut.
    atomicfile.write_text(path, text, sync_directory=False)
    return True


@dataclass(frozen=True)
class RuntimeConfig:
    """The daemon's parsed view of config.json."""

    generation: str
    admin_socket: str
    daemon: DaemonSettings
    tenants: tuple[Tenant, ...]


def load(path: str) -> RuntimeConfig:
    with open(path, encoding="utf-8") as f:
        return parse(json.load(f))


def parse(data: dict[str, Any]) -> RuntimeConfig:
    if data.get("format") != FORMAT_VERSION:
        raise ValueError(f"unsupported runtime config format {data.get('format')!r}")
    tenants = tuple(
        Tenant(
            name=t["name"],
            tenant_id=t["tenant_id"],
            tenant_header=t["tenant_header"],
            netns=NetnsRef(path=t["netns"]["path"], name=t["netns"]["name"]),
            listen=tuple(Listen(host=x["host"], port=x["port"]) for x in t["listen"]),
            upstream=Upstream(**t["upstream"]),
            limits=Limits(**t["limits"]),
        )
        for t in data["tenants"]
    )
    return RuntimeConfig(
        generation=data["generation"],
        admin_socket=data["admin_socket"],
        daemon=DaemonSettings(**data["daemon"]),
        tenants=tenants,
    )
