"""nsproxyd, the process: arguments, logging, process limits, pidfile, event loop and signals.

    nsproxyd --config /run/nsproxy/config.json [--pidfile P] [--log-file F] [--stdout-file F]
             [--broker /run/nsproxy/broker.sock] [--user nsproxy]

Privileges: none. The daemon never enters a namespace: its sockets come from the socket broker
(nsproxy-broker; brokered.py), checked one by one (fdcheck.py). Started as root with --user it
drops to that user before it opens anything and proves CapEff is 0 (privilege.py); without a
reachable broker a root daemon starts a private one (whose listeners die with it).
Under systemd (Type=notify) it reports READY=1 once every listener of the first generation is
bound, RELOADING=1 / READY=1 around reloads, STOPPING=1, and WATCHDOG=1 pings (sdnotify.py).

Lifecycle: load the runtime config (a bad one is a clear error and a non-zero exit), prepare the
process, write the pidfile, open the admin API, open every tenant's listeners (the Reconciler; a
tenant that cannot be served is marked failed, the others serve), follow the tenants' namespaces
(NamespaceWatcher: a deleted or replaced one is noticed and rebound without an apply), then wait
for SIGHUP / POST /reload (diff and apply the re-read config) or SIGTERM / SIGINT (stop accepting,
drain, exit 0). What the daemon holds is a DaemonState; the Reconciler changes it, reports.py reads it.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import signal
import sys
from typing import Any

from .. import runtime_config
from ..errors import NsproxyError
from ..paths import Paths
from ..runtime_config import RuntimeConfig
from ..sdnotify import Notifier
from ..versionarg import add_version
from . import brokerlink, daemonlog, pidfile, privilege
from .nswatch import NamespaceWatcher
from .reconciler import FactoryMaker, Reconciler
from .state import DaemonState

log = logging.getLogger("nsproxyd")

EXIT_CONFIG = 1


def prepare_process(config: RuntimeConfig) -> None:
    """Process-wide set-up before anything is opened: resource limits. Raise NsproxyError to refuse
    to start.

    Every tenant shares this process's file descriptors: raise the soft RLIMIT_NOFILE to the hard
    limit and size the fd budget the data plane admits connections against (fdbudget.py)."""
    from .fdbudget import DEFAULT, raise_nofile_limit

    soft, hard = raise_nofile_limit()
    DEFAULT.set_limit(soft)
    DEFAULT.set_listeners(sum(len(t.listen) for t in config.tenants))
    log.info("RLIMIT_NOFILE", extra=daemonlog.fields(soft=soft, hard=hard, budget=DEFAULT.describe()))


class NotifyingReconciler(Reconciler):
    """The Reconciler, telling systemd about reloads (RELOADING=1 ... READY=1)."""

    notifier: Notifier = Notifier({})

    async def reload(self, trigger: str) -> dict[str, Any]:
        self.notifier.reloading()
        try:
            return await super().reload(trigger)
        finally:  # the status line counts every tenant: only when systemd listens
            self.notifier.ready(brokerlink.status_line(self.state) if self.notifier.enabled else "")


class Server:
    """The running daemon: its state, reconciler and admin API, on one event loop."""

    def __init__(
        self,
        config_path: str,
        config: RuntimeConfig,
        factory_maker: FactoryMaker | None = None,
        loader: runtime_config.Loader | None = None,
    ) -> None:
        self.config_path = config_path
        self.config = config
        self.factory_maker = factory_maker
        self.loader = loader  # the one that read `config`
        self.broker = brokerlink.BrokerLink(config_path)  # where the daemon's sockets come from (run() sets it up)
        self.notifier = Notifier()

    async def serve(self) -> int:
        from .accesslog import AccessLog
        from .admin import AdminError, AdminServer, Routes

        loop = asyncio.get_running_loop()
        target = self.config.daemon.access_log
        try:
            access_log = None if target == "off" else AccessLog(target, loop)
        except OSError as e:
            log.error("cannot open the access log %s: %s", target, e.strerror or e)
            return EXIT_CONFIG
        state = DaemonState(self.config, access_log)
        if not await self.broker.connect(state):
            return EXIT_CONFIG
        reconciler = NotifyingReconciler(state, self.config_path, access_log, self.factory_maker, self.loader)
        reconciler.notifier = self.notifier
        admin = AdminServer(Routes(state, reconciler), self.config.admin_socket, self.config.daemon.admin_listen)
        try:
            await admin.start()
        except AdminError as e:
            log.error("%s", e)
            return EXIT_CONFIG

        stop = asyncio.Event()
        reloads: set[asyncio.Task[Any]] = set()

        def on_hup() -> None:
            if not state.stopping:
                task = loop.create_task(reconciler.reload(trigger="SIGHUP"))
                reloads.add(task)
                task.add_done_callback(reloads.discard)

        def on_usr1() -> None:
            # After logrotate renamed them (deploy/logrotate/nsproxy): write to files by those names
            # again, the daemon log and standard output first, as the access log may be stdout.
            failed = daemonlog.reopen()
            if access_log is not None:
                access_log.reopen()
            if failed:
                log.warning("cannot reopen log files", extra=daemonlog.fields(failed=failed))
            else:
                log.info("log files reopened", extra=daemonlog.fields(signal="SIGUSR1"))

        loop.add_signal_handler(signal.SIGHUP, on_hup)
        loop.add_signal_handler(signal.SIGUSR1, on_usr1)
        stopped_by: list[str] = []

        def on_stop(name: str) -> None:
            stopped_by.append(name)
            stop.set()

        loop.add_signal_handler(signal.SIGTERM, on_stop, "SIGTERM")
        loop.add_signal_handler(signal.SIGINT, on_stop, "SIGINT")
        watcher = NamespaceWatcher(state, reconciler.refresh)
        watchdog = brokerlink.start_watchdog(self.notifier)
        try:
            await reconciler.start()
            # What start-up built (configs, tenants, listeners) lives as long as the process: move it
            # out of the cyclic GC's reach, so collections scan only what requests allocate.
            gc.freeze()
            watcher.start()
            self.notifier.ready(brokerlink.status_line(state))  # the first generation's listeners are bound (or failed)
            await stop.wait()
            self.notifier.stopping()
            log.info("stopping", extra=daemonlog.fields(signal=stopped_by[0]))
            await watcher.stop()
            await reconciler.shutdown()
        finally:
            if watchdog is not None:
                watchdog.cancel()
            await watcher.stop()
            await admin.stop()
            self.broker.close()
            if access_log is not None:
                access_log.close()
        return 0


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="nsproxyd", description="Serve every tenant's HTTP endpoint inside its netns.")
    add_version(p)
    p.add_argument("--config", default=Paths().config, help="runtime config JSON (from nsproxy-apply)")
    p.add_argument("--pidfile", help="write the pid here while running")
    p.add_argument(
        "--log-file",
        metavar="FILE",
        help="standard error, so the daemon's own log, goes to FILE (appended; reopened on SIGUSR1)",
    )
    p.add_argument(
        "--stdout-file",
        metavar="FILE",
        help="standard output, so an access_log of stdout, goes to FILE (appended; reopened on SIGUSR1)",
    )
    p.add_argument(
        "--broker",
        metavar="SOCKET",
        help="the socket broker (nsproxy-broker) to get sockets from; default: broker.sock next to --config, "
        "or, for a root daemon when none answers there, a private broker that lives as long as the daemon",
    )
    p.add_argument("--user", metavar="USER", help="started as root: drop to USER (no capabilities) before serving")
    return p.parse_args(argv)


def run(argv: list[str] | None = None, factory_maker: FactoryMaker | None = None) -> int:
    args = _parse_args(argv)
    try:
        daemonlog.setup(args.log_file, args.stdout_file)
    except OSError as e:
        sys.stderr.write(f"nsproxyd: error: cannot open {e.filename}: {e.strerror or e}\n")
        return EXIT_CONFIG
    try:
        loader = runtime_config.Loader(args.config)  # kept: reloads reuse what did not change
        config = loader.load()
        daemonlog.use_format(config.daemon.log_format)
        prepare_process(config)
        link = brokerlink.BrokerLink(args.config, args.broker)
        link.prepare()  # a private broker is started here, while the daemon may still
        log.info("privileges: %s", privilege.drop(args.user).describe())
        if args.pidfile:
            pidfile.write(args.pidfile)
    except NsproxyError as e:
        if args.log_file:  # standard error is the log file
            log.error("not started: %s", e)
        else:
            sys.stderr.write(f"nsproxyd: error: {e}\n")
        return EXIT_CONFIG
    server = Server(args.config, config, factory_maker, loader)
    server.broker = link
    try:
        try:
            import uvloop
        except ImportError:
            return asyncio.run(server.serve())
        return uvloop.run(server.serve())
    finally:
        if args.pidfile:
            pidfile.remove(args.pidfile)


def main(argv: list[str] | None = None) -> None:
    sys.exit(run(argv))


if __name__ == "__main__":
    main()
