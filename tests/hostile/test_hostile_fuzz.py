"""Property-based fuzzing of request byte streams against the tenant-boundary invariants.

Each example is one real loopback connection to the in-process proxy (the session's `inproc`
target, reused across examples) whose upstream is the RecordingUpstream; the client half-closes
after its last write so nothing waits on a timeout. After each stream: invariants a-d, and no
forged `victim` value in any header or trailer the upstream parsed.

CI runs NSPROXY_FUZZ_STREAMS (default 300) streams; the soak (docs/hostile-suite.md):
    NSPROXY_FUZZ_STREAMS=100000 .venv/bin/pytest tests/hostile -k fuzz -s
With NSPROXY_FUZZ_COLLECT=1 a failing stream does not stop the run: failures are counted by kind
(one example each) and test_fuzz_report fails at the end with the list, so one soak shows every
distinct problem instead of the first.
"""

from __future__ import annotations

import os
import re

from cases import Target
from client import exchange
from fuzz_grammar import VICTIM, Stream, streams
from hypothesis import HealthCheck, given, settings
from invariants import check_invariants

STREAMS = int(os.environ.get("NSPROXY_FUZZ_STREAMS", "300"))
COLLECT = os.environ.get("NSPROXY_FUZZ_COLLECT") == "1"
counter: dict = {"streams": 0, "statuses": {}, "failures": {}}


@settings(
    max_examples=STREAMS,
    deadline=None,
    database=None,  # nothing written into the work tree
    suppress_health_check=list(HealthCheck),
    print_blob=True,
)
@given(stream=streams())
def test_fuzz_request_streams(inproc: Target, stream: Stream) -> None:
    counter["streams"] += 1
    if counter["streams"] % 10000 == 0:  # soak progress (visible with -s)
        print(f"fuzz: {counter['streams']} streams, {sum(n for n, _ in counter['failures'].values())} failing")
    try:
        _one_stream(inproc, stream)
    except AssertionError as exc:
        if not COLLECT:
            raise
        kind = re.sub(r"\d+", "N", str(exc).splitlines()[0])[:160]
        seen = counter["failures"].setdefault(kind, [0, str(exc)[:1500]])
        seen[0] += 1


def _one_stream(inproc: Target, stream: Stream) -> None:
    result = exchange(inproc.connect, stream.writes, methods=stream.methods, half_close=True, timeout=15.0)
    inproc.barrier()
    rec = inproc.upstream.take()
    check_invariants(rec, result, inproc.tenant, what=repr(stream))
    for seen in rec.requests:
        for name, value in seen.message.all_fields():
            assert VICTIM not in value, f"forged value reached the upstream in {name}: {seen.message}\n{stream!r}"
    assert not result.timed_out, f"the proxy neither answered nor closed within 15 s\n{result.describe()}\n{stream!r}"
    for status in result.statuses or [0]:
        counter["statuses"][status] = counter["statuses"].get(status, 0) + 1


def test_fuzz_report() -> None:
    """Prints how many streams ran and the status mix (run with -s); fails on collected failures."""
    statuses = dict(sorted(counter["statuses"].items()))
    print(f"\nfuzz: {counter['streams']} streams, final statuses {statuses} (0: no complete response)")
    failures = counter["failures"]
    for kind, (count, example) in sorted(failures.items(), key=lambda kv: -kv[1][0]):
        print(f"fuzz failure x{count}: {kind}\n  example: {example}")
    assert not failures, f"{sum(n for n, _ in failures.values())} failing streams of {len(failures)} kinds (above)"
