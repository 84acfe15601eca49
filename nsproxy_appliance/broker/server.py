"""nsproxy-broker: makes sockets inside tenants' namespaces for the unprivileged daemon, and keeps
the listening ones so that a restarted daemon gets the very same sockets back.

    nsproxy-broker [--runtime-dir /run/nsproxy] [--daemon-user nsproxy] [--hold SEC] [--pidfile P]

One thread, one selector; every request is answered in order, at once (making a socket takes
microseconds). Peers are authenticated with SO_PEERCRED: root and the daemon's user only. What may
be made is what the root-owned runtime config says (registry.py). Requests (protocol.py):

    hello     {version}                      -> {version, pid, generation}
    listen    {tenant, listen: [k], backlog} -> {identity, sockets: [{listen, fd, error}]} + fds
              the tenant's listening sockets at those configured addresses: the ones it holds
              (made in the namespace now at the tenant's path), else new ones, which it keeps
    upstream  {netns, family, count}         -> {identity, count} + fds: unconnected TCP sockets
              made in a namespace of a `from: tenant` upstream (never kept)
    release   {tenant, listen: [k] | null}   -> {released}: the daemon closed those listeners for
              good (tenant or address removed, namespace gone): close them here too
    adopt     {sockets: [{tenant, listen}]} + fds -> {adopted, refused}: a broker (re)started while
              the daemon serves takes the daemon's listening sockets into its keeping, after the
              same checks the daemon makes (listening TCP, bound address, namespace cookie)
    release_all {}                            -> {released}: `nsproxy stop`: close everything held
    status    {}                              -> {held: [...], clients, generation}

Held sockets go when the namespace at the tenant's path is no longer the one they were made in, when
the config no longer has that tenant or address, and when no daemon has been connected for --hold
seconds (after `systemctl stop nsproxyd` clients are then refused instead of queued forever).
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import logging
import os
import pwd
import selectors
import signal
import socket
import sys
import time
from dataclasses import dataclass
from typing import Any

from .. import netns, procinfo
from ..errors import NsproxyError
from ..identity import NetnsIdentity
from ..paths import DEFAULT_RUNTIME_DIR
from ..sdnotify import Notifier
from ..versionarg import add_version
from . import making, protocol
from .registry import Registry

log = logging.getLogger("nsproxy-broker")

DEFAULT_HOLD = 10.0  # seconds held listeners outlive the last daemon connection
TICK = 1.0  # seconds between housekeeping rounds (stale namespaces, config changes, hold, watchdog)
# held sockets checked per round: with 10,000 tenants a stat of every namespace each second took a
# tenth of a core (and the daemon's start-up waited on it); each is still checked every 10 s
SWEEP_BATCH = 1000
MAX_UPSTREAM_BATCH = 16
SEND_TIMEOUT = 5.0  # a daemon that does not read its replies for this long is disconnected
EXIT_ERROR = 1


@dataclass
class Held:
    """A listening socket the broker made (or adopted) and keeps."""

    tenant: str
    listen: str
    identity: NetnsIdentity
    sock: socket.socket

    def describe(self) -> dict[str, Any]:
        return {"tenant": self.tenant, "listen": self.listen, "identity": self.identity.to_json()}


@dataclass
class Client:
    sock: socket.socket
    pid: int
    uid: int


class RequestError(Exception):
    """A request the broker refuses; the message goes back to the peer."""

    def __init__(self, message: str, *, unavailable: bool = False) -> None:
        super().__init__(message)
        self.unavailable = unavailable


def _socket_inode(sock: socket.socket) -> int:
    return os.fstat(sock.fileno()).st_ino


class Broker:
    def __init__(
        self,
        registry: Registry,
        *,
        allowed_uids: frozenset[int],
        hold: float = DEFAULT_HOLD,
        notifier: Notifier | None = None,
    ) -> None:
        self.registry = registry
        self.allowed_uids = allowed_uids
        self.hold = hold
        self.notifier = notifier or Notifier({})
        self.held: dict[tuple[str, str], Held] = {}
        # tenant -> its listen keys in `held`: releasing or forgetting one tenant must not scan the
        # listeners of all (10,000 tenants: a scan per tenant made start-up quadratic)
        self._held_keys: dict[str, set[str]] = {}
        self._sweep: list[tuple[str, str]] = []  # held sockets the current housekeeping sweep has yet to check
        self.clients: dict[int, Client] = {}
        self.selector = selectors.DefaultSelector()
        self.listening: socket.socket | None = None
        self.alone_since: float | None = time.monotonic()  # no daemon connected since then
        self.private = False  # serving one pre-connected daemon: exit when it goes
        self.stopping = False

    # ---- connections ---------------------------------------------------------------------------

    def listen_on(self, path: str, *, shared: bool) -> None:
        """Bind the broker's socket at `path` (a live broker there is an error; a stale file goes)."""
        _remove_stale(path)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
        # Reachable by the daemon's user when there is one (the runtime dir restricts who gets this
        # far, SO_PEERCRED decides); root only otherwise. Never more open, even for a moment.
        old = os.umask(0o111 if shared else 0o177)
        try:
            sock.bind(path)
        finally:
            os.umask(old)
        sock.listen(16)
        sock.setblocking(False)
        self.listening = sock
        self.selector.register(sock, selectors.EVENT_READ, self._accept)

    def serve_connected(self, sock: socket.socket) -> None:
        """Serve one already connected peer (a private broker of one daemon) and exit when it goes."""
        self.private = True
        self._add_client(sock)

    def _accept(self, _: socket.socket) -> None:
        try:
            sock, _addr = self.listening.accept()  # type: ignore[union-attr]  # registered only once listening
        except (BlockingIOError, InterruptedError):
            return
        except OSError as e:
            log.warning("accept: %s", e.strerror or e)
            return
        self._add_client(sock)

    def _add_client(self, sock: socket.socket) -> None:
        pid, uid, _gid = protocol.peer_credentials(sock)
        if uid not in self.allowed_uids:
            log.warning("refused a connection from pid %d (uid %d): not root or the daemon's user", pid, uid)
            sock.close()
            return
        sock.setblocking(True)
        sock.settimeout(SEND_TIMEOUT)
        self.clients[sock.fileno()] = Client(sock, pid, uid)
        self.alone_since = None
        self.selector.register(sock, selectors.EVENT_READ, self._readable)

    def _drop_client(self, client: Client) -> None:
        with contextlib.suppress(KeyError, ValueError):
            self.selector.unregister(client.sock)
        self.clients.pop(client.sock.fileno(), None)
        client.sock.close()
        if not self.clients:
            self.alone_since = time.monotonic()
            if self.private:
                self.stopping = True

    def _readable(self, sock: socket.socket) -> None:
        client = self.clients.get(sock.fileno())
        if client is None:
            return
        try:
            got = protocol.receive(sock)
        except protocol.ProtocolError as e:
            log.warning("pid %d sent an unreadable message (%s): disconnected", client.pid, e)
            self._drop_client(client)
            return
        except (BlockingIOError, InterruptedError, TimeoutError):
            return
        except OSError:
            got = None
        if got is None:
            self._drop_client(client)
            return
        message, fds = got
        reply, out, transient = self.handle(message, fds)
        try:
            protocol.send(sock, reply, [s.fileno() for s in out])
        except (OSError, protocol.ProtocolError) as e:
            log.warning("cannot answer pid %d (%s): disconnected", client.pid, e)
            self._drop_client(client)
        finally:
            if transient:  # sent (the peer has its own fds now) or never sent: not ours to keep
                for s in out:
                    s.close()

    # ---- requests ------------------------------------------------------------------------------

    def handle(self, message: dict[str, Any], fds: list[int]) -> tuple[dict[str, Any], list[socket.socket], bool]:
        """The reply to one request, the sockets whose fds go with it, and whether those are closed
        once sent (upstream sockets) or kept (held listeners)."""
        rid = message.get("id")
        op = message.get("op")
        handler = {
            "hello": self._hello,
            "listen": self._listen,
            "upstream": self._upstream,
            "release": self._release,
            "adopt": self._adopt,
            "release_all": self._release_all,
            "status": self._status,
        }.get(op if isinstance(op, str) else "")
        try:
            if handler is None:
                raise RequestError(f"unknown operation {op!r}")
            if op != "adopt" and fds:
                raise RequestError(f"{op} takes no fds")
            self.registry.refresh()
            reply, out = handler(message, fds)
        except RequestError as e:
            protocol.close_fds(fds)
            return {"id": rid, "ok": False, "error": str(e), "unavailable": e.unavailable}, [], False
        except Exception as e:  # a bug must cost one request, never the broker
            protocol.close_fds(fds)
            log.exception("request %s failed", op)
            return {"id": rid, "ok": False, "error": f"internal error: {e!r}", "unavailable": False}, [], False
        return {"id": rid, "ok": True, **reply}, out, op == "upstream"

    def _hello(self, message: dict[str, Any], _: list[int]) -> tuple[dict[str, Any], list[socket.socket]]:
        version = message.get("version")
        if version != protocol.VERSION:
            raise RequestError(f"protocol version {version!r} not supported (this broker speaks {protocol.VERSION})")
        return {"version": protocol.VERSION, "pid": os.getpid(), "generation": self.registry.generation}, []

    def _tenant(self, message: dict[str, Any]) -> Any:
        name = message.get("tenant")
        tenant = self.registry.tenant(name) if isinstance(name, str) else None
        if tenant is None:
            why = f" ({self.registry.error})" if self.registry.error else ""
            raise RequestError(f"tenant {name!r} is not in the runtime config{why}")
        return tenant

    def _listen(self, message: dict[str, Any], _: list[int]) -> tuple[dict[str, Any], list[socket.socket]]:
        tenant = self._tenant(message)
        keys = message.get("listen")
        backlog = message.get("backlog", 1024)
        if not isinstance(keys, list) or not all(isinstance(k, str) for k in keys) or not isinstance(backlog, int):
            raise RequestError("listen needs a list of addresses and an integer backlog")
        configured = {str(listen): listen for listen in tenant.listen}
        for key in keys:
            if key not in configured:
                raise RequestError(f"{key} is not a listen address of tenant {tenant.name} in the runtime config")
        path = tenant.netns.path
        try:
            now = netns.identity(path)
        except OSError as e:
            self._forget_tenant(tenant.name)
            raise RequestError(f"cannot open network namespace {path}: {e.strerror or e}", unavailable=True) from None
        for key in keys:  # what is held from another namespace than the one there now is stale
            held = self.held.get((tenant.name, key))
            if held is not None and held.identity.inode != now.inode:
                self._close_held(held, "the namespace was replaced")
        missing = [key for key in keys if (tenant.name, key) not in self.held]
        made: dict[str, socket.socket]
        errors: dict[str, str]
        if keys and not missing:  # all held, made in the namespace there now: nothing to enter it for
            identity, made, errors = self.held[(tenant.name, keys[0])].identity, {}, {}
        else:
            to_make = [(key, configured[key].host, configured[key].port) for key in missing]
            try:
                identity, made, errors = making.listeners(path, to_make, backlog)
            except OSError as e:
                raise RequestError(str(e), unavailable=True) from None
            if identity.inode != now.inode:  # replaced between the stat and the entering: try again later
                for sock in made.values():
                    sock.close()
                raise RequestError(
                    f"network namespace {path} was replaced while its sockets were made", unavailable=True
                )
        for key, sock in made.items():
            self._hold(Held(tenant.name, key, identity, sock))
        out: list[socket.socket] = []
        sockets = []
        for key in keys:
            held = self.held.get((tenant.name, key))
            if held is None:
                sockets.append({"listen": key, "fd": None, "error": errors.get(key, "not made")})
                continue
            sockets.append({"listen": key, "fd": len(out), "error": None})
            out.append(held.sock)
        return {"identity": identity.to_json(), "sockets": sockets}, out

    def _upstream(self, message: dict[str, Any], _: list[int]) -> tuple[dict[str, Any], list[socket.socket]]:
        path = message.get("netns")
        family = message.get("family")
        count = message.get("count", 1)
        if not isinstance(path, str) or not self.registry.dials_upstream_from(path):
            raise RequestError(f"no tenant of the runtime config dials its upstream from namespace {path!r}")
        if family not in (socket.AF_INET, socket.AF_INET6):
            raise RequestError(f"family {family!r} is not AF_INET or AF_INET6")
        if not isinstance(count, int) or not 1 <= count <= MAX_UPSTREAM_BATCH:
            raise RequestError(f"count must be 1..{MAX_UPSTREAM_BATCH}")
        try:
            identity, made = making.unconnected(path, family, count)
        except OSError as e:
            raise RequestError(str(e), unavailable=True) from None
        return {"identity": identity.to_json(), "count": len(made)}, made

    def _release(self, message: dict[str, Any], _: list[int]) -> tuple[dict[str, Any], list[socket.socket]]:
        name = message.get("tenant")
        keys = message.get("listen")
        if not isinstance(name, str) or not (keys is None or isinstance(keys, list)):
            raise RequestError("release needs a tenant and a list of addresses (or null: all)")
        held_keys = self._held_keys.get(name, set())
        gone = [self.held[(name, k)] for k in (held_keys if keys is None else held_keys.intersection(keys))]
        for held in gone:
            self._close_held(held, "released by the daemon")
        return {"released": len(gone)}, []

    def _release_all(self, _m: dict[str, Any], _f: list[int]) -> tuple[dict[str, Any], list[socket.socket]]:
        count = len(self.held)
        for held in list(self.held.values()):
            self._close_held(held, "all released")
        return {"released": count}, []

    def _adopt(self, message: dict[str, Any], fds: list[int]) -> tuple[dict[str, Any], list[socket.socket]]:
        claims = message.get("sockets")
        if not isinstance(claims, list) or len(claims) != len(fds):
            protocol.close_fds(fds)
            raise RequestError("adopt needs one {tenant, listen} per fd")
        adopted = 0
        refused: dict[str, str] = {}
        cookies: dict[str, NetnsIdentity] = {}
        for claim, fd in zip(claims, fds, strict=True):
            sock = socket.socket(fileno=fd)
            label = f"{claim.get('tenant')}/{claim.get('listen')}" if isinstance(claim, dict) else "?"
            try:
                held = self._check_adopted(claim, sock, cookies)
            except RequestError as e:
                sock.close()
                refused[label] = str(e)
                continue
            current = self.held.get((held.tenant, held.listen))
            if current is not None and _socket_inode(current.sock) == _socket_inode(sock):
                sock.close()  # the same socket: already held
                continue
            if current is not None:
                self._close_held(current, "replaced by the daemon's")
            self._hold(held)
            adopted += 1
        if adopted or refused:
            log.info("adopted %d listening sockets from the daemon (%d refused)", adopted, len(refused))
        return {"adopted": adopted, "refused": refused}, []

    def _check_adopted(self, claim: Any, sock: socket.socket, cookies: dict[str, NetnsIdentity]) -> Held:
        if not isinstance(claim, dict):
            raise RequestError("not a {tenant, listen} object")
        tenant = self._tenant(claim)
        key = claim.get("listen")
        configured = {str(listen): listen for listen in tenant.listen}
        if key not in configured:
            raise RequestError(f"{key} is not a listen address of tenant {tenant.name}")
        listen = configured[key]
        want_family = socket.AF_INET6 if listen.family == 6 else socket.AF_INET
        if sock.family != want_family or sock.type != socket.SOCK_STREAM:
            raise RequestError("not a TCP socket of the address's family")
        if not sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN):
            raise RequestError("not listening")
        host, port = sock.getsockname()[:2]
        if (host, port) != (listen.host, listen.port):
            raise RequestError(f"bound to {protocol.listen_key(host, port)}")
        identity = cookies.get(tenant.netns.path)
        if identity is None:  # the cookie of the namespace at the tenant's path now
            try:
                identity, _, _ = making.listeners(tenant.netns.path, [], 1)
            except OSError as e:
                raise RequestError(f"cannot enter network namespace {tenant.netns.path}: {e}") from None
            cookies[tenant.netns.path] = identity
        cookie = netns.cookie_of(sock)
        if cookie is None or cookie != identity.cookie:
            raise RequestError(f"made in another network namespace (cookie {cookie}, expected {identity.cookie})")
        return Held(tenant.name, key, identity, sock)

    def _status(self, _m: dict[str, Any], _f: list[int]) -> tuple[dict[str, Any], list[socket.socket]]:
        held = [h.describe() for h in self.held.values()]
        return {"held": held, "clients": len(self.clients), "generation": self.registry.generation}, []

    # ---- housekeeping --------------------------------------------------------------------------

    def _hold(self, held: Held) -> None:
        self.held[(held.tenant, held.listen)] = held
        self._held_keys.setdefault(held.tenant, set()).add(held.listen)

    def _close_held(self, held: Held, why: str) -> None:
        if self.held.get((held.tenant, held.listen)) is held:
            del self.held[(held.tenant, held.listen)]
            keys = self._held_keys.get(held.tenant)
            if keys is not None:
                keys.discard(held.listen)
                if not keys:
                    del self._held_keys[held.tenant]
        held.sock.close()
        log.info("closed %s of tenant %s: %s", held.listen, held.tenant, why)

    def _forget_tenant(self, name: str) -> None:
        for key in list(self._held_keys.get(name, ())):
            self._close_held(self.held[(name, key)], "its namespace is unavailable")

    def housekeeping(self) -> None:
        """Close held sockets that nobody can use any more (an open socket pins its namespace)."""
        self.registry.refresh()
        identities: dict[str, NetnsIdentity | None] = {}
        if not self._sweep:
            self._sweep = list(self.held)
        batch, self._sweep = self._sweep[-SWEEP_BATCH:], self._sweep[:-SWEEP_BATCH]
        for key in batch:
            held = self.held.get(key)
            if held is None:
                continue
            tenant = self.registry.tenant(held.tenant)
            if tenant is None or held.listen not in self.registry.listen_keys(held.tenant):
                self._close_held(held, "no longer in the runtime config")
                continue
            path = tenant.netns.path
            if path not in identities:
                try:  # a stale mount point file (namespace deleted) has another inode: no mount check needed
                    identities[path] = netns.identity(path)
                except OSError:
                    identities[path] = None
            now = identities[path]
            if now is None or now.inode != held.identity.inode:
                self._close_held(held, "its namespace is gone or was replaced")
        if self.held and self.alone_since is not None and time.monotonic() - self.alone_since > self.hold:
            log.info("no daemon for %.0f s: closing the %d listening sockets held", self.hold, len(self.held))
            for held in list(self.held.values()):
                self._close_held(held, "no daemon came back")

    # ---- the loop ------------------------------------------------------------------------------

    def run(self) -> int:
        def stop(signum: int, _frame: Any) -> None:
            self.stopping = True

        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)
        signal.signal(signal.SIGHUP, lambda *_: self.registry.refresh())
        self.registry.refresh()
        self.notifier.ready(f"serving generation {self.registry.generation}")
        next_tick = time.monotonic()
        watchdog = self.notifier.watchdog_interval
        try:
            while not self.stopping:
                timeout = max(0.0, next_tick - time.monotonic())
                for key, _ in self.selector.select(min(timeout, watchdog or timeout)):
                    key.data(key.fileobj)
                if watchdog is not None:
                    self.notifier.watchdog()
                if time.monotonic() >= next_tick:
                    self.housekeeping()
                    next_tick = time.monotonic() + TICK
        finally:
            self.notifier.stopping()
            self.close()
        return 0

    def close(self) -> None:
        for client in list(self.clients.values()):
            self._drop_client(client)
        for held in list(self.held.values()):
            held.sock.close()
        self.held.clear()
        self._held_keys.clear()
        if self.listening is not None:
            path = self.listening.getsockname()
            self.selector.unregister(self.listening)
            self.listening.close()
            self.listening = None
            if isinstance(path, str) and path:
                with contextlib.suppress(OSError):
                    os.unlink(path)


def _remove_stale(path: str) -> None:
    """Unlink a socket file a dead broker left; refuse when a live one answers there."""
    if not os.path.lexists(path):
        return
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    try:
        probe.settimeout(1.0)
        probe.connect(path)
    except OSError as e:
        if e.errno not in (errno.ECONNREFUSED, errno.ENOENT, errno.ENOTSOCK, errno.EPROTOTYPE):
            raise NsproxyError(f"broker socket {path}: {e.strerror or e}") from None
        os.unlink(path)
    else:
        raise NsproxyError(f"broker socket {path} is in use: another nsproxy-broker is running")
    finally:
        probe.close()


# ---- the process ------------------------------------------------------------------------------


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="nsproxy-broker",
        description="Make sockets inside tenants' network namespaces for nsproxyd, and keep its listeners.",
    )
    p.add_argument(
        "--runtime-dir",
        default=os.environ.get("NSPROXY_RUNTIME_DIR", DEFAULT_RUNTIME_DIR),
        help="where config.json is read and broker.sock made (default: $NSPROXY_RUNTIME_DIR or %(default)s)",
    )
    p.add_argument("--config", metavar="FILE", help="the runtime config (default: <runtime-dir>/config.json)")
    p.add_argument("--daemon-user", metavar="USER", help="the user nsproxyd runs as (may connect, besides root)")
    p.add_argument("--hold", type=float, default=DEFAULT_HOLD, metavar="SEC", help="keep listeners this long "
                   "after the last daemon disconnected (%(default)g)")  # fmt: skip
    p.add_argument("--pidfile", help="write the pid here while running")
    p.add_argument("--log-file", metavar="FILE", help="append the log here (default: stderr)")
    p.add_argument("--fd", type=int, help=argparse.SUPPRESS)  # private broker: serve this connected socket
    add_version(p)
    return p.parse_args(argv)


def _allowed_uids(daemon_user: str | None) -> frozenset[int]:
    uids = {0, os.geteuid()}
    if daemon_user:
        try:
            uids.add(pwd.getpwnam(daemon_user).pw_uid if not daemon_user.isdigit() else int(daemon_user))
        except KeyError:
            raise NsproxyError(f"--daemon-user {daemon_user}: no such user") from None
    return frozenset(uids)


def run(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
    handler = logging.FileHandler(args.log_file) if args.log_file else logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s nsproxy-broker[%(process)d] %(levelname)s %(message)s"))
    # A private broker shares its daemon's log: only what goes wrong, so the daemon log stays the daemon's.
    logging.basicConfig(level=logging.WARNING if args.fd is not None else logging.INFO, handlers=[handler])
    from ..daemon import pidfile

    try:
        allowed = _allowed_uids(args.daemon_user)
        broker = Broker(
            Registry(args.config or os.path.join(args.runtime_dir, "config.json")),
            allowed_uids=allowed,
            hold=args.hold,
            notifier=Notifier(),
        )
        if args.fd is not None:
            broker.serve_connected(socket.socket(fileno=args.fd))
        else:
            os.makedirs(args.runtime_dir, mode=0o755, exist_ok=True)
            if args.pidfile:
                pidfile.write(args.pidfile, alive=procinfo.broker_alive, what="nsproxy-broker")
            broker.listen_on(os.path.join(args.runtime_dir, protocol.SOCKET_NAME), shared=len(allowed) > 1)
    except (NsproxyError, OSError) as e:
        log.error("not started: %s", e)
        return EXIT_ERROR
    log.info(
        "listening%s; peers allowed: uid %s",
        "" if broker.private else f" on {os.path.join(args.runtime_dir, protocol.SOCKET_NAME)}",
        ", ".join(str(u) for u in sorted(allowed)),
    )
    try:
        return broker.run()
    finally:
        if args.pidfile and args.fd is None:
            pidfile.remove(args.pidfile)


def main(argv: list[str] | None = None) -> None:
    sys.exit(run(argv))


if __name__ == "__main__":
    main()
