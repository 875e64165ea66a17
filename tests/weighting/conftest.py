"""Fixtures for the weighting tests (helpers live in ``weighting_helpers.py``)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch
from weighting_helpers import CASE_IDS, CASES


@pytest.fixture(params=CASES, ids=CASE_IDS)
def case(request: pytest.FixtureRequest) -> tuple[str, str]:
    """``(method name, backend)`` for every registered method and supported backend."""
    return request.param  # type: ignore[no-any-return]


@pytest.fixture(autouse=True)
def _seed_and_threads() -> Iterator[None]:
    """Seed, and one intra-op thread: the models are tiny, so threads only add sync overhead
    (restored afterwards, so other test packages are unaffected)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    yield
    torch.set_num_threads(threads)
