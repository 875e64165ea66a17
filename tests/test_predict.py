"""Prediction: checkpoint -> labels in the user's vocabulary, for files and folders."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from mtl.cli import main
from mtl.inference import prediction_columns
from mtl.models import create_model
from mtl.schema import TaskKind, TaskSchema
from tests.conftest import write_png

TASKS = (TaskSchema("colour", TaskKind.MULTICLASS, "colour", classes=("red", "green", "blue")),
         TaskSchema("sale", TaskKind.BINARY, "sale", classes=("no", "yes")),
         TaskSchema("year", TaskKind.REGRESSION, "year", mean=2000.0, std=10.0),
         TaskSchema("tags", TaskKind.MULTILABEL, "tags", classes=("a", "b")))


def test_prediction_columns_use_the_vocabulary() -> None:
    frame = prediction_columns(TASKS, {
        "colour": np.array([[0.0, 3.0, 0.0]]), "sale": np.array([[-1.0]]),
        "year": np.array([[0.5]]), "tags": np.array([[1.0, 2.0]])})
    row = frame.iloc[0]
    assert row["colour"] == "green" and row["sale"] == "no" and row["tags"] == "a|b"
    assert row["year"] == 2005.0 and 0.8 < row["colour_confidence"] <= 1.0


def test_predict_cli_on_a_folder(tmp_path: Path) -> None:
    model = create_model("hps", "smallcnn", TASKS, in_channels=1)
    torch.save({"state_dict": model.state_dict(),
                "schema": {"tasks": [t.to_dict() for t in TASKS]},
                "model": {"architecture": "hps", "backbone": "smallcnn", "in_channels": 1,
                          "image_size": [20, 20], "num_features": 0}}, tmp_path / "m.pt")
    for i in range(3):  # any size and mode: resized and converted like the training data
        write_png(tmp_path / "imgs" / f"{i}.png", np.full((30 + i, 25, 3), 40 * i, np.uint8))
    out = tmp_path / "pred.csv"
    assert main(["predict", str(tmp_path / "imgs"), "--model", str(tmp_path / "m.pt"),
                 "--out", str(out)]) == 0
    frame = pd.read_csv(out)
    assert len(frame) == 3 and set(frame["colour"]) <= {"red", "green", "blue"}
    assert main(["predict", str(tmp_path / "missing"), "--model", str(tmp_path / "m.pt")]) == 2


def test_predict_skips_outside_symlinks_unreadable_and_non_images(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model = create_model("hps", "smallcnn", TASKS, in_channels=1)
    torch.save({"state_dict": model.state_dict(),
                "schema": {"tasks": [t.to_dict() for t in TASKS]},
                "model": {"architecture": "hps", "backbone": "smallcnn", "in_channels": 1,
                          "image_size": [20, 20], "num_features": 0}}, tmp_path / "m.pt")
    imgs = tmp_path / "imgs"
    for i in range(2):
        write_png(imgs / f"ok{i}.png", np.full((24, 24, 3), 60 * i, np.uint8))
    write_png(imgs / "sub" / "ok2.png", np.zeros((24, 24), np.uint8))
    write_png(tmp_path / "secret" / "outside.png", np.zeros((24, 24), np.uint8))
    (imgs / "escape.png").symlink_to(tmp_path / "secret" / "outside.png")
    (imgs / "inside.png").symlink_to(imgs / "ok0.png")  # stays inside: predicted
    (imgs / "dangling.png").symlink_to(imgs / "gone.png")  # inside, but missing
    (imgs / "notes.txt").write_text("not an image")
    (imgs / "broken.png").write_bytes(b"\x89PNG but truncated")
    expected_skipped = {"escape.png", "dangling.png", "notes.txt", "broken.png"}
    if os.geteuid() != 0:  # root reads any file, so only a normal user can test permissions
        write_png(imgs / "locked.png", np.zeros((24, 24), np.uint8))
        (imgs / "locked.png").chmod(0)
        expected_skipped.add("locked.png")
    out, skipped = tmp_path / "pred.csv", tmp_path / "skipped.csv"
    assert main(["predict", str(imgs), "--model", str(tmp_path / "m.pt"), "--out", str(out),
                 "--skipped", str(skipped)]) == 0
    predicted = {Path(f).name for f in pd.read_csv(out)["file"]}
    assert predicted == {"ok0.png", "ok1.png", "ok2.png", "inside.png"}
    listing = pd.read_csv(skipped)
    reasons = dict(zip(listing["file"].map(lambda f: Path(f).name), listing["reason"],
                       strict=True))
    assert set(reasons) == expected_skipped
    assert "symlink leads outside" in reasons["escape.png"]
    assert "not an image file" in reasons["notes.txt"]
    assert "unreadable image" in reasons["broken.png"]
    assert "broken symlink" in reasons["dangling.png"]
    err = capsys.readouterr().err
    assert all(f"{name}:" in err for name in expected_skipped), err


def test_predict_with_nothing_readable_is_a_clear_error(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model = create_model("hps", "smallcnn", TASKS, in_channels=1)
    torch.save({"state_dict": model.state_dict(),
                "schema": {"tasks": [t.to_dict() for t in TASKS]},
                "model": {"architecture": "hps", "backbone": "smallcnn", "in_channels": 1,
                          "image_size": [20, 20], "num_features": 0}}, tmp_path / "m.pt")
    (tmp_path / "imgs").mkdir()
    (tmp_path / "imgs" / "bad.png").write_bytes(b"nope")
    assert main(["predict", str(tmp_path / "imgs"), "--model", str(tmp_path / "m.pt")]) == 2
    assert "could be read" in capsys.readouterr().err


def test_predict_with_an_exported_model_matches_the_checkpoint(tmp_path: Path) -> None:
    """``mtl predict --model`` a checkpoint, its ONNX export and its torch.export program: the
    same labels for every file; the confidences, probabilities and values agree to 1e-5 (ONNX
    Runtime's kernels round differently from torch's) and exactly for the .pt2 program."""
    torch.manual_seed(0)
    model = create_model("hps", "smallcnn", TASKS, in_channels=1)
    torch.save({"state_dict": model.state_dict(),
                "schema": {"tasks": [t.to_dict() for t in TASKS]},
                "model": {"architecture": "hps", "backbone": "smallcnn", "in_channels": 1,
                          "image_size": [20, 20], "num_features": 0}}, tmp_path / "m.pt")
    rng = np.random.default_rng(0)
    for i in range(5):  # any size and mode: resized and converted like the training data
        write_png(tmp_path / "imgs" / f"{i}.png",
                  rng.integers(0, 256, (18 + 3 * i, 24, 3)).astype(np.uint8))
    frames = {}
    for name in ("m.pt", "m.onnx", "m.pt2"):
        if name != "m.pt":
            fmt = "onnx" if name.endswith(".onnx") else "torch-export"
            assert main(["export", "--model", str(tmp_path / "m.pt"), "--format", fmt,
                         "--out", str(tmp_path / name)]) == 0
        out = tmp_path / f"{name}.csv"
        assert main(["predict", str(tmp_path / "imgs"), "--model", str(tmp_path / name),
                     "--out", str(out)]) == 0
        frames[name] = pd.read_csv(out)
    ref = frames["m.pt"]
    assert len(ref) == 5
    for name in ("m.onnx", "m.pt2"):
        got = frames[name]
        assert list(got.columns) == list(ref.columns)
        for col in ("file", "colour", "sale", "tags"):  # labels: identical
            assert got[col].fillna("").tolist() == ref[col].fillna("").tolist(), (name, col)
        for col in ("colour_confidence", "sale_probability", "year"):
            np.testing.assert_allclose(got[col], ref[col], rtol=0, atol=1e-5 * (
                1 if col != "year" else 10.0), err_msg=f"{name} {col}")
    pd.testing.assert_frame_equal(frames["m.pt2"], ref)
