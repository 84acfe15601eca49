"""A representative subset of the corpus through the REAL nsproxyd, clients inside tenant namespaces.

Two tenants in two named namespaces, both listening on 127.0.0.1:8080 inside their own netns:
- `rec` forwards to the RecordingUpstream (strict parser, invariants a-d, every case check);
- `echo` forwards to examples/echo_upstream.py's handler (Python's lenient http.server parser, the
  upstream the audit reproduced the holes against): what it parsed is recorded and held to the same
  invariants.
Every client socket is created inside the tenant's namespace.
"""

from __future__ import annotations

import contextlib
import dataclasses
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from cases import GET, Case, Target, run_case, statuses_match
from client import exchange
from corpus_requests import REQUEST_CASES
from corpus_responses import RESPONSE_CASES
from daemon_harness import connect_in, echo_module, tenant, write_config
from daemon_proc import Daemon, named_netns, running_daemon
from invariants import Tenant, tenant_values
from recording_upstream import RecordingUpstream, recording_upstream

from nsproxy_appliance.model import Limits
from nsproxy_appliance.runtime_config import Paths

pytestmark = pytest.mark.root

HEADER = "X-Tenant-ID"
PORT = 8080
LIMITS = Limits(header_timeout=2.0, idle_timeout=5.0, read_timeout=3.0, connect_timeout=2.0)

REAL_IDS = [
    # audit 1: Connection-nominated framing headers
    "conn/content-length",
    "conn/close-content-length",
    "conn/host",
    "conn/tenant-header",
    # audit 2: bytes after Upgrade / CONNECT
    "upgrade/websocket-refused-trailing-request",
    "upgrade/websocket-refused-trailing-request-pipelined",
    "upgrade/websocket-accepted-flushes-held-bytes",
    "upgrade/connect",
    "upgrade/connect-pipelined",
    # audit 3: unsolicited 101, h2c
    "resp/unsolicited-101",
    "upgrade/h2c",
    "upgrade/h2c-upstream-answers-101",
    # audit 4: Transfer-Encoding the proxy does not fully understand
    "te/unknown-then-chunked-pooled",
    "te/nbsp-before",
    "te/param",
    "te/xchunked",
    "te/vertical-tab",
    # audit 5: Forwarded, X-Forwarded-Port, X-Real-IP
    "managed/defaults",
    "managed/forwarded-appended",
    "managed/x-real-ip-underscore",
    # audit 6: GET/HEAD with a body, underscores
    "get-body/get-content-length",
    "cl/underscore",
    "te/underscore",
    # audit 7: response framing, valid TE, missing Host
    "resp/te-gzip-close-delimited-http11",
    "resp/close-delimited-http11",
    "te/htab-before",
    "reqline/http11-without-host",
    "reqline/http10-without-host",
    # the rest of the families
    "cl-te/classic",
    "te-cl/classic",
    "chunk/bad-size-after-head-forwarded",
    "chunk/trailer-tenant",
    "lines/obs-fold-tenant",
    "lines/bare-lf-everywhere",
    "pipeline/ten-good",
    "pipeline/bad-te-second",
    "tenant/three-spellings",
    "tenant/in-chunked-trailer",
    "resp/second-response-after-first",
    "resp/bad-chunk-size",
    "resp/early-response-before-body",
]

ECHO_IDS = [
    "conn/content-length",
    "conn/close-content-length",
    "conn/host",
    "upgrade/websocket-refused-trailing-request",
    "upgrade/h2c",
    "upgrade/connect",
    "te/unknown-then-chunked-pooled",
    "te/nbsp-before",
    "te/param",
    "cl-te/classic",
    "te-cl/classic",
    "get-body/get-content-length",
    "cl/underscore",
    "te/underscore",
    "lines/obs-fold-tenant",
    "pipeline/bad-te-second",
    "tenant/three-spellings",
    "cl/body-longer-than-length",
]

_ALL = {c.id: c for c in [*REQUEST_CASES, *RESPONSE_CASES]}


# ---- the echo upstream, recording what its parser saw -------------------------------------------


class RecordingEchoHandler(echo_module.EchoHandler):
    def _answer(self) -> None:
        self.server.seen.append((self.command, self.path, list(self.headers.items())))  # type: ignore[attr-defined]
        super()._answer()

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = do_OPTIONS = _answer

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        line = getattr(self, "raw_requestline", b"")[:80]
        self.server.errors.append(f"{code} {message}: {line!r}")  # type: ignore[attr-defined]
        super().send_error(code, message, explain)


@dataclasses.dataclass
class EchoServer:
    server: Any

    @property
    def port(self) -> int:
        return self.server.server_address[1]

    def take(self) -> tuple[list[Any], list[str]]:
        """What it parsed since the last take, once nothing new arrived for 100 ms."""
        last, stable_since = -1, time.monotonic()
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            n = len(self.server.seen) + len(self.server.errors)
            if n != last:
                last, stable_since = n, time.monotonic()
            elif time.monotonic() - stable_since > 0.1:
                break
            time.sleep(0.01)
        seen, errors = list(self.server.seen), list(self.server.errors)
        self.server.seen.clear()
        self.server.errors.clear()
        return seen, errors


@contextlib.contextmanager
def echo_server() -> Iterator[EchoServer]:
    server = echo_module.TCPServer(("127.0.0.1", 0), RecordingEchoHandler)
    server.seen, server.errors = [], []
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield EchoServer(server)
    finally:
        server.shutdown()
        server.server_close()


# ---- the daemon ---------------------------------------------------------------------------------


@dataclasses.dataclass
class Rig:
    daemon: Daemon
    rec: Target
    echo: EchoServer
    echo_ns: str
    echo_tenant: Tenant


@pytest.fixture(scope="module")
def rig(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rig]:
    base = tmp_path_factory.mktemp("hostile-daemon")
    paths = Paths(state_dir=str(base / "state"), runtime_dir=str(base / "run"))
    with (
        named_netns("rec") as (rec_ns, rec_path),
        named_netns("echo") as (echo_ns, echo_path),
        recording_upstream() as up,
        echo_server() as echo,
    ):
        tenants = [
            dataclasses.replace(
                tenant("rec", rec_ns, PORT, f"http://127.0.0.1:{up.port}", tenant_id="tenant-rec", header=HEADER),
                limits=LIMITS,
            ),
            dataclasses.replace(
                tenant("echo", echo_ns, PORT, f"http://127.0.0.1:{echo.port}", tenant_id="tenant-echo", header=HEADER),
                limits=LIMITS,
            ),
        ]
        generation = write_config(paths, tenants)
        with running_daemon(paths, generation) as daemon:
            yield Rig(
                daemon=daemon,
                rec=_target("nsproxyd", rec_path, up, Tenant(HEADER, "tenant-rec")),
                echo=echo,
                echo_ns=echo_path,
                echo_tenant=Tenant(HEADER, "tenant-echo"),
            )


def _target(name: str, ns_path: str, up: RecordingUpstream, t: Tenant) -> Target:
    return Target(
        name=name,
        connect=lambda: connect_in(ns_path, "127.0.0.1", PORT),
        upstream=up,
        tenant=t,
        port=PORT,
        client_ip="127.0.0.1",
    )


@pytest.mark.parametrize("c", [_ALL[i] for i in REAL_IDS], ids=str)
def test_corpus_through_nsproxyd(c: Case, rig: Rig) -> None:
    run_case(c, rig.rec)
    assert rig.daemon.alive()


@pytest.mark.parametrize("c", [_ALL[i] for i in ECHO_IDS], ids=str)
def test_corpus_against_echo_upstream(c: Case, rig: Rig) -> None:
    """The audit's reproduction setup: nsproxyd in front of examples/echo_upstream.py."""
    connect = lambda: connect_in(rig.echo_ns, "127.0.0.1", PORT)  # noqa: E731
    if c.warm:  # leave an idle pooled upstream connection behind
        assert exchange(connect, [GET]).statuses == [200]
    rig.echo.take()
    result = exchange(
        connect,
        c.send,
        methods=c.methods,
        half_close=c.half_close,
        timeout=c.timeout,
    )
    seen, errors = rig.echo.take()
    context = f"case {c.id} via nsproxyd -> echo_upstream\n{result.describe()}\necho saw: {seen}\nerrors: {errors}"
    # a) exactly one tenant header, its own id, on everything the echo upstream parsed
    for method, path, headers in seen:
        values = tenant_values(headers, HEADER)
        assert values == [rig.echo_tenant.tenant_id], f"invariant a: {method} {path} had {values}\n{context}"
    # b) it parsed no more than the client got answers for; c) it found nothing it could not parse
    assert len(seen) + len(errors) <= len(result.finals) + c.allow_unanswered, f"invariant b\n{context}"
    assert not errors, f"invariant c: echo_upstream could not parse what nsproxyd sent\n{context}"
    assert result.violation is None, f"invariant c (client side)\n{context}"
    # d) nothing of a rejected request reached it
    for marker in c.markers:
        text = marker.decode("latin-1")
        for _method, path, headers in seen:
            assert text not in path and all(text not in v for _, v in headers), f"invariant d: {marker!r}\n{context}"
    if c.statuses is not None:
        assert statuses_match(result.statuses, c.statuses), f"statuses\n{context}"
    if c.upstream is not None:
        assert len(seen) in c.upstream, f"echo_upstream answered {len(seen)} requests\n{context}"
