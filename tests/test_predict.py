"""Prediction: checkpoint -> labels in the user's vocabulary, for files and folders."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import torch

from mtl.cli import main
from mtl.models import create_model
from mtl.predict import decode_predictions
from mtl.schema import TaskKind, TaskSchema
from tests.conftest import write_png

TASKS = (TaskSchema("colour", TaskKind.MULTICLASS, "colour", classes=("red", "green", "blue")),
         TaskSchema("sale", TaskKind.BINARY, "sale", classes=("no", "yes")),
         TaskSchema("year", TaskKind.REGRESSION, "year", mean=2000.0, std=10.0),
         TaskSchema("tags", TaskKind.MULTILABEL, "tags", classes=("a", "b")))


def test_decode_predictions_uses_the_vocabulary() -> None:
    frame = decode_predictions(TASKS, {
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
