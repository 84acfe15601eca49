"""What the broker may make sockets for: the tenants of the runtime config the applier wrote.

The daemon asks by tenant name; the broker answers only for tenants of the config, only at their
configured listen addresses, and gives unconnected upstream sockets only in the namespaces of
`from: tenant` upstreams. The config is trusted only if nobody but root (the applier) can have
written it: a regular file (no symlink) owned by root (or the broker's own user), not writable by
group or others, in a directory only root can rename files in (not writable by others, or sticky).
So a compromised daemon, which may write its own files into the runtime dir, cannot widen what the
broker makes for it.
"""

from __future__ import annotations

import logging
import os
import stat
from dataclasses import dataclass, field
from typing import BinaryIO

from ..errors import RuntimeConfigError
from ..model import Tenant
from ..runtime_config import Loader

log = logging.getLogger("nsproxy-broker")


class UntrustedConfig(Exception):
    """The runtime config could have been written by someone other than root; the message says why."""


def _check_owner(st: os.stat_result, what: str, trusted: frozenset[int]) -> None:
    if st.st_uid not in trusted:
        raise UntrustedConfig(f"{what} is owned by uid {st.st_uid}, not root")


Signature = tuple[int, ...]


def signature(path: str) -> Signature:
    """What changes when the config (content, owner or mode: its ctime) or what read_trusted checks of
    its directory (owner, mode) change. Not the directory's ctime: the daemon's own files (pidfile,
    admin socket) change it, and each re-read parses the whole config (at 10,000 tenants, most of
    start-up); the sticky, root-owned directory keeps anyone but root from replacing the config."""
    st = os.lstat(path)
    dst = os.stat(os.path.dirname(path) or ".")
    return (st.st_dev, st.st_ino, st.st_mtime_ns, st.st_ctime_ns, st.st_size, dst.st_uid, dst.st_mode)


def open_trusted(path: str, trusted: frozenset[int]) -> BinaryIO:
    """The config at `path` opened for reading, or UntrustedConfig/OSError."""
    directory = os.path.dirname(path) or "."
    dst = os.stat(directory)
    _check_owner(dst, f"the runtime dir {directory}", trusted)
    if dst.st_mode & (stat.S_IWGRP | stat.S_IWOTH) and not dst.st_mode & stat.S_ISVTX:
        raise UntrustedConfig(
            f"the runtime dir {directory} is writable by group or others without the sticky bit: "
            "another user could replace the config"
        )
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise UntrustedConfig(f"{path} is not a regular file")
        _check_owner(st, path, trusted)
        if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
            raise UntrustedConfig(f"{path} is writable by group or others")
        return os.fdopen(fd, "rb")  # the file checked, not whatever is at `path` by the time it is read
    except BaseException:
        os.close(fd)
        raise


@dataclass
class Registry:
    """The tenants of the runtime config at `path`, re-read whenever the file changed."""

    path: str
    trusted_uids: frozenset[int] = field(default_factory=lambda: frozenset({0, os.geteuid()}))
    tenants: dict[str, Tenant] = field(default_factory=dict)
    generation: str | None = None
    # namespace path -> how many tenants dial their upstream `from: tenant` there
    _upstream_netns: dict[str, int] = field(default_factory=dict)
    # tenant -> its listen addresses as keys, filled as asked (10,000 at each re-read slowed a reload)
    _listen_keys: dict[str, frozenset[str]] = field(default_factory=dict)
    error: str | None = None  # why the config on disk is not (or no longer) used
    _signature: Signature | None = None
    # decodes only the lines that changed (a reload adding one tenant of 10,000 re-reads one line)
    _loader: Loader | None = None

    def refresh(self) -> bool:
        """Re-read the config if it changed; True when the tenants changed. A config that cannot be
        trusted or read keeps the last good one and sets `error`."""
        try:
            now = signature(self.path)
        except OSError as e:
            self._failed(f"{self.path}: {e.strerror or e}")
            return False
        if now == self._signature:
            return False
        self._signature = now  # not read again until it changes
        if self._loader is None:
            self._loader = Loader(self.path)
        loader = self._loader
        try:
            with open_trusted(self.path, self.trusted_uids) as f:
                config = loader.load_file(f)
        except (OSError, ValueError, UnicodeDecodeError, UntrustedConfig, RuntimeConfigError) as e:
            self._failed(f"{self.path}: {getattr(e, 'strerror', None) or e}")
            return False
        self.error = None
        self.generation = config.generation
        if loader.incremental:  # the loader's changes since the config these tenants are of
            # (at 10,000 tenants, rebuilding the maps was most of what was left of a one-tenant reload)
            for tenant in loader.removed:
                self._forget(tenant)
            for tenant in loader.changed:
                self._add(tenant)
            changed = bool(loader.changed or loader.removed)
        else:
            before = self.tenants
            self.tenants, self._upstream_netns, self._listen_keys = {}, {}, {}
            for tenant in config.tenants:
                self._add(tenant)
            changed = self.tenants != before
        log.info("runtime config generation %s: %d tenants", self.generation, len(self.tenants))
        return changed

    def _add(self, tenant: Tenant) -> None:
        self.tenants[tenant.name] = tenant
        if tenant.upstream.kind == "http" and tenant.upstream.from_ns == "tenant":
            path = tenant.netns.path
            self._upstream_netns[path] = self._upstream_netns.get(path, 0) + 1

    def _forget(self, tenant: Tenant) -> None:
        self.tenants.pop(tenant.name, None)
        self._listen_keys.pop(tenant.name, None)
        if tenant.upstream.kind == "http" and tenant.upstream.from_ns == "tenant":
            path = tenant.netns.path
            left = self._upstream_netns.get(path, 0) - 1
            if left > 0:
                self._upstream_netns[path] = left
            else:
                self._upstream_netns.pop(path, None)

    def dials_upstream_from(self, path: str) -> bool:
        """Whether a tenant of the config dials its upstream from (`from: tenant`) namespace `path`."""
        return path in self._upstream_netns

    def _failed(self, error: str) -> None:
        if error != self.error:
            log.error("runtime config not used: %s (keeping generation %s)", error, self.generation)
        self.error = error

    def tenant(self, name: str) -> Tenant | None:
        return self.tenants.get(name)

    def listen_keys(self, name: str) -> frozenset[str]:
        """The listen addresses of tenant `name` as the protocol names them (empty: no such tenant)."""
        keys = self._listen_keys.get(name)
        if keys is None:
            tenant = self.tenants.get(name)
            keys = frozenset(str(listen) for listen in tenant.listen) if tenant is not None else frozenset()
            self._listen_keys[name] = keys
        return keys
