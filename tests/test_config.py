"""params.yaml -> frozen, typed config objects; every problem reported together."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import yaml

from mtl.config import ConfigError, Params, load_params
from tests.conftest import REPO_ROOT


def test_project_params_load() -> None:
    params = load_params(REPO_ROOT / "params.yaml")
    assert isinstance(params, Params)
    assert [t.name for t in params.dataset.tasks] == ["left", "right"]
    with pytest.raises(dataclasses.FrozenInstanceError):
        params.train.epochs = 3  # type: ignore[misc]


def test_every_problem_is_reported_at_once(tmp_path: Path) -> None:
    raw = yaml.safe_load((REPO_ROOT / "params.yaml").read_text())
    raw["train"]["epochs"] = "many"
    raw["train"]["lr"] = -1
    raw["train"]["optimiser"] = "adam"
    raw["clean"]["mode"] = "CMYK"
    raw["dataset"]["tasks"][0]["kind"] = "ranking"
    del raw["dataset"]["dir"]
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(ConfigError) as err:
        load_params(path)
    msg = str(err.value)
    for needle in ("train.epochs: expected an integer, found str 'many'", "train.lr",
                   "train.optimiser: unknown key", "clean.mode", "tasks[0].kind",
                   "dataset.dir: required key is missing"):
        assert needle in msg, needle
    assert len(err.value.problems) == 6  # no second message for the mistyped epochs


def test_missing_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="file not found"):
        load_params(tmp_path / "nope.yaml")
