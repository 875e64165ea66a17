"""params.yaml -> frozen, typed config objects; every problem reported together."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from mtl.config import ConfigError, Params, TaskConfig, TrainConfig, load_params, validate_params
from mtl.schema import TaskKind
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


def _default_raw() -> dict[str, Any]:
    raw = yaml.safe_load((REPO_ROOT / "params.yaml").read_text())
    assert isinstance(raw, dict)
    return raw


def _problems(raw: dict[str, Any]) -> list[str]:
    with pytest.raises(ConfigError) as err:
        validate_params(raw)
    return err.value.problems


@pytest.mark.parametrize("name,reason", [
    ("a/b", "'/' is a path separator"),
    ("a\\b", "'\\\\' is a path separator"),
    ("a|b", "'|' is a table separator"),
    ("", "it is empty"),
    ("   ", "it is empty"),
    (" left", "leading or trailing whitespace"),
    (".hidden", "leading '.'"),
    ("a\nb", "control character"),
])
def test_task_names_that_break_paths_or_tables_are_refused(name: str, reason: str) -> None:
    raw = _default_raw()
    raw["dataset"]["tasks"][1]["name"] = name
    problems = _problems(raw)
    assert len(problems) == 1, problems
    assert problems[0].startswith("params.dataset.tasks[1].name: expected a task name usable "
                                  "as a file name and a table cell"), problems
    assert f"found {name!r}" in problems[0] and reason in problems[0], problems


@pytest.mark.parametrize("names,needle", [
    (["left", "left"], "task names must be unique, found duplicates ['left']"),
    (["Left", "left"], "task names must differ after case-folding"),
])
def test_duplicate_task_names_are_refused(names: list[str], needle: str) -> None:
    raw = _default_raw()
    for task, name in zip(raw["dataset"]["tasks"], names, strict=True):
        task["name"] = name
    problems = _problems(raw)
    assert problems == [p for p in problems if p.startswith("params.dataset.tasks: ")]
    assert any(needle in p for p in problems), problems


@pytest.mark.parametrize("key,value,needle", [
    ("epochs", True, "train.epochs: expected an integer, found bool True"),
    ("epochs", "3", "train.epochs: expected an integer, found str '3'"),
    ("epochs", 3.0, "train.epochs: expected an integer, found float 3.0"),
    ("lr", False, "train.lr: expected a number, found bool False"),
    ("lr", "2e-3", "write 2.0e-3"),
    ("lr", float("nan"), "train.lr: expected a finite number, found nan"),
    ("amp", 1, "train.amp: expected true or false, found int 1"),
    ("amp", "yes", "train.amp: expected true or false, found str 'yes'"),
    ("backbone", 18, "train.backbone: expected a string, found int 18 (quote it"),
    ("gamma", 2, "train.gamma: expected a value in (0, 1], found 2"),
    ("device", "gpu", "train.device: expected auto, cpu, cuda, cuda:N or mps, found 'gpu'"),
    ("optimizer", "adam", "train.optimizer: expected 'adamw' or 'sgd', found 'adam'"),
])
def test_yaml_values_are_not_silently_coerced(key: str, value: object, needle: str) -> None:
    raw = _default_raw()
    raw["train"][key] = value
    problems = _problems(raw)
    assert len(problems) == 1 and needle in problems[0], problems


def test_an_integer_is_a_valid_number() -> None:
    raw = _default_raw()
    raw["train"]["lr"] = 1
    raw["train"]["warmup_epochs"] = 1
    params = validate_params(raw)
    assert params.train.lr == 1.0 and isinstance(params.train.lr, float)


def test_cross_key_checks_still_run_on_a_section_with_a_type_error() -> None:
    raw = _default_raw()
    raw["select"]["seed"] = "zero"           # a field error: pydantic skips select's validator
    raw["select"]["val_fraction"] = 0.5      # ... but the cross-key check must still run
    raw["select"]["test_fraction"] = 0.6
    raw["augment"]["copies"] = 0
    raw["augment"]["keep_original"] = False
    raw["augment"]["shard_size"] = -1
    raw["dataset"]["tasks"][0].update(kind="regression", classes=["a"], casefold="no")
    problems = _problems(raw)
    assert sorted(problems) == sorted([
        "params.select.seed: expected an integer, found str 'zero'",
        "params.select: val_fraction + test_fraction must be < 1, found 1.1",
        "params.augment.shard_size: expected >= 1, found -1",
        "params.augment: copies=0 with keep_original=false leaves no training data",
        "params.dataset.tasks[0].casefold: expected true or false, found str 'no'",
        "params.dataset.tasks[0].classes: only classification tasks have classes, found "
        "classes for a regression task",
    ]), problems


def test_cross_key_checks_on_a_valid_section() -> None:
    raw = _default_raw()
    raw["dataset"]["image_template"] = "{id}.png"   # and image_column is set too
    raw["dataset"]["hierarchy"] = [["left", "middle"], ["left"]]
    raw["dataset"]["feature_columns"] = {"right": "numeric"}
    problems = _problems(raw)
    assert sorted(problems) == sorted([
        "params.dataset: expected exactly one of image_column or image_template, found "
        "image_column='image', image_template='{id}.png'",
        "params.dataset.hierarchy[1]: expected at least 2 task names (finest first), "
        "found ['left']",
        "params.dataset.feature_columns: ['right'] are task label columns; a label cannot "
        "also be an input feature",
    ]), problems  # hierarchy has a field error: its unknown-task check waits for a fix
    raw["dataset"]["hierarchy"] = [["left", "middle"]]
    problems = _problems(raw)
    assert "params.dataset.hierarchy[0]: unknown task(s) ['middle'] (tasks: ['left', " \
           "'right'])" in problems
    assert "params.dataset.feature_columns: ['right'] are task label columns; a label cannot " \
           "also be an input feature" in problems


def test_sections_are_plain_data() -> None:
    params = load_params(REPO_ROOT / "params.yaml")
    assert params.dataset.tasks[0].kind is TaskKind.MULTICLASS
    assert params.dataset.tasks[0].kind == "multiclass"  # data stages compare with strings
    dumped = params.model_dump(mode="json")
    assert json.loads(json.dumps(dumped)) == dumped
    assert dumped["dataset"]["tasks"][0]["kind"] == "multiclass"
    assert dumped["augment"]["image_size"] == [28, 28]
    assert params.train.model_dump() == dataclasses.asdict(params.train)
    # yaml.safe_dump(model_dump()) is a params.yaml that loads back to the same config.
    again = validate_params(yaml.safe_load(yaml.safe_dump(params.model_dump())))
    assert again == params
    assert isinstance(params.augment.transforms, tuple)
    assert isinstance(params.train.weighting_kwargs, dict)


def test_replace_and_direct_construction_validate() -> None:
    cfg = TrainConfig()
    assert dataclasses.replace(cfg, epochs=3).epochs == 3
    with pytest.raises(ValueError, match="greater than 0"):
        dataclasses.replace(cfg, lr=0.0)
    with pytest.raises(ValueError, match="table separator"):
        TaskConfig("a|b", "a")
    assert TaskConfig("a", "a", "binary").kind is TaskKind.BINARY


def test_unreadable_yaml_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "params.yaml"
    path.write_text("train: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_params(path)
    path.write_text("- just\n- a list\n")
    with pytest.raises(ConfigError, match=r"params: expected a mapping, found list"):
        load_params(path)
