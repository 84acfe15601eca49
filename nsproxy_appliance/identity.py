"""What makes a network namespace unique, as one value used by applier, ledger, config and daemon.

(st_dev, st_ino) of the nsfs file names a namespace while it lives, but the kernel reuses inode
numbers of dead namespaces; the netns cookie (SO_NETNS_COOKIE, Linux 5.14+) is never reused while
the system runs. A cookie unknown on either side (older kernel, older ledger) is not held against
a match. Pure data: no kernel access here (netns.py reads identities).
"""

from __future__ import annotations

from typing import Any, NamedTuple


class NetnsIdentity(NamedTuple):
    dev: int
    ino: int
    cookie: int | None = None

    @property
    def inode(self) -> tuple[int, int]:
        """(dev, ino): what stat() of a path or of /proc/PID/ns/net shows."""
        return (self.dev, self.ino)

    def same(self, other: NetnsIdentity | None) -> bool:
        """The same namespace: same inode, and the same cookie where both are known."""
        if other is None or self.inode != other.inode:
            return False
        return self.cookie is None or other.cookie is None or self.cookie == other.cookie

    def with_cookie(self, cookie: int | None) -> NetnsIdentity:
        return self._replace(cookie=cookie)

    def to_json(self) -> dict[str, Any]:
        return {"dev": self.dev, "ino": self.ino, "cookie": self.cookie}

    @classmethod
    def from_json(cls, data: Any) -> NetnsIdentity | None:
        """From {"dev", "ino"[, "cookie"]}; None for anything else."""
        if not isinstance(data, dict):
            return None
        dev, ino, cookie = data.get("dev"), data.get("ino"), data.get("cookie")
        if not isinstance(dev, int) or not isinstance(ino, int):
            return None
        return cls(dev, ino, cookie if isinstance(cookie, int) else None)

    def __str__(self) -> str:
        return f"{self.dev}:{self.ino}"

    def describe(self) -> str:
        return str(self) + (f" (cookie {self.cookie})" if self.cookie is not None else "")
