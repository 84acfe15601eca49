"""An https upstream's pool (daemon/upstream.py UpstreamPool), socket-free: the TLS context and
server name it dials with, the session it keeps and offers for resumption, and the TLS failure it
remembers for /tenants and logs once per reason. The handshakes themselves are test_tls.py's."""

from __future__ import annotations

import asyncio
import logging
import ssl
import types
from typing import Any

import pytest
from protocol_fakes import FakeLoop, FakeTransport

from nsproxy_appliance.daemon import tls
from nsproxy_appliance.daemon import upstream as upstream_module
from nsproxy_appliance.daemon.fdbudget import FdBudget
from nsproxy_appliance.daemon.upstream import UpstreamConnection, UpstreamPool
from nsproxy_appliance.model import Upstream, UpstreamTls

HTTP = Upstream(kind="http", host="127.0.0.1", port=9000, url="http://127.0.0.1:9000")
HTTPS = Upstream(kind="http", host="up.test", port=443, url="https://up.test", tls=UpstreamTls(ca="/ca.pem"))


def _pool(upstream: Upstream = HTTPS) -> UpstreamPool:
    return UpstreamPool(upstream, None, budget=FdBudget(limit=1000), loop=FakeLoop())  # type: ignore[arg-type]


def verify_error() -> ssl.SSLCertVerificationError:
    err = ssl.SSLCertVerificationError(1, "certificate verify failed")
    err.verify_message = "self-signed certificate"
    return err


# -- the context and the name ------------------------------------------------------------------
def test_a_plain_upstream_dials_without_tls():
    assert _pool(HTTP)._tls_context() == (None, None)


def test_the_context_is_made_once_and_the_name_is_the_url_s_unless_configured(monkeypatch):
    made: list[UpstreamTls] = []
    monkeypatch.setattr(upstream_module, "client_context", lambda settings: made.append(settings) or object())
    pool = _pool()
    ctx, name = pool._tls_context()
    assert name == "up.test" and pool._tls_context() == (ctx, "up.test") and made == [HTTPS.tls]
    named = Upstream(**{**vars(HTTPS), "tls": UpstreamTls(ca="/ca.pem", server_hostname="other.test")})
    assert _pool(named)._tls_context()[1] == "other.test"


# -- sessions ----------------------------------------------------------------------------------
def conn_with(pool: UpstreamPool, extra: dict[str, Any] | None) -> UpstreamConnection:
    conn = UpstreamConnection(pool)
    if extra is not None:
        conn.transport = types.SimpleNamespace(get_extra_info=lambda key: extra.get(key))  # type: ignore[assignment]
    return conn


def test_the_session_of_a_tls_connection_is_kept_for_the_next_handshake():
    pool = _pool()
    pool.keep_session(conn_with(pool, {"ssl_object": types.SimpleNamespace(session="s1")}))
    assert pool.tls_session == "s1"
    for extra in ({"ssl_object": types.SimpleNamespace(session=None)}, {}, None):  # nothing to keep
        pool.keep_session(conn_with(pool, extra))
        assert pool.tls_session == "s1"


class TlsLoop(FakeLoop):
    """create_connection as UpstreamPool._open calls it: records what it dials with (and the session
    offered meanwhile), then connects at once or raises the next of `failures`."""

    def __init__(self, failures: list[OSError] | None = None) -> None:
        super().__init__()
        self.dialled: list[tuple[Any, ...]] = []
        self.failures = failures or []

    async def create_connection(self, factory: Any, host: Any = None, port: Any = None, **kw: Any) -> Any:
        self.dialled.append((host, port, kw.get("ssl"), kw.get("server_hostname"), tls.OFFERED_SESSION.get()))
        if self.failures:
            raise self.failures.pop(0)
        conn = factory()
        transport = FakeTransport(self, ("127.0.0.1", 443), ("127.0.0.1", 1))
        transport.protocol = conn
        conn.connection_made(transport)
        return transport, conn


CTX = object()  # the client context the pool is given


def tls_pool(monkeypatch: pytest.MonkeyPatch, upstream: Upstream = HTTPS, failures: list[OSError] | None = None):
    monkeypatch.setattr(upstream_module, "client_context", lambda settings: CTX)
    loop = TlsLoop(failures)
    return UpstreamPool(upstream, None, budget=FdBudget(limit=1000), loop=loop), loop  # type: ignore[arg-type]


def test_a_connection_is_dialled_with_the_context_and_name_and_offers_the_pool_s_session(monkeypatch):
    pool, loop = tls_pool(monkeypatch)
    pool.tls_session = "s1"
    pool.tls_error = "earlier failure"
    before = tls.OFFERED_SESSION.get()
    asyncio.run(pool.connect(5.0))
    assert loop.dialled == [("up.test", 443, CTX, "up.test", "s1")] and tls.OFFERED_SESSION.get() == before
    assert pool.tls_error is None and pool.opened == 1  # connected: the failure is over


def test_a_plain_upstream_is_dialled_without_tls_and_offers_no_session(monkeypatch):
    pool, loop = tls_pool(monkeypatch, HTTP)
    pool.tls_session = "s1"
    pool.tls_error = "stale"
    asyncio.run(pool.connect(5.0))
    assert loop.dialled == [("127.0.0.1", 9000, None, None, tls.OFFERED_SESSION.get())]
    assert tls.OFFERED_SESSION.get() != "s1" and pool.tls_error == "stale"


# -- failures ----------------------------------------------------------------------------------
def test_a_tls_failure_is_remembered_and_logged_once_per_reason(monkeypatch, caplog):
    pool, _ = tls_pool(monkeypatch, failures=[verify_error(), verify_error(), tls.TlsSetupError("no CA")])
    with caplog.at_level(logging.WARNING, logger="nsproxyd"):
        for _ in range(3):
            with pytest.raises(OSError):
                asyncio.run(pool.connect(5.0))
    where = HTTPS.describe()
    assert [r.getMessage() for r in caplog.records] == [
        f"upstream {where}: TLS failed: certificate verify failed: self-signed certificate",
        f"upstream {where}: TLS failed: no CA",
    ]
    assert pool.tls_error == "no CA" and pool.opened == 0


def test_a_failure_that_is_not_about_tls_is_not_a_tls_error(monkeypatch, caplog):
    pool, _ = tls_pool(monkeypatch, failures=[ConnectionRefusedError(111, "Connection refused")])
    with caplog.at_level(logging.WARNING, logger="nsproxyd"), pytest.raises(ConnectionRefusedError):
        asyncio.run(pool.connect(5.0))
    assert pool.tls_error is None and caplog.records == []


def test_a_plain_upstream_s_failure_is_never_a_tls_error(monkeypatch):
    pool, _ = tls_pool(monkeypatch, HTTP, failures=[tls.TlsSetupError("no CA")])
    with pytest.raises(tls.TlsSetupError):
        asyncio.run(pool.connect(5.0))
    assert pool.tls_error is None
