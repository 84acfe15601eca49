"""A fixture that empties the data plane's process-wide caches around a test.

The data plane memoises what it can (error responses, the encoded lines of a client address, the
classification of a header name per policy): a test that builds its input anew but meets a cache
an earlier test filled checks the cache, not the code. Tests of those rules use this fixture.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from nsproxy_appliance.daemon import framing, request_head


@pytest.fixture
def fresh_dataplane_caches() -> Iterator[None]:
    framing._ERROR_RESPONSES.clear()
    request_head._PEERS.clear()
    yield
    framing._ERROR_RESPONSES.clear()
    request_head._PEERS.clear()
