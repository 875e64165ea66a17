"""Knowledge distillation from the single-task baselines: the loss per kind, the teachers' file
format and its checks, the teach stage (off: a constant marker, nothing read), the config, and
a tiny training run that follows its teacher."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml

from mtl.baseline import baseline_config
from mtl.checkpoint import CheckpointError, build_checkpoint, save_checkpoint
from mtl.cli import main
from mtl.config import ConfigError, DistillConfig, validate_params
from mtl.delta import skipped_baseline
from mtl.distill import (
    TEACHERS_FILE,
    TeacherError,
    disabled_marker,
    distill_task_loss,
    read_teachers,
    teacher_manifest,
    write_teachers,
)
from mtl.inference import predict
from mtl.models import create_model
from mtl.splits import BatchDataset, SplitData, load_split_data
from mtl.tasks import kind_spec, masked_task_loss
from mtl.teach import teach_stage
from mtl.train import fit, state_path, train_stage
from tests.conftest import REPO_ROOT
from tests.test_baseline import _stage_inputs
from tests.test_train import TASKS, make_split, tiny_cfg

A, B, C, D = TASKS  # multiclass (3), binary, regression, multilabel (3)


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(-1, keepdims=True))
    return np.asarray(e / e.sum(-1, keepdims=True))


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return np.asarray(1 / (1 + np.exp(-x)))


# ----------------------------------------------------------------------------- the loss
def test_multiclass_soft_loss_is_t_squared_kl_of_softened_softmaxes() -> None:
    z = np.array([[1.0, 2.0, 0.0], [0.5, -1.0, 2.0]])
    s = np.array([[0.0, 1.0, 3.0], [2.0, 0.0, -1.0]])
    for t in (1.0, 2.0, 4.0):
        p, q = _softmax(s / t), _softmax(z / t)
        expected = t * t * float(np.mean(np.sum(p * (np.log(p) - np.log(q)), axis=1)))
        got = kind_spec(A).soft_loss(torch.tensor(z), torch.tensor(s), t)
        assert float(got) == pytest.approx(expected, rel=1e-6), t
    # T² scaling: for T=2 the loss is 4 × the KL of the softened distributions (not the KL alone)
    p, q = _softmax(s / 2), _softmax(z / 2)
    kl = float(np.mean(np.sum(p * (np.log(p) - np.log(q)), axis=1)))
    assert float(kind_spec(A).soft_loss(torch.tensor(z), torch.tensor(s), 2.0)) == \
        pytest.approx(4 * kl, rel=1e-6)


def test_multiclass_teacher_equal_to_student_gives_zero_soft_loss() -> None:
    z = torch.tensor([[1.0, 2.0, 0.0], [0.5, -1.0, 2.0]])
    assert float(kind_spec(A).soft_loss(z, z.clone(), 3.0)) == pytest.approx(0.0, abs=1e-7)
    # shifted logits are the same distribution: zero too (a loss on raw logits would not be)
    assert float(kind_spec(A).soft_loss(z, z + 5.0, 3.0)) == pytest.approx(0.0, abs=1e-6)


@pytest.mark.parametrize("task", [B, D])
def test_sigmoid_soft_loss_is_t_squared_bernoulli_kl(task: Any) -> None:
    k = 1 if task is B else 3
    rng = np.random.default_rng(0)
    z, s = rng.normal(0, 2, (4, k)), rng.normal(0, 2, (4, k))
    for t in (1.0, 3.0):
        p, q = _sigmoid(s / t), _sigmoid(z / t)
        kl = p * np.log(p / q) + (1 - p) * np.log((1 - p) / (1 - q))  # per output [4, k]
        got = kind_spec(task).soft_loss(torch.tensor(z), torch.tensor(s), t)
        assert float(got) == pytest.approx(t * t * float(kl.mean()), rel=1e-6)
    zt = torch.tensor(z)
    assert float(kind_spec(task).soft_loss(zt, zt.clone(), 2.0)) == pytest.approx(0, abs=1e-7)


def test_regression_soft_loss_is_mse_and_ignores_the_temperature() -> None:
    z, s = torch.tensor([[1.0], [2.0], [-1.0]]), torch.tensor([[0.0], [2.5], [1.0]])
    expected = (1.0 + 0.25 + 4.0) / 3
    assert float(kind_spec(C).soft_loss(z, s, 1.0)) == pytest.approx(expected)
    assert float(kind_spec(C).soft_loss(z, s, 7.0)) == pytest.approx(expected)


@pytest.mark.parametrize("task", TASKS)
def test_weight_mixes_hard_and_soft_on_labelled_rows_only(task: Any) -> None:
    torch.manual_seed(0)
    k = kind_spec(task).head_size(task)
    z = torch.randn(6, k, requires_grad=True)
    s = torch.randn(6, k)
    y = make_split(6, 3).targets[task.name].copy()
    y[[1, 4]] = np.nan  # two rows without the label
    target = torch.from_numpy(y)
    s_bad = s.clone()
    s_bad[[1, 4]] = 1e6  # an unlabelled row's teacher output must not count
    hard, n = masked_task_loss(task, z, target)
    keep = torch.tensor([0, 2, 3, 5])
    soft = kind_spec(task).soft_loss(z[keep].float(), s[keep], 2.0)
    assert n == 4
    w0, n0 = distill_task_loss(task, z, target, s_bad, 0.0, 2.0)
    w1, n1 = distill_task_loss(task, z, target, s_bad, 1.0, 2.0)
    wq, _ = distill_task_loss(task, z, target, s_bad, 0.25, 2.0)
    assert (n0, n1) == (4, 4)
    assert torch.equal(w0, hard)  # exactly the plain loss
    assert torch.equal(w1, soft)  # exactly the soft loss
    assert float(wq.detach()) == pytest.approx(
        0.75 * float(hard.detach()) + 0.25 * float(soft.detach()), rel=1e-6)


def test_no_labelled_row_gives_a_connected_zero() -> None:
    z = torch.randn(3, 3, requires_grad=True)
    loss, n = distill_task_loss(A, z, torch.full((3,), float("nan")), torch.randn(3, 3), 0.5, 2.0)
    assert n == 0 and float(loss.detach()) == 0.0
    loss.backward()
    assert z.grad is not None and torch.equal(z.grad, torch.zeros_like(z))


# ----------------------------------------------------------------------------- the file format
def _outputs(n: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {t.name: rng.normal(size=(n, kind_spec(t).head_size(t))).astype(np.float32)
            for t in TASKS}


def _written(tmp_path: Path, n: int = 5, fingerprint: str = "f" * 64) -> Path:
    outputs = _outputs(n)
    manifest = teacher_manifest(TASKS, outputs, {t.name: "0" * 64 for t in TASKS}, fingerprint)
    write_teachers(tmp_path / "teachers", manifest, outputs)
    return tmp_path / "teachers"


def test_teacher_files_round_trip(tmp_path: Path) -> None:
    folder = _written(tmp_path)
    got = read_teachers(folder, TASKS, 5, "f" * 64)
    for name, array in _outputs(5).items():
        assert got[name].dtype == np.float32 and np.array_equal(got[name], array)
    manifest = json.loads((folder / TEACHERS_FILE).read_text())
    assert manifest["enabled"] is True and manifest["n"] == 5
    assert manifest["tasks"]["a"] == {
        "kind": "multiclass", "head": 3, "n": 5, "checkpoint_sha256": "0" * 64,
        "sha256": hashlib.sha256(_outputs(5)["a"].tobytes()).hexdigest()}


@pytest.mark.parametrize("case,message", [
    ("rows", "expected teacher outputs for this training split (6 rows"),
    ("fingerprint", "fingerprint eeeeeeeeeeeeeeee), found 5 rows, fingerprint ffffffffffffffff"),
    ("missing_task", "found none for 'd'"),
    ("head", "expected the teacher output of task 'a' of shape [5, 3] (multiclass), found "
             "shape [5, 2]"),
    ("disabled", "expected teacher outputs written with train.distill.enabled true"),
    ("absent", "found no such file; run `dvc repro teach` (or `mtl teach`)"),
])
def test_misaligned_teachers_are_refused(case: str, message: str, tmp_path: Path) -> None:
    folder = _written(tmp_path)
    n, fingerprint = 5, "f" * 64
    if case == "rows":
        n = 6
    elif case == "fingerprint":
        fingerprint = "e" * 64
    elif case == "missing_task":
        (folder / "d.npy").unlink()
    elif case == "head":
        np.save(folder / "a.npy", np.zeros((5, 2), np.float32))
    elif case == "disabled":
        write_teachers(folder, None, {})
    else:
        folder = tmp_path / "nowhere"
    with pytest.raises(TeacherError, match="teach") as err:
        read_teachers(folder, TASKS, n, fingerprint)
    assert message in str(err.value)


def test_a_changed_teacher_array_is_refused(tmp_path: Path) -> None:
    """teachers.json binds each <task>.npy's content: rows shuffled (or the file of another
    teach run with the same shape) would silently pair row i's target with another row's
    teacher output; the split's fingerprint alone does not see it."""
    folder = _written(tmp_path)
    a = np.load(folder / "a.npy")
    np.save(folder / "a.npy", a[::-1].copy())  # same shape, same values, rows reversed
    with pytest.raises(TeacherError) as err:
        read_teachers(folder, TASKS, 5, "f" * 64)
    assert "'a'" in str(err.value) and "sha256" in str(err.value)
    assert "run `dvc repro teach`" in str(err.value)


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_teacher_outputs_are_refused(bad: float, tmp_path: Path) -> None:
    """A teacher output NaN/inf would make the task's loss non-finite mid-training (reported
    as a training divergence); the teach stage and the train stage refuse it, naming the task
    and the row."""
    outputs = _outputs(5)
    outputs["c"][3, 0] = bad
    with pytest.raises(TeacherError) as err:
        teacher_manifest(TASKS, outputs, {t.name: "0" * 64 for t in TASKS}, "f" * 64)
    assert "'c'" in str(err.value) and "row 3" in str(err.value)
    folder = _written(tmp_path)
    c = np.load(folder / "c.npy")
    c[3, 0] = bad
    np.save(folder / "c.npy", c)
    manifest = json.loads((folder / TEACHERS_FILE).read_text())
    manifest["tasks"]["c"]["sha256"] = hashlib.sha256(c.tobytes()).hexdigest()  # content "valid"
    (folder / TEACHERS_FILE).write_text(json.dumps(manifest))
    with pytest.raises(TeacherError) as err:
        read_teachers(folder, TASKS, 5, "f" * 64)
    assert "'c'" in str(err.value) and "row 3" in str(err.value) and "non-finite" in str(err.value)


# ----------------------------------------------------------------------------- the teach stage
def test_teach_off_writes_a_constant_marker_and_reads_nothing(tmp_path: Path) -> None:
    nowhere = tmp_path / "does-not-exist"
    result = teach_stage(False, {}, nowhere / "augmented", nowhere / "baselines",
                         echo=lambda _: None)
    assert result.manifest is None and result.outputs == {}
    written = []
    for run in range(2):  # through the CLI: no schema, data or baselines exist
        out = tmp_path / f"teachers{run}"
        code = main(["teach", "--params", str(REPO_ROOT / "params.yaml"),
                     "--selected", str(nowhere), "--augmented", str(nowhere),
                     "--baselines", str(nowhere), "--out", str(out)])
        assert code == 0
        assert sorted(p.name for p in out.iterdir()) == [TEACHERS_FILE]
        written.append((out / TEACHERS_FILE).read_bytes())
    assert written[0] == written[1] == disabled_marker()
    assert json.loads(written[0]) == {"format": "mtl.teachers/1", "enabled": False}


def _baselines(tmp_path: Path, skip: str | None = None) -> Path:
    """Untrained single-task checkpoints per task (their outputs are all teach needs)."""
    folder = tmp_path / "baselines"
    cfg = tiny_cfg(tmp_path)
    for t in TASKS:
        if t.name == skip:
            save_checkpoint(folder / f"{t.name}.pt", skipped_baseline(t.name, "evaluate."
                                                                      "baselines is false"))
            continue
        torch.manual_seed(TASKS.index(t))
        model = create_model("hps", cfg.backbone, (t,), in_channels=1,
                             architecture_kwargs=cfg.architecture_kwargs,
                             backbone_kwargs=cfg.backbone_kwargs)
        schema = {"tasks": [t.to_dict()]}
        save_checkpoint(folder / f"{t.name}.pt",
                        build_checkpoint(model.state_dict(), schema, cfg, 1, [12, 12], 0, 0, 0.5))
    return folder


def test_teach_on_writes_each_baselines_outputs_on_the_training_split(tmp_path: Path) -> None:
    schema, _, augmented = _stage_inputs(tmp_path)
    baselines = _baselines(tmp_path)
    result = teach_stage(True, schema, augmented, baselines, "cpu", 40, echo=lambda _: None)
    train = load_split_data(augmented, "train", TASKS)
    assert result.manifest is not None
    assert result.manifest["n"] == 96 and result.manifest["train_fingerprint"] == \
        train.fingerprint()
    from mtl.checkpoint import load_checkpoint

    for t in TASKS:
        expected = predict(load_checkpoint(baselines / f"{t.name}.pt").model, train.images,
                           torch.device("cpu"), 96)[t.name]
        np.testing.assert_allclose(result.outputs[t.name], expected, rtol=1e-5, atol=1e-6)
    write_teachers(tmp_path / "teachers", result.manifest, result.outputs)
    got = read_teachers(tmp_path / "teachers", TASKS, len(train), train.fingerprint())
    assert set(got) == {t.name for t in TASKS}


@pytest.mark.parametrize("skip", ["b", "missing"])
def test_teach_on_refuses_a_skipped_or_missing_baseline(skip: str, tmp_path: Path) -> None:
    schema, _, augmented = _stage_inputs(tmp_path)
    baselines = _baselines(tmp_path, skip="b" if skip == "b" else None)
    if skip == "missing":
        (baselines / "c.pt").unlink()
    with pytest.raises((CheckpointError, FileNotFoundError)) as err:
        teach_stage(True, schema, augmented, baselines, "cpu", echo=lambda _: None)
    name = "b" if skip == "b" else "c"
    assert f"task {name!r}" in str(err.value) and str(baselines / f"{name}.pt") in str(err.value)
    assert "evaluate.baselines: true" in str(err.value)


@pytest.mark.parametrize("field,value", [("image_size", [16, 16]), ("in_channels", 3),
                                         ("num_features", 2)])
def test_teach_refuses_a_baseline_trained_on_other_inputs(field: str, value: Any,
                                                          tmp_path: Path) -> None:
    """A stale baseline (other image size, channels or tabular features than the training
    split, e.g. `mtl teach` run by hand after the augment stage changed) would still run on
    these images (the backbone pools globally) and give meaningless soft targets: refused."""
    schema, _, augmented = _stage_inputs(tmp_path)
    baselines = _baselines(tmp_path)
    raw = torch.load(baselines / "b.pt", weights_only=True)
    raw["model"][field] = value
    save_checkpoint(baselines / "b.pt", raw)
    with pytest.raises(CheckpointError) as err:
        teach_stage(True, schema, augmented, baselines, "cpu", echo=lambda _: None)
    assert str(baselines / "b.pt") in str(err.value) and "rerun its baseline stage" in str(
        err.value)
    assert "[12, 12] images, 1 channel(s), 0 tabular feature(s)" in str(err.value)


# ----------------------------------------------------------------------------- config and DVC
def _params(**distill: Any) -> dict[str, Any]:
    raw = yaml.safe_load((REPO_ROOT / "params.yaml").read_text())
    raw["train"]["distill"] = {**raw["train"]["distill"], **distill}
    return raw


def test_config_defaults_off_and_per_task_overrides() -> None:
    d = validate_params(_params(task_weights={"left": 0.2}, task_temperatures={"right": 5.0})
                        ).train.distill
    assert d == DistillConfig(False, 0.5, 2.0, {"left": 0.2}, {"right": 5.0})
    assert (d.task_weight("left"), d.task_weight("right")) == (0.2, 0.5)
    assert (d.task_temperature("left"), d.task_temperature("right")) == (2.0, 5.0)


@pytest.mark.parametrize("distill,problem", [
    ({"task_weights": {"lefty": 0.3}},
     "params.train.distill.task_weights: unknown task(s) ['lefty'] (tasks: ['left', 'right'])"),
    ({"task_temperatures": {"Right": 2.0}},
     "params.train.distill.task_temperatures: unknown task(s) ['Right']"),
    ({"weight": 1.5}, "params.train.distill.weight: expected a value in [0, 1], found 1.5"),
    ({"task_weights": {"left": -0.1}},
     "params.train.distill.task_weights.left: expected >= 0"),
    ({"temperature": 0.0}, "params.train.distill.temperature: expected > 0"),
    ({"enabled": "yes"}, "params.train.distill.enabled: expected true or false"),
])
def test_config_errors(distill: dict[str, Any], problem: str) -> None:
    with pytest.raises(ConfigError) as err:
        validate_params(_params(**distill))
    assert any(p.startswith(problem) for p in err.value.problems), err.value.problems


def test_distillation_without_baselines_is_a_config_error() -> None:
    """The teachers are the baseline stages' models: with evaluate.baselines false they are
    "skipped" markers and teach could only fail after every data stage ran; the config says so
    before any stage runs."""
    raw = _params(enabled=True)
    raw["evaluate"]["baselines"] = False
    with pytest.raises(ConfigError) as err:
        validate_params(raw)
    assert any(p.startswith("params.train.distill.enabled: true needs evaluate.baselines: true")
               for p in err.value.problems), err.value.problems
    raw["train"]["distill"]["enabled"] = False  # off: baselines may be off too
    assert validate_params(raw).evaluate.baselines is False
    raw["train"]["distill"]["enabled"] = True
    raw["evaluate"]["baselines"] = True
    assert validate_params(raw).train.distill.enabled is True


def test_a_temperature_for_a_regression_task_is_a_config_error() -> None:
    """Regression's soft loss is MSE to the teacher's value: a per-task temperature for it
    would be silently ignored."""
    raw = _params(task_temperatures={"right": 4.0})
    raw["dataset"]["tasks"][1]["kind"] = "regression"
    with pytest.raises(ConfigError) as err:
        validate_params(raw)
    assert any(p.startswith("params.train.distill.task_temperatures: regression task(s) "
                            "['right'] have no temperature") for p in err.value.problems), \
        err.value.problems
    raw["train"]["distill"]["task_temperatures"] = {"left": 4.0}  # a classification task: fine
    assert validate_params(raw).train.distill.task_temperature("left") == 4.0


def test_a_baseline_never_distils(tmp_path: Path) -> None:
    cfg = tiny_cfg(tmp_path, distill=DistillConfig(enabled=True, weight=0.9))
    assert baseline_config(cfg, "a").distill == DistillConfig()


def test_dvc_yaml_teach_stage_wiring() -> None:
    stages = yaml.safe_load((REPO_ROOT / "dvc.yaml").read_text())["stages"]
    teach = stages["teach"]
    assert sorted(teach["params"]) == ["evaluate.batch_size", "train.device",
                                       "train.distill.enabled"]
    assert {"models/baselines", "data/augmented", "data/selected/schema.json"} <= set(
        teach["deps"])
    assert teach["outs"] == ["data/teachers"]
    assert "data/teachers" in stages["train"]["deps"]
    assert "--teachers data/teachers" in stages["train"]["cmd"]
    # train depends on the baselines only through teach
    assert "models/baselines" not in stages["train"]["deps"]


# ----------------------------------------------------------------------------- training
def _teacher_for(data: SplitData) -> dict[str, np.ndarray]:
    """Confident teacher outputs that encode the true (image-derived) labels of make_split."""
    y = data.targets
    return {"a": (np.eye(3, dtype=np.float32)[y["a"].astype(int)] * 6 - 3),
            "b": ((y["b"][:, None] * 2 - 1) * 3).astype(np.float32),
            "c": y["c"][:, None].astype(np.float32),
            "d": ((y["d"] * 2 - 1) * 3).astype(np.float32)}


def _shuffled_labels(data: SplitData, seed: int) -> SplitData:
    rng = np.random.default_rng(seed)
    return dataclasses.replace(data, targets={k: v[rng.permutation(len(v))]
                                              for k, v in data.targets.items()})


def test_distilled_student_follows_its_teacher_through_random_labels(tmp_path: Path) -> None:
    """w = 1 with random labels: the student learns the teacher's function (agreement on
    held-out images far above chance); w = 0 (labels only) learns nothing of it."""
    clean, val = make_split(192, 0), make_split(128, 1)
    noisy = dataclasses.replace(_shuffled_labels(clean, 5), teacher=_teacher_for(clean))
    agreement = {}
    for w in (0.0, 1.0):
        cfg = tiny_cfg(tmp_path / str(w), epochs=3, lr=0.02,
                       distill=DistillConfig(enabled=True, weight=w, temperature=2.0))
        model, _ = fit(TASKS[:1], noisy, val, cfg, 1, torch.device("cpu"))
        out = predict(model, val.images, torch.device("cpu"), 128)
        teacher_val = _teacher_for(val)
        agreement[w] = float(np.mean(out["a"].argmax(1) == teacher_val["a"].argmax(1)))
    assert agreement[1.0] > 0.7 and agreement[1.0] > agreement[0.0] + 0.25, agreement


def test_weight_zero_trains_bit_identically_to_distillation_off(tmp_path: Path) -> None:
    """w = 0 for every task: the same losses, batch order and RNG stream as without teachers, so
    the same weights (catches a teacher path that draws random numbers, reorders batches or
    changes the loss by a rounding); a per-task override only changes its own task."""
    train, val = make_split(64, 0, missing=0.3), make_split(16, 1)
    taught = dataclasses.replace(train, teacher=_teacher_for(make_split(64, 0)))

    def weights(name: str, data: SplitData, distill: DistillConfig) -> dict[str, torch.Tensor]:
        cfg = tiny_cfg(tmp_path / name, epochs=1, weighting="dwa", distill=distill)
        model, _ = fit(TASKS, data, val, cfg, 1, torch.device("cpu"))
        return model.state_dict()

    off = weights("off", train, DistillConfig())
    zero = weights("zero", taught, DistillConfig(enabled=True, weight=0.0))
    assert all(torch.equal(off[k], zero[k]) for k in off)
    only_a = weights("a", taught, DistillConfig(enabled=True, weight=0.0, task_weights={"a": 1.0}))
    assert not all(torch.equal(off[k], only_a[k]) for k in off)


def test_batches_carry_the_teacher_rows_of_their_samples() -> None:
    data = make_split(10, 0)
    data = dataclasses.replace(data, teacher=_teacher_for(data))
    idx = torch.tensor([7, 2, 5])
    _, _, _, teach = BatchDataset(data, TASKS)[(0, idx)]
    assert teach is not None
    for t, s in zip(TASKS, teach, strict=True):
        assert torch.equal(s, torch.from_numpy(data.teacher[t.name][[7, 2, 5]]))  # type: ignore[index]
    assert BatchDataset(make_split(10, 0), TASKS)[(0, idx)][3] is None


def test_resumable_state_is_keyed_on_the_teachers(tmp_path: Path) -> None:
    cfg = tiny_cfg(tmp_path, distill=DistillConfig(enabled=True))
    train, val = make_split(20, 0), make_split(8, 1)
    one = dataclasses.replace(train, teacher=_teacher_for(train))
    other_t = _teacher_for(train)
    other_t["c"] = other_t["c"] + 1.0
    two = dataclasses.replace(train, teacher=other_t)
    paths = {state_path(cfg, TASKS, d, val, 1, 1) for d in (train, one, two)}
    assert len(paths) == 3
    assert train.fingerprint() == make_split(20, 0).fingerprint()  # no teacher: unchanged


def test_train_stage_with_distill_on_and_no_teachers_says_to_run_teach(tmp_path: Path) -> None:
    schema, meta, augmented = _stage_inputs(tmp_path)
    cfg = tiny_cfg(tmp_path, epochs=1, distill=DistillConfig(enabled=True))
    with pytest.raises(TeacherError, match=r"run `dvc repro teach` \(or `mtl teach`\)"):
        train_stage(cfg, schema, meta, augmented, save=lambda _: None, echo=lambda _: None,
                    teachers=tmp_path / "data" / "teachers")


def test_train_stage_distils_from_the_teach_stage_and_records_it(tmp_path: Path) -> None:
    schema, meta, augmented = _stage_inputs(tmp_path)
    baselines = _baselines(tmp_path)
    result = teach_stage(True, schema, augmented, baselines, "cpu", echo=lambda _: None)
    write_teachers(tmp_path / "teachers", result.manifest, result.outputs)
    cfg = tiny_cfg(tmp_path, epochs=1, distill=DistillConfig(enabled=True, weight=0.7,
                                                             task_temperatures={"a": 3.0}))
    saved: list[dict[str, Any]] = []
    out = train_stage(cfg, schema, meta, augmented, save=saved.append, echo=lambda _: None,
                      teachers=tmp_path / "teachers")
    assert out is not None and math.isfinite(out.fit.best_score)
    assert saved[0]["distill"] == {"enabled": True, "weight": 0.7, "temperature": 2.0,
                                   "task_weights": {}, "task_temperatures": {"a": 3.0}}
    # the default run records distillation off and never reads the teachers folder
    saved.clear()
    train_stage(tiny_cfg(tmp_path / "off", epochs=1), schema, meta, augmented,
                save=saved.append, echo=lambda _: None, teachers=tmp_path / "nowhere")
    assert saved[0]["distill"]["enabled"] is False


def test_sweep_reproduces_only_the_data_stages_in_the_workspace(tmp_path: Path) -> None:
    """train now depends on teach and, through it, on the baselines; the sweep flow still
    reproduces only ingest ... augment once in the workspace (the model stages depend on the
    swept train.* keys and run per experiment)."""
    from flows.pipeline import upstream_of
    from flows.sweep import _upstream_stages
    from tests.conftest import make_project

    project = make_project(tmp_path / "proj")
    assert upstream_of(project, "train") == ["ingest", "clean", "select", "augment",
                                             "baseline@task0", "baseline@task1", "teach"]
    assert _upstream_stages(project) == ["ingest", "clean", "select", "augment"]
