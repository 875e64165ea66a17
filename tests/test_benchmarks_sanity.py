"""The benchmarks measure what they claim: real encoder gradients, an unbiased timing order.

No timings are asserted here (the machine is shared); only what makes a timing meaningful.
"""

from __future__ import annotations

import copy
import pickle
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import loader_throughput
from _timing import interleaved_times, median_ratios
from weighting_cost import LeNetMTL, assert_encoder_gradient, make_mtl_step, make_plain_step

from mtl.weighting import get_weighting_class, list_weightings, set_vmapped_gradients


@pytest.fixture(autouse=True)
def _reset_vmapped() -> object:
    """``make_mtl_step`` sets the process-wide backward mode; leave the default behind."""
    yield
    set_vmapped_gradients(None)


def _batch() -> tuple[torch.Tensor, list[torch.Tensor]]:
    torch.manual_seed(0)
    return torch.randn(16, 1, 28, 28), [torch.randint(0, 10, (16,)) for _ in range(2)]


CONFIGS = [
    (name, backend)
    for name in list_weightings()
    for backend in (
        get_weighting_class(name).backends
        if get_weighting_class(name).level == "gradient"
        else ("full",)
    )
]


@pytest.mark.parametrize(("method", "backend"), CONFIGS, ids=[f"{m}-{b}" for m, b in CONFIGS])
def test_every_method_and_backend_trains_the_encoder(method: str, backend: str) -> None:
    """The benchmark's step gives every backbone parameter a real gradient and moves it."""
    x, ys = _batch()
    torch.manual_seed(1)
    model = LeNetMTL(num_tasks=2)
    before = copy.deepcopy(model)
    make_mtl_step(model, x, ys, method, backend, vmapped=False)()
    assert_encoder_gradient(model.shared_parameters(), f"{method} / {backend}")
    for p, q in zip(model.shared_parameters(), before.shared_parameters(), strict=True):
        assert not torch.equal(p, q), f"{method} / {backend}: an encoder parameter did not move"


def test_the_encoder_check_catches_a_step_that_skips_the_backbone() -> None:
    x, ys = _batch()
    model = LeNetMTL(num_tasks=2)
    out = model.decode(model.encode(x).detach())  # what a broken backend would do
    sum(F.cross_entropy(out[f"task{i}"], y) for i, y in enumerate(ys)).backward()  # type: ignore[union-attr]
    with pytest.raises(AssertionError, match="got no gradient"):
        assert_encoder_gradient(model.shared_parameters(), "skipping")
    make_plain_step(model, x, ys)()
    for p in model.shared_parameters():
        assert p.grad is not None
        p.grad.zero_()
    with pytest.raises(AssertionError, match="non-zero"):
        assert_encoder_gradient(model.shared_parameters(), "zero")


def test_interleaving_varies_what_precedes_each_step() -> None:
    """A fixed or rotated cyclic order always puts the same step before the reference."""
    calls: list[int] = []
    steps = [lambda i=i: calls.append(i) for i in range(5)]
    times = interleaved_times(steps, rounds=40, warmup=2, seed=3)
    assert [len(t) for t in times] == [40] * 5
    assert Counter(calls) == dict.fromkeys(range(5), 42)
    before_ref = {calls[k - 1] for k in range(1, len(calls)) if calls[k] == 0}
    assert before_ref == {1, 2, 3, 4}  # every other step preceded the reference at least once
    rounds = {tuple(calls[k : k + 5]) for k in range(10, len(calls), 5)}
    assert len(rounds) > 10  # orders really differ between rounds


def test_median_ratios_are_medians_of_per_round_ratios() -> None:
    times = [[1.0, 2.0, 4.0], [1.5, 2.0, 2.0], [3.0, 8.0, 4.0]]
    assert median_ratios(times) == [1.0, 1.0, 3.0]
    assert median_ratios(times, ref=1) == [1.0, 1.0, 2.0]


def test_loader_prefix_reads_the_first_images_of_the_shards(tmp_path: Path) -> None:
    """The shortened pass reads the same pixels, stops at ``n`` and keeps ``n`` in a worker."""
    rng = np.random.default_rng(0)
    shards = [rng.integers(0, 255, (5, 4, 3, 1), dtype=np.uint8) for _ in range(3)]
    paths = []
    for k, a in enumerate(shards):
        paths.append(tmp_path / f"images-{k:05d}.npy")
        np.save(paths[-1], a)
    full = np.concatenate(shards)
    view = loader_throughput.Prefix(paths, (4, 3, 1), 7)  # all of shard 0, 2 of shard 1
    assert len(view) == 7 and view.shape == (7, 4, 3, 1)
    idx = np.array([6, 0, 5, 4])
    np.testing.assert_array_equal(view[idx], full[idx])
    with pytest.raises(IndexError):
        view[np.array([7])]  # shard 1's third image is past the prefix
    copied = pickle.loads(pickle.dumps(view))  # what a spawned loader worker receives
    assert len(copied) == 7
    np.testing.assert_array_equal(copied[np.arange(7)], full[:7])


def test_loader_throughput_runs_on_tiny_settings(tmp_path: Path) -> None:
    """The benchmark script end to end (real ingest, clean, select, augment online and offline,
    real loaders with 0 and 1 worker): one row per augmentation and worker count, rates > 0."""
    out = tmp_path / "loader.md"
    text = loader_throughput.main(["--datasets", "multimnist", "--n-train", "48", "--batches",
                                   "1", "--rounds", "1", "--workers", "0", "1", "--out",
                                   str(out)])
    assert out.read_text() == text
    rows = [line.split("|")[1:-1] for line in text.splitlines()
            if line.startswith(("| offline", "| online"))]
    assert [(r[0].strip(), r[1].strip()) for r in rows] == [
        ("offline", "0"), ("offline", "1"), ("online", "0"), ("online", "1")]
    for r in rows:
        for cell in (r[2], r[3], r[4], r[5]):
            assert float(cell.split()[0].replace(",", "")) > 0, r
    assert "Model step" in text
