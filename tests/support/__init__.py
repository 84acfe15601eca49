"""Helpers every test suite shares (tests/ is on sys.path: `from support import ...`).

The whole API, kept small on purpose:

    REPO                                  the checkout's root (pathlib.Path)
    wait_until(predicate, timeout, what)  poll until predicate() is truthy; AssertionError on timeout
    tenant(name, ...) -> model.Tenant     one tenant factory (named netns, one loopback listener)
    run_cli(program, *args) -> CliRun     run nsproxy-apply / nsproxy / nsproxyd of this venv
    split_response(data) -> Response      one HTTP/1.1 response's bytes: status, headers, body
    header_values(pairs, name) -> [str]   a header's values among echoed (name, value) pairs, any spelling
    Response                              .status, .headers (lower-case names), .body, .json()

and, imported by the TLS tests only (it needs cryptography): `support.tlscerts.Pki`, a test CA
issuing server and client certificates as PEM files.
"""

from __future__ import annotations

from .cli import CliRun, program, run_cli
from .http import Response, header_values, split_response
from .tenants import tenant
from .wait import wait_until
from .where import REPO

__all__ = [
    "REPO",
    "CliRun",
    "Response",
    "header_values",
    "program",
    "run_cli",
    "split_response",
    "tenant",
    "wait_until",
]
