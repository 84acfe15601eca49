"""What nsproxy owns: the namespaces and links it created, recorded with their identities.

The ledger is a JSON file (paths.ledger) written atomically (temp file, fsync, rename, fsync of
the directory), so a crash leaves either the old or the new version. Every run that reads or
changes it holds an exclusive fcntl lock on paths.lock; a second run waits up to a deadline and
then fails naming the holder.

Identity guards against name reuse: a namespace recorded as (name, st_dev, st_ino) is ours only
while /run/netns/<name> still has that identity; a link only while it has the recorded ifindex
in a namespace with the recorded identity. After a reboot every identity is gone, so entries are
stale and the applier recreates what the manifest wants.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

from . import atomicfile
from .netns import NetnsIdentity, named_path

FORMAT_VERSION = 1
LOCK_POLL_INTERVAL = 0.05


class LedgerError(RuntimeError):
    """The ledger is unreadable or has an unknown format; the message says which file and why."""


class LockTimeout(RuntimeError):
    """Another run held the apply lock for longer than the timeout."""


@dataclass
class OwnedNetns:
    name: str
    dev: int
    ino: int
    tenant: str
    cookie: int | None = None  # SO_NETNS_COOKIE: inode numbers are reused, cookies are not

    @property
    def identity(self) -> NetnsIdentity:
        return NetnsIdentity(self.dev, self.ino)


@dataclass
class OwnedLink:
    netns_path: str
    netns_dev: int  # identity of the namespace the link was created in
    netns_ino: int
    name: str
    kind: str
    ifindex: int
    tenant: str
    netns_cookie: int | None = None

    @property
    def key(self) -> tuple[str, str]:
        return (self.netns_path, self.name)

    @property
    def netns_identity(self) -> NetnsIdentity:
        return NetnsIdentity(self.netns_dev, self.netns_ino)


@dataclass
class Ledger:
    namespaces: dict[str, OwnedNetns] = field(default_factory=dict)  # by netns name
    links: dict[tuple[str, str], OwnedLink] = field(default_factory=dict)  # by (netns path, link name)
    revision: int = field(default=0, compare=False)  # bumped by every change: "does it need saving?"

    # -- changes (the applier calls these as actions succeed) ------------------------------------

    def own_netns(self, name: str, identity: NetnsIdentity, tenant: str, cookie: int | None = None) -> None:
        self.revision += 1
        self.namespaces[name] = OwnedNetns(name, identity.dev, identity.ino, tenant, cookie)
        path = named_path(name)  # links recorded in an earlier namespace of that name died with it
        for key, link in list(self.links.items()):
            if key[0] == path and (link.netns_identity != identity or link.netns_cookie != cookie):
                del self.links[key]

    def disown_netns(self, name: str) -> None:
        self.revision += 1
        entry = self.namespaces.pop(name, None)
        if entry is not None:
            path = named_path(name)
            for key in [k for k in self.links if k[0] == path]:
                del self.links[key]

    def own_link(
        self,
        netns_path: str,
        identity: NetnsIdentity,
        name: str,
        kind: str,
        ifindex: int,
        tenant: str,
        cookie: int | None = None,
    ) -> None:
        self.revision += 1
        entry = OwnedLink(netns_path, identity.dev, identity.ino, name, kind, ifindex, tenant, cookie)
        self.links[(netns_path, name)] = entry

    def disown_link(self, netns_path: str, name: str) -> None:
        self.revision += 1
        self.links.pop((netns_path, name), None)

    # -- queries -------------------------------------------------------------------------------

    def owns_netns(self, name: str, identity: NetnsIdentity | None, cookie: int | None = None) -> bool:
        entry = self.namespaces.get(name)
        if entry is None or identity is None or entry.identity != identity:
            return False
        return entry.cookie is None or cookie is None or entry.cookie == cookie

    def owned_link(self, netns_path: str, name: str) -> OwnedLink | None:
        return self.links.get((netns_path, name))

    # -- serialisation -------------------------------------------------------------------------

    def to_json(self) -> dict:
        return {
            "format": FORMAT_VERSION,
            # vars(), not asdict(): the records are flat, and asdict's deep copy shows at 1000 tenants
            "namespaces": [dict(vars(n)) for n in sorted(self.namespaces.values(), key=lambda n: n.name)],
            "links": [dict(vars(link)) for link in sorted(self.links.values(), key=lambda x: x.key)],
        }

    @classmethod
    def from_json(cls, data: dict, source: str = "<memory>") -> Ledger:
        if not isinstance(data, dict) or data.get("format") != FORMAT_VERSION:
            found = data.get("format") if isinstance(data, dict) else type(data).__name__
            raise LedgerError(f"{source}: unknown ledger format {found!r} (expected {FORMAT_VERSION})")
        try:
            namespaces = {n["name"]: OwnedNetns(**n) for n in data.get("namespaces", [])}
            links = {}
            for raw in data.get("links", []):
                link = OwnedLink(**raw)
                links[link.key] = link
        except (TypeError, KeyError) as e:
            raise LedgerError(f"{source}: malformed ledger entry: {e}") from None
        return cls(namespaces, links)


def load(path: str) -> Ledger:
    """The ledger at `path`; an empty one if the file does not exist yet."""
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except FileNotFoundError:
        return Ledger()
    except json.JSONDecodeError as e:
        raise LedgerError(
            f"{path}: not valid JSON ({e}); it records what nsproxy owns, so nothing was changed. "
            "Restore it from backup, or remove it to make nsproxy treat every existing object as foreign."
        ) from None
    except OSError as e:
        raise LedgerError(f"cannot read ledger {path}: {e.strerror}") from None
    return Ledger.from_json(data, path)


def _render(data: dict) -> str:
    """One entry per line: readable and diffable, and written by json's C encoder (indent= would
    switch to the pure-Python one, ~10x slower for thousands of entries)."""
    lines = [f'{{"format": {data["format"]},']
    for i, key in enumerate(("namespaces", "links")):
        entries = ",\n".join(f"  {json.dumps(e, sort_keys=True)}" for e in data[key])
        tail = "," if i == 0 else ""
        lines.append(f' "{key}": [\n{entries}\n ]{tail}' if entries else f' "{key}": []{tail}')
    return "\n".join(lines) + "}\n"


def save(ledger: Ledger, path: str) -> None:
    """Atomically replace the ledger file (tmp + fsync + rename + directory fsync)."""
    atomicfile.write_text(path, _render(ledger.to_json()), sync_directory=True)


def _holder(fd: int) -> str:
    try:
        text = os.pread(fd, 64, 0).decode(errors="replace").strip()
    except OSError:
        return ""
    return text if text.isdigit() else ""


@contextlib.contextmanager
def locked(lock_path: str, timeout: float, create: bool = True) -> Iterator[None]:
    """Hold the exclusive apply lock for the block; wait up to `timeout` seconds for it.

    The holder writes its pid into the lock file so a waiting run can say who it waited for.
    The lock is released by the kernel when the holder exits, even if it crashes. With
    create=False (read-only runs) a missing state directory is left alone: nothing is owned yet,
    so there is nothing to protect.
    """
    if not create and not os.path.isdir(os.path.dirname(lock_path) or "."):
        yield
        return
    os.makedirs(os.path.dirname(lock_path) or ".", mode=0o755, exist_ok=True)
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError as e:
                if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
                    raise
            if time.monotonic() >= deadline:
                pid = _holder(fd)
                who = f"process {pid}" if pid else "another process"
                raise LockTimeout(
                    f"another nsproxy apply is running ({who} holds {lock_path}); "
                    f"gave up after waiting {timeout:g} s (--lock-timeout)"
                )
            time.sleep(LOCK_POLL_INTERVAL)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        try:
            yield
        finally:
            os.ftruncate(fd, 0)
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)
