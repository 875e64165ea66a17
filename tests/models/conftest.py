"""Shared fixtures of the model-zoo tests: seeding and thread count."""

from __future__ import annotations

import random
from collections.abc import Iterator

import numpy as np
import pytest
import torch


@pytest.fixture(autouse=True)
def _seed_and_one_thread() -> Iterator[None]:
    """Every test starts from the same RNG state and runs torch on one intra-op thread.

    The inputs are tiny, so extra threads buy nothing; on a busy 2-core machine OpenMP's
    spinning threads made the big torchvision nets ~30x slower. The previous count is
    restored afterwards (other test packages may share the process).
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)
    yield
    torch.set_num_threads(threads)
