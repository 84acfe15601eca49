"""The response-side corpus (a malicious upstream) through the in-process proxy."""

from __future__ import annotations

import pytest
from cases import Case, Target, run_case
from corpus_responses import RESPONSE_CASES


def test_case_ids_are_unique() -> None:
    ids = [c.id for c in RESPONSE_CASES]
    assert len(ids) == len(set(ids)), sorted(i for i in ids if ids.count(i) > 1)


@pytest.mark.parametrize("c", RESPONSE_CASES, ids=str)
def test_response_corpus(c: Case, inproc: Target) -> None:
    run_case(c, inproc)
