"""ConFIG: conflict-free gradient directions (Liu, Chu & Thuerey, ICLR 2025; TorchJD).

The module is named after the authors' package (``conflictfree``); the method is registered as
``"config"``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from mtl.weighting.base import GradientWeighting
from mtl.weighting.registry import register_weighting

__all__ = ["ConFIG"]

# Columns per chunk of the float64 Gram matrix: bounds the temporary float64 copy of the
# gradients to ~2^24 elements (128 MB) whatever the model size.
_CHUNK = 1 << 24
_EPS64 = torch.finfo(torch.float64).eps


def _gram_float64(grads: Tensor) -> Tensor:
    """``G G^T`` of ``grads [K, P]`` accumulated in float64 (``[K, K]`` on the CPU).

    The products of float32 numbers are exact in float64, so the result carries no float32
    rounding: ConFIG's pseudo-inverse needs the small singular values of the unit gradients,
    which a float32 Gram matrix would bury in noise of relative size ~1e-7 (~3e-4 on the
    singular values).
    """
    k, p = grads.shape
    if grads.dtype == torch.float64:
        return (grads @ grads.T).cpu()
    gram = torch.zeros(k, k, dtype=torch.float64, device=grads.device)
    step = max(1, _CHUNK // max(k, 1))
    for start in range(0, p, step):
        block = grads[:, start : start + step].to(torch.float64)  # [K, <=step]
        gram.addmm_(block, block.T)
    return gram.cpu()


@register_weighting("config")
class ConFIG(GradientWeighting):
    """Liu, Chu & Thuerey, "ConFIG: Towards Conflict-free Training of Physics Informed
    Neural Networks", ICLR 2025 (Eq. 2), as the ``ConFIG`` aggregator of TorchJD (adapted
    there from the authors' ``conflictfree`` package).

    With the unit gradients ``U = [g_i / ||g_i||]`` (``[K, P]``, zero rows stay zero) and the
    preference ``p`` (default all ones), the direction ``x = pinv(U) p`` has the same
    projection ``p_i`` on every unit gradient (the minimum-norm such vector); ``d`` is the
    unit vector ``x / ||x||`` scaled by the sum of the projections of the raw gradients on it,
    ``d = (sum_i g_i . x / ||x||) x / ||x||``. With ``p > 0`` no task conflicts with ``d``.

    ``x`` lies in the span of the gradients, so everything is computed in task space: with
    ``A = U U^T`` (from the Gram matrix, accumulated in float64), ``pinv(U) p = U^T A^+ p``
    with the pseudo-inverse taken on the eigenvalues of ``A`` (the squared singular values of
    ``U``), and the effective weights are ``w_i = length / ||x|| * (A^+ p)_i / ||g_i||``.
    Singular values of ``U`` at or below ``rtol * max`` are dropped as in
    ``torch.linalg.pinv(U)``, whose default ``rtol = max(K, P) * eps(dtype)`` is used when
    ``rtol`` is ``None`` (TorchJD calls ``pinv`` with its defaults on the float gradients).
    Eigenvalues of ``A`` at its rounding level (``<= K eps64 max``) are dropped too: through
    ``A`` a singular value of ``U`` below ``~sqrt(K eps64) = 3e-8`` relative cannot be told
    from 0, so for float64 gradients singular values between ``rtol`` and that level count as
    0 here and not in TorchJD (float32 gradients: ``rtol >= K * 1.2e-7`` is above it anyway).
    Cost: one ``K x K`` Gram matrix (``K^2 P``), as the other Gram methods; no ``P``-sized SVD.

    Args:
        pref: preference weights ``p`` (``None`` = all ones, TorchJD's default).
        rtol: relative cut-off of the singular values of ``U`` (``None`` = ``max(K, P) *
            eps(dtype)``, ``torch.linalg.pinv``'s default).
    """

    def __init__(
        self, num_tasks: int, pref: Sequence[float] | None = None, rtol: float | None = None
    ) -> None:
        super().__init__(num_tasks)
        if pref is not None and len(pref) != num_tasks:
            raise ValueError(f"config pref: expected {num_tasks} values, got {len(pref)}")
        if rtol is not None and not rtol >= 0.0:
            raise ValueError(f"config rtol must be >= 0 or None, got {rtol}")
        self.pref = None if pref is None else torch.tensor(pref, dtype=torch.float64)
        self.rtol = rtol

    def combine(self, grads: Tensor, losses: Tensor, tasks: Tensor) -> Tensor:
        k, p = grads.shape
        gram = _gram_float64(grads)  # [K, K] float64 CPU: one device sync
        pref = torch.ones(k, dtype=torch.float64) if self.pref is None else self.pref[tasks.cpu()]
        norms = gram.diagonal().clamp_min(0.0).sqrt()  # [K] ||g_i||
        inv = torch.where(norms > 0, 1.0 / norms.clamp_min(1e-300), 0.0)  # zero rows -> 0
        a = gram * inv[:, None] * inv[None, :]  # [K, K] A = U U^T
        evals, evecs = torch.linalg.eigh(a)  # ascending, A PSD
        sigma = evals.clamp_min(0.0).sqrt()  # singular values of U
        rtol = self.rtol if self.rtol is not None else max(k, p) * torch.finfo(grads.dtype).eps
        # rtol as torch.linalg.pinv(U); and eigenvalues of A at its own rounding level (K eps
        # relative: a singular value of U below ~sqrt(K eps64) cannot be told from 0 through A)
        keep = (sigma > rtol * sigma.max()) & (evals > k * _EPS64 * evals.max())
        inv_evals = torch.where(keep, 1.0 / evals.clamp_min(1e-300), 0.0)
        c = evecs @ (inv_evals * (evecs.T @ pref))  # [K] A^+ p: x = U^T c
        b = c * inv  # [K] x = b^T G
        x_norm = max(float(b @ gram @ b), 0.0) ** 0.5  # ||x||
        b = b / max(x_norm, 1e-12)  # unit target vector (F.normalize's eps, as TorchJD)
        length = (gram @ b).sum()  # sum_i g_i . unit
        return (length * b).to(device=grads.device, dtype=grads.dtype)
