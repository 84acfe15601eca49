"""Observing: the kernel (namespaces, links, addresses), the runtime config on disk and the daemon,
as one Observed value the plan compares with the manifest and the ledger.

Only namespaces the manifest or the ledger name (including pending intents of an interrupted run)
are looked at, and looking never creates anything.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable

from . import daemon_control, runtime_config
from .kernel.observed import DaemonView, NetnsState, Observed
from .kernel.session import Kernel
from .ledger import Ledger
from .model import Manifest, NetnsRef
from .plan import PlanOptions

__all__ = ["daemon_view", "observe", "observe_paths", "read_config"]

read_config = runtime_config.read


def observe(manifest: Manifest, owned: Ledger, kernel: Kernel, options: PlanOptions) -> Observed:
    """Everything the plan needs: only namespaces in the manifest or the ledger are looked at."""
    paths = [t.netns.path for t in manifest.tenants]
    paths += [NetnsRef.named(name).path for name in sorted(owned.namespaces)]
    paths += [p for p, _ in owned.links] + owned.pending_paths()
    namespaces = observe_paths(kernel, paths, external={t.netns.path for t in manifest.tenants if t.netns.external})
    namespaces = _with_pids(manifest, owned, kernel, namespaces)
    dummy_supported = kernel.dummy_supported() if _dummy_link_missing(manifest, namespaces) else None
    return Observed(
        namespaces=namespaces,
        dummy_supported=dummy_supported,
        config=read_config(options.paths.config),
        daemon=daemon_view(options),
    )


def observe_paths(kernel: Kernel, paths: Iterable[str], external: set[str] | None = None) -> dict[str, NetnsState]:
    """Each namespace once; a path under /run/netns is named unless the manifest uses it as external."""
    external = external or set()
    namespaces: dict[str, NetnsState] = {}
    for path in paths:
        if path in namespaces:
            continue
        name = None if path in external else NetnsRef.name_at(path)
        namespaces[path] = kernel.observe_named(name) if name is not None else kernel.observe_path(path)
    return namespaces


def _with_pids(
    manifest: Manifest, owned: Ledger, kernel: Kernel, namespaces: dict[str, NetnsState]
) -> dict[str, NetnsState]:
    """Processes inside owned (or maybe owned: pending creations) namespaces the plan may prune."""
    wanted = {t.netns.name for t in manifest.tenants if t.netns.name}
    records = [(name, entry.identity) for name, entry in owned.namespaces.items()]
    records += [(NetnsRef.name_at(i.netns_path) or "", i.netns_identity) for i in owned.pending]
    candidates = {}
    for name, identity in records:
        path = NetnsRef.named(name).path
        if name and name not in wanted and path in namespaces and namespaces[path].is_(identity):
            candidates[path] = identity
    if not candidates:
        return namespaces
    pids = kernel.pids_by_identity(candidates.values())
    out = dict(namespaces)
    for path, ident in candidates.items():
        out[path] = dataclasses.replace(out[path], pids=tuple(pids.get(ident, ())))
    return out


def _dummy_link_missing(manifest: Manifest, namespaces: dict[str, NetnsState]) -> bool:
    for t in manifest.tenants:
        ns = namespaces.get(t.netns.path)
        for link in t.links:
            if link.kind == "dummy" and (ns is None or link.name not in ns.links):
                return True
    return False


def daemon_view(options: PlanOptions) -> DaemonView:
    """What the daemon runs and serves (per tenant, in which namespace); nothing with --no-daemon."""
    if options.no_daemon:
        return DaemonView()
    status = daemon_control.status(options.paths)
    served = daemon_control.served_tenants(options.paths) if status.running else None
    return DaemonView(running=status.running, generation=status.generation, failed=status.failed, served=served)
