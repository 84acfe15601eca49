"""The request-side framing corpus through the in-process proxy: invariants a-d plus each case's contract outcome."""

from __future__ import annotations

import pytest
from cases import Case, Target, run_case
from corpus_requests import REQUEST_CASES


def test_case_ids_are_unique() -> None:
    ids = [c.id for c in REQUEST_CASES]
    assert len(ids) == len(set(ids)), sorted(i for i in ids if ids.count(i) > 1)


@pytest.mark.parametrize("c", REQUEST_CASES, ids=str)
def test_request_corpus(c: Case, inproc: Target) -> None:
    run_case(c, inproc)
