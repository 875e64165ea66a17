"""One source of defaults: the config classes. ``params.yaml`` and README.md's parameter tables
must agree with them, key by key."""

from __future__ import annotations

import re
from enum import Enum
from typing import Any

import pytest
import yaml

from mtl.config import DistillConfig, Params, TaskConfig
from tests.conftest import REPO_ROOT

REQUIRED = object()  # a key without a default
_ABSENT = object()  # a key params.yaml does not have

# The ONE place where params.yaml deliberately differs from the defaults, with the reason.
# The dataset section describes the shipped MultiMNIST dataset (written by `mtl ingest`), not a
# generic dataset: its location and tasks have no default, and its table has a split column.
PARAMS_YAML_DIFFERS = {
    "dataset.dir": "required: where the shipped MultiMNIST dataset is written",
    "dataset.labels": "required: the labels table of the shipped dataset",
    "dataset.tasks": "required: the two digits of MultiMNIST",
    "dataset.split_column": "MultiMNIST comes with its train/val/test split (default: none)",
}


def _plain(value: Any) -> Any:
    """Config values as YAML writes them: lists, dicts, enum values."""
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


def _sections() -> dict[str, type]:
    return {name: info.annotation for name, info in Params.__pydantic_fields__.items()}


def _defaults(cls: type, prefix: str = "") -> dict[str, Any]:
    """``{"key": default or REQUIRED}`` for every field of a section (tasks[] keys included;
    a nested section's keys as ``section.key``, e.g. ``distill.enabled``)."""
    out: dict[str, Any] = {}
    for name, info in cls.__pydantic_fields__.items():  # type: ignore[attr-defined]
        key = f"{prefix}{name}"
        if info.annotation is DistillConfig:
            out.update(_defaults(DistillConfig, prefix=f"{key}."))
            continue
        out[key] = (REQUIRED if info.is_required()
                    else _plain(info.get_default(call_default_factory=True)))
    if cls.__name__ == "DatasetConfig":
        out.update(_defaults(TaskConfig, prefix="tasks[]."))
    return out


def test_every_section_is_checked() -> None:
    assert set(_sections()) == {"dataset", "ingest", "clean", "select", "augment", "train",
                                "evaluate", "sweep"}
    assert all(cls is not None for cls in _sections().values())


@pytest.mark.parametrize("section", list(_sections()))
def test_params_yaml_equals_the_defaults(section: str) -> None:
    raw = yaml.safe_load((REPO_ROOT / "params.yaml").read_text())[section]
    wrong = {}
    for key, default in _defaults(_sections()[section]).items():
        if key.startswith("tasks[]."):
            continue  # per-task options: documented in params.yaml's comments and the README
        where = f"{section}.{key}"
        if where in PARAMS_YAML_DIFFERS:
            assert key in raw, f"{where} is listed as deliberately different but is absent"
            assert default is REQUIRED or _plain(raw[key]) != default, (
                f"{where} is listed in PARAMS_YAML_DIFFERS but equals the default: unlist it")
            continue
        value: Any = raw
        for part in key.split("."):  # a nested section's key: distill.enabled
            value = value.get(part, _ABSENT) if isinstance(value, dict) else _ABSENT
        if value is _ABSENT:
            wrong[where] = "absent from params.yaml (every key is listed there)"
        elif _plain(value) != default:
            wrong[where] = f"params.yaml {value!r} != default {default!r}"
    assert not wrong, wrong


def _readme_rows() -> dict[str, dict[str, str]]:
    """``{section: {key: default cell}}`` from README.md's "## Parameters" tables."""
    text = (REPO_ROOT / "README.md").read_text()
    part = text.split("\n## Parameters\n", 1)[1].split("\n## ", 1)[0]
    rows: dict[str, dict[str, str]] = {}
    section = None
    for line in part.splitlines():
        heading = re.match(r"### `(\w+)`", line)
        if heading:
            section = heading.group(1)
            rows[section] = {}
        elif line.startswith("| `") and section is not None:
            cells = [c.strip() for c in re.split(r"(?<!\\)\|", line)[1:-1]]
            keys = re.findall(r"`([^`]+)`", cells[0])
            values = _split_top_level(cells[1]) if len(keys) > 1 else [cells[1]]
            assert len(values) == len(keys), f"README row {line!r}: {keys} vs {values}"
            for k, v in zip(keys, values, strict=True):
                rows[section][k] = v
    return rows


def _split_top_level(cell: str) -> list[str]:
    """``0, 0.1, 0.2`` -> three cells; commas inside [...] or {...} do not split."""
    out, depth, cur = [], 0, ""
    for ch in cell:
        depth += ch in "[{"
        depth -= ch in "]}"
        if ch == "," and depth == 0:
            out.append(cur.strip())
            cur = ""
        else:
            cur += ch
    return [*out, cur.strip()]


def _readme_value(cell: str) -> Any:
    """A README default cell as a value: `required`, YAML (backticks, `\\|`, 40,000,000)."""
    text = cell.replace("`", "").replace("\\|", "|").strip()
    if text.startswith("required"):
        return REQUIRED
    if re.fullmatch(r"\d{1,3}(,\d{3})+", text):
        text = text.replace(",", "")
    return yaml.safe_load(text)


def _transform_names(value: Any) -> Any:
    # README lists transforms by class name (their arguments are in params.yaml).
    if isinstance(value, list) and value and all(isinstance(t, dict) for t in value):
        return [t["__class_fullname__"] for t in value]
    return value


@pytest.mark.parametrize("section", list(_sections()))
def test_readme_documents_every_key_with_its_default(section: str) -> None:
    documented = _readme_rows().get(section, {})
    defaults = _defaults(_sections()[section])
    assert set(documented) == set(defaults), (
        f"README `{section}` table: missing {sorted(set(defaults) - set(documented))}, "
        f"unknown {sorted(set(documented) - set(defaults))}")
    wrong = {}
    for key, default in defaults.items():
        cell = documented[key]
        value = _readme_value(cell)
        if key == "transforms":
            value = _readme_value(f"[{cell}]")
            default = _transform_names(default)
        if value is not default and value != default:
            wrong[f"{section}.{key}"] = f"README {cell!r} != default {default!r}"
    assert not wrong, wrong


def test_readme_parser_reads_what_it_compares() -> None:
    # The README check can only fail if its parser finds the rows and reads their values.
    rows = _readme_rows()
    assert rows["train"]["warmup_epochs"] == "`0.5`"
    assert _readme_value(rows["ingest"]["n_val"]) == 2000
    assert _readme_value(rows["clean"]["max_pixels"]) == 40_000_000
    assert _readme_value(rows["dataset"]["tasks[].separator"]) == "|"
    assert _readme_value("`0.0`") != _readme_value("`0.5`")


def _stage_params(stage: dict[str, Any]) -> list[str]:
    """The params keys a dvc.yaml stage names (``train``, ``train.seed``; default file only)."""
    keys: list[str] = []
    for entry in stage.get("params", []):
        keys += [entry] if isinstance(entry, str) else [k for v in entry.values() for k in v]
    return keys


def _has(tree: Any, dotted: str) -> bool:
    for part in dotted.split("."):
        if not isinstance(tree, dict) or part not in tree:
            return False
        tree = tree[part]
    return True


@pytest.mark.parametrize("params_file", ["params.yaml", "configs/fashion-product.yaml"])
def test_every_params_key_a_stage_names_is_in_the_params_file(params_file: str) -> None:
    """DVC refuses to run a stage whose params key the file does not hold ("Parameters
    'train.optimizer, ...' are missing from 'params.yaml'"), defaults notwithstanding: the
    baseline stages name train keys one by one, so a config copied over params.yaml must list
    them. The Fashion config leaves out only ``ingest`` (that stage feeds nothing there)."""
    stages = yaml.safe_load((REPO_ROOT / "dvc.yaml").read_text())["stages"]
    params = yaml.safe_load((REPO_ROOT / params_file).read_text())
    missing = {name: [k for k in _stage_params(stage) if not _has(params, k)]
               for name, stage in stages.items()
               if not (name == "ingest" and params_file != "params.yaml")}
    assert {n: m for n, m in missing.items() if m} == {}
