"""Make the served tenants match a runtime config: start, reload (diff), drain, shut down.

The only code that opens or closes tenants' listeners (through listeners.sync, inside each
tenant's namespace) and drains their connections. One reconciliation at a time (a lock): a reload
from SIGHUP, from POST /reload and the namespace watcher's rebinds never interleave.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Iterable
from typing import Any

from .. import netns, runtime_config
from ..errors import RuntimeConfigError
from ..model import Tenant
from ..runtime_config import RuntimeConfig
from . import listeners
from .context import AccessLog, TenantContext
from .fdbudget import DEFAULT as budget
from .state import DaemonState, TenantSlot, TenantState

log = logging.getLogger("nsproxyd")

DRAIN_POLL = 0.02  # seconds between checks whether draining connections are gone

FactoryMaker = Callable[[TenantContext], listeners.ProtocolFactory]


def default_factory_maker() -> FactoryMaker:
    from .http import protocol_factory  # the data plane, imported once serving starts

    return protocol_factory


class Reconciler:
    def __init__(
        self,
        state: DaemonState,
        config_path: str,
        access_log: AccessLog | None,
        factory_maker: FactoryMaker | None = None,
        loader: runtime_config.Loader | None = None,
    ) -> None:
        self.state = state
        self.config_path = config_path
        self.access_log = access_log
        self.factory_maker = factory_maker or default_factory_maker()
        self._loader = loader or runtime_config.Loader(config_path)
        self._lock = asyncio.Lock()
        self._loop = asyncio.get_running_loop()
        self._background: set[asyncio.Task[Any]] = set()  # drains nobody awaits (refresh)

    # ---- applying a config -------------------------------------------------------------------

    async def _apply(
        self, config: RuntimeConfig, *, trust_identical: bool = False
    ) -> tuple[dict[str, Any], int, list[asyncio.Task[dict[str, int]]]]:
        """Make the served tenants match `config`: (outcomes of the tenants that were not simply left
        as they were, how many were, pending drains).

        With `trust_identical`, a serving tenant whose config entry is the very object it already has
        (runtime_config.Loader reuses a tenant's object while its line is unchanged) is left alone
        without looking at its namespace: the namespace watcher follows those. That keeps a reload
        that changes one tenant of 10,000 in milliseconds. Without it (the start, and a reload of the
        same generation: the applier asking for a repair) every tenant's namespace is checked.
        """
        state = self.state
        wanted = {t.name: t for t in config.tenants}
        outcome: dict[str, Any] = {}
        unchanged = 0
        drains: list[asyncio.Task[dict[str, int]]] = []
        drain_timeout = config.daemon.drain_timeout

        for name in [n for n in state.slots if n not in wanted]:
            gone = state.slots.pop(name)
            gone.listeners.close()  # listening fds are closed now, before the namespace may go
            gone.ctx.state = TenantState.DRAINING
            state.draining.append(gone.ctx)
            drains.append(self._start_drain(gone.ctx, drain_timeout, removed=True))
            outcome[name] = {"action": "removed"}
            log.info("tenant %s removed: listeners closed, draining %d connections", name, len(gone.ctx.connections))

        for tenant in config.tenants:
            slot = state.slots.get(tenant.name)
            if slot is None:
                ctx = TenantContext(tenant=tenant, access_log=self.access_log)
                slot = TenantSlot(ctx, self.factory_maker(ctx))
                state.slots[tenant.name] = slot
                action = "added"
            else:
                serving = slot.ctx.state == TenantState.SERVING
                if trust_identical and serving and slot.ctx.tenant is tenant:
                    unchanged += 1
                    continue
                action = "unchanged" if slot.ctx.tenant == tenant else "changed"
                slot.ctx.tenant = tenant  # new requests see the new upstream, header and limits
                if action == "unchanged" and serving and self._intact(slot):
                    unchanged += 1
                    continue
            outcome[tenant.name] = await self._bind(slot, tenant, action, drain_timeout, drains)

        state.config = config
        state.generation = config.generation
        # The listeners' fds are reserved from the fd budget the data plane admits connections against.
        budget.set_listeners(sum(len(t.listen) for t in config.tenants))
        return outcome, unchanged, drains

    async def _bind(
        self, slot: TenantSlot, tenant: Tenant, action: str, drain_timeout: float, drains: list[asyncio.Task[Any]]
    ) -> dict[str, Any]:
        """(Re)open the tenant's listeners in its namespace; the outcome for the reload's answer."""
        ctx = slot.ctx
        before = set(ctx.connections)
        try:
            ns_changed, error = await listeners.sync(self._loop, tenant, slot.listeners, slot.factory)
        except Exception as e:  # a bug must cost one tenant, not the daemon or the reload
            log.exception("tenant %s: unexpected error while opening listeners", tenant.name)
            ns_changed, error = False, f"internal error: {e!r}"
        if ns_changed and before:
            drains.append(self._start_drain(ctx, drain_timeout, removed=False, conns=before))
        if action == "unchanged" and (ctx.state == TenantState.FAILED or ns_changed):
            action = "retried" if ctx.state == TenantState.FAILED else "rebound"
        ctx.state = TenantState.FAILED if error else TenantState.SERVING
        ctx.last_error = error
        if error:
            log.warning("tenant %s failed: %s", tenant.name, error)
        return {"action": action, "state": str(ctx.state), "error": error}

    def _intact(self, slot: TenantSlot) -> bool:
        """Unchanged tenant whose namespace still has the identity its listeners were made in."""
        try:
            ident = netns.identity(slot.ctx.tenant.netns.path)
        except OSError:
            return False
        made_in = slot.listeners.identity
        return made_in is not None and ident.same(made_in) and slot.listeners.complete(slot.ctx.tenant)

    def _start_drain(
        self, ctx: TenantContext, timeout: float, removed: bool, conns: set[Any] | None = None
    ) -> asyncio.Task[dict[str, int]]:
        """Begin draining now (not when someone awaits it): in-flight requests get the full timeout."""
        conns = set(ctx.connections) if conns is None else conns
        return self._loop.create_task(self._drain(ctx, conns, timeout, removed))

    async def _drain(self, ctx: TenantContext, conns: set[Any], timeout: float, removed: bool) -> dict[str, int]:
        """Let `conns` finish their in-flight requests, abort what is left after `timeout`."""
        for proto in conns:
            with contextlib.suppress(Exception):
                proto.begin_drain()
        deadline = self._loop.time() + timeout
        while self._loop.time() < deadline and any(p in ctx.connections for p in conns):
            await asyncio.sleep(DRAIN_POLL)
        left = [p for p in conns if p in ctx.connections]
        for proto in left:
            with contextlib.suppress(Exception):
                proto.abort()
        if removed:
            await self._close_pool(ctx)
            with contextlib.suppress(ValueError):
                self.state.draining.remove(ctx)
        if left:
            log.warning("tenant %s: %d connections aborted after the drain timeout", ctx.tenant.name, len(left))
        return {"drained": len(conns) - len(left), "aborted": len(left)}

    async def _close_pool(self, ctx: TenantContext) -> None:
        """Close a removed tenant's upstream connections (some live in its namespace)."""
        close = getattr(ctx.pool, "close", None)
        if close is None:
            return
        with contextlib.suppress(Exception):
            result = close()
            if asyncio.iscoroutine(result):
                await result

    # ---- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> dict[str, Any]:
        async with self._lock:
            outcome, _, _ = await self._apply(self.state.config)
            self.state.applied = True
        failed = [name for name, o in outcome.items() if o.get("state") == TenantState.FAILED]
        log.info(
            "serving generation %s: %d tenants, %d failed%s",
            self.state.generation,
            len(self.state.slots),
            len(failed),
            f" ({', '.join(failed)})" if failed else "",
        )
        return outcome

    async def reload(self, trigger: str) -> dict[str, Any]:
        """Re-read the config file and apply it; returns once removed tenants are drained."""
        state = self.state
        async with self._lock:
            previous = state.generation
            try:
                config = self._loader.load()
            except RuntimeConfigError as e:
                state.reloads["error"] += 1
                log.error("reload (%s) rejected, still serving generation %s: %s", trigger, previous, e)
                return {"ok": False, "error": str(e), "generation": previous}
            outcome, unchanged, drains = await self._apply(config, trust_identical=config.generation != previous)
            state.reloads["ok"] += 1
        drained = await asyncio.gather(*drains)
        result = {
            "ok": True,
            "generation": state.generation,
            "previous_generation": previous,
            "tenants": outcome,  # the tenants the reload did something to
            "unchanged": unchanged,  # and how many it left as they were
            "failed": sorted(n for n, o in outcome.items() if o.get("state") == TenantState.FAILED),
            "drained": {
                "connections": sum(d["drained"] for d in drained),
                "aborted": sum(d["aborted"] for d in drained),
            },
        }
        changes = {n: o["action"] for n, o in outcome.items() if o["action"] != "unchanged"}
        log.info(
            "reload (%s): generation %s -> %s %s", trigger, previous, state.generation, changes or "(no tenant changes)"
        )
        return result

    async def refresh(self, names: Iterable[str]) -> dict[str, Any]:
        """Check the tenants `names` against their namespaces now (the namespace watcher's call):
        release the sockets of a vanished one, rebind in a replaced or returned one."""
        state = self.state
        outcome: dict[str, Any] = {}
        async with self._lock:
            if state.stopping:
                return outcome
            drains: list[asyncio.Task[Any]] = []
            for name in names:
                slot = state.slots.get(name)
                if slot is None:
                    continue
                before = (str(slot.ctx.state), slot.listeners.identity)
                outcome[name] = await self._bind(
                    slot, slot.ctx.tenant, "unchanged", state.config.daemon.drain_timeout, drains
                )
                after = (str(slot.ctx.state), slot.listeners.identity)
                if after != before:
                    ident = slot.listeners.identity
                    where = f"namespace {ident.describe()}" if ident is not None else "no namespace"
                    log.info("tenant %s: %s -> %s (%s)", name, before[0], after[0], where)
            self._background.update(drains)
            for task in drains:
                task.add_done_callback(self._background.discard)
        return outcome

    async def shutdown(self) -> None:
        """Stop accepting everywhere, let in-flight requests finish (drain timeout), abort the rest."""
        state = self.state
        state.stopping = True
        async with self._lock:
            drains = []
            for slot in state.slots.values():
                slot.listeners.close()
                slot.ctx.state = TenantState.DRAINING
                drains.append(self._start_drain(slot.ctx, state.config.daemon.drain_timeout, removed=True))
            total = sum(len(s.ctx.connections) for s in state.slots.values())
            log.info("shutting down: listeners closed, draining %d connections", total)
            drained = await asyncio.gather(*drains)
        aborted = sum(d["aborted"] for d in drained)
        log.info("drained: %d connections finished, %d aborted", sum(d["drained"] for d in drained), aborted)
