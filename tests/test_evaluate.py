"""Metrics (known answers), decoding of head outputs, and the markdown report."""

from __future__ import annotations

import math
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
    assert "| a | multiclass | accuracy | 0.5000 | 8 |" in report
    assert "| b | binary | macro_f1 | 0.5000 | 8 |" in report
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
