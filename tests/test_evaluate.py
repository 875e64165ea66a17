"""Metrics (known answers), decoding of head outputs, and the markdown report."""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from mtl.config import CleanConfig, DatasetConfig, SelectConfig
from mtl.data.clean import clean
from mtl.data.select import select
from mtl.evaluate import evaluate_model
from mtl.metrics import classification_metrics, multilabel_metrics, regression_metrics, task_metrics
from mtl.models import create_model
from mtl.report import render_report
from mtl.schema import TaskKind, TaskSchema
from mtl.tasks import KINDS, head_size

CLS = TaskSchema("colour", TaskKind.MULTICLASS, "colour", classes=("red", "green", "blue"))
BIN = TaskSchema("sale", TaskKind.BINARY, "sale", classes=("no", "yes"))
REG = TaskSchema("year", TaskKind.REGRESSION, "year", mean=2000.0, std=10.0)
MUL = TaskSchema("tags", TaskKind.MULTILABEL, "tags", classes=("a", "b"))
CLEAN_REPORT = {"raw_rows": 40, "clean_rows": 40, "rejected_rows": 0, "rejects_by_reason": {},
                "duplicates": {}, "hierarchy": {}}
SELECT_REPORT = {"split_source": "data", "split_sizes": {"test": 40}, "groups": {},
                 "tasks": {"colour": {"kept": True, "coverage": 1.0},
                           "sale": {"kept": True, "coverage": 1.0}},
                 "features": {"kept": [], "decisions": []}}


def test_classification_metrics_known_answer() -> None:
    m = classification_metrics(np.array([0, 0, 1, 2]), np.array([0, 1, 1, 2]), 3)
    assert m["accuracy"] == 0.75
    # F1: class0 = 2/3, class1 = 2/3, class2 = 1
    assert m["macro_f1"] == pytest.approx((2 / 3 + 2 / 3 + 1) / 3)
    assert m["confusion"].tolist() == [[1, 1, 0], [0, 1, 0], [0, 0, 1]]


def test_regression_and_multilabel_metrics() -> None:
    r = regression_metrics(np.array([1.0, 3.0]), np.array([2.0, 1.0]))
    assert r["mae"] == 1.5 and r["rmse"] == pytest.approx(math.sqrt(2.5))
    m = multilabel_metrics(np.array([[1, 0], [1, 1]]), np.array([[1, 0], [0, 1]]))
    assert m["accuracy"] == 0.5 and m["micro_f1"] == pytest.approx(0.8)


def test_task_metrics_decode_outputs_and_skip_missing_labels() -> None:
    outputs = {
        "colour": np.array([[5.0, 0, 0], [0, 5.0, 0], [0, 0, 5.0]]),
        "sale": np.array([[2.0], [-2.0], [3.0]]),
        "year": np.array([[0.0], [1.0], [-1.0]]),  # standardised: 2000, 2010, 1990
        "tags": np.array([[1.0, -1.0], [1.0, 1.0], [-1.0, -1.0]]),
    }
    targets = {
        "colour": np.array([0, 2, np.nan], np.float32),
        "sale": np.array([1, 0, 0], np.float32),
        "year": np.array([0.0, 1.0, np.nan], np.float32),
        "tags": np.array([[1, 0], [1, 1], [np.nan, np.nan]], np.float32),
    }
    m = task_metrics((CLS, BIN, REG, MUL), outputs, targets)
    assert m["colour"]["n"] == 2 and m["colour"]["accuracy"] == 0.5
    assert m["sale"]["accuracy"] == pytest.approx(2 / 3)
    assert m["year"]["mae"] == pytest.approx(0.0, abs=1e-4) and m["year"]["n"] == 2
    assert m["tags"]["accuracy"] == 1.0 and m["tags"]["n"] == 2


def test_evaluate_model_and_report() -> None:
    torch.manual_seed(0)
    model = create_model("hps", "smallcnn", (CLS, REG), in_channels=1)
    images = torch.randint(0, 255, (10, 16, 16, 1), dtype=torch.uint8)
    targets = {"colour": np.arange(10, dtype=np.float32) % 3,
               "year": np.zeros(10, np.float32)}
    result = evaluate_model(model, (CLS, REG), images, targets, torch.device("cpu"), 4)
    assert set(result.metrics) == {"colour", "year"} and result.metrics["colour"]["n"] == 10
    assert "year" not in result.pairs  # regression has no confusion pairs
    actual, predicted = result.pairs["colour"]
    assert len(actual) == len(predicted) == 10
    clean_report = {
        "raw_rows": 12, "clean_rows": 10, "rejected_rows": 2,
        "rejects_by_reason": {"empty_file": 2},
        "duplicates": {"exact_duplicate_groups": 3,
                       "exact_duplicate_groups_with_conflicting_labels": 1,
                       "conflicting_duplicates_action": "reject", "near_duplicate_distance": 0,
                       "near_duplicate_groups": 2, "rows_in_near_duplicate_groups": 5},
        "hierarchy": {"type -> category": {"child_values": 4, "violating_child_values": 1,
                                           "violating_rows": 2, "action": "majority",
                                           "violations": {"Sandals": {"Shoes": 9, "Bags": 2}}}},
    }
    select_report = {
        "split_source": "data", "split_sizes": {"test": 10}, "groups": {"groups_across_splits": 0},
        "tasks": {"colour": {"kept": True, "coverage": 1.0, "rare_classes": {
            "action": "other", "min_class_count": 20, "classes": {"teal": 3},
            "merged_into": "other"}}},
        "features": {"kept": ["price"], "decisions": [
            {"feature": "name", "kept": False, "reason": "target_leak", "detail": "lift 0.99"},
            {"feature": "price", "kept": True}]},
    }
    report = render_report(result.metrics, (CLS, REG), clean_report, select_report)
    assert "empty_file: 2" in report and "| colour | multiclass | accuracy |" in report
    assert "| year | regression | rmse |" in report
    assert "1 class(es) with fewer than 20 rows merged into `other`" in report
    assert "1 with conflicting labels" in report and "split across train/val/test: 0" in report
    assert "Sandals -> {'Shoes': 9, 'Bags': 2}" in report
    assert "dropped `name`: target_leak (lift 0.99)" in report and "kept: `price`" in report


def test_report_from_real_clean_and_select_outputs(
        make_dataset: Callable[..., tuple[DatasetConfig, Path]], clean_cfg: CleanConfig) -> None:
    """The report reads the keys the data stages really write: a renamed key fails here."""
    dataset, root = make_dataset(n=40)
    labels = pd.read_csv(root / "labels.csv")
    extra = pd.DataFrame([{"id": "gone", "image": "images/missing.png", "a": "cat", "b": "no"},
                          {**labels.iloc[0].to_dict(), "id": "copy",  # same image, other label
                           "a": next(c for c in ("cat", "dog") if c != labels.iloc[0]["a"])}])
    pd.concat([labels, extra]).to_csv(root / "labels.csv", index=False)
    cleaned = clean(dataset, clean_cfg)
    selected = select(cleaned.manifest, dataset, SelectConfig())
    c, s = cleaned.report, selected.report
    metrics = {"a": {"accuracy": 0.5, "macro_f1": 0.25, "n": 8},
               "b": {"accuracy": 0.75, "macro_f1": 0.5, "n": 8}}
    report = render_report(metrics, selected.tasks, c, s)
    assert c["rejects_by_reason"].get("missing_file") == 1
    assert (f"- raw rows: {c['raw_rows']}, clean: {c['clean_rows']}, "
            f"rejected: {c['rejected_rows']}") in report
    for reason, n in c["rejects_by_reason"].items():
        assert f"  - {reason}: {n}" in report
    sizes = ", ".join(f"{k} {v}" for k, v in s["split_sizes"].items())
    assert f"- split ({s['split_source']}): {sizes}" in report
    d = c["duplicates"]
    assert d["exact_duplicate_groups"] == 1
    assert (f"exact-duplicate groups: {d['exact_duplicate_groups']}, of which "
            f"{d['exact_duplicate_groups_with_conflicting_labels']} with conflicting labels "
            f"(action: {d['conflicting_duplicates_action']})") in report
    assert (f"holding {d['rows_in_near_duplicate_groups']} rows; groups split across "
            f"train/val/test: {s['groups']['groups_across_splits']}") in report
    for name, t in s["tasks"].items():
        assert f"- task `{name}`: kept (label coverage {t['coverage']:.1%})" in report
    assert "| a | multiclass | accuracy | 0.5000 | – | 8 |" in report
    assert "| b | binary | macro_f1 | 0.5000 | – | 8 |" in report
    renamed = {**c, "rejected": c["rejected_rows"]}
    del renamed["rejected_rows"]
    with pytest.raises(KeyError, match="rejected_rows"):
        render_report(metrics, selected.tasks, renamed, s)


def test_every_task_kind_has_one_complete_spec() -> None:
    """Adding a TaskKind without its KindSpec fails here; each spec's parts agree."""
    assert set(KINDS) == set(TaskKind)
    rng = np.random.default_rng(0)
    for task in (CLS, BIN, REG, MUL):
        spec = KINDS[task.kind]
        out = rng.normal(size=(6, head_size(task))).astype(np.float32)
        decoded = spec.decode(task, out)
        target = (decoded.astype(np.float32) if task.kind is not TaskKind.REGRESSION
                  else out[:, 0])  # a perfect prediction, in the target encoding
        m = spec.metrics(task, target, out)
        assert set(spec.metric_keys) <= set(m) and m["n"] == 6, task.kind
        assert spec.score(task, m) == pytest.approx(1.0), task.kind
        assert len(next(iter(spec.columns(task, out).values()))) == 6


def test_regression_selection_score_is_r2_on_the_scored_split() -> None:
    """Always predicting the split's mean is worth R² = 0 (the old score, built on the training
    std, gave 0.993 here)."""
    from mtl.metrics import task_score

    targets = {"year": np.array([-0.1, 0.0, 0.1], np.float32)}  # 1999, 2000, 2001
    outputs = {"year": np.zeros((3, 1), np.float32)}  # always 2000, this split's mean
    m = task_metrics((REG,), outputs, targets)["year"]
    assert task_score(REG, m) == pytest.approx(0.0, abs=1e-6)
    perfect = task_metrics((REG,), {"year": targets["year"][:, None]}, targets)["year"]
    assert task_score(REG, perfect) == pytest.approx(1.0)


def test_fit_refuses_an_empty_validation_split(tmp_path: Path) -> None:
    """Selecting on the training split and logging it as validation is refused."""
    from mtl.splits import SplitData
    from mtl.train import fit
    from tests.test_train import TASKS as TASKS_ABCD
    from tests.test_train import make_split, tiny_cfg

    train = make_split(32, 0)
    empty = SplitData(train.images[:0], {k: v[:0] for k, v in train.targets.items()})
    with pytest.raises(ValueError, match=r"non-empty validation split.*found 0"):
        fit(TASKS_ABCD, train, empty, tiny_cfg(tmp_path, epochs=1), 1, torch.device("cpu"))


def _write_test_split(augmented: Path, targets: dict[str, np.ndarray], n: int) -> None:
    out = augmented / "test"
    out.mkdir(parents=True)
    rng = np.random.default_rng(0)
    np.save(out / "images-00000.npy", rng.integers(0, 255, (n, 16, 16, 1), dtype=np.uint8))
    pd.DataFrame({"id": [f"t{i}" for i in range(n)], "copy": 0, **targets}).to_parquet(
        out / "labels.parquet", index=False)


def test_evaluate_stage_compares_with_baselines_and_draws_figures(tmp_path: Path) -> None:
    """Known answer: the ``sale`` baseline holds exactly the multi-task model's encoder and
    ``sale`` head, so its Δ is 0; ``colour`` has only a skipped marker (no Δm term)."""
    from mtl.checkpoint import build_checkpoint, load_checkpoint, save_checkpoint
    from mtl.config import EvaluateConfig, TrainConfig
    from mtl.delta import skipped_baseline
    from mtl.evaluate import evaluate_stage

    torch.manual_seed(0)
    tasks = (CLS, BIN)
    schema = {"tasks": [t.to_dict() for t in tasks]}
    cfg = TrainConfig()
    model = create_model("hps", "smallcnn", tasks, in_channels=1)
    save_checkpoint(tmp_path / "model.pt",
                    build_checkpoint(model.state_dict(), schema, cfg, 1, [16, 16], 0, 0, 0.5))
    # The single-task model of `sale`: the same encoder, head 1 renamed head 0.
    state = {k.replace("heads.heads.1.", "heads.heads.0."): v
             for k, v in model.state_dict().items() if not k.startswith("heads.heads.0.")}
    bdir = tmp_path / "baselines"
    save_checkpoint(bdir / "sale.pt", build_checkpoint(
        state, {"tasks": [BIN.to_dict()]}, cfg, 1, [16, 16], 0, 0, 0.5))
    save_checkpoint(bdir / "colour.pt", skipped_baseline("colour", "evaluate.baselines is false"))
    n = 40
    rng = np.random.default_rng(1)
    _write_test_split(tmp_path / "augmented", {"colour": rng.integers(0, 3, n).astype(np.float32),
                                               "sale": rng.integers(0, 2, n).astype(np.float32)},
                      n)
    ckpt = load_checkpoint(tmp_path / "model.pt")
    reports = tmp_path / "reports"
    out = evaluate_stage(ckpt, tmp_path / "augmented", CLEAN_REPORT, SELECT_REPORT,
                         EvaluateConfig(batch_size=16), "cpu", baselines=bdir,
                         live=tmp_path / "no-dvclive", figures=reports / "figures",
                         report_dir=reports)
    sale = out.metrics["sale"]
    assert sale["stl"]["accuracy"] == sale["accuracy"] and sale["stl"]["n"] == n
    assert (sale["delta_metric"], sale["higher_is_better"]) == ("accuracy", True)
    assert sale["delta_pct"] == 0.0 and out.metrics["delta_m"] == 0.0
    assert "stl" not in out.metrics["colour"] and "auroc" in sale and "ece" in sale
    assert set(out.tables["colour"]["per_class"]) == {"red", "green", "blue"}
    # The report links PNGs next to it; each one exists.
    assert "## Did multi-task help?" in out.report and "**Δm = +0.00 %**" in out.report
    assert "no baseline: evaluate.baselines is false" in out.report
    links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", out.report)
    assert "figures/confusion_colour.png" in links and "figures/delta.png" in links
    for link in links:
        assert (reports / link).read_bytes()[:4] == b"\x89PNG"
    # Switched off: the baseline folder is not read at all and there is no Δm.
    off = evaluate_stage(ckpt, tmp_path / "augmented", CLEAN_REPORT, SELECT_REPORT,
                         EvaluateConfig(batch_size=16, baselines=False), "cpu",
                         baselines=tmp_path / "missing")
    assert "delta_m" not in off.metrics and "stl" not in off.metrics["sale"]
    assert "`evaluate.baselines: false`" in off.report
    with pytest.raises(FileNotFoundError, match=r"evaluate\.baselines: false"):
        evaluate_stage(ckpt, tmp_path / "augmented", CLEAN_REPORT, SELECT_REPORT,
                       EvaluateConfig(), "cpu", baselines=tmp_path / "missing")
