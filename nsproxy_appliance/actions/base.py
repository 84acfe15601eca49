"""What every action kind shares: its phase, its sign in the diff, how it is planned and executed.

An action is a frozen dataclass carrying only its own fields. Its class says which `op` it is
(the JSON wire name), its `phase` (1 converge, 2 daemon, 3 prune) and its `sign` (+ add, ~ change,
- destroy). The Executor (apply.py) calls `execute(ctx)` and records the outcome in the RunResult;
an action never changes the Plan. Actions that create or delete an owned object also
`prepare(ctx)` an intent, which the Executor saves in the ledger before the change is made.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from enum import IntEnum, StrEnum
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

if TYPE_CHECKING:
    from ..kernel.observed import NetnsState
    from ..kernel.rtnl import LinkChannel
    from ..kernel.session import Kernel
    from ..ledger import Intent, Ledger
    from ..model import Tenant


class Phase(IntEnum):
    CONVERGE = 1  # create and converge namespaces, lo, links, addresses
    DAEMON = 2  # write the runtime config and hand it to the daemon
    PRUNE = 3  # remove what nsproxy owns and the manifest no longer wants


class Sign(StrEnum):
    ADD = "+"
    CHANGE = "~"
    DESTROY = "-"


class Op(StrEnum):
    """The actions' names on the wire (JSON `op`, text output)."""

    CREATE_NETNS = "create_netns"
    SET_LO_UP = "set_lo_up"
    ADD_LINK = "add_link"
    SET_LINK_UP = "set_link_up"
    SET_LINK_MTU = "set_link_mtu"
    ADD_ADDRESS = "add_address"
    REMOVE_ADDRESS = "remove_address"
    DELETE_LINK = "delete_link"
    DELETE_NETNS = "delete_netns"
    UPDATE_DAEMON_CONFIG = "update_daemon_config"


class Status(StrEnum):
    PENDING = "pending"  # --check: not run
    DONE = "done"
    FAILED = "failed"
    SKIPPED = "skipped"


DAEMON_TENANT = ""  # update_daemon_config belongs to no single tenant


@dataclass(frozen=True, kw_only=True)
class Action:
    op: ClassVar[Op]
    phase: ClassVar[Phase]
    sign: ClassVar[Sign]

    tenant: str
    target: str  # what it acts on, for people: "acme", "acme/lo", "acme/nsp0"
    detail: str = ""

    def to_json(self, status: Status, error: str | None) -> dict[str, Any]:
        return {
            "tenant": self.tenant,
            "op": self.op.value,
            "target": self.target,
            "detail": self.detail,
            "status": status.value,
            "error": error,
        }


class ExecContext(Protocol):
    """What an action may use while it runs (apply.Executor provides it)."""

    kernel: Kernel
    ledger: Ledger

    def channel(self, netns_path: str) -> LinkChannel:
        """The channel into the namespace at `netns_path` (also one made earlier in this run)."""
        ...

    def link_index(self, netns_path: str, link: str, planned: int | None) -> int:
        """The link's ifindex: the planned one, or the one it got when this run created it."""
        ...

    def created_link(self, netns_path: str, link: str, ifindex: int) -> None: ...

    def next_ifindex(self, netns_path: str) -> int:
        """An ifindex no link in that namespace has (nor one reserved earlier in this run)."""
        ...

    def keep(self, action: KernelAction, value: Any) -> None:
        """Hold what prepare() made (a new namespace, the ifindex asked for) until execute()."""
        ...

    def kept(self, action: KernelAction) -> Any: ...


@dataclass(frozen=True, kw_only=True)
class KernelAction(Action):
    """An action on kernel objects inside one namespace."""

    netns_path: str

    def prepare(self, ctx: ExecContext) -> Intent | None:
        """Record-before-change: the intent the ledger must hold durably before execute(); None
        for changes that create or delete nothing nsproxy owns."""
        return None

    def abandon(self, ctx: ExecContext, intent: Intent, started: bool) -> None:
        """execute() will not run (started False) or failed (True): settle or keep the intent.

        Not started: nothing changed, the intent is settled. Failed: the change may have half
        happened, so the intent stays pending and the next run resolves it by identity.
        """
        if not started:
            ctx.ledger.settle(intent)

    def execute(self, ctx: ExecContext) -> None:
        raise NotImplementedError


# -- planning ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Conflict:
    tenant: str
    target: str
    reason: str

    def to_json(self) -> dict[str, str]:
        return {"tenant": self.tenant, "target": self.target, "reason": self.reason}

    def __str__(self) -> str:
        return f"{self.tenant}: {self.target}: {self.reason}"


@dataclass(frozen=True)
class Problem:
    tenant: str  # "" when it concerns the whole run
    message: str

    def __str__(self) -> str:
        return f"{self.tenant}: {self.message}" if self.tenant else self.message


@dataclass
class TenantScope:
    """One tenant being planned: what a kind needs to plan its objects, and where it puts them."""

    tenant: Tenant
    ns: NetnsState
    ledger: Ledger
    fresh: bool = False  # its namespace is created in this run: nothing in it yet
    converge: list[KernelAction] = field(default_factory=list)  # phase 1
    prune: list[KernelAction] = field(default_factory=list)  # phase 3 (e.g. extra addresses)
    conflict: Conflict | None = None  # set: the tenant is skipped and not served
    problem: Problem | None = None  # set: likewise
    unmanaged: Conflict | None = None  # set: nothing of it is touched, but it is still served

    @property
    def label(self) -> str:
        return self.tenant.netns.describe()

    @property
    def skipped(self) -> bool:
        return self.conflict is not None or self.problem is not None or self.unmanaged is not None


@dataclass
class PruneScope:
    """The run-wide view a kind's pruning needs."""

    ledger: Ledger
    netns_at: Callable[[str], NetnsState]
    wanted_paths: set[str]  # every namespace path the manifest uses
    untouchable: set[str]  # namespaces of skipped tenants: nothing in them is touched
    force: bool
    leaving: set[str] = field(default_factory=set)  # owned namespaces deleted (or kept) as a whole
    actions: list[KernelAction] = field(default_factory=list)
    errors: list[Problem] = field(default_factory=list)
    stale_netns: list[str] = field(default_factory=list)  # ledger entries whose object is gone
    stale_links: list[tuple[str, str]] = field(default_factory=list)


class Kind(Protocol):
    """One kind of kernel object: how it is planned per tenant, pruned, and shown in --diff."""

    name: str

    def plan_tenant(self, scope: TenantScope) -> None: ...
    def plan_prune(self, scope: PruneScope, tenants: tuple[Tenant, ...]) -> None: ...
    def view_observed(self, tenant: Tenant, ns: NetnsState) -> dict[str, Any]: ...
    def view_desired(self, tenant: Tenant) -> dict[str, Any]: ...
