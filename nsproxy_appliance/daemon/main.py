"""nsproxyd: one process, one event loop, serving every tenant from inside its network namespace.

Lifecycle: load the runtime config (a bad one is a clear error and a non-zero exit), write the
pidfile, open the admin API, open every tenant's listeners (a tenant that cannot be served is
marked failed; the others serve), then wait for SIGHUP / POST /reload (diff and apply the re-read
config) or SIGTERM / SIGINT (stop accepting, drain, exit 0).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import re
import signal
import sys
import time
from collections.abc import Callable
from typing import Any

from .. import netns, procinfo, runtime_config
from ..runtime_config import RuntimeConfig
from . import listeners
from .context import TenantContext

log = logging.getLogger("nsproxyd")

DRAIN_POLL = 0.02  # seconds between checks whether draining connections are gone
EXIT_CONFIG = 1


class ConfigError(Exception):
    pass


def load_config(path: str) -> RuntimeConfig:
    """The runtime config at `path`, or ConfigError with a message naming the file and the problem."""
    try:
        return runtime_config.load(path)
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such file (write it with nsproxy-apply)") from None
    except json.JSONDecodeError as e:
        raise ConfigError(f"{path}:{e.lineno}:{e.colno}: invalid JSON: {e.msg}") from None
    except KeyError as e:
        raise ConfigError(f"{path}: missing field {e}") from None
    except TypeError as e:
        # e.g. "Limits.__init__() got an unexpected keyword argument 'x'" from a newer applier
        m = re.search(r"(\w+)\.__init__\(\) got an unexpected keyword argument '(\w+)'", str(e))
        detail = f"unknown field {m[2]!r} ({m[1]})" if m else str(e)
        raise ConfigError(f"{path}: {detail}") from None
    except (ValueError, OSError) as e:
        raise ConfigError(f"{path}: {e}") from None


class TenantSlot:
    """A served tenant: its context (kept across reloads), listeners and protocol factory."""

    __slots__ = ("ctx", "factory", "listeners")

    def __init__(self, ctx: TenantContext, factory: listeners.ProtocolFactory) -> None:
        self.ctx = ctx
        self.factory = factory
        self.listeners = listeners.TenantListeners()


def _default_factory_maker() -> Callable[[TenantContext], listeners.ProtocolFactory]:
    from .http import protocol_factory

    return protocol_factory


class Daemon:
    def __init__(
        self,
        config_path: str,
        config: RuntimeConfig,
        access_log: Callable[[dict[str, Any]], None] | None,
        factory_maker: Callable[[TenantContext], listeners.ProtocolFactory] | None = None,
    ) -> None:
        self.config_path = config_path
        self.config = config
        self.access_log = access_log
        self.factory_maker = factory_maker or _default_factory_maker()
        self.generation: str | None = None
        self.ready = False
        self.stopping = False
        self.slots: dict[str, TenantSlot] = {}
        self.draining: list[TenantContext] = []  # removed tenants whose connections are draining
        self.reloads: dict[str, int] = {"ok": 0, "error": 0}
        self.start_time = time.time()
        self._lock = asyncio.Lock()
        self._loop = asyncio.get_running_loop()

    # ---- applying a config -------------------------------------------------------------------

    async def _apply(self, config: RuntimeConfig) -> tuple[dict[str, Any], list[asyncio.Task[dict[str, int]]]]:
        """Make the served tenants match `config`; returns per-tenant outcomes and pending drains."""
        wanted = {t.name: t for t in config.tenants}
        outcome: dict[str, Any] = {}
        drains: list[asyncio.Task[dict[str, int]]] = []
        drain_timeout = config.daemon.drain_timeout

        for name in [n for n in self.slots if n not in wanted]:
            slot = self.slots.pop(name)
            slot.listeners.close()  # listening fds are closed now, before the namespace may go
            slot.ctx.state = "draining"
            self.draining.append(slot.ctx)
            drains.append(self._start_drain(slot.ctx, drain_timeout, removed=True))
            outcome[name] = {"action": "removed"}
            log.info("tenant %s removed: listeners closed, draining %d connections", name, len(slot.ctx.connections))

        for tenant in config.tenants:
            slot = self.slots.get(tenant.name)
            if slot is None:
                ctx = TenantContext(tenant=tenant, access_log=self.access_log)
                slot = TenantSlot(ctx, self.factory_maker(ctx))
                self.slots[tenant.name] = slot
                action = "added"
            else:
                action = "unchanged" if slot.ctx.tenant == tenant else "changed"
                slot.ctx.tenant = tenant  # new requests see the new upstream, header and limits
                if action == "unchanged" and slot.ctx.state == "serving" and self._intact(slot):
                    outcome[tenant.name] = {"action": "unchanged", "state": "serving", "error": None}
                    continue
            ctx = slot.ctx
            before = set(ctx.connections)
            try:
                ns_changed, error = await listeners.sync(self._loop, tenant, slot.listeners, slot.factory)
            except Exception as e:  # a bug must cost one tenant, not the daemon or the reload
                log.exception("tenant %s: unexpected error while opening listeners", tenant.name)
                ns_changed, error = False, f"internal error: {e!r}"
            if ns_changed and before:
                drains.append(self._start_drain(ctx, drain_timeout, removed=False, conns=before))
            if action == "unchanged" and (ctx.state == "failed" or ns_changed):
                action = "retried" if ctx.state == "failed" else "rebound"
            ctx.state = "failed" if error else "serving"
            ctx.last_error = error
            if error:
                log.warning("tenant %s failed: %s", tenant.name, error)
            outcome[tenant.name] = {"action": action, "state": ctx.state, "error": error}

        self.config = config
        self.generation = config.generation
        return outcome, drains

    def _intact(self, slot: TenantSlot) -> bool:
        """Unchanged tenant whose namespace still has the identity its listeners were made in."""
        try:
            ident = netns.identity(slot.ctx.tenant.netns.path)
        except OSError:
            return False
        return ident == slot.listeners.identity and slot.listeners.complete(slot.ctx.tenant)

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
                self.draining.remove(ctx)
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
            outcome, _ = await self._apply(self.config)
            self.ready = True
        failed = [name for name, o in outcome.items() if o.get("state") == "failed"]
        log.info(
            "serving generation %s: %d tenants, %d failed%s",
            self.generation,
            len(self.slots),
            len(failed),
            f" ({', '.join(failed)})" if failed else "",
        )
        return outcome

    async def reload(self, trigger: str) -> dict[str, Any]:
        """Re-read the config file and apply it; returns once removed tenants are drained."""
        async with self._lock:
            previous = self.generation
            try:
                config = load_config(self.config_path)
            except ConfigError as e:
                self.reloads["error"] += 1
                log.error("reload (%s) rejected, still serving generation %s: %s", trigger, previous, e)
                return {"ok": False, "error": str(e), "generation": previous}
            outcome, drains = await self._apply(config)
            self.reloads["ok"] += 1
        drained = await asyncio.gather(*drains)
        result = {
            "ok": True,
            "generation": self.generation,
            "previous_generation": previous,
            "tenants": outcome,
            "failed": sorted(n for n, o in outcome.items() if o.get("state") == "failed"),
            "drained": {
                "connections": sum(d["drained"] for d in drained),
                "aborted": sum(d["aborted"] for d in drained),
            },
        }
        changes = {n: o["action"] for n, o in outcome.items() if o["action"] != "unchanged"}
        log.info(
            "reload (%s): generation %s -> %s %s", trigger, previous, self.generation, changes or "(no tenant changes)"
        )
        return result

    async def shutdown(self) -> None:
        """Stop accepting everywhere, let in-flight requests finish (drain timeout), abort the rest."""
        self.stopping = True
        async with self._lock:
            drains = []
            for slot in self.slots.values():
                slot.listeners.close()
                slot.ctx.state = "draining"
                drains.append(self._start_drain(slot.ctx, self.config.daemon.drain_timeout, removed=True))
            total = sum(len(s.ctx.connections) for s in self.slots.values())
            log.info("shutting down: listeners closed, draining %d connections", total)
            drained = await asyncio.gather(*drains)
        aborted = sum(d["aborted"] for d in drained)
        log.info("drained: %d connections finished, %d aborted", sum(d["drained"] for d in drained), aborted)

    # ---- reports for the admin API -----------------------------------------------------------

    def contexts(self) -> list[TenantContext]:
        """Served tenants, then draining ones (skipped when re-added: one series per tenant label)."""
        out = [slot.ctx for slot in self.slots.values()]
        seen = set(self.slots)
        for ctx in self.draining:
            if ctx.tenant.name not in seen:
                seen.add(ctx.tenant.name)
                out.append(ctx)
        return out

    def readiness(self) -> dict[str, Any]:
        return {
            "ready": self.ready and not self.stopping,
            "generation": self.generation,
            "tenants": len(self.slots),
            "failed": sorted(name for name, slot in self.slots.items() if slot.ctx.state == "failed"),
            "draining": sorted(ctx.tenant.name for ctx in self.draining),
            "stopping": self.stopping,
        }

    def metrics_info(self) -> dict[str, Any]:
        return {
            "generation": self.generation or "",
            "reloads": self.reloads,
            "access_log_dropped": getattr(self.access_log, "dropped_lines", 0),
            "access_log_write_errors": getattr(self.access_log, "write_errors", 0),
            "start_time": self.start_time,
        }

    def tenants_json(self) -> bytes:
        """The /tenants document, encoded tenant by tenant (bounded peak memory with many tenants)."""
        reports = [(slot.ctx, slot.listeners) for slot in self.slots.values()]
        reports += [(ctx, None) for ctx in self.draining]
        body = b",\n".join(json.dumps(_tenant_report(ctx, lst)).encode() for ctx, lst in reports)
        return b'{"generation": %s, "tenants": [\n%s\n]}\n' % (json.dumps(self.generation).encode(), body)


def _tenant_report(ctx: TenantContext, lst: listeners.TenantListeners | None) -> dict[str, Any]:
    t = ctx.tenant
    ident = lst.identity if lst is not None else None
    c = ctx.counters
    return {
        "name": t.name,
        "tenant_id": t.tenant_id,
        "tenant_header": t.tenant_header,
        "state": ctx.state,
        "last_error": ctx.last_error,
        "netns": {
            "name": t.netns.name,
            "path": t.netns.path,
            "identity": {"dev": ident.dev, "ino": ident.ino} if ident else None,
        },
        "listeners": [
            {
                "address": str(listen),
                "listening": lst is not None and listen in lst.servers,
                "error": lst.errors.get(listen) if lst is not None else None,
            }
            for listen in t.listen
        ],
        "upstream": t.upstream.describe(),
        "counters": {
            "requests_by_class": dict(c.requests_by_class),
            "upstream_errors": dict(c.upstream_errors),
            "active_connections": c.active_connections,
            "accepted_connections": c.accepted_connections,
            "rejected_connections": c.rejected_connections,
            "bytes_in": c.bytes_in,
            "bytes_out": c.bytes_out,
            "requests": sum(c.requests_by_class.values()),
        },
    }


# ---- process -----------------------------------------------------------------------------------


def write_pidfile(path: str) -> None:
    """Write our pid; refuse when the file names another live nsproxyd."""
    try:
        with open(path) as f:
            other = int(f.read().strip() or 0)
    except (FileNotFoundError, ValueError):
        other = 0
    if other and other != os.getpid() and procinfo.nsproxyd_alive(other) is not False:
        # an unreadable live process counts: better to refuse than to start a second daemon
        raise ConfigError(f"nsproxyd is already running (pid {other}, pidfile {path})")
    os.makedirs(os.path.dirname(path) or ".", mode=0o755, exist_ok=True)
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w") as f:
        f.write(f"{os.getpid()}\n")
    os.replace(tmp, path)


def remove_pidfile(path: str) -> None:
    try:
        with open(path) as f:
            if f.read().strip() != str(os.getpid()):
                return
        os.unlink(path)
    except OSError:
        pass


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="nsproxyd", description="Serve every tenant's HTTP endpoint inside its netns.")
    p.add_argument("--config", default=runtime_config.Paths().config, help="runtime config JSON (from nsproxy-apply)")
    p.add_argument("--pidfile", help="write the pid here while running")
    p.add_argument("--log-file", help="append the daemon's own log here (default: stderr)")
    return p.parse_args(argv)


def _setup_logging(log_file: str | None) -> None:
    fmt = "%(asctime)s nsproxyd[%(process)d] %(levelname)s %(message)s"
    if log_file:
        os.makedirs(os.path.dirname(log_file) or ".", exist_ok=True)
        logging.basicConfig(filename=log_file, level=logging.INFO, format=fmt)
    else:
        logging.basicConfig(stream=sys.stderr, level=logging.INFO, format=fmt)


async def serve(
    args: argparse.Namespace,
    config: RuntimeConfig,
    factory_maker: Callable[[TenantContext], listeners.ProtocolFactory] | None = None,
) -> int:
    from .accesslog import AccessLog
    from .admin import AdminError, AdminServer

    loop = asyncio.get_running_loop()
    target = config.daemon.access_log
    try:
        access_log = None if target == "off" else AccessLog(target, loop)
    except OSError as e:
        log.error("cannot open the access log %s: %s", target, e.strerror or e)
        return EXIT_CONFIG
    daemon = Daemon(args.config, config, access_log, factory_maker)
    admin = AdminServer(daemon, config.admin_socket, config.daemon.admin_listen)
    try:
        await admin.start()
    except AdminError as e:
        log.error("%s", e)
        return EXIT_CONFIG

    stop = asyncio.Event()
    reloads: set[asyncio.Task[Any]] = set()

    def on_hup() -> None:
        if not daemon.stopping:
            task = loop.create_task(daemon.reload(trigger="SIGHUP"))
            reloads.add(task)
            task.add_done_callback(reloads.discard)

    loop.add_signal_handler(signal.SIGHUP, on_hup)
    if access_log is not None:
        loop.add_signal_handler(signal.SIGUSR1, access_log.reopen)
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    try:
        await daemon.start()
        await stop.wait()
        log.info("SIGTERM: stopping")
        await daemon.shutdown()
    finally:
        await admin.stop()
        if access_log is not None:
            access_log.close()
    return 0


def run(argv: list[str] | None = None, factory_maker=None) -> int:
    args = _parse_args(argv)
    _setup_logging(args.log_file)
    try:
        config = load_config(args.config)
        if args.pidfile:
            write_pidfile(args.pidfile)
    except ConfigError as e:
        sys.stderr.write(f"nsproxyd: error: {e}\n")
        if args.log_file:
            log.error("%s", e)
        return EXIT_CONFIG
    try:
        try:
            import uvloop
        except ImportError:
            return asyncio.run(serve(args, config, factory_maker))
        return uvloop.run(serve(args, config, factory_maker))
    finally:
        if args.pidfile:
            remove_pidfile(args.pidfile)


def main(argv: list[str] | None = None) -> None:
    sys.exit(run(argv))


if __name__ == "__main__":
    main()
