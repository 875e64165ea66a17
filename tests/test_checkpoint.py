"""The checkpoint format: save/load round trip, and pickle payloads refused without running."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from mtl.checkpoint import CheckpointError, build_checkpoint, load_checkpoint, save_checkpoint
from mtl.cli import main
from mtl.config import TrainConfig
from mtl.models import create_backbone, create_model, load_pretrained
from mtl.schema import TaskKind, TaskSchema
from tests.conftest import REPO_ROOT

TASKS = (TaskSchema("digit", TaskKind.MULTICLASS, "digit", classes=("0", "1", "2")),
         TaskSchema("size", TaskKind.REGRESSION, "size", mean=3.0, std=2.0))


class Payload:
    """Unpickling this runs ``os.system`` (creating ``marker``): what a hostile file does."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return os.system, (f"touch {self.marker}",)


def _model_checkpoint(tmp_path: Path) -> tuple[torch.nn.Module, Path]:
    model = create_model("hps", "smallcnn", TASKS, in_channels=1)
    payload = build_checkpoint(model.state_dict(), {"tasks": [t.to_dict() for t in TASKS]},
                               TrainConfig(), 1, (16, 16), 0, 2, 0.5)
    path = tmp_path / "model.pt"
    save_checkpoint(path, payload)
    return model, path


def test_checkpoint_round_trip(tmp_path: Path) -> None:
    model, path = _model_checkpoint(tmp_path)
    ckpt = load_checkpoint(path)
    assert ckpt.tasks == TASKS and ckpt.meta["image_size"] == [16, 16]
    assert ckpt.raw["best_epoch"] == 2 and ckpt.raw["format"] == "mtl.checkpoint/1"
    for k, v in model.state_dict().items():
        assert torch.equal(v, ckpt.model.state_dict()[k]), k
    assert not list(tmp_path.glob("*.tmp"))


def test_checkpoint_with_pickle_payload_is_refused_and_never_runs(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _, path = _model_checkpoint(tmp_path)
    marker = tmp_path / "payload-ran"
    raw = torch.load(path, weights_only=True)
    raw["schema"]["evil"] = Payload(marker)
    torch.save(raw, path)  # full pickle: the payload runs on a plain torch.load
    with pytest.raises(CheckpointError, match="refused to load this model checkpoint"):
        load_checkpoint(path)
    assert not marker.exists()
    assert main(["evaluate", "--params", str(REPO_ROOT / "params.yaml"), "--model", str(path),
                 "--augmented", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "refused to load" in err and "Nothing in it was run" in err
    assert not marker.exists()
    torch.load(path, weights_only=False)  # the control: the payload is real
    assert marker.exists()


def test_pretrained_file_with_pickle_payload_is_refused(tmp_path: Path) -> None:
    backbone = create_backbone("smallcnn", in_channels=1)
    marker = tmp_path / "payload-ran"
    path = tmp_path / "weights.pt"
    torch.save({"state_dict": backbone.state_dict(), "meta": Payload(marker)}, path)
    with pytest.raises(CheckpointError, match=r"train\.pretrained weights file"):
        load_pretrained(backbone, path)
    assert not marker.exists()
    torch.save(backbone.state_dict(), path)  # the same weights as a plain state dict load
    assert load_pretrained(backbone, path).clean


def test_not_a_checkpoint_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "model.pt"
    torch.save({"weights": torch.zeros(2)}, path)
    with pytest.raises(CheckpointError, match="expected an mtl checkpoint"):
        load_checkpoint(path)
