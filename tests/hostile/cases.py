"""The Case type, its runner, and the helpers the corpus is written with.

A Case is one client connection's byte stream plus what the data-plane contract
(shared/briefs/dataplane-contract.md, summarised in docs/hostile-suite.md) says must happen:
the final statuses the client gets, how many requests the upstream completes, marker bytes that
must never reach the upstream (or the client), and extra checks of the forwarded heads.
`run_case` drives it against a Target (the in-process proxy or the real nsproxyd) and asserts
the invariants (invariants.py) AND the case's expectations.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from client import ABORTED, ClientResult, Segment, exchange
from invariants import Tenant, check_invariants
from recording_upstream import RecordingUpstream, Records, Responder
from strict_http import Message

# ---- building byte streams --------------------------------------------------------------------

MARK = b"m4rk3r"  # carried by every rejected request: must never reach the upstream
MARKH = "X-Marker: m4rk3r"
SMUGGLE = b"GET /smuggled HTTP/1.1\r\nHost: h\r\nX-Tenant-ID: victim\r\n\r\n"
SMUG = b"/smuggled"
VICTIM = b"victim"
HELLO_CHUNKED = b"5\r\nhello\r\n0\r\n\r\n"


def H(*lines: str | bytes, body: bytes = b"") -> bytes:
    """A head from its lines (CRLF-joined, CRLF CRLF-terminated), then `body`."""
    raw = [line.encode("latin-1") if isinstance(line, str) else line for line in lines]
    return b"\r\n".join(raw) + b"\r\n\r\n" + body


GET = H("GET / HTTP/1.1", "Host: h")


def post_cl(*extra: str | bytes, body: bytes, target: str = "/a") -> bytes:
    return H(f"POST {target} HTTP/1.1", "Host: h", *extra, f"Content-Length: {len(body)}", body=body)


def post_te(*te_lines: str | bytes, body: bytes = HELLO_CHUNKED, extra: Sequence[str | bytes] = ()) -> bytes:
    lines = [line if isinstance(line, bytes) else f"Transfer-Encoding: {line}" for line in te_lines]
    return H("POST /a HTTP/1.1", "Host: h", MARKH, *extra, *lines, body=body)


def S(*codes: int) -> frozenset[int]:
    return frozenset(codes)


# ---- the case ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Target:
    """Where a case runs: how a client connects, who listens upstream, which tenant it is."""

    name: str
    connect: Callable[[], socket.socket]
    upstream: RecordingUpstream
    tenant: Tenant
    port: int  # the listener's port (X-Forwarded-Port)
    client_ip: str  # the address the proxy sees the client at
    barrier: Callable[[], None] = lambda: None  # wait until the proxy processed what it received


@dataclass
class Outcome:
    case: Case
    client: ClientResult
    up: Records
    target: Target

    def only(self) -> Message:
        """The one request the upstream completed (asserts there was exactly one)."""
        done = self.up.complete
        assert len(done) == 1, f"expected exactly one forwarded request, got {len(done)}\n{self.up.describe()}"
        return done[0]

    def final(self, i: int = 0) -> Message:
        finals = self.client.finals
        assert len(finals) > i, self.client.describe()
        return finals[i]


Check = Callable[[Outcome], None]


@dataclass(frozen=True)
class Case:
    id: str
    send: tuple[Segment, ...]
    statuses: tuple[frozenset[int], ...] | None  # final statuses in order; ABORTED allows an early end; None: any
    upstream: frozenset[int] | None = None  # how many requests the upstream completes; None: any
    markers: tuple[bytes, ...] = ()  # never in the upstream's bytes
    client_markers: tuple[bytes, ...] = ()  # never in the client's bytes
    checks: tuple[Check, ...] = ()
    responder: Callable[[], Responder] | None = None
    methods: tuple[str, ...] = ()
    closes: bool = False  # the proxy closes the client connection after the last response
    allow_unanswered: int = 0
    allow_truncated: bool = False
    warm: bool = False  # first run one GET on another connection (an idle pooled upstream connection)
    half_close: bool = True
    timeout: float = 10.0
    family: str = field(default="", compare=False)

    def __str__(self) -> str:
        return self.id


def case(
    id: str,
    send: bytes | Sequence[Segment],
    statuses: Sequence[frozenset[int] | int] | None,
    upstream: int | frozenset[int] | None = None,
    *,
    checks: Check | Sequence[Check] = (),
    **kw,  # type: ignore[no-untyped-def]
) -> Case:
    segs = (send,) if isinstance(send, bytes) else tuple(send)
    sts = None if statuses is None else tuple(s if isinstance(s, frozenset) else S(s) for s in statuses)
    ups = S(upstream) if isinstance(upstream, int) else upstream
    chk = (checks,) if callable(checks) else tuple(checks)
    return Case(id=id, send=segs, statuses=sts, upstream=ups, checks=chk, family=id.split("/", 1)[0], **kw)


def rejected(id: str, send: bytes | Sequence[Segment], status: int | frozenset[int] = 400, **kw) -> Case:  # type: ignore[no-untyped-def]
    """The contract rejects it: that status, connection closed, nothing of it upstream."""
    kw.setdefault("markers", (MARK, SMUG))
    kw.setdefault("half_close", False)
    return case(id, send, [status], 0, closes=True, **kw)


def forwarded(id: str, send: bytes | Sequence[Segment], *checks: Check, n: int = 1, **kw) -> Case:  # type: ignore[no-untyped-def]
    """The contract forwards it: n x 200, the upstream completes n requests, then `checks`."""
    return case(id, send, [200] * n, n, checks=checks, **kw)


def either(id: str, send: bytes | Sequence[Segment], *checks: Check, **kw) -> Case:  # type: ignore[no-untyped-def]
    """RFC-valid, but llhttp (the contract's parser, R1) may refuse it: 400 and nothing completed
    upstream, or forwarded and then `checks` hold. Used where the contract's rules disagree."""

    def if_forwarded(o: Outcome) -> None:
        if o.client.statuses == [200]:
            for check in checks:
                check(o)
        else:
            assert not o.up.complete, f"rejected, yet the upstream completed it\n{o.up.describe()}"

    return case(id, send, [S(200, 400)], S(0, 1), checks=(if_forwarded,), **kw)


# ---- checks on the forwarded request ----------------------------------------------------------


def header_is(name: str, expected: list[str] | Callable[[Outcome], list[str]], *, fuzzy: bool = True) -> Check:
    """The forwarded request's values of `name` (fuzzy: '_' spellings too) are exactly `expected`."""

    def check(o: Outcome) -> None:
        want = expected(o) if callable(expected) else expected
        got = o.only().values(name, fuzzy=fuzzy)
        assert got == want, f"upstream {name}: {got!r}, expected {want!r}\n{o.up.describe()}"

    return check


def header_absent(*names: str) -> Check:
    def check(o: Outcome) -> None:
        for m in o.up.complete:
            for name in names:
                assert not m.values(name, fuzzy=True), f"upstream got {name}: {m.values(name, fuzzy=True)}\n{m}"

    return check


def body_is(expected: bytes) -> Check:
    def check(o: Outcome) -> None:
        assert o.only().body == expected, f"upstream body {o.only().body!r}, expected {expected!r}"

    return check


def no_trailers(o: Outcome) -> None:
    for m in o.up.complete:
        assert not m.trailers, f"trailers reached the upstream: {m.trailers}"


def raw_lacks(*pieces: bytes) -> Check:
    def check(o: Outcome) -> None:
        raw = o.up.all_raw()
        for piece in pieces:
            assert piece not in raw, f"{piece!r} reached the upstream: {raw[:400]!r}"

    return check


def upstream_heads(n: int) -> Check:
    def check(o: Outcome) -> None:
        assert len(o.up.requests) == n, f"upstream parsed {len(o.up.requests)} heads, expected {n}\n{o.up.describe()}"

    return check


def client_header_is(name: str, expected: list[str], i: int = 0) -> Check:
    def check(o: Outcome) -> None:
        got = o.final(i).values(name)
        assert got == expected, f"client {name}: {got!r}, expected {expected!r}\n{o.client.describe()}"

    return check


def client_body_is(expected: bytes, i: int = 0) -> Check:
    def check(o: Outcome) -> None:
        assert o.final(i).body == expected, f"client body {o.final(i).body!r}, expected {expected!r}"

    return check


def client_lacks_headers(*names: str) -> Check:
    def check(o: Outcome) -> None:
        for m in o.client.messages:
            for name in names:
                assert not m.values(name), f"client got hop-by-hop {name}: {m}"

    return check


def separate_upstream_connections(o: Outcome) -> None:
    """Each upstream request came on its own connection (the first one was never reused)."""
    conns = [s.conn for s in o.up.requests]
    assert len(set(conns)) == len(conns), f"an upstream connection was reused: {conns}\n{o.up.describe()}"


# ---- running a case ---------------------------------------------------------------------------


def statuses_match(got: Sequence[int], expected: Sequence[frozenset[int]]) -> bool:
    if len(got) > len(expected):
        return False
    for i, allowed in enumerate(expected):
        if i >= len(got):
            return ABORTED in allowed
        if got[i] not in allowed:
            return False
    return True


def _wait_closed(up: RecordingUpstream, conns: set[int], timeout: float = 5.0) -> set[int]:
    deadline = time.monotonic() + timeout
    while True:
        still = {c for c in conns if c in up.live}
        if not still or time.monotonic() > deadline:
            return still
        time.sleep(0.005)


def run_case(c: Case, target: Target) -> Outcome:
    up = target.upstream
    up.set_responder(c.responder() if c.responder is not None else Responder())
    leftover = up.take()
    assert not leftover.requests and not leftover.violations, f"before {c.id}: {leftover.describe()}"
    if c.warm:
        warm = exchange(target.connect, [GET], half_close=True)
        target.barrier()
        warm_rec = up.take()
        check_invariants(warm_rec, warm, target.tenant, what=f"{c.id} (warm-up)")
        assert warm.statuses == [200], warm.describe()
    result = exchange(target.connect, c.send, methods=c.methods, half_close=c.half_close, timeout=c.timeout)
    target.barrier()
    rec = up.take()
    outcome = Outcome(c, result, rec, target)
    what = f"case {c.id} via {target.name}"
    check_invariants(
        rec,
        result,
        target.tenant,
        markers=c.markers,
        allow_unanswered=c.allow_unanswered,
        allow_truncated=c.allow_truncated,
        what=what,
    )
    context = f"{what}\n{result.describe()}\n{rec.describe()}"
    if c.statuses is not None:
        want = [sorted(s) for s in c.statuses]
        assert statuses_match(result.statuses, c.statuses), f"statuses {result.statuses}, expected {want}\n{context}"
    if c.upstream is not None:
        assert len(rec.complete) in c.upstream, (
            f"upstream completed {len(rec.complete)} requests, expected {sorted(c.upstream)}\n{context}"
        )
    for marker in c.client_markers:
        assert marker not in result.raw, f"{marker!r} reached the client\n{context}"
    if c.closes:
        assert result.eof and not result.timed_out, f"the proxy did not close the connection\n{context}"
    # Contract 12: an upstream connection left with a half-sent request is aborted, never reused.
    partial = {s.conn for s in rec.requests if not s.message.complete and s.conn not in rec.closed}
    if partial:
        still = _wait_closed(up, partial)
        assert not still, f"upstream connections {still} kept a half-sent request open\n{context}"
    for check in c.checks:
        check(outcome)
    return outcome
