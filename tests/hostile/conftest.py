"""Fixtures of the hostile suite (tests/hostile): the in-process proxy wired to the recording upstream.

The suite's helpers are plain modules next to this file (strict_http, recording_upstream, client,
invariants, cases, corpus_*); the integration harnesses are imported from tests/integration and
tests/ (read-only for this suite).
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
for extra in (HERE, HERE.parent / "integration", HERE.parent):
    if str(extra) not in sys.path:
        sys.path.insert(0, str(extra))

from cases import Target  # noqa: E402
from client import connect_tcp  # noqa: E402
from invariants import Tenant  # noqa: E402
from proxy_harness import ProxyHarness, make_tenant  # noqa: E402
from recording_upstream import recording_upstream  # noqa: E402

from nsproxy_appliance.model import Limits  # noqa: E402

# Short timeouts: a case the proxy gets wrong costs seconds, not minutes.
INPROC_LIMITS = Limits(header_timeout=2.0, idle_timeout=5.0, read_timeout=3.0, connect_timeout=2.0, body_timeout=3.0)


@pytest.fixture(scope="session")
def inproc() -> Iterator[Target]:
    """The real data plane in-process (ProxyHarness) for tenant `acme`, forwarding to a RecordingUpstream."""
    with recording_upstream() as up:
        harness = ProxyHarness()
        try:
            tenant = make_tenant("acme", port=up.port, limits=INPROC_LIMITS)
            _, port = harness.serve(tenant, log=False)
            yield Target(
                name="in-process proxy",
                connect=connect_tcp("127.0.0.1", port),
                upstream=up,
                tenant=Tenant(tenant.tenant_header, tenant.tenant_id),
                port=port,
                client_ip="127.0.0.1",
                barrier=lambda: harness.call_sync(lambda: None),
            )
        finally:
            harness.close()
