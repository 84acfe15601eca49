"""Fixtures any integration test module may ask for, registered here once.

apply_harness: `cli` (runs nsproxy-apply / nsproxy for `paths`).
daemon_harness: `daemon_launcher` (ensure_daemon launches nsproxyd for `paths`), `echo`, `echo2`.
broker_harness: `service_user` (the system user nsproxy), `open_paths` (dirs it can reach), `brokers`,
  `service_launcher` (ensure_daemon runs the broker and the daemon as that user).
proxy_harness: `proxy` (an in-process data plane), `upstream` (an aiohttp upstream on 127.0.0.1:0).
"""

from apply_harness import cli  # noqa: F401
from broker_harness import brokers, open_paths, service_launcher, service_python, service_user  # noqa: F401
from daemon_harness import daemon_launcher, echo, echo2  # noqa: F401
from proxy_harness import proxy_fixture, upstream_fixture  # noqa: F401
