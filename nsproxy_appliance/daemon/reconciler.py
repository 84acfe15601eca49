"""Make the served tenants match a runtime config: start, reload (diff), drain, shut down.

The only code that opens or closes tenants' listeners (through listeners.sync, inside each
tenant's namespace) and drains their connections. One reconciliation at a time (a lock): a reload
from SIGHUP, from POST /reload and the namespace watcher's rebinds never interleave.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections.abc import Callable, Iterable
from typing import Any

from .. import netns, runtime_config
from ..errors import RuntimeConfigError
from ..model import Listen, Tenant
from ..runtime_config import RuntimeConfig
from . import daemonlog, listeners
from .context import AccessLog, TenantContext
from .fdbudget import DEFAULT as budget
from .state import DaemonState, TenantSlot, TenantState

log = logging.getLogger("nsproxyd")
fields = daemonlog.fields  # structured fields of a log record (key=value in text, keys in JSON)

DRAIN_POLL = 0.02  # seconds between checks whether draining connections are gone
BIND_CONCURRENCY = 64  # tenants whose listeners are asked of the broker at once (start-up, big reloads)

# protocol_factory's signature: a tenant's context and one of its listeners -> that listener's factory
FactoryMaker = Callable[[TenantContext, Listen], listeners.ProtocolFactory]


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
        self, config: RuntimeConfig, *, changes: tuple[list[Tenant], list[Tenant]] | None = None
    ) -> tuple[dict[str, Any], int, list[asyncio.Task[dict[str, int]]]]:
        """Make the served tenants match `config`: (outcomes of the tenants that were not simply left
        as they were, how many were, pending drains).

        `changes`, when given, are the Loader's (changed, removed) tenants since the config served
        now: only those are looked at, and every other tenant — its config line unchanged, so its
        very object — is left as it is, its namespace followed by the namespace watcher. That keeps a
        reload that changes one tenant of 10,000 in milliseconds. Without it (the start, and a reload
        of the same generation: the applier asking for a repair) every tenant is checked, its
        namespace included, and failed ones are retried.
        """
        state = self.state
        outcome: dict[str, Any] = {}
        drains: list[asyncio.Task[dict[str, int]]] = []
        drain_timeout = config.daemon.drain_timeout
        if changes is None:
            wanted = {t.name for t in config.tenants}
            gone_names = [n for n in state.slots if n not in wanted]
            visit: Iterable[Tenant] = config.tenants
            listeners_now = sum(len(t.listen) for t in config.tenants)
        else:
            changed, removed = changes
            still = {t.name for t in changed}
            gone_names = [t.name for t in removed if t.name not in still and t.name in state.slots]
            visit = changed
            listeners_now = budget.listeners + sum(len(t.listen) for t in changed) - sum(len(t.listen) for t in removed)

        for name in gone_names:
            gone = state.slots.pop(name)
            gone.listeners.close()  # listening fds are closed now, before the namespace may go
            gone.ctx.state = TenantState.DRAINING
            state.draining.append(gone.ctx)
            drains.append(self._start_drain(gone.ctx, drain_timeout, removed=True))
            outcome[name] = {"action": "removed"}
            log.info("tenant removed", extra=fields(tenant=name, draining=len(gone.ctx.connections)))

        jobs: list[tuple[TenantSlot, Tenant, str]] = []
        for tenant in visit:
            slot = state.slots.get(tenant.name)
            if slot is None:
                ctx = TenantContext(tenant=tenant, access_log=self.access_log)
                slot = TenantSlot(ctx, functools.partial(self.factory_maker, ctx))
                state.slots[tenant.name] = slot
                action = "added"
            else:
                action = "unchanged" if slot.ctx.tenant == tenant else "changed"
                slot.ctx.tenant = tenant  # new requests see the new upstream, header and limits
                if action == "unchanged" and slot.ctx.state == TenantState.SERVING and self._intact(slot):
                    continue
            jobs.append((slot, tenant, action))
        # Several tenants' sockets are asked of the broker at once: one at a time, each a round
        # trip between two processes, made start-up at 10,000 tenants take tens of seconds.
        for start in range(0, len(jobs), BIND_CONCURRENCY):
            window = jobs[start : start + BIND_CONCURRENCY]
            done = await asyncio.gather(
                *(self._bind(slot, t, action, drain_timeout, drains) for slot, t, action in window)
            )
            for (_, tenant, _), result in zip(window, done, strict=True):
                outcome[tenant.name] = result

        state.config = config
        state.generation = config.generation
        # The listeners' fds are reserved from the fd budget the data plane admits connections against.
        budget.set_listeners(listeners_now)
        unchanged = len(config.tenants) - sum(1 for o in outcome.values() if o.get("action") != "removed")
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
            log.warning("tenant failed", extra=fields(tenant=tenant.name, error=error))
        return {"action": action, "state": str(ctx.state), "error": error}

    def _intact(self, slot: TenantSlot) -> bool:
        """Unchanged tenant whose namespace still has the identity its listeners were made in (and
        whose TLS listeners' files did not change: a SIGHUP after replacing them loads them)."""
        try:
            ident = netns.identity(slot.ctx.tenant.netns.path)
        except OSError:
            return False
        made_in = slot.listeners.identity
        return (
            made_in is not None
            and ident.same(made_in)
            and slot.listeners.complete(slot.ctx.tenant)
            and not slot.listeners.tls_files_changed()
        )

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
            log.warning("drain timeout", extra=fields(tenant=ctx.tenant.name, aborted=len(left)))
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
            "serving", extra=fields(generation=self.state.generation, tenants=len(self.state.slots), failed=failed)
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
                log.error("reload rejected", extra=fields(trigger=trigger, generation=previous, error=str(e)))
                return {"ok": False, "error": str(e), "generation": previous}
            daemonlog.use_format(config.daemon.log_format)  # this reload's summary is already in the new one
            loader = self._loader
            fast = config.generation != previous and loader.incremental
            outcome, unchanged, drains = await self._apply(
                config, changes=(loader.changed, loader.removed) if fast else None
            )
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
        log.info("reload", extra=fields(**_reload_summary(trigger, result)))
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
                    namespace = ident.describe() if ident is not None else None
                    log.info(
                        "tenant state",
                        extra=fields(tenant=name, state=after[0], previous_state=before[0], namespace=namespace),
                    )
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
                slot.listeners.close(release=False)  # the broker keeps them: the next daemon gets them back
                slot.ctx.state = TenantState.DRAINING
                drains.append(self._start_drain(slot.ctx, state.config.daemon.drain_timeout, removed=True))
            total = sum(len(s.ctx.connections) for s in state.slots.values())
            log.info("shutting down", extra=fields(draining=total))
            drained = await asyncio.gather(*drains)
        finished = sum(d["drained"] for d in drained)
        log.info("drained", extra=fields(connections=finished, aborted=sum(d["aborted"] for d in drained)))


RELOAD_ACTIONS = ("added", "changed", "removed", "retried", "rebound")  # what a reload does to a tenant


def _reload_summary(trigger: str, result: dict[str, Any]) -> dict[str, Any]:
    """The reload's log fields: tenants by what happened to them, the counts, the drain."""
    by_action: dict[str, list[str]] = {action: [] for action in RELOAD_ACTIONS}
    unchanged = result["unchanged"]
    for name, outcome in result["tenants"].items():
        if outcome["action"] in by_action:
            by_action[outcome["action"]].append(name)
        else:
            unchanged += 1
    return {
        "trigger": trigger,
        "generation": result["generation"],
        "previous_generation": result["previous_generation"],
        **{action: sorted(names) for action, names in by_action.items()},
        "failed": result["failed"],
        "unchanged": unchanged,
        "drained": result["drained"],
    }
