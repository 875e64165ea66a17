"""`mtl export`: ONNX and torch.export programs equal the eager model; int8 quantization.

Every architecture in the registry is exported in both formats, with and without tabular
features, and run on a generated test split: ONNX through ONNX Runtime on the CPU, the
``.pt2`` program through ``torch.export.load``. A server's view is tested too: the outputs are
decoded from the sidecar JSON and ONNX Runtime alone, without mtl.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pandas as pd
import pytest
import torch

from mtl.checkpoint import Checkpoint, build_checkpoint, load_checkpoint, save_checkpoint
from mtl.cli import main
from mtl.config import TrainConfig
from mtl.export import ExportError, export_model, load_exported, sidecar_path
from mtl.inference import predict, prediction_columns
from mtl.models import create_model, list_architectures
from mtl.schema import TaskKind, TaskSchema
from mtl.tasks import masked_task_loss

# Two tasks keep the graphs (and the exporter's time) small; the kinds' decoding is covered by
# the four-kind tests below and in tests/test_predict.py.
PARITY_TASKS = (TaskSchema("colour", TaskKind.MULTICLASS, "colour", classes=("r", "g", "b")),
                TaskSchema("year", TaskKind.REGRESSION, "year", mean=2000.0, std=10.0))
TASKS = (TaskSchema("shape", TaskKind.MULTICLASS, "shape", classes=("left", "right", "none")),
         TaskSchema("bright", TaskKind.BINARY, "bright", classes=("dark", "light")),
         TaskSchema("level", TaskKind.REGRESSION, "level", mean=100.0, std=40.0),
         TaskSchema("tags", TaskKind.MULTILABEL, "tags", classes=("top", "bottom")))
SIZE = (20, 20)


def _checkpoint(arch: str, tasks: tuple[TaskSchema, ...], num_features: int,
                seed: int = 0) -> Checkpoint:
    """A fixed-seed model whose BatchNorm statistics are not the initial ones (a few forward
    passes in train mode), so an export that ran in train mode would differ from eval."""
    torch.manual_seed(seed)
    model = create_model(arch, "smallcnn", tasks, in_channels=1, num_features=num_features)
    model.train()
    with torch.no_grad():
        for _ in range(3):
            model(torch.randn(8, 1, *SIZE) * 0.5 + 0.3,
                  torch.randn(8, num_features) if num_features else None)
    model.eval()
    features = [{"column": f"f__x{i}", "source": f"x{i}",
                 "encoder": {"type": "standardise", "mean": 1.0, "std": 2.0}}
                for i in range(num_features)]
    schema = {"tasks": [t.to_dict() for t in tasks], "features": features}
    meta = {"architecture": arch, "backbone": "smallcnn", "in_channels": 1,
            "image_size": list(SIZE), "num_features": num_features}
    return Checkpoint(model, tasks, schema, meta, {})


def _test_split(n: int, num_features: int, seed: int = 1) -> tuple[torch.Tensor,
                                                                     torch.Tensor | None]:
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n, *SIZE, 1), dtype=torch.uint8, generator=g)
    return images, (torch.randn(n, num_features, generator=g) if num_features else None)


@pytest.mark.parametrize("num_features", [0, 3], ids=["images", "features"])
@pytest.mark.parametrize("arch", list_architectures())
def test_exported_outputs_equal_eager_outputs(arch: str, num_features: int,
                                              tmp_path: Path) -> None:
    ckpt = _checkpoint(arch, PARITY_TASKS, num_features)
    images, features = _test_split(7, num_features)
    eager = predict(ckpt.model, images, torch.device("cpu"), 4, features)
    for fmt, name in (("onnx", "m.onnx"), ("torch-export", "m.pt2")):
        report = export_model(ckpt, fmt, tmp_path / name)  # type: ignore[arg-type]
        exported = load_exported(report.model)
        # Batches of 4 then 3, neither the trace's batch of 2: the batch dimension is dynamic.
        got = exported.predict(images, features, batch_size=4)
        assert list(got) == [t.name for t in PARITY_TASKS]
        for t in PARITY_TASKS:
            assert got[t.name].shape == eager[t.name].shape
            np.testing.assert_allclose(got[t.name], eager[t.name], rtol=0, atol=1e-4,
                                       err_msg=f"{arch} {fmt} task {t.name}")
    proto = onnx.load(str(tmp_path / "m.onnx"))
    assert max(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")) >= 17
    batch_dim = proto.graph.input[0].type.tensor_type.shape.dim[0]
    assert batch_dim.dim_param and not batch_dim.dim_value  # symbolic, not a fixed size


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


def test_a_server_decodes_onnx_outputs_from_the_sidecar_alone(tmp_path: Path) -> None:
    """What a server without mtl does: read the sidecar, normalise, run ONNX Runtime, decode."""
    ckpt = _checkpoint("hps", TASKS, 2)
    images, features = _test_split(6, 2)
    export_model(ckpt, "onnx", tmp_path / "m.onnx")
    side = json.loads(sidecar_path(tmp_path / "m.onnx").read_text())
    assert side["image"] == {**side["image"], "height": 20, "width": 20, "channels": 1,
                             "colour_mode": "L", "layout": "NCHW"}
    assert [i["name"] for i in side["inputs"]] == ["image", "features"]
    assert side["inputs"][1]["shape"] == ["batch", 2]
    assert side["features"] == ckpt.schema["features"]  # the encoders, to build the inputs
    norm = side["normalisation"]
    pixels = images.numpy().transpose(0, 3, 1, 2).astype(np.float32)
    x = (pixels * norm["scale"] - np.array(norm["mean"], np.float32)[:, None, None]) \
        / np.array(norm["std"], np.float32)[:, None, None]
    session = ort.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
    outs = session.run([t["output"] for t in side["tasks"]],
                       {"image": x, "features": features.numpy()})  # type: ignore[union-attr]
    decoded: dict[str, list[object]] = {}
    for t, o in zip(side["tasks"], outs, strict=True):
        if t["kind"] == "multiclass":
            decoded[t["name"]] = [t["classes"][i] for i in o.argmax(1)]
        elif t["kind"] == "binary":
            decoded[t["name"]] = [t["classes"][int(v > 0)] for v in o[:, 0]]
        elif t["kind"] == "regression":
            decoded[t["name"]] = list(o[:, 0] * t["std"] + t["mean"])
        else:
            decoded[t["name"]] = ["|".join(c for c, on in zip(t["classes"], row > 0, strict=True)
                                           if on) for row in o]
    expected = prediction_columns(TASKS, predict(ckpt.model, images, torch.device("cpu"), 8,
                                                 features))
    for t in TASKS:
        if t.kind is TaskKind.REGRESSION:
            np.testing.assert_allclose(decoded[t.name], expected[t.name], atol=1e-3)
        else:
            assert decoded[t.name] == list(expected[t.name]), t.name


def test_export_refuses_what_it_cannot_do(tmp_path: Path) -> None:
    ckpt = _checkpoint("hps", PARITY_TASKS, 0)
    with pytest.raises(ExportError, match=r"expected a \.pt2 file name"):
        export_model(ckpt, "torch-export", tmp_path / "m.onnx")
    with pytest.raises(ExportError, match="expected --quantize int8 with --format onnx"):
        export_model(ckpt, "torch-export", tmp_path / "m.pt2", quantize="int8")
    (tmp_path / "lonely.onnx").write_bytes(b"")
    with pytest.raises(ExportError, match="expected its sidecar JSON"):
        load_exported(tmp_path / "lonely.onnx")


# ---------------------------------------------------------------------------------------------
# int8 quantization of a (briefly) trained model, through the CLI


def _patterns(n: int, seed: int) -> tuple[np.ndarray, pd.DataFrame]:
    """Images whose labels follow from the pixels: a bright left/right/no bar (shape), overall
    brightness (bright, level), bright top/bottom rows (tags)."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 60, (n, *SIZE, 1)).astype(np.uint8)
    shape, tags, level = rng.integers(0, 3, n), rng.integers(0, 2, (n, 2)), rng.uniform(0, 200, n)
    for i in range(n):
        images[i] += np.uint8(level[i] * 0.25)
        if shape[i] < 2:
            images[i, :, (0, 10)[shape[i]]:(10, 20)[shape[i]]] = 250
        if tags[i, 0]:
            images[i, :3] = 255
        if tags[i, 1]:
            images[i, -3:] = 255
    labels = pd.DataFrame({"shape": shape.astype(np.float32),
                           "bright": (level > 100).astype(np.float32),
                           "level": ((level - 100.0) / 40.0).astype(np.float32),
                           "tags": [list(map(float, r)) for r in tags]})
    return images, labels


def _trained_checkpoint(path: Path) -> None:
    torch.manual_seed(0)
    model = create_model("hps", "smallcnn", TASKS, in_channels=1)
    images, labels = _patterns(256, 0)
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1
    targets = [torch.tensor(np.stack(labels[t.name].to_numpy()) if t.kind is TaskKind.MULTILABEL
                            else labels[t.name].to_numpy(), dtype=torch.float32) for t in TASKS]
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    model.train()
    for step in range(40):  # a few steps: enough for confident, mostly right outputs
        idx = torch.arange(step * 32, step * 32 + 32) % len(x)
        out = model(x[idx])
        loss = sum(masked_task_loss(t, out[t.name], y[idx])[0]
                   for t, y in zip(TASKS, targets, strict=True))
        opt.zero_grad()
        loss.backward()  # type: ignore[union-attr]
        opt.step()
    model.eval()
    save_checkpoint(path, build_checkpoint(
        model.state_dict(), {"tasks": [t.to_dict() for t in TASKS]},
        TrainConfig(architecture="hps", backbone="smallcnn"), 1, SIZE, 0, 0, 0.0))


def test_quantize_int8_writes_a_smaller_model_that_mostly_agrees(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _trained_checkpoint(tmp_path / "model.pt")
    split = tmp_path / "augmented" / "test"
    split.mkdir(parents=True)
    images, labels = _patterns(96, 1)
    np.save(split / "images-00000.npy", images)
    labels.to_parquet(split / "labels.parquet", index=False)
    int8 = tmp_path / "int8.onnx"
    assert main(["export", "--model", str(tmp_path / "model.pt"), "--out", str(int8),
                 "--quantize", "int8", "--eval-split", str(split)]) == 0
    printed = capsys.readouterr().out
    side = json.loads(sidecar_path(int8).read_text())
    fp32_bytes = side["quantization"]["fp32_bytes"]
    model = load_checkpoint(tmp_path / "model.pt").model
    assert fp32_bytes >= 4 * sum(p.numel() for p in model.parameters())  # really the fp32 size
    assert int8.stat().st_size < 0.5 * fp32_bytes
    assert f"{fp32_bytes / 1e6:.2f} MB -> {int8.stat().st_size / 1e6:.2f} MB" in printed
    for t in TASKS:
        assert f"export: {t.name}: " in printed, printed
    # The int8 model's decoded predictions mostly agree with the fp32 (eager) model's; the fp32
    # ONNX model equals the eager one (test_exported_outputs_equal_eager_outputs).
    x = torch.from_numpy(images)
    a = prediction_columns(TASKS, predict(model, x, torch.device("cpu"), 64))
    b = prediction_columns(TASKS, load_exported(int8).predict(x))
    for t in TASKS:
        if t.kind is TaskKind.REGRESSION:
            assert np.mean(np.abs(a[t.name] - b[t.name]) < 0.1 * t.std) >= 0.9
        else:
            assert (a[t.name] == b[t.name]).mean() >= 0.9, t.name
    # Sanity: the model learnt something (else agreement would prove little).
    assert (a["shape"] == np.array(TASKS[0].classes)[labels["shape"].astype(int)]).mean() > 0.6


def test_quantize_needs_onnx(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ckpt = _checkpoint("hps", PARITY_TASKS, 0)
    save_checkpoint(tmp_path / "m.pt", {"state_dict": ckpt.model.state_dict(),
                                        "schema": ckpt.schema, "model": ckpt.meta})
    assert main(["export", "--model", str(tmp_path / "m.pt"), "--format", "torch-export",
                 "--quantize", "int8"]) == 2
    assert "expected --quantize int8 with --format onnx" in capsys.readouterr().err
