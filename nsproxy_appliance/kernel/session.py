"""One applier run's view of the kernel: a channel per namespace, opened once and reused.

Opening a namespace to look at it never creates it: named namespaces are only entered when
/run/netns/<name> is a live mount (netns.exists), external ones when their path exists.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Iterable

from .. import netns
from ..netns import NetnsError, NetnsIdentity
from .observed import NetnsState
from .rtnl import Channel, RtnlError

DUMMY_MODULE_DIR = "/sys/module/dummy"


class Kernel:
    def __init__(self) -> None:
        self._channels: dict[str, Channel] = {}
        self._dummy_supported: bool | None = None

    def __enter__(self) -> Kernel:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        for channel in self._channels.values():
            channel.close()
        self._channels.clear()

    # -- channels ------------------------------------------------------------------------------

    def channel(self, path: str, label: str | None = None) -> Channel:
        """The channel into the namespace at `path`, reopened if the namespace there changed."""
        ident = netns.identity(path)
        channel = self._channels.get(path)
        if channel is not None and channel.identity == ident:
            return channel
        if channel is not None:
            channel.close()
        channel = Channel.open(path, label or path)
        self._channels[path] = channel
        return channel

    def forget(self, path: str) -> None:
        channel = self._channels.pop(path, None)
        if channel is not None:
            channel.close()

    # -- observe -------------------------------------------------------------------------------

    def observe_named(self, name: str) -> NetnsState:
        path = netns.named_path(name)
        if not netns.exists(name):
            return NetnsState(path=path)
        return self._observe(path, name)

    def observe_path(self, path: str) -> NetnsState:
        try:
            os.stat(path)
        except FileNotFoundError:
            return NetnsState(path=path)
        except OSError as e:
            return NetnsState(path=path, error=f"cannot stat {path}: {e.strerror}")
        return self._observe(path, path)

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
        return NetnsState(path=path, identity=channel.identity, cookie=channel.cookie, lo_up=lo_up, links=links)

    @staticmethod
    def pids_by_identity(identities: Iterable[NetnsIdentity]) -> dict[NetnsIdentity, list[int]]:
        """Processes inside each of `identities`, from one pass over /proc."""
        wanted = {ident: [] for ident in identities}
        if not wanted:
            return {}
        for entry in os.scandir("/proc"):
            if not entry.name.isdigit():
                continue
            try:
                ident = netns.identity(f"/proc/{entry.name}/ns/net")
            except OSError:
                continue
            if ident in wanted:
                wanted[ident].append(int(entry.name))
        return wanted

    # -- namespaces ----------------------------------------------------------------------------

    def create_netns(self, name: str) -> NetnsIdentity:
        return netns.create_named(name)

    def delete_netns(self, name: str) -> None:
        self.forget(netns.named_path(name))
        netns.delete_named(name)

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
                probe = Channel.throwaway()
                try:
                    probe.add_link("nsproxy-probe", "dummy")
                    self._dummy_supported = True
                except RtnlError:
                    self._dummy_supported = False
                finally:
                    probe.close()
        return self._dummy_supported
