"""CUDA checks (skipped without a GPU): device placement and AMP with a GradScaler."""

from __future__ import annotations

import pytest
import torch
from weighting_helpers import CASE_IDS, CASES, TinyModel, compute_losses, make_batch

from mtl.weighting import create_weighting, multitask_backward, task_gradient_cosine

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.mark.parametrize(("name", "backend"), CASES, ids=CASE_IDS)
@pytest.mark.parametrize("amp", [False, True], ids=["fp32", "amp"])
def test_cuda_step(name: str, backend: str, amp: bool) -> None:
    dev = torch.device("cuda")
    model = TinyModel().to(dev)
    weighting = create_weighting(name, 3).to(dev)
    opt = torch.optim.SGD([*model.parameters(), *weighting.parameters()], lr=0.1)
    scaler = torch.amp.GradScaler("cuda", enabled=amp)
    scaler.scale(torch.ones((), device=dev))  # initialises the scale, as scaler.scale(loss) would
    before = [p.detach().clone() for p in model.shared_parameters()]
    for step in range(3):
        x, y = make_batch(seed=step, absent=(1,) if step == 1 else ())
        x, y = x.to(dev), y.to(dev)
        opt.zero_grad()
        with torch.autocast("cuda", dtype=torch.float16, enabled=amp):
            losses, present, z = compute_losses(model, x, y)
        losses = losses.float()
        w = multitask_backward(
            weighting, losses, present, list(model.shared_parameters()),
            model.head_parameters(), z, backend=backend, loss_scale=scaler.get_scale(),
        )  # fmt: skip
        assert w.device.type == "cuda" and w.shape == (3,) and torch.isfinite(w).all()
        if step == 1:
            assert w[1] == 0
        scaler.step(opt)
        scaler.update()
        weighting.step_end(losses.detach(), present.to(dev))
    weighting.epoch_end(losses.detach(), present.to(dev))
    after = list(model.shared_parameters())
    assert all(torch.isfinite(p).all() for p in after)
    assert any(not torch.equal(b, a) for b, a in zip(before, after, strict=True))


def test_cuda_cosine() -> None:
    model = TinyModel().cuda()
    x, y = make_batch(absent=(2,))
    losses, present, _ = compute_losses(model, x.cuda(), y.cuda())
    cos = task_gradient_cosine(losses, present, list(model.shared_parameters()))
    assert cos.device.type == "cuda"
    assert torch.isnan(cos[2]).all() and torch.isfinite(cos[:2, :2]).all()
