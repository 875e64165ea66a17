"""Step time of our gradient-level weightings next to LibMTL's and TorchJD's, side by side.

One LeNet (the model of ``benchmarks/weighting_cost.py``: two conv layers and one FC layer
shared, one linear head per task), one MultiMNIST-like batch (28x28 greyscale, two 10-class
tasks, batch 256), ``torch.set_num_threads(2)``. Every variant has its own identically
initialised copy of the model and its own SGD optimiser. Each round runs one step of every
variant, in an order rotated by one each round, and the reported number is the median over
rounds of ``step time / plain step time of the same round``.

Variants (``-`` where a library does not implement the method):

* **ours full** / **ours representation**: ``mtl.weighting.multitask_backward`` with
  ``backend="full"`` (per-task gradients of all shared parameters) or
  ``backend="representation"`` (per-task gradients of the shared features ``z``);
* **LibMTL** (the PyPI wheel 1.1.5 of December 2021, or the GitHub main branch installed from
  its source tree, which has Nash-MTL, Aligned-MTL and UPGrad; the output says which), driven
  the way ``LibMTL.trainer.Trainer`` drives it: the model is
  ``class MTLmodel(HPS, <Weighting>)`` built with ``init_param()``, the step is
  ``optimizer.zero_grad(); model.backward(losses, **weight_args); optimizer.step()``;
  ``rep_grad=False`` (gradients of the shared parameters) and ``rep_grad=True`` (gradients of
  the representation) where the method supports it;
* **TorchJD** 0.18: ``autojac.mtl_backward(losses, features=z)`` (Jacobian of the shared
  parameters, heads get their own gradient) then ``autojac.jac_to_grad(shared, aggregator)``.

Shims are needed to run LibMTL on a current stack (all are reported in the output): main
imports ``torch_geometric`` at package import (an empty module stands in; nothing used here
touches it); and for 1.1.5 (main fixed the first, not the second):
``torchvision.models.utils`` no longer exists (LibMTL's package ``__init__`` imports its
ResNet, which imports ``load_state_dict_from_url`` from there), and ``Module.zero_grad()``
now sets ``.grad`` to ``None``, which breaks LibMTL's ``_reset_grad`` (``param.grad.data =
...``); the adapter's ``zero_grad_share_params`` therefore zeroes in place, which is what it
did with the torch of LibMTL's time.

A correctness check runs first: on one batch and identical weights, the shared-parameter
gradient written by each implementation of the same method is compared (cosine similarity and
norm ratio to ours).

Usage::

    python benchmarks/compare_libraries.py [--rounds 30] \
        [--out benchmarks/results/compare_libraries.md]
"""

from __future__ import annotations

import argparse
import copy
import os
import platform
import shlex
import statistics
import sys
import types
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _timing import interleaved_times, median_ratios
from weighting_cost import LeNetMTL, assert_encoder_gradient

from mtl.weighting import create_weighting, multitask_backward, task_gradient_cosine

Backward = Callable[[], None]

COLUMNS = ("ours full", "ours representation", "LibMTL rep_grad=False", "LibMTL rep_grad=True",
           "TorchJD")  # fmt: skip
TASKS = ("task0", "task1")


def _install_libmtl_shim() -> None:
    """Provide ``torchvision.models.utils`` (removed from torchvision) for LibMTL 1.1.5's
    import, and an empty ``torch_geometric`` for LibMTL main's (its package ``__init__``
    imports the trainer, which imports torch_geometric for graph datasets; the weightings and
    the HPS architecture driven here never use it)."""
    if "torchvision.models.utils" not in sys.modules:
        shim = types.ModuleType("torchvision.models.utils")
        shim.load_state_dict_from_url = torch.hub.load_state_dict_from_url  # type: ignore[attr-defined]
        sys.modules["torchvision.models.utils"] = shim
    try:
        import torch_geometric  # noqa: F401
    except ImportError:
        sys.modules["torch_geometric"] = types.ModuleType("torch_geometric")


def libmtl_release() -> str:
    """``"main"`` (the GitHub branch: has UPGrad, Nash-MTL, Aligned-MTL), ``"1.1.5"`` (the
    PyPI wheel of December 2021) or ``"absent"``. Both declare version 1.1.5 in their metadata,
    so the version string cannot tell them apart."""
    try:
        import LibMTL.weighting as lw
    except ImportError:
        return "absent"
    return "main" if hasattr(lw, "UPGrad") else "1.1.5"


# --------------------------------------------------------------------------------- methods
@dataclass(frozen=True)
class Method:
    """One method and how each implementation is configured (``None``: not implemented)."""

    name: str
    ours: dict[str, Any] | None
    libmtl: tuple[str, dict[str, Any], tuple[bool, ...]] | None  # class, weight_args, rep_grad
    torchjd: Callable[[], Any] | None
    note: str = ""


def _methods() -> list[Method]:
    from torchjd import aggregation as agg

    main = libmtl_release() == "main"
    # LibMTL main renamed GradVac's argument and added a grouping (0: whole model, as ours)
    gradvac = {"GradVac_beta": 0.01, "GradVac_group_type": 0} if main else {"beta": 0.01}
    return [
        Method("mgda", {}, ("MGDA", {"mgda_gn": "none"}, (False, True)), agg.MGDA),
        Method("pcgrad", {}, ("PCGrad", {}, (False,)), agg.PCGrad),
        Method(
            "cagrad",
            {"c": 0.4, "rescale": 1},
            ("CAGrad", {"calpha": 0.4, "rescale": 1}, (False,)),
            lambda: agg.CAGrad(c=0.4),
        ),
        Method(
            "imtl",
            {"hybrid": True},
            ("IMTL", {}, (False, True)),
            agg.IMTLG,
            "ours and LibMTL: IMTL-G + IMTL-L (learned loss scales); TorchJD: IMTL-G only",
        ),
        Method(
            "nash_mtl",
            {},
            # LibMTL's defaults (config.py); max_norm clips the update, ours does not
            ("Nash_MTL", {"update_weights_every": 1, "optim_niter": 20, "max_norm": 1.0},
             (False,)) if main else None,
            lambda: agg.NashMTL(n_tasks=2),
        ),
        Method("aligned_mtl", {}, ("Aligned_MTL", {}, (False, True)) if main else None,
               agg.AlignedMTL),
        Method("graddrop", {}, ("GradDrop", {"leak": 0.0}, (True,)), agg.GradDrop),
        Method("gradvac", {"beta": 0.01}, ("GradVac", gradvac, (False,)), agg.GradVac),
        Method(
            "upgrad",
            {},
            ("UPGrad", {"UPGrad_norm_eps": 1e-4, "UPGrad_reg_eps": 1e-4}, (False,))
            if main
            else None,
            agg.UPGrad,
        ),
    ]


# --------------------------------------------------------------------------------- variants
@dataclass
class Variant:
    """A runnable configuration: ``backward()`` fills ``.grad``; ``step()`` also updates."""

    method: str
    column: str
    backward: Backward
    optimizer: torch.optim.Optimizer
    shared: list[nn.Parameter]

    def step(self) -> None:
        self.backward()
        self.optimizer.step()

    def shared_grad(self) -> Tensor:
        """The flattened shared-parameter gradient written by the last ``backward()``."""
        return torch.cat(
            [(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1)
             for p in self.shared]
        ).detach().double()  # fmt: skip


def _losses(out: dict[str, Tensor], ys: list[Tensor]) -> list[Tensor]:
    return [F.cross_entropy(out[t], y) for t, y in zip(TASKS, ys, strict=True)]


def plain_variant(base: LeNetMTL, x: Tensor, ys: list[Tensor]) -> Variant:
    """``sum(losses).backward()``: the reference step."""
    model = copy.deepcopy(base)
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)

    def backward() -> None:
        opt.zero_grad(set_to_none=True)
        sum(_losses(model(x), ys)).backward()  # type: ignore[union-attr]

    return Variant("plain", "plain", backward, opt, list(model.shared_parameters()))


def ours_variant(
    base: LeNetMTL, x: Tensor, ys: list[Tensor], method: Method, backend: str
) -> Variant:
    """``multitask_backward`` with one of our two gradient backends."""
    assert method.ours is not None
    model = copy.deepcopy(base)
    weighting = create_weighting(method.name, len(ys), **method.ours)
    opt = torch.optim.SGD([*model.parameters(), *weighting.parameters()], lr=1e-3)
    shared = list(model.shared_parameters())
    heads = [p for t in TASKS for p in model.task_parameters(t)]
    present = torch.ones(len(ys), dtype=torch.bool)

    def backward() -> None:
        opt.zero_grad(set_to_none=True)
        z = model.encode(x)
        losses = torch.stack(_losses(model.decode(z), ys))
        multitask_backward(weighting, losses, present, shared, heads, z, backend=backend)

    column = "ours full" if backend == "full" else "ours representation"
    return Variant(method.name, column, backward, opt, shared)


def libmtl_variant(
    base: LeNetMTL, x: Tensor, ys: list[Tensor], method: Method, rep_grad: bool
) -> Variant:
    """LibMTL's weighting class mixed into its HPS architecture, as its ``Trainer`` does."""
    import LibMTL.weighting as lw
    from LibMTL.architecture import HPS

    assert method.libmtl is not None
    cls_name, weight_args, _ = method.libmtl
    weighting_cls = getattr(lw, cls_name)
    src = copy.deepcopy(base)

    class Encoder(nn.Module):
        """The shared trunk (LibMTL builds it as ``encoder_class()``)."""

        def __init__(self) -> None:
            super().__init__()
            self.net = copy.deepcopy(src.backbone)

        def forward(self, inputs: Tensor) -> Tensor:
            return self.net(inputs)

    class MTLmodel(HPS, weighting_cls):  # type: ignore[misc, valid-type]
        """``LibMTL.trainer.Trainer._prepare_model``'s class, with one in-place zeroing fix."""

        def __init__(self) -> None:
            decoders = nn.ModuleDict(
                {t: copy.deepcopy(h) for t, h in zip(TASKS, src.heads, strict=True)}
            )
            super().__init__(list(TASKS), Encoder, decoders, rep_grad, False, torch.device("cpu"))
            self.init_param()

        def zero_grad_share_params(self) -> None:
            # torch>=2 zero_grad() sets None; LibMTL's _reset_grad assigns ``param.grad.data``.
            self.encoder.zero_grad(set_to_none=False)

    model = MTLmodel()
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)

    def backward() -> None:
        opt.zero_grad()
        preds = model(x)
        train_losses = torch.zeros(len(TASKS))
        for tn, task in enumerate(TASKS):
            train_losses[tn] = F.cross_entropy(preds[task], ys[tn])
        model.backward(train_losses, **weight_args)

    column = "LibMTL rep_grad=True" if rep_grad else "LibMTL rep_grad=False"
    return Variant(method.name, column, backward, opt, list(model.get_share_params()))


def torchjd_variant(base: LeNetMTL, x: Tensor, ys: list[Tensor], method: Method) -> Variant:
    """``torchjd.autojac.mtl_backward`` + ``jac_to_grad`` with the method's aggregator."""
    from torchjd.autojac import jac_to_grad, mtl_backward

    assert method.torchjd is not None
    model = copy.deepcopy(base)
    aggregator = method.torchjd()
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    shared = list(model.shared_parameters())
    heads = [list(model.task_parameters(t)) for t in TASKS]

    def backward() -> None:
        opt.zero_grad(set_to_none=True)
        z = model.encode(x)
        losses = _losses(model.decode(z), ys)
        mtl_backward(losses, features=z, tasks_params=heads, shared_params=shared)
        jac_to_grad(shared, aggregator)

    return Variant(method.name, "TorchJD", backward, opt, shared)


def _builders(
    base: LeNetMTL, x: Tensor, ys: list[Tensor], m: Method
) -> dict[str, Callable[[], Variant] | None]:
    """For each column, a constructor of a fresh variant (``None``: not implemented)."""
    out: dict[str, Callable[[], Variant] | None] = dict.fromkeys(COLUMNS)
    if m.ours is not None:
        out["ours full"] = lambda: ours_variant(base, x, ys, m, "full")
        out["ours representation"] = lambda: ours_variant(base, x, ys, m, "representation")
    if m.libmtl is not None:
        for rep in m.libmtl[2]:
            col = "LibMTL rep_grad=True" if rep else "LibMTL rep_grad=False"
            out[col] = lambda rep=rep: libmtl_variant(base, x, ys, m, rep)  # type: ignore[misc]
    if m.torchjd is not None:
        out["TorchJD"] = lambda: torchjd_variant(base, x, ys, m)
    return out


def build_variants(
    base: LeNetMTL,
    x: Tensor,
    ys: list[Tensor],
    methods: list[Method],
    columns: tuple[str, ...] = COLUMNS,
) -> tuple[list[Variant], dict[tuple[str, str], str]]:
    """All runnable variants, and a note for each (method, column) that is not runnable."""
    variants: list[Variant] = []
    missing: dict[tuple[str, str], str] = {}
    for m in methods:
        for col, build in _builders(base, x, ys, m).items():
            if col not in columns:
                continue
            if build is None:
                missing[(m.name, col)] = "n/a"
                continue
            try:
                v = build()
                v.step()  # probe: does this implementation run at all on 2 tasks?
            except Exception as err:  # a library bug: report it, do not time it
                missing[(m.name, col)] = f"fails ({type(err).__name__})"
                print(f"[{m.name} / {col}] fails: {type(err).__name__}: {err}", file=sys.stderr)
                continue
            # a variant that skips the encoder would look cheap: refuse to time it
            assert_encoder_gradient(v.shared, f"{m.name} / {col}")
            variants.append(v)
    return variants, missing


# ------------------------------------------------------------------------------ correctness
def correctness(
    base: LeNetMTL,
    x: Tensor,
    ys: list[Tensor],
    methods: list[Method],
    columns: tuple[str, ...] = COLUMNS,
) -> list[str]:
    """Cosine / norm ratio of each implementation's first shared gradient to ours and TorchJD's.

    Every implementation starts from the same weights and batch, so all of them see the same
    per-task gradients; only the aggregation differs.
    """
    # Conflicting tasks: head 1 = head 0; task 0's label is each sample's top class, task 1's
    # its bottom class (cosine of the two shared gradients about -0.3).
    conflict = copy.deepcopy(base)
    conflict.heads[1].load_state_dict(conflict.heads[0].state_dict())
    with torch.no_grad():
        logits = conflict(x)["task0"]
    opposed = [logits.argmax(1), logits.argmin(1)]
    scenarios = {"random labels": (base, ys), "conflicting": (conflict, opposed)}
    lines = [
        "| batch | cos(g_1, g_2) | method | implementation | cos to ours full "
        "| norm / ours full | cos to TorchJD |",
        "|---|---:|---|---|---:|---:|---:|",
    ]
    for scenario, (model, labels) in scenarios.items():
        model.zero_grad(set_to_none=True)
        z = model.encode(x)
        losses = torch.stack(_losses(model.decode(z), labels))
        shared = list(model.shared_parameters())
        task_cos = float(
            task_gradient_cosine(losses, torch.ones(2, dtype=torch.bool), shared)[0, 1]
        )
        for m in methods:
            for row in _compare(model, x, labels, m, columns):
                lines.append(f"| {scenario} | {task_cos:.3f} | {row} |")
    return lines


def _compare(
    base: LeNetMTL, x: Tensor, ys: list[Tensor], m: Method, columns: tuple[str, ...]
) -> list[str]:
    """Rows ``method | implementation | cos | norm ratio | cos to TorchJD`` for one method."""
    rows = []
    grads: dict[str, Tensor] = {}
    for col, build in _builders(base, x, ys, m).items():
        if build is None or col not in columns:
            continue
        v = build()
        torch.manual_seed(0)  # GradDrop / PCGrad draw random numbers
        try:
            v.backward()
        except Exception:  # reported by the timing table
            continue
        grads[col] = v.shared_grad()

    def cos(a: Tensor, b: Tensor) -> float:
        return float(a @ b / (a.norm() * b.norm()).clamp_min(1e-300))

    ref, jd = grads.get("ours full"), grads.get("TorchJD")
    for col, g in grads.items():
        if col == "ours full":
            continue
        c_ours = f"{cos(g, ref):.6f}" if ref is not None else "-"
        n_ours = f"{float(g.norm() / ref.norm()):.4f}" if ref is not None else "-"
        c_jd = f"{cos(g, jd):.6f}" if jd is not None and col != "TorchJD" else "-"
        rows.append(f"{m.name} | {col} | {c_ours} | {n_ours} | {c_jd}")
    return rows


# ----------------------------------------------------------------------------------- timing
def time_variants(
    plain: Variant, control: Variant, variants: list[Variant], rounds: int, warmup: int
) -> tuple[list[float], float, float]:
    """Median per-round ratio to the plain step for every variant, the plain median ms, and
    the ratio of ``control`` (a second, identical plain step: must come out near 1.00).

    Every round runs all steps in a freshly shuffled order (:mod:`_timing`): with the former
    rotated cyclic order the plain step was always preceded by the same variant (TorchJD's
    UPGrad), and the representation backend came out *cheaper* than the plain step.
    """
    everyone = [plain, control, *variants]
    times = interleaved_times([v.step for v in everyone], rounds, warmup)
    ratios = median_ratios(times)
    return ratios[2:], statistics.median(times[0]) * 1e3, ratios[1]


def _machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    affinity = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else "?"
    return (
        f"{cpu}; {os.cpu_count()} cores visible, {affinity} in this process's affinity mask; "
        f"Python {platform.python_version()}, torch {torch.__version__}"
    )


def _versions() -> str:
    from importlib.metadata import PackageNotFoundError, version

    out = []
    for pkg in ("LibMTL", "torchjd", "cvxpy", "torchvision"):
        try:
            out.append(f"{pkg} {version(pkg)}")
            if pkg == "LibMTL":
                out[-1] += f" ({libmtl_release()})"
        except PackageNotFoundError:
            out.append(f"{pkg} ?")
    return ", ".join(out)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/compare_libraries.md"))
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--methods", nargs="*", default=None, help="default: all")
    parser.add_argument("--columns", nargs="*", default=None, help=f"default: all of {COLUMNS}")
    parser.add_argument("--note", default="", help="free text added under the header")
    args = parser.parse_args(argv)

    warnings.filterwarnings("ignore")
    _install_libmtl_shim()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    x = torch.randn(args.batch_size, 1, 28, 28)
    ys = [torch.randint(0, 10, (args.batch_size,)) for _ in TASKS]
    base = LeNetMTL(num_tasks=len(TASKS))
    methods = [m for m in _methods() if args.methods is None or m.name in args.methods]
    columns = tuple(c for c in COLUMNS if args.columns is None or c in args.columns)

    check = correctness(base, x, ys, methods, columns)
    plain, control = plain_variant(base, x, ys), plain_variant(base, x, ys)
    variants, missing = build_variants(base, x, ys, methods, columns)
    ratios, plain_ms, control_ratio = time_variants(
        plain, control, variants, args.rounds, args.warmup
    )
    cell = {(v.method, v.column): f"{r:.2f}x" for v, r in zip(variants, ratios, strict=True)}
    cell.update(missing)

    cmd = " ".join(shlex.quote(a) for a in [Path(sys.executable).name, *sys.argv])
    lines = [
        "# Our weightings vs LibMTL and TorchJD: step time relative to a plain PyTorch step",
        "",
        f"Command: `{cmd}`",
        "",
        f"Machine: {_machine()}; {_versions()}; {args.threads} intra-op threads.",
        "",
        *([args.note, ""] if args.note else []),
        f"LeNet (2 conv + 1 FC shared, 2 linear 10-class heads), 28x28x1, batch "
        f"{args.batch_size}, SGD; one model copy and optimiser per variant; {args.rounds} "
        f"interleaved rounds (order shuffled afresh each round) after {args.warmup} warm-up "
        f"rounds; median of per-round ratios to the plain step (`sum(losses).backward(); "
        f"opt.step()`, median {plain_ms:.1f} ms). Control: a second, identical plain step "
        f"timed the same way came out at {control_ratio:.2f}x (the timing method's own bias "
        f"and noise). `n/a`: the library has no such method (or not in that mode); `fails`: "
        f"it raises on this 2-task problem (see below). Every timed variant was checked to "
        f"write a finite, non-zero gradient into every shared (encoder) parameter.",
        "",
        "| method | " + " | ".join(columns) + " |",
        "|---|" + "---:|" * len(columns),
    ]
    for m in methods:
        lines.append(f"| {m.name} | " + " | ".join(cell[(m.name, c)] for c in columns) + " |")
    notes = [f"* {m.name}: {m.note}" for m in methods if m.note]
    lines += [
        "",
        "Notes:",
        "",
        *notes,
        f"* LibMTL here: {libmtl_release()} (`main`: the GitHub branch installed from its "
        "source tree; `1.1.5`: the PyPI wheel of December 2021, which has no Nash-MTL, "
        "Aligned-MTL or UPGrad, and whose CAGrad hard-codes `x.reshape(1, 3)` (3 tasks) and "
        "so raises on 2 tasks). Its `rep_grad=False` mode computes one "
        "`loss.backward(retain_graph=True)` per task and copies `.grad` into a `[T, P]` "
        "matrix; GradDrop exists only with `rep_grad=True`; PCGrad, CAGrad, GradVac, "
        "Nash-MTL and UPGrad only with `rep_grad=False`.",
        "* LibMTL shims (not changes to its maths): `torchvision.models.utils` (1.1.5) and "
        "`torch_geometric` (main) are provided for its import, and `zero_grad_share_params` "
        "zeroes in place (torch>=2 `zero_grad()` sets `None`, which LibMTL's `_reset_grad` "
        "cannot assign into).",
        "* TorchJD's full step is `mtl_backward` (heads: one gradient per task; shared: the "
        "Jacobian w.r.t. the features pushed through the backbone with one vmapped backward) "
        "then `jac_to_grad`.",
        "",
        "## Correctness: same batch, same weights, shared-parameter gradient vs ours (full)",
        "",
        "Cosine similarity and norm ratio of the shared-parameter gradient each implementation "
        "writes, against `ours full`. Norm ratios differ where the conventions differ "
        "(sum- vs mean-scaled, clipping); the representation backend and LibMTL `rep_grad=True` "
        "balance the feature gradients (a proxy, MGDA-UB), so they are not expected to match. "
        "GradDrop draws random masks (seeded identically, but each library draws differently).",
        "",
        *check,
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)


if __name__ == "__main__":
    main()
