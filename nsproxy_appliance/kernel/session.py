"""One applier run's view of the kernel: a channel per namespace, opened once and reused.

Opening a namespace to look at it never creates it: named namespaces are only entered when
/run/netns/<name> is a live mount, external ones when their path exists.

Everything that touches the real kernel goes through a Host (namespaces on the filesystem) and
the LinkChannel it opens (netlink inside one namespace): tests hand the Kernel a fake Host to run
the Executor without root.
"""

from __future__ import annotations

import contextlib
import errno
import os
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Protocol

from .. import netns
from ..identity import NetnsIdentity
from ..model import NetnsRef
from ..netns import NetnsError
from .observed import NetnsState
from .rtnl import Channel, LinkChannel, RtnlError

DUMMY_MODULE_DIR = "/sys/module/dummy"


@dataclass
class NewNetns:
    """A namespace made but not yet named: held by `fd`, with a channel inside and its identity."""

    name: str
    fd: int
    channel: LinkChannel
    identity: NetnsIdentity  # with its cookie: what the ledger's intent records


class Host(Protocol):
    """The host's namespaces as the Kernel needs them (the real one: RealHost)."""

    def stat(self, path: str) -> NetnsIdentity:
        """(dev, ino) at `path`; raises OSError."""
        ...

    def is_mounted(self, path: str) -> bool: ...
    def open_channel(self, path: str, label: str) -> LinkChannel: ...
    def unshared(self, name: str) -> NewNetns: ...
    def bind_named(self, new: NewNetns) -> NetnsIdentity: ...
    def release(self, new: NewNetns) -> None: ...
    def delete_named(self, name: str) -> None: ...
    def pids_by_inode(self, inodes: set[tuple[int, int]]) -> dict[tuple[int, int], list[int]]: ...
    def throwaway_channel(self) -> LinkChannel: ...


class RealHost:
    """The real kernel: netns.py for namespaces, rtnl.Channel for netlink."""

    def stat(self, path: str) -> NetnsIdentity:
        return netns.identity(path)

    def is_mounted(self, path: str) -> bool:
        return netns.is_mounted(path)

    def open_channel(self, path: str, label: str) -> LinkChannel:
        return Channel.open(path, label)

    def unshared(self, name: str) -> NewNetns:
        fd = netns.unshared(f"network namespace {name}")
        try:
            channel = Channel.open(netns.fd_path(fd), name)
        except BaseException:
            os.close(fd)
            raise
        return NewNetns(name, fd, channel, netns.fd_identity(fd).with_cookie(channel.cookie))

    def bind_named(self, new: NewNetns) -> NetnsIdentity:
        return netns.bind_named(new.fd, new.name)

    def release(self, new: NewNetns) -> None:
        with contextlib.suppress(OSError):
            os.close(new.fd)

    def delete_named(self, name: str) -> None:
        netns.delete_named(name)

    def pids_by_inode(self, inodes: set[tuple[int, int]]) -> dict[tuple[int, int], list[int]]:
        return netns.pids_by_inode(inodes)

    def throwaway_channel(self) -> LinkChannel:
        return Channel.throwaway()


class Kernel:
    def __init__(self, host: Host | None = None) -> None:
        self.host: Host = host or RealHost()
        self._channels: dict[str, LinkChannel] = {}
        self._unnamed: dict[str, NewNetns] = {}  # made in this run, not yet bound to their path
        self._dummy_supported: bool | None = None

    def __enter__(self) -> Kernel:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        for new in list(self._unnamed.values()):
            self.discard_netns(new)
        for channel in self._channels.values():
            channel.close()
        self._channels.clear()

    # -- channels ------------------------------------------------------------------------------

    def channel(self, path: str, label: str | None = None) -> LinkChannel:
        """The channel into the namespace at `path`, reopened if the namespace there changed.

        A namespace this run made but has not named yet is reached by the path it will have.
        """
        if path in self._unnamed:
            return self._unnamed[path].channel
        inode = self.host.stat(path).inode
        channel = self._channels.get(path)
        if channel is not None and channel.identity is not None and channel.identity.inode == inode:
            return channel
        if channel is not None:
            channel.close()
        channel = self.host.open_channel(path, label or NetnsRef.label_of(path))
        self._channels[path] = channel
        return channel

    def forget(self, path: str) -> None:
        channel = self._channels.pop(path, None)
        if channel is not None:
            channel.close()

    # -- observe -------------------------------------------------------------------------------

    def observe_named(self, name: str) -> NetnsState:
        path = NetnsRef.named(name).path
        if not self.host.is_mounted(path):
            return NetnsState(path=path)
        return self._observe(path, name)

    def observe_path(self, path: str) -> NetnsState:
        try:
            self.host.stat(path)
        except FileNotFoundError:
            return NetnsState(path=path)
        except OSError as e:
            return NetnsState(path=path, error=f"cannot stat {path}: {e.strerror}")
        return self._observe(path, path)

    def observe(self, path: str) -> NetnsState:
        """The namespace at `path`: named (under /run/netns) or external."""
        name = NetnsRef.name_at(path)
        return self.observe_named(name) if name is not None else self.observe_path(path)

    def _observe(self, path: str, label: str) -> NetnsState:
        try:
            channel = self.channel(path, label)
            lo_up, links = channel.links()
        except NetnsError as e:
            if e.errno == errno.EINVAL:
                return NetnsState(path=path, error=f"{path} is not a network namespace")
            return NetnsState(path=path, error=str(e))
        except (RtnlError, OSError) as e:
            return NetnsState(path=path, error=str(e))
        ident = channel.identity
        assert ident is not None  # channels opened on a path always know it
        return NetnsState(
            path=path, identity=NetnsIdentity(ident.dev, ident.ino), cookie=ident.cookie, lo_up=lo_up, links=links
        )

    def pids_by_identity(self, identities: Iterable[NetnsIdentity]) -> dict[NetnsIdentity, list[int]]:
        """Processes inside each of `identities`, from one pass over /proc."""
        wanted = list(identities)
        by_inode = self.host.pids_by_inode({ident.inode for ident in wanted})
        return {ident: by_inode.get(ident.inode, []) for ident in wanted}

    # -- namespaces ----------------------------------------------------------------------------

    def new_netns(self, name: str) -> NewNetns:
        """Make the namespace that will become /run/netns/<name>; nothing is named yet."""
        new = self.host.unshared(name)
        self._unnamed[NetnsRef.named(name).path] = new
        return new

    def bind_netns(self, new: NewNetns) -> NetnsIdentity:
        """Give a new namespace its name; its channel becomes the one for that path."""
        try:
            ident = self.host.bind_named(new)
        except BaseException:
            self.discard_netns(new)
            raise
        path = NetnsRef.named(new.name).path
        self._unnamed.pop(path, None)
        self.host.release(new)
        self.forget(path)
        self._channels[path] = new.channel
        return ident.with_cookie(new.identity.cookie)

    def discard_netns(self, new: NewNetns) -> None:
        """Let a new namespace that was never named go (it dies with its last fd)."""
        path = NetnsRef.named(new.name).path
        if self._unnamed.get(path) is new:
            del self._unnamed[path]
        self.host.release(new)
        new.channel.close()

    def create_netns(self, name: str) -> NetnsIdentity:
        return self.bind_netns(self.new_netns(name))

    def delete_netns(self, name: str) -> None:
        self.forget(NetnsRef.named(name).path)
        self.host.delete_named(name)

    # -- capabilities --------------------------------------------------------------------------

    def dummy_supported(self) -> bool:
        """Whether this kernel can make dummy links; checked once per run, leaves nothing behind.

        A loaded (or built-in) module shows in /sys/module. Otherwise try to make one in a
        throwaway namespace that disappears with its channel (this also autoloads a module build).
        """
        if self._dummy_supported is None:
            if os.path.isdir(DUMMY_MODULE_DIR):
                self._dummy_supported = True
            else:
                probe = self.host.throwaway_channel()
                try:
                    probe.add_link("nsproxy-probe", "dummy")
                    self._dummy_supported = True
                except RtnlError:
                    self._dummy_supported = False
                finally:
                    probe.close()
        return self._dummy_supported
