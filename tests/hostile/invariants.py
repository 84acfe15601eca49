"""The tenant-boundary invariants, asserted after every hostile case (one helper used everywhere).

a) every request the upstream parsed carries exactly ONE tenant header (names compared
   case-insensitively with '_' read as '-', trailers included) and its value is the tenant's id;
b) the upstream never parsed more requests than the client received complete responses for;
c) the upstream never received framing it cannot parse, and the client never did either;
d) nothing of a rejected request reached the upstream (its marker bytes never appear there).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from client import ClientResult
from recording_upstream import Records
from strict_http import normalise


@dataclass(frozen=True)
class Tenant:
    """What the invariants need to know about the tenant under test."""

    header: str
    tenant_id: str


def tenant_values(fields: Iterable[tuple[str, str]], header: str) -> list[str]:
    want = normalise(header)
    return [v for n, v in fields if normalise(n) == want]


def check_invariants(
    up: Records,
    clients: ClientResult | Sequence[ClientResult],
    tenant: Tenant,
    *,
    markers: Sequence[bytes] = (),
    allow_unanswered: int = 0,
    allow_truncated: bool = False,
    what: str = "",
) -> None:
    """Assert a)-d); `allow_*` relax b) only where the contract says the client gets no answer."""
    results = [clients] if isinstance(clients, ClientResult) else list(clients)
    context = f"{what}\n" + up.describe() + "\n" + "\n".join(r.describe() for r in results)

    # a) exactly one tenant header, the tenant's own id: compare the LIST of values
    for seen in up.requests:
        values = tenant_values(seen.message.all_fields(), tenant.header)
        assert values == [tenant.tenant_id], (
            f"invariant a: upstream request {seen.message} carried tenant values {values!r}, "
            f"expected exactly [{tenant.tenant_id!r}]\n{context}"
        )

    # b) nothing parsed upstream that the client did not get an answer for
    answered = sum(len(r.finals) for r in results)
    if allow_truncated:
        answered += sum(1 for r in results if r.truncated)
    assert len(up.requests) <= answered + allow_unanswered, (
        f"invariant b: the upstream parsed {len(up.requests)} requests, the client got {answered} "
        f"complete responses\n{context}"
    )

    # c) no unparseable framing on either side
    assert not up.violations, f"invariant c: upstream violations {up.violations}\n{context}"
    for r in results:
        assert r.violation is None, (
            f"invariant c: the client could not parse the proxy's answer: {r.violation}\n{context}"
        )

    # d) nothing of a rejected request reached the upstream
    raw = up.all_raw()
    for marker in markers:
        assert marker not in raw, f"invariant d: marker {marker!r} reached the upstream\n{context}"
