"""nsproxyd, the process: arguments, logging, process limits, pidfile, event loop and signals.

    nsproxyd --config /run/nsproxy/config.json [--pidfile P] [--log-file F]

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
import os
import signal
import sys
from typing import Any

from .. import runtime_config
from ..errors import NsproxyError
from ..paths import Paths
from ..runtime_config import RuntimeConfig
from ..versionarg import add_version
from . import pidfile
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
    log.info("RLIMIT_NOFILE %d (hard %d); %s", soft, hard, DEFAULT.describe())


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
        reconciler = Reconciler(state, self.config_path, access_log, self.factory_maker, self.loader)
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

        loop.add_signal_handler(signal.SIGHUP, on_hup)
        if access_log is not None:
            loop.add_signal_handler(signal.SIGUSR1, access_log.reopen)
        loop.add_signal_handler(signal.SIGTERM, stop.set)
        loop.add_signal_handler(signal.SIGINT, stop.set)
        watcher = NamespaceWatcher(state, reconciler.refresh)
        try:
            await reconciler.start()
            # What start-up built (configs, tenants, listeners) lives as long as the process: move it
            # out of the cyclic GC's reach, so collections scan only what requests allocate.
            gc.freeze()
            watcher.start()
            await stop.wait()
            log.info("SIGTERM: stopping")
            await watcher.stop()
            await reconciler.shutdown()
        finally:
            await watcher.stop()
            await admin.stop()
            if access_log is not None:
                access_log.close()
        return 0


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="nsproxyd", description="Serve every tenant's HTTP endpoint inside its netns.")
    add_version(p)
    p.add_argument("--config", default=Paths().config, help="runtime config JSON (from nsproxy-apply)")
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


def run(argv: list[str] | None = None, factory_maker: FactoryMaker | None = None) -> int:
    args = _parse_args(argv)
    _setup_logging(args.log_file)
    try:
        loader = runtime_config.Loader(args.config)  # kept: reloads reuse what did not change
        config = loader.load()
        prepare_process(config)
        if args.pidfile:
            pidfile.write(args.pidfile)
    except NsproxyError as e:
        sys.stderr.write(f"nsproxyd: error: {e}\n")
        if args.log_file:
            log.error("%s", e)
        return EXIT_CONFIG
    server = Server(args.config, config, factory_maker, loader)
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
