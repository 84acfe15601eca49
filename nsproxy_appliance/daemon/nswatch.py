"""Follow the tenants' namespaces: notice when one is deleted or replaced, and rebind by itself.

Two sources, both only ever *trigger* a check (what to do is the Reconciler's refresh):
- inotify on the named-namespace directory (/run/netns): `ip netns del/add` and nsproxy-apply
  create and remove files there, so a named namespace's tenant is checked at once; a new file is
  mounted a moment after it is created, so it is checked again shortly after;
- a cheap periodic identity check (one stat per tenant) of every `{path: ...}` tenant, which covers
  namespaces a container runtime replaces by bind-mounting a new one at the same path (mounts make
  no inotify events), of every tenant while inotify is not watching (a /run/netns that did not exist
  when the daemon started), and of the named ones in a slow rotating sweep (inotify's safety net).

A check compares the namespace at the tenant's path with the one its listeners live in: gone ->
the tenant is marked failed with the reason and its sockets are closed (an open socket pins a dead
namespace); another identity -> its listeners are re-made there; back after a failure -> rebound.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import errno
import logging
import os
import struct
from collections.abc import Awaitable, Callable, Iterable

from .. import netns
from ..model import NETNS_RUN_DIR
from .state import DaemonState, TenantState

log = logging.getLogger("nsproxyd")

CHECK_INTERVAL = 0.5  # seconds between identity checks of the {path: ...} tenants (their bound to heal)
SWEEP_PERIOD = 30.0  # seconds in which every named namespace's tenant is checked too (inotify's safety net)
RECHECK_AFTER = (0.02, 0.1, 0.3)  # after an inotify event: the mount follows the file's creation

IN_CLOEXEC = 0o2000000
IN_NONBLOCK = 0o4000
IN_CREATE = 0x100
IN_DELETE = 0x200
IN_MOVED_FROM = 0x40
IN_MOVED_TO = 0x80
IN_DELETE_SELF = 0x400
IN_MOVE_SELF = 0x800
IN_IGNORED = 0x8000
_EVENT = struct.Struct("iIII")  # wd, mask, cookie, len (then the name, NUL padded)
_WATCH_MASK = IN_CREATE | IN_DELETE | IN_MOVED_FROM | IN_MOVED_TO | IN_DELETE_SELF | IN_MOVE_SELF

_libc = ctypes.CDLL(None, use_errno=True)
_libc.inotify_init1.argtypes = [ctypes.c_int]
_libc.inotify_add_watch.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_uint32]


class Inotify:
    """A non-blocking inotify fd watching one directory; read() gives the names that changed."""

    def __init__(self, directory: str) -> None:
        self.directory = directory
        fd = _libc.inotify_init1(IN_NONBLOCK | IN_CLOEXEC)
        if fd < 0:
            err = ctypes.get_errno()
            raise OSError(err, f"inotify_init1: {os.strerror(err)}")
        self.fd = fd
        self.watching = False

    def watch(self) -> bool:
        """Start watching the directory (again); False while it does not exist."""
        if _libc.inotify_add_watch(self.fd, self.directory.encode(), _WATCH_MASK) < 0:
            err = ctypes.get_errno()
            if err not in (errno.ENOENT, errno.ENOTDIR):
                log.warning("cannot watch %s: %s (periodic checks only)", self.directory, os.strerror(err))
            self.watching = False
            return False
        self.watching = True
        return True

    def read(self) -> list[str]:
        names: list[str] = []
        while True:
            try:
                data = os.read(self.fd, 64 * 1024)
            except BlockingIOError:
                return names
            offset = 0
            while offset + _EVENT.size <= len(data):
                _wd, mask, _cookie, length = _EVENT.unpack_from(data, offset)
                name = data[offset + _EVENT.size : offset + _EVENT.size + length].split(b"\0", 1)[0]
                offset += _EVENT.size + length
                if mask & (IN_DELETE_SELF | IN_MOVE_SELF | IN_IGNORED):
                    self.watching = False  # the directory itself went: watch it again when it is back
                if name:
                    names.append(name.decode(errors="replace"))

    def close(self) -> None:
        os.close(self.fd)


class NamespaceWatcher:
    """Triggers `refresh(tenant names)` when a tenant's namespace may have changed."""

    # the tenants split into named and `{path: ...}` ones, made again only when the config changed:
    # splitting 10,000 of them every half second took a tenth of the idle daemon's core
    _split_for: tuple[str | None, int] | None = None
    _split: tuple[list[str], list[str]] = ([], [])

    def __init__(
        self,
        state: DaemonState,
        refresh: Callable[[Iterable[str]], Awaitable[object]],
        directory: str = NETNS_RUN_DIR,
        interval: float = CHECK_INTERVAL,
    ) -> None:
        self.state = state
        self.refresh = refresh
        self.directory = directory
        self.interval = interval
        self._loop = asyncio.get_running_loop()
        self._inotify: Inotify | None = None
        self._task: asyncio.Task[None] | None = None
        self._pending: set[str] = set()
        self._wake = asyncio.Event()
        self._timers: list[asyncio.TimerHandle] = []
        self._sweep_at = 0  # where the rotating slice of named tenants goes on

    def start(self) -> None:
        try:
            self._inotify = Inotify(self.directory)
        except OSError as e:
            log.warning("%s: periodic namespace checks only", e)
        else:
            self._inotify.watch()
            self._loop.add_reader(self._inotify.fd, self._on_events)
        self._task = self._loop.create_task(self._run())

    async def stop(self) -> None:
        """Stop watching (idempotent)."""
        for timer in self._timers:
            timer.cancel()
        self._timers = []
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self._inotify is not None:
            self._loop.remove_reader(self._inotify.fd)
            self._inotify.close()
            self._inotify = None

    # -- triggers ----------------------------------------------------------------------------------

    def _on_events(self) -> None:
        assert self._inotify is not None
        names = set(self._inotify.read())
        tenants = {
            name
            for name, slot in self.state.slots.items()
            if slot.ctx.tenant.netns.name in names or os.path.basename(slot.ctx.tenant.netns.path) in names
        }
        if tenants:
            self._request(tenants)
            for delay in RECHECK_AFTER:  # `ip netns add` creates the file, then mounts the namespace on it
                self._timers.append(self._loop.call_later(delay, self._request, tenants))
            self._timers = [t for t in self._timers if not t.cancelled()][-64:]

    def _request(self, tenants: Iterable[str]) -> None:
        self._pending.update(tenants)
        self._wake.set()

    def stale(self) -> set[str]:
        """Tenants whose namespace is not the one their listeners were made in.

        One stat per tenant checked. Every `{path: ...}` tenant is checked each time (mounts make no
        inotify events); a named namespace's tenant only in a rotating slice that covers all of them
        every SWEEP_PERIOD (inotify reports their deletes and creations at once), unless inotify is
        not watching: then every tenant, each time. At 10,000 named tenants a full stat round every
        half second would cost a large share of a core for nothing.
        """
        slots = self.state.slots
        check: list[str] = list(slots)
        if self._inotify is not None and self._inotify.watching:
            named, by_path = self._named_and_by_path()
            per_tick = int(-(-len(named) * self.interval // SWEEP_PERIOD)) if named else 0  # ceil
            start = self._sweep_at % len(named) if named else 0
            check = by_path + named[start : start + per_tick] + named[: max(0, start + per_tick - len(named))]
            self._sweep_at = start + per_tick
        out = set()
        parent_devs: dict[str, int] = {}
        for name in check:
            slot = slots.get(name)
            if slot is None:  # removed since the split (a reload in progress)
                continue
            made_in = slot.listeners.identity
            now = netns.mounted_identity(slot.ctx.tenant.netns.path, parent_devs)
            if now is None:
                if made_in is not None or slot.ctx.state != TenantState.FAILED:
                    out.add(name)  # gone
            elif made_in is None or now.inode != made_in.inode:
                out.add(name)  # replaced, or back after it was gone
        return out

    def _named_and_by_path(self) -> tuple[list[str], list[str]]:
        """The tenants whose namespace is named (inotify sees it), and the `{path: ...}` ones."""
        key = (self.state.generation, len(self.state.slots))
        if self._split_for != key:
            named: list[str] = []
            by_path: list[str] = []
            for name, slot in self.state.slots.items():
                (named if slot.ctx.tenant.netns.name is not None else by_path).append(name)
            self._split_for, self._split = key, (named, by_path)
        return self._split

    async def _run(self) -> None:
        while True:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.interval)
            self._wake.clear()
            if self._inotify is not None and not self._inotify.watching:
                self._inotify.watch()
            if self.state.stopping:
                return
            if not self.state.applied:
                continue
            due = {name for name in self._pending if name in self.state.slots}
            self._pending.clear()
            due |= self.stale()
            if due:
                try:
                    await self.refresh(sorted(due))
                except Exception:  # a bug here must not stop the watching
                    log.exception("namespace check of %s failed", ", ".join(sorted(due)))
