"""Per-kind test metrics: hand-computed known answers and the undefined cases (NaN, no crash)."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from mtl.kind_metrics import (
    binary_metrics,
    expected_calibration_error,
    kind_metrics,
    multiclass_metrics,
    multilabel_metrics,
    regression_metrics,
)
from mtl.schema import TaskKind, TaskSchema

NAN = np.nan


def _logit(p: list[float]) -> np.ndarray:
    """Binary logits whose sigmoid is ``p``."""
    a = np.asarray(p, dtype=np.float64)
    return np.log(a / (1 - a))[:, None]


def test_ece_known_answer() -> None:
    conf = np.array([0.85, 0.82, 0.55, 0.95])
    correct = np.array([True, False, False, True])
    # 10 bins: (0.8, 0.9] holds 0.85 and 0.82 (accuracy 0.5, confidence 0.835), (0.5, 0.6]
    # holds 0.55 (accuracy 0), (0.9, 1] holds 0.95 (accuracy 1).
    expected = (2 * abs(0.5 - 0.835) + abs(0 - 0.55) + abs(1 - 0.95)) / 4
    assert expected_calibration_error(conf, correct, n_bins=10) == pytest.approx(expected)
    # One bin: |overall accuracy - mean confidence|.
    assert expected_calibration_error(conf, correct, n_bins=1) == pytest.approx(
        abs(0.5 - conf.mean()))
    assert math.isnan(expected_calibration_error(np.array([]), np.array([])))
    with pytest.raises(ValueError, match="expected two"):
        expected_calibration_error(conf, correct[:2])


def _ece_reference(conf: np.ndarray, correct: np.ndarray, n_bins: int) -> float:
    """Guo et al.'s reference loop: bins (lower, upper] over linspace(0, 1, n_bins + 1)."""
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    ece = 0.0
    for lower, upper in itertools.pairwise(edges):
        inside = (conf > lower) & (conf <= upper)
        if inside.any():
            ece += inside.mean() * abs(correct[inside].mean() - conf[inside].mean())
    return ece


@pytest.mark.parametrize("n_bins", [10, 15])
def test_ece_confidence_on_a_bin_edge_stays_in_the_bin_it_closes(n_bins: int) -> None:
    # 0.6 * 15 = 9.000000000000002: ceil() would put 0.6 in the bin above its own.
    edges = np.linspace(0.0, 1.0, n_bins + 1)[1:]
    conf = np.concatenate([edges, edges - 1e-3, [0.6, 0.3, 0.7]])
    correct = np.arange(len(conf)) % 3 == 0
    assert expected_calibration_error(conf, correct, n_bins) == pytest.approx(
        _ece_reference(conf, correct, n_bins), abs=1e-12)


def test_multiclass_known_answer() -> None:
    probs = np.array([[0.85, 0.05, 0.10],   # predicts red, true red
                      [0.30, 0.65, 0.05],   # predicts green, true red
                      [0.20, 0.75, 0.05],   # predicts green, true green
                      [0.05, 0.10, 0.85],   # predicts blue, true blue
                      [0.90, 0.05, 0.05]])  # label missing: left out
    y = np.array([0, 0, 1, 2, NAN])
    m = multiclass_metrics(np.log(probs), y, ("red", "green", "blue"))
    assert m["n"] == 4
    assert m["accuracy"] == pytest.approx(0.75)
    # Recall: red 1/2, green 1, blue 1.
    assert m["balanced_accuracy"] == pytest.approx((0.5 + 1 + 1) / 3)
    # F1: red 2/3, green 2/3, blue 1.
    assert m["macro_f1"] == pytest.approx((2 / 3 + 2 / 3 + 1) / 3)
    assert "top5_accuracy" not in m  # only 3 classes
    # 15 bins, confidences 0.85 (x2, both right), 0.65 (wrong), 0.75 (right), each bin apart.
    assert m["ece"] == pytest.approx((2 * 0.15 + 0.65 + 0.25) / 4)
    pc = m["per_class"]
    assert pc["red"] == pytest.approx({"precision": 1.0, "recall": 0.5, "f1": 2 / 3,
                                       "support": 2})
    assert pc["green"] == pytest.approx({"precision": 0.5, "recall": 1.0, "f1": 2 / 3,
                                         "support": 1})
    assert pc["blue"]["support"] == 1 and pc["blue"]["f1"] == 1.0


def test_multiclass_top5_when_more_than_five_classes() -> None:
    logits = np.tile(np.arange(7, 0, -1, dtype=np.float64), (4, 1))  # class 0 best ... 6 worst
    y = np.array([0, 5, 4, 6])  # ranks 1, 6, 5, 7
    m = multiclass_metrics(logits, y)
    assert m["accuracy"] == 0.25
    assert m["top5_accuracy"] == 0.5
    assert set(m["per_class"]) == {str(i) for i in range(7)}


def test_multiclass_class_absent_from_truth() -> None:
    # Class 2 never occurs in y_true but is predicted once.
    logits = np.log(np.array([[0.8, 0.1, 0.1], [0.1, 0.8, 0.1], [0.1, 0.1, 0.8]]))
    m = multiclass_metrics(logits, np.array([0, 1, 1]), ("a", "b", "c"))
    c = m["per_class"]["c"]
    assert c["support"] == 0 and math.isnan(c["recall"]) and c["precision"] == 0.0
    assert c["f1"] == 0.0  # predicted but never true: F1 = 2tp / (2tp + fp + fn) = 0
    # Balanced accuracy averages recall over the classes present in y_true only.
    assert m["balanced_accuracy"] == pytest.approx((1 + 0.5) / 2)
    # A class neither true nor predicted has an undefined F1 and stays out of macro-F1.
    m2 = multiclass_metrics(logits[:2], np.array([0, 1]), ("a", "b", "c"))
    assert math.isnan(m2["per_class"]["c"]["f1"]) and m2["macro_f1"] == 1.0


def test_binary_known_answer() -> None:
    p = [0.9, 0.45, 0.35, 0.75, 0.5]
    y = np.array([1, 1, 0, 0, NAN])
    m = binary_metrics(_logit(p), y)
    assert m["n"] == 4
    assert m["accuracy"] == 0.5
    assert m["f1"] == pytest.approx(0.5)  # tp 1, fp 1, fn 1
    # Positive/negative pairs ranked correctly: 0.9>0.35, 0.9>0.75, 0.45>0.35 (not 0.45>0.75).
    assert m["auroc"] == pytest.approx(0.75)
    # Ranked: 0.9 (+), 0.75 (-), 0.45 (+): precision 1 at recall 0.5, 2/3 at recall 1.
    assert m["average_precision"] == pytest.approx(0.5 * 1 + 0.5 * 2 / 3)
    # Top-label confidences 0.9 (right), 0.55 (wrong), 0.65 (right), 0.75 (wrong).
    assert m["ece"] == pytest.approx((0.1 + 0.55 + 0.35 + 0.75) / 4)


def test_binary_single_class_gives_nan_auroc() -> None:
    only_pos = binary_metrics(_logit([0.9, 0.2]), np.array([1.0, 1.0]))
    assert math.isnan(only_pos["auroc"]) and only_pos["average_precision"] == 1.0
    assert only_pos["accuracy"] == 0.5
    only_neg = binary_metrics(_logit([0.9, 0.2]), np.array([0.0, 0.0]))
    assert math.isnan(only_neg["auroc"]) and math.isnan(only_neg["average_precision"])


def test_multilabel_known_answer() -> None:
    probs = np.array([[0.9, 0.2, 0.1],   # pred {0}, true {0}: exact
                      [0.8, 0.3, 0.6],   # pred {0, 2}, true {0, 1}
                      [0.3, 0.7, 0.2],   # pred {1}, true {}
                      [0.9, 0.9, 0.9]])  # label missing
    y = np.array([[1, 0, 0], [1, 1, 0], [0, 0, 0], [NAN, NAN, NAN]])
    m = multilabel_metrics(np.log(probs / (1 - probs)), y, ("x", "y", "z"))
    assert m["n"] == 3
    assert m["accuracy"] == pytest.approx(1 / 3)
    # tp 2, fp 2, fn 1 over all labels.
    assert m["micro_f1"] == pytest.approx(2 * 2 / (2 * 2 + 2 + 1))
    # Per label F1: x 1, y 0, z 0 (predicted once, never true).
    assert m["macro_f1"] == pytest.approx(1 / 3)
    # AP: x 1.0; y: ranked 0.7 (-), 0.3 (+) -> 0.5; z has no positive -> left out of mAP.
    assert m["per_label"]["x"] == 1.0 and m["per_label"]["y"] == pytest.approx(0.5)
    assert math.isnan(m["per_label"]["z"])
    assert m["map"] == pytest.approx(0.75)
    assert 0.0 <= m["ece"] <= 1.0


def test_multilabel_label_never_seen_is_left_out_of_macro_f1() -> None:
    probs = np.array([[0.9, 0.1], [0.1, 0.1]])
    m = multilabel_metrics(np.log(probs / (1 - probs)), np.array([[1, 0], [0, 0]]))
    assert m["macro_f1"] == 1.0 and m["micro_f1"] == 1.0


def test_regression_known_answer_in_original_units() -> None:
    # Standardised with mean 10, std 2: targets 10, 12, 8; predictions 11, 12, 6.
    m = regression_metrics(np.array([[0.5], [1.0], [-2.0], [3.0]]),
                           np.array([0.0, 1.0, -1.0, NAN]), mean=10.0, std=2.0)
    assert m["n"] == 3
    assert m["mae"] == pytest.approx(1.0)
    assert m["rmse"] == pytest.approx(math.sqrt(5 / 3))
    assert m["r2"] == pytest.approx(1 - 5 / 8)  # SS_res 5, SS_tot 8 around this split's mean


def test_regression_r2_uses_the_scored_split() -> None:
    # Always predicting this split's mean is worth R² = 0, whatever the training std was.
    y = np.array([1.0, 2.0, 3.0])
    m = regression_metrics(np.full((3, 1), 2.0), y, mean=0.0, std=100.0)
    assert m["r2"] == pytest.approx(0.0)
    assert math.isnan(regression_metrics(np.zeros((2, 1)), np.ones(2))["r2"])  # constant truth


@pytest.mark.parametrize("task,width", [
    (TaskSchema("c", TaskKind.MULTICLASS, "c", classes=("a", "b")), 2),
    (TaskSchema("b", TaskKind.BINARY, "b", classes=("no", "yes")), 1),
    (TaskSchema("m", TaskKind.MULTILABEL, "m", classes=("a", "b")), 2),
    (TaskSchema("r", TaskKind.REGRESSION, "r", mean=1.0, std=2.0), 1),
])
def test_empty_input_gives_nan_and_zero_count(task: TaskSchema, width: int) -> None:
    target = np.full((3, width) if task.kind is TaskKind.MULTILABEL else 3, NAN)
    for output, tgt in ((np.zeros((3, width)), target), (np.zeros((0, width)), target[:0])):
        m = kind_metrics(task, output, tgt)
        assert m["n"] == 0
        numbers = [v for v in m.values() if isinstance(v, float)]
        assert numbers and all(math.isnan(v) for v in numbers)


def test_bad_input_is_refused_with_a_clear_error() -> None:
    with pytest.raises(ValueError, match="as many output rows as targets"):
        multiclass_metrics(np.zeros((3, 2)), np.zeros(2))
    with pytest.raises(ValueError, match=r"class indices in \[0, 1\]"):
        multiclass_metrics(np.zeros((2, 2)), np.array([0, 2]))
    with pytest.raises(ValueError, match="one logit per row"):
        binary_metrics(np.zeros((2, 2)), np.zeros(2))
    with pytest.raises(ValueError, match="expected 0/1 targets"):
        binary_metrics(np.zeros((2, 1)), np.array([0, 3]))
    with pytest.raises(ValueError, match="2 columns"):
        multilabel_metrics(np.zeros((2, 2)), np.zeros((2, 3)))
