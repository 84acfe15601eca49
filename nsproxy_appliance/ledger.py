"""What nsproxy owns: the namespaces and links it created, recorded with their identities.

The ledger is a JSON file (paths.ledger) written atomically (temp file, fsync, rename, fsync of
the directory), so a crash leaves either the old or the new version. Every run that reads or
changes it holds an exclusive fcntl lock on paths.lock; a second run waits up to a deadline and
then fails naming the holder.

Identity guards against name reuse: a namespace recorded as (name, st_dev, st_ino, cookie) is ours
only while /run/netns/<name> still has that identity; a link only while it has the recorded
ifindex in a namespace with the recorded identity. After a reboot every identity is gone, so
entries are stale and the applier recreates what the manifest wants.

Crash safety: before the applier creates or deletes an owned object it records an *intent* (what,
where, and the identity the object has or will have) and saves the ledger durably; once done, the
intent is settled and the object owned or disowned. A run killed in between leaves the intent on
disk, and the next run resolves it by identity (resolve()): a namespace or link that matches a
pending creation is adopted, one whose pending deletion happened is forgotten, and anything else
is dropped. So nsproxy never mistakes its own objects for foreign ones, and never loses track of one.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import orjson

from . import atomicfile
from .errors import LedgerError, LockTimeout, StateFileError
from .identity import NetnsIdentity
from .kernel.observed import NetnsState
from .model import NetnsRef

__all__ = ["Intent", "IntentOp", "Ledger", "LedgerError", "LockTimeout", "OwnedLink", "OwnedNetns"]

FORMAT_VERSION = 1
LOCK_POLL_INTERVAL = 0.05


@dataclass
class OwnedNetns:
    name: str
    dev: int
    ino: int
    tenant: str
    cookie: int | None = None  # SO_NETNS_COOKIE: inode numbers are reused, cookies are not

    @property
    def identity(self) -> NetnsIdentity:
        return NetnsIdentity(self.dev, self.ino, self.cookie)


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
        return NetnsIdentity(self.netns_dev, self.netns_ino, self.netns_cookie)


class IntentOp(StrEnum):
    CREATE_NETNS = "create_netns"
    DELETE_NETNS = "delete_netns"
    ADD_LINK = "add_link"
    DELETE_LINK = "delete_link"


@dataclass
class Intent:
    """A kernel change about to be made to an owned object, recorded before it is made."""

    op: IntentOp
    tenant: str
    netns_path: str  # the namespace created/deleted, or the one the link is in
    dev: int  # that namespace's identity (known before a creation: see netns.unshared)
    ino: int
    cookie: int | None = None
    link: str | None = None  # link intents: name, kind and the ifindex asked of the kernel
    kind: str | None = None
    ifindex: int | None = None

    @property
    def netns_identity(self) -> NetnsIdentity:
        return NetnsIdentity(self.dev, self.ino, self.cookie)

    def describe(self) -> str:
        where = NetnsRef.label_of(self.netns_path)
        what = f"network namespace {where}" if self.link is None else f"link {where}/{self.link}"
        return f"{self.op.value.replace('_', ' ')} {what} (tenant {self.tenant})"

    def to_json(self) -> dict[str, Any]:
        out = {k: v for k, v in vars(self).items() if v is not None}
        out["op"] = self.op.value
        return out

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> Intent:
        return cls(**{**raw, "op": IntentOp(raw["op"])})


@dataclass
class Ledger:
    namespaces: dict[str, OwnedNetns] = field(default_factory=dict)  # by netns name
    links: dict[tuple[str, str], OwnedLink] = field(default_factory=dict)  # by (netns path, link name)
    pending: list[Intent] = field(default_factory=list)  # changes begun by a run, not yet settled
    revision: int = field(default=0, compare=False)  # bumped by every change: "does it need saving?"

    # -- changes (the applier calls these as actions succeed) ------------------------------------

    def own_netns(self, name: str, identity: NetnsIdentity, tenant: str, cookie: int | None = None) -> None:
        cookie = identity.cookie if cookie is None else cookie
        self.revision += 1
        self.namespaces[name] = OwnedNetns(name, identity.dev, identity.ino, tenant, cookie)
        path = NetnsRef.named(name).path  # links recorded in an earlier namespace of that name died with it
        current = identity.with_cookie(cookie)
        for key, link in list(self.links.items()):
            if key[0] == path and link.netns_identity != current:
                del self.links[key]

    def disown_netns(self, name: str) -> None:
        self.revision += 1
        entry = self.namespaces.pop(name, None)
        if entry is not None:
            path = NetnsRef.named(name).path
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
        cookie = identity.cookie if cookie is None else cookie
        self.revision += 1
        entry = OwnedLink(netns_path, identity.dev, identity.ino, name, kind, ifindex, tenant, cookie)
        self.links[(netns_path, name)] = entry

    def disown_link(self, netns_path: str, name: str) -> None:
        self.revision += 1
        self.links.pop((netns_path, name), None)

    # -- intents (crash safety) --------------------------------------------------------------------

    def intend(self, intent: Intent) -> Intent:
        self.revision += 1
        self.pending.append(intent)
        return intent

    def settle(self, intent: Intent) -> None:
        """The change of `intent` happened (and is recorded), or did not happen at all: forget it."""
        with contextlib.suppress(ValueError):
            self.pending.remove(intent)
            self.revision += 1

    def resolve(self, netns_at: Callable[[str], NetnsState]) -> list[str]:
        """Settle the intents of an interrupted run by what the kernel shows; say what was done.

        `netns_at(path)` is the observed namespace at a path (observe.py looks at every path of a
        pending intent). A created object that matches its intent's identity is adopted; a deleted
        one that is gone is forgotten; everything else changes nothing.
        """
        notes: list[str] = []
        for intent in list(self.pending):
            ns = netns_at(intent.netns_path)
            seen_identity = ns.full_identity if ns.exists else None
            here = intent.netns_identity.same(seen_identity)
            name = NetnsRef.name_at(intent.netns_path) or ""
            if intent.op is IntentOp.CREATE_NETNS and seen_identity is not None and here:
                self.own_netns(name, seen_identity, intent.tenant)
                notes.append(f"adopted network namespace {name}: created by an interrupted run")
            elif intent.op is IntentOp.DELETE_NETNS and not here:
                if name in self.namespaces and self.namespaces[name].identity.same(intent.netns_identity):
                    self.disown_netns(name)
                    notes.append(f"forgot network namespace {name}: deleted by an interrupted run")
            elif intent.op is IntentOp.ADD_LINK and here and intent.link and intent.ifindex is not None:
                seen = ns.links.get(intent.link)
                if seen is not None and seen.ifindex == intent.ifindex:
                    self.own_link(
                        intent.netns_path,
                        intent.netns_identity,
                        intent.link,
                        intent.kind or "",
                        seen.ifindex,
                        intent.tenant,
                    )
                    notes.append(
                        f"adopted link {NetnsRef.label_of(intent.netns_path)}/{intent.link}: "
                        "created by an interrupted run"
                    )
            elif intent.op is IntentOp.DELETE_LINK and intent.link:
                owned = self.links.get((intent.netns_path, intent.link))
                seen = ns.links.get(intent.link) if here else None
                if owned is not None and (seen is None or seen.ifindex != owned.ifindex):
                    self.disown_link(intent.netns_path, intent.link)
                    notes.append(
                        f"forgot link {NetnsRef.label_of(intent.netns_path)}/{intent.link}: "
                        "deleted by an interrupted run"
                    )
            self.settle(intent)
        return notes

    def pending_paths(self) -> list[str]:
        return [intent.netns_path for intent in self.pending]

    # -- queries -------------------------------------------------------------------------------

    def owns_netns(self, name: str, identity: NetnsIdentity | None, cookie: int | None = None) -> bool:
        entry = self.namespaces.get(name)
        if entry is None or identity is None:
            return False
        return entry.identity.same(identity if cookie is None else identity.with_cookie(cookie))

    def owned_link(self, netns_path: str, name: str) -> OwnedLink | None:
        return self.links.get((netns_path, name))

    # -- serialisation -------------------------------------------------------------------------

    def to_json(self) -> dict[str, Any]:
        return {
            "format": FORMAT_VERSION,
            # vars(), not asdict(): the records are flat, and asdict's deep copy shows at 1000 tenants
            "namespaces": [dict(vars(n)) for n in sorted(self.namespaces.values(), key=lambda n: n.name)],
            "links": [dict(vars(link)) for link in sorted(self.links.values(), key=lambda x: x.key)],
            "pending": [intent.to_json() for intent in self.pending],
        }

    @classmethod
    def from_json(cls, data: Any, source: str = "<memory>") -> Ledger:
        if not isinstance(data, dict) or data.get("format") != FORMAT_VERSION:
            found = data.get("format") if isinstance(data, dict) else type(data).__name__
            raise LedgerError(f"{source}: unknown ledger format {found!r} (expected {FORMAT_VERSION})")
        try:
            namespaces = {n["name"]: OwnedNetns(**n) for n in data.get("namespaces", [])}
            links = {}
            for raw in data.get("links", []):
                link = OwnedLink(**raw)
                links[link.key] = link
            pending = [Intent.from_json(raw) for raw in data.get("pending", [])]
        except (TypeError, KeyError, ValueError) as e:
            raise LedgerError(f"{source}: malformed ledger entry: {e}") from None
        return cls(namespaces, links, pending)


def load(path: str) -> Ledger:
    """The ledger at `path`; an empty one if the file does not exist yet."""
    try:
        with open(path, "rb") as f:
            # orjson: json raised RecursionError and UnicodeDecodeError (tracebacks) for some damage
            data = orjson.loads(f.read())
    except FileNotFoundError:
        return Ledger()
    except orjson.JSONDecodeError as e:
        raise LedgerError(
            f"{path}: not valid JSON ({e}); it records what nsproxy owns, so nothing was changed. "
            "Restore it from backup, or remove it to make nsproxy treat every existing object as foreign."
        ) from None
    except OSError as e:
        raise LedgerError(f"cannot read ledger {path}: {e.strerror}") from None
    return Ledger.from_json(data, path)


def _render(data: dict[str, Any]) -> str:
    """One entry per line: readable and diffable, and written by json's C encoder (indent= would
    switch to the pure-Python one, ~10x slower for thousands of entries)."""
    lines = [f'{{"format": {data["format"]},']
    keys = ("namespaces", "links", "pending")
    for i, key in enumerate(keys):
        entries = ",\n".join(f"  {json.dumps(e, sort_keys=True)}" for e in data[key])
        tail = "," if i < len(keys) - 1 else ""
        lines.append(f' "{key}": [\n{entries}\n ]{tail}' if entries else f' "{key}": []{tail}')
    return "\n".join(lines) + "}\n"


def save(ledger: Ledger, path: str) -> None:
    """Atomically replace the ledger file (tmp + fsync + rename + directory fsync).

    Raises StateFileError naming the file and the step (e.g. `write: No space left on device`).
    """
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

    The holder writes its pid into the lock file so a waiting run can say who it waited for (best
    effort: on a full disk the lock still works without it). The lock is released by the kernel
    when the holder exits, even if it crashes. With create=False (read-only runs) a missing state
    directory is left alone: nothing is owned yet, so there is nothing to protect.
    """
    directory = os.path.dirname(lock_path) or "."
    if not create and not os.path.isdir(directory):
        yield
        return
    atomicfile.ensure_dir(directory)
    try:
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    except OSError as e:
        raise StateFileError(lock_path, "open", e) from None
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError as e:
                if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
                    raise StateFileError(lock_path, "lock", e) from None
            if time.monotonic() >= deadline:
                pid = _holder(fd)
                who = f"process {pid}" if pid else "another process"
                raise LockTimeout(
                    f"another nsproxy apply is running ({who} holds {lock_path}); "
                    f"gave up after waiting {timeout:g} s (--lock-timeout)"
                )
            time.sleep(LOCK_POLL_INTERVAL)
        with contextlib.suppress(OSError):
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        try:
            yield
        finally:
            with contextlib.suppress(OSError):
                os.ftruncate(fd, 0)
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)
