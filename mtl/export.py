"""A model you can ship: a checkpoint as ONNX or a ``torch.export`` program, plus a sidecar JSON.

``export_model`` turns a trained :class:`~mtl.checkpoint.Checkpoint` into

* ``<out>.onnx`` (ONNX, opset >= 17, one file with its weights) or ``<out>.pt2``
  (``torch.export.save``), and
* ``<out>.json`` (e.g. ``model.onnx.json``), the sidecar: task names, kinds, label
  vocabularies and regression units, image size, colour mode, normalisation, the tabular
  feature encoders, and the names and shapes of the inputs and outputs, so that a server can
  decode the outputs without mtl (README, "Exporting a model").

The exported graph is the model's ``forward`` in eval mode, with a dynamic batch dimension::

    image    float32 [B, C, H, W]  = (pixel / 255 - mean) / std  (pixels in 0..255)
    features float32 [B, F]        (only when the model was trained with tabular features)
    -> one output per task, in schema order: float32 [B, K_task] raw head outputs (logits;
       a standardised value for a regression task)

``quantize_onnx`` writes an int8 copy of an ONNX model (ONNX Runtime dynamic quantization) and
``compare_outputs`` scores two models' outputs on a split with :func:`mtl.metrics.task_metrics`.
:class:`ExportedModel` runs an exported file (either format) with the sidecar, which is how
``mtl predict`` accepts an exported model.
"""

from __future__ import annotations

import math
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor, nn

from mtl.checkpoint import Checkpoint
from mtl.data.io import read_json, write_json
from mtl.inference import to_model_input
from mtl.metrics import task_metrics
from mtl.models.base import MultiTaskModel
from mtl.schema import TaskSchema
from mtl.shards import ShardedImages
from mtl.tasks import kind_spec

__all__ = [
    "FORMATS",
    "ONNX_OPSET",
    "SIDECAR_FORMAT",
    "EvalData",
    "ExportError",
    "ExportReport",
    "ExportedModel",
    "QuantizeReport",
    "compare_outputs",
    "export_model",
    "is_exported",
    "load_exported",
    "quantize_onnx",
    "sidecar",
    "sidecar_path",
]

ExportFormat = Literal["onnx", "torch-export"]
#: format name -> file suffix
FORMATS: dict[str, str] = {"onnx": ".onnx", "torch-export": ".pt2"}
ONNX_OPSET = 18
SIDECAR_FORMAT = "mtl.export/1"
#: ``to_model_input`` computes ``pixel / 127.5 - 1``, i.e. ``(pixel / 255 - 0.5) / 0.5``
_MEAN, _STD = 0.5, 0.5
# A batch of 2 to trace with: torch.export specialises a dimension whose example size is 0 or 1.
_TRACE_BATCH = 2


class ExportError(ValueError):
    """An export that cannot be done or an exported file that cannot be used."""


class _Forward(nn.Module):
    """``forward(image[, features]) -> tuple of task outputs`` in schema order.

    Exporters need positional tensors in and a flat tuple out; the model returns a dict and
    takes an optional ``features`` argument.
    """

    def __init__(self, model: MultiTaskModel, tasks: Sequence[str], with_features: bool) -> None:
        super().__init__()
        self.model = model
        self.tasks = list(tasks)
        self.with_features = with_features

    def forward(self, image: Tensor, features: Tensor | None = None) -> tuple[Tensor, ...]:
        out = self.model(image, features if self.with_features else None)
        return tuple(out[t] for t in self.tasks)


def sidecar_path(model_path: Path) -> Path:
    """The sidecar JSON next to an exported model: ``model.onnx`` -> ``model.onnx.json`` (an
    ONNX and a ``.pt2`` export of one checkpoint side by side keep their own sidecars)."""
    return model_path.with_name(model_path.name + ".json")


def is_exported(path: Path) -> bool:
    """Whether ``path`` names an exported model (``.onnx`` or ``.pt2``) rather than a checkpoint."""
    return path.suffix in FORMATS.values()


def sidecar(ckpt: Checkpoint, fmt: ExportFormat, output_names: Sequence[str]) -> dict[str, Any]:
    """Everything a server needs to feed the exported model and decode its outputs."""
    m = ckpt.meta
    c = int(m["in_channels"])
    h, w = (int(v) for v in m["image_size"])
    features = list(ckpt.schema.get("features", []))
    inputs: list[dict[str, Any]] = [
        {"name": "image", "dtype": "float32", "shape": ["batch", c, h, w]}]
    if features:
        inputs.append({"name": "features", "dtype": "float32",
                       "shape": ["batch", len(features)]})
    tasks = []
    for t, out_name in zip(ckpt.tasks, output_names, strict=True):
        entry: dict[str, Any] = {"name": t.name, "kind": t.kind.value, "output": out_name,
                                 "shape": ["batch", kind_spec(t).head_size(t)],
                                 "decode": _DECODE[t.kind.value]}
        if t.kind.value == "regression":
            entry.update(mean=t.mean, std=t.std)
        else:
            entry["classes"] = list(t.classes)
        tasks.append(entry)
    return {
        "format": SIDECAR_FORMAT,
        "model_format": fmt,
        "opset": ONNX_OPSET if fmt == "onnx" else None,
        "architecture": m["architecture"],
        "backbone": m["backbone"],
        "image": {"height": h, "width": w, "channels": c, "colour_mode": "L" if c == 1 else "RGB",
                  "layout": "NCHW", "resize": "PIL bilinear (reducing_gap=2.0) to height x width",
                  "transparency": "composited onto white before conversion"},
        "normalisation": {"scale": 1 / 255, "mean": [_MEAN] * c, "std": [_STD] * c,
                          "formula": "image = (pixel / 255 - mean[c]) / std[c]"},
        "inputs": inputs,
        "outputs": [{"name": t["output"], "dtype": "float32", "shape": t["shape"]}
                    for t in tasks],
        "tasks": tasks,
        "features": features,
        "quantization": None,
    }


_DECODE = {
    "multiclass": "argmax over K -> classes[index]; softmax for the confidence",
    "binary": "one logit: classes[1] if logit > 0 else classes[0]; sigmoid = P(classes[1])",
    "regression": "value = output[:, 0] * std + mean (the target's original units)",
    "multilabel": "one logit per class: every classes[k] whose logit > 0, joined with '|'",
}


def _example(ckpt: Checkpoint) -> tuple[Tensor, ...]:
    """Example inputs at the trace batch size (values do not matter, shapes do)."""
    m = ckpt.meta
    gen = torch.Generator().manual_seed(0)
    image = torch.rand(_TRACE_BATCH, int(m["in_channels"]), *(int(v) for v in m["image_size"]),
                       generator=gen) * 2 - 1
    nf = int(m.get("num_features", 0))
    return (image,) if nf == 0 else (image, torch.rand(_TRACE_BATCH, nf, generator=gen))


def _dynamic_shapes(n_inputs: int) -> tuple[dict[int, Any], ...]:
    batch = torch.export.Dim("batch", min=1)
    return tuple({0: batch} for _ in range(n_inputs))  # one Dim: both inputs share the batch


def _export_program(wrapper: _Forward, example: tuple[Tensor, ...]) -> Any:
    try:
        return torch.export.export(wrapper, example, dynamic_shapes=_dynamic_shapes(len(example)))
    except Exception as exc:  # torch.export raises many error types; all mean "not exportable"
        raise ExportError(f"torch.export could not trace the model: expected a traceable "
                          f"forward, found {type(exc).__name__}: {exc}") from exc


def _write_onnx(wrapper: _Forward, example: tuple[Tensor, ...], path: Path) -> None:
    input_names = ["image", "features"][:len(example)]
    program = _export_program(wrapper, example)
    onnx_program = torch.onnx.export(program, example, input_names=input_names,
                                     output_names=wrapper.tasks, opset_version=ONNX_OPSET,
                                     dynamo=True, external_data=False, verbose=False)
    if onnx_program is None:  # only the legacy exporter returns None
        raise ExportError("torch.onnx.export returned no program: expected the dynamo exporter")
    onnx_program.save(str(path), external_data=False)
    names = _onnx_output_names(path)
    if names != wrapper.tasks:  # the sidecar and ExportedModel map outputs to tasks by name
        raise ExportError(f"{path}: expected ONNX outputs named after the tasks "
                          f"{wrapper.tasks}, found {names}")


def _onnx_output_names(path: Path) -> list[str]:
    import onnx

    return [o.name for o in onnx.load(str(path), load_external_data=False).graph.output]


@dataclass(frozen=True)
class QuantizeReport:
    """Sizes before/after int8 quantization and each task's headline metric before/after
    (``metrics``: ``{task: {"metric", "fp32", "int8", "change"}}``, empty without a split;
    ``agreement``: share of decoded predictions equal in both, per task)."""

    fp32_bytes: int
    int8_bytes: int
    metrics: dict[str, dict[str, Any]] = field(default_factory=dict)
    agreement: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class ExportReport:
    """What ``export_model`` wrote."""

    model: Path
    sidecar: Path
    size_bytes: int
    quantize: QuantizeReport | None = None


def quantize_onnx(src: Path, dst: Path) -> None:
    """ONNX Runtime dynamic int8 quantization of ``src`` into ``dst``.

    Weights become int8 (per-channel for convolutions) and activations are quantized on the fly;
    no calibration data is needed. Unsigned weights (``QUInt8``) because ONNX Runtime's CPU
    ``ConvInteger`` kernel accepts uint8 only.
    """
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from onnxruntime.quantization.shape_inference import quant_pre_process

    with tempfile.TemporaryDirectory() as tmp:
        pre = Path(tmp) / "pre.onnx"
        # Shape inference and graph cleanup first, as ONNX Runtime recommends before quantizing.
        quant_pre_process(str(src), str(pre), skip_symbolic_shape=True)
        quantize_dynamic(str(pre), str(dst), weight_type=QuantType.QUInt8, per_channel=True)


def compare_outputs(tasks: Sequence[TaskSchema], before: Mapping[str, np.ndarray],
                    after: Mapping[str, np.ndarray], targets: Mapping[str, np.ndarray],
                    ) -> tuple[dict[str, dict[str, Any]], dict[str, float]]:
    """Each task's headline metric (``KindSpec.delta_metric``, from
    :func:`mtl.metrics.task_metrics`) for both output sets, and the share of samples whose
    decoded prediction is the same."""
    m0, m1 = task_metrics(tasks, before, targets), task_metrics(tasks, after, targets)
    metrics: dict[str, dict[str, Any]] = {}
    agreement: dict[str, float] = {}
    for t in tasks:
        key, _ = kind_spec(t).delta_metric
        a, b = float(m0[t.name][key]), float(m1[t.name][key])
        metrics[t.name] = {"metric": key, "fp32": a, "int8": b,
                           "change": b - a if not (math.isnan(a) or math.isnan(b)) else math.nan}
        d0 = kind_spec(t).decode(t, before[t.name])
        d1 = kind_spec(t).decode(t, after[t.name])
        if t.kind.value == "regression":  # a value: "agrees" within 1 % of the target's std
            same = np.abs(d0 - d1) <= 0.01 * t.std
        else:
            same = d0 == d1 if d0.ndim == 1 else (d0 == d1).all(axis=1)
        agreement[t.name] = float(np.mean(same)) if len(same) else math.nan
    return metrics, agreement


@dataclass(frozen=True)
class EvalData:
    """A split to score quantization on: ``images [N, H, W, C]`` uint8, ``targets`` per task
    (NaN = missing), ``features [N, F]`` or ``None`` (:class:`mtl.splits.SplitData` fits)."""

    images: Tensor | ShardedImages
    targets: dict[str, np.ndarray]
    features: Tensor | None = None


def export_model(ckpt: Checkpoint, fmt: ExportFormat, out: Path, *,
                 quantize: Literal["int8"] | None = None, eval_data: EvalData | None = None,
                 batch_size: int = 256) -> ExportReport:
    """Write ``ckpt``'s model to ``out`` in ``fmt`` with its sidecar (``sidecar_path(out)``).

    ``quantize="int8"`` (ONNX only) writes the int8 model at ``out``; the fp32 model it came from
    is measured and discarded. With ``eval_data`` the report holds each task's metric with the
    fp32 and the int8 model and how often their predictions agree.
    """
    if fmt not in FORMATS:
        raise ExportError(f"expected a format in {sorted(FORMATS)}, found {fmt!r}")
    if out.suffix != FORMATS[fmt]:
        raise ExportError(f"{out}: expected a {FORMATS[fmt]} file name for format {fmt!r}, "
                          f"found suffix {out.suffix or 'none'!r}")
    if quantize is not None and (quantize != "int8" or fmt != "onnx"):
        raise ExportError(f"expected --quantize int8 with --format onnx, found quantize "
                          f"{quantize!r} with format {fmt!r}")
    model = ckpt.model.cpu().eval()
    example = _example(ckpt)
    wrapper = _Forward(model, [t.name for t in ckpt.tasks], len(example) == 2).eval()
    out.parent.mkdir(parents=True, exist_ok=True)
    side = sidecar(ckpt, fmt, [t.name for t in ckpt.tasks])
    report: QuantizeReport | None = None
    if fmt == "torch-export":
        torch.export.save(_export_program(wrapper, example), str(out))
    elif quantize is None:
        _write_onnx(wrapper, example, out)
    else:
        with tempfile.TemporaryDirectory() as tmp:
            fp32 = Path(tmp) / "fp32.onnx"
            _write_onnx(wrapper, example, fp32)
            quantize_onnx(fp32, out)
            report = QuantizeReport(fp32.stat().st_size, out.stat().st_size)
            if eval_data is not None:
                inputs = _inputs(eval_data.images, eval_data.features)
                before = _OnnxRunner(fp32).run_all(inputs, batch_size)
                after = _OnnxRunner(out).run_all(inputs, batch_size)
                metrics, agreement = compare_outputs(ckpt.tasks, before, after,
                                                     eval_data.targets)
                report = QuantizeReport(report.fp32_bytes, report.int8_bytes, metrics,
                                        agreement)
        side["quantization"] = {"method": "onnxruntime dynamic int8 (uint8 weights, "
                                          "per-channel)", "fp32_bytes": report.fp32_bytes}
    write_json(sidecar_path(out), side)
    return ExportReport(out, sidecar_path(out), out.stat().st_size, report)


def _inputs(images: Tensor | ShardedImages, features: Tensor | None) -> list[np.ndarray]:
    """``images [N, H, W, C]`` uint8 -> the graph's inputs (the one normalisation of
    :func:`mtl.inference.to_model_input`, so exported and eager models see identical pixels)."""
    if isinstance(images, ShardedImages):  # memory-mapped shards: read the (evaluation) split
        images = torch.from_numpy(images[:])
    x = to_model_input(images, torch.device("cpu")).contiguous().numpy()
    return [x] if features is None else [x, features.float().contiguous().numpy()]


class _OnnxRunner:
    """An ONNX Runtime CPU session over an exported file."""

    def __init__(self, path: Path) -> None:
        import onnxruntime as ort

        self.session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.output_names = [o.name for o in self.session.get_outputs()]

    def run(self, inputs: Sequence[np.ndarray]) -> list[np.ndarray]:
        if len(inputs) != len(self.input_names):
            raise ExportError(f"expected {len(self.input_names)} input(s) "
                              f"{self.input_names}, found {len(inputs)}")
        feed = dict(zip(self.input_names, inputs, strict=True))
        return [np.asarray(o) for o in self.session.run(self.output_names, feed)]

    def run_all(self, inputs: Sequence[np.ndarray], batch_size: int) -> dict[str, np.ndarray]:
        chunks: list[list[np.ndarray]] = [[] for _ in self.output_names]
        for s in range(0, len(inputs[0]), batch_size):
            for i, o in enumerate(self.run([a[s:s + batch_size] for a in inputs])):
                chunks[i].append(o)
        return {n: np.concatenate(c) for n, c in zip(self.output_names, chunks, strict=True)}


@dataclass(frozen=True)
class ExportedModel:
    """An exported model and its sidecar, run on the CPU (ONNX Runtime or the ``torch.export``
    program); ``predict`` returns what :func:`mtl.inference.predict` returns for the eager
    model: raw head outputs ``{task: [N, K]}`` float32."""

    path: Path
    meta: dict[str, Any]
    tasks: tuple[TaskSchema, ...]
    runner: Any

    @property
    def in_channels(self) -> int:
        return int(self.meta["image"]["channels"])

    @property
    def image_size(self) -> tuple[int, int]:
        return int(self.meta["image"]["height"]), int(self.meta["image"]["width"])

    @property
    def num_features(self) -> int:
        return len(self.meta.get("features", []))

    def predict(self, images: Tensor, features: Tensor | None = None,
                batch_size: int = 256) -> dict[str, np.ndarray]:
        """``images [N, H, W, C]`` uint8 (and ``features [N, F]``) -> ``{task: [N, K]}``."""
        if (features is None) != (self.num_features == 0):
            raise ExportError(f"{self.path}: expected {self.num_features} tabular feature(s), "
                              f"found {'none' if features is None else features.shape[1]}")
        inputs = _inputs(images, features)
        if isinstance(self.runner, _OnnxRunner):
            raw = self.runner.run_all(inputs, batch_size)
            return {t.name: raw[e["output"]] for t, e in
                    zip(self.tasks, self.meta["tasks"], strict=True)}
        chunks: dict[str, list[np.ndarray]] = {t.name: [] for t in self.tasks}
        with torch.no_grad():
            for s in range(0, len(inputs[0]), batch_size):
                outs = self.runner(*(torch.from_numpy(a[s:s + batch_size]) for a in inputs))
                for t, o in zip(self.tasks, outs, strict=True):
                    chunks[t.name].append(o.float().numpy())
        return {name: np.concatenate(c) for name, c in chunks.items()}


def load_exported(path: Path) -> ExportedModel:
    """Open an exported model (``.onnx`` or ``.pt2``) with its sidecar JSON."""
    side = sidecar_path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no exported model at {path}")
    if not side.is_file():
        raise ExportError(f"{path}: expected its sidecar JSON at {side} (written by mtl export), "
                          "found none")
    meta = read_json(side)
    if meta.get("format") != SIDECAR_FORMAT:
        raise ExportError(f"{side}: expected a sidecar of format {SIDECAR_FORMAT!r}, found "
                          f"{meta.get('format')!r}")
    tasks = tuple(TaskSchema.from_dict({"name": e["name"], "kind": e["kind"],
                                        "classes": e.get("classes", []),
                                        "mean": e.get("mean", 0.0), "std": e.get("std", 1.0)})
                  for e in meta["tasks"])
    runner: Any
    if path.suffix == FORMATS["onnx"]:
        runner = _OnnxRunner(path)
    elif path.suffix == FORMATS["torch-export"]:
        runner = torch.export.load(str(path)).module()
    else:
        raise ExportError(f"{path}: expected a {' or '.join(FORMATS.values())} file, found "
                          f"suffix {path.suffix or 'none'!r}")
    return ExportedModel(path, meta, tasks, runner)
