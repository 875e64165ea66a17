"""Test metrics that fit each task kind, computed with scikit-learn from raw head outputs.

Every function takes the head's raw output (logits for classification, the standardised value for
regression) and the target column as it travels through the pipeline (``NaN`` = missing label),
so class probabilities are available for top-k accuracy, AUROC, average precision and
calibration. Rows whose label is missing are left out; ``n`` counts the rows that were scored.

Robustness rules (a metric that is undefined is ``NaN``, never a crash or a made-up number):

* empty input (no labelled row): every metric ``NaN``, ``n = 0``;
* a single-class ``y_true``: AUROC ``NaN`` (it needs both classes), average precision ``NaN``
  when there is no positive;
* a class absent from ``y_true``: its per-class recall is ``NaN`` (its precision is still
  defined when it was predicted); macro-F1 averages over the classes present in ``y_true`` or
  the predictions, as before;
* a constant regression ``y_true``: R² ``NaN`` (its denominator is zero).

Only numpy and scikit-learn are used here (no torch), so the module is cheap to import.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy.special import expit, softmax
from sklearn.exceptions import UndefinedMetricWarning
from sklearn.metrics import (
    accuracy_score,
    average_precision_score,
    balanced_accuracy_score,
    f1_score,
    mean_absolute_error,
    precision_recall_fscore_support,
    r2_score,
    roc_auc_score,
    root_mean_squared_error,
    top_k_accuracy_score,
)

from mtl.schema import TaskSchema

__all__ = [
    "ECE_BINS",
    "binary_metrics",
    "expected_calibration_error",
    "kind_metrics",
    "multiclass_metrics",
    "multilabel_metrics",
    "regression_metrics",
]

#: Equal-width confidence bins of the expected calibration error (Guo et al. 2017 use 15).
ECE_BINS = 15

_NAN = math.nan


def _f(x: Any) -> float:
    """A plain Python float (JSON-ready) from a numpy scalar."""
    return float(x)


def _check_rows(output: np.ndarray, target: np.ndarray, what: str) -> None:
    if len(output) != len(target):
        raise ValueError(f"{what}: expected as many output rows as targets, found "
                         f"{len(output)} outputs and {len(target)} targets")


def _as_2d(output: np.ndarray, what: str) -> np.ndarray:
    out = np.asarray(output, dtype=np.float64)
    if out.ndim == 1:
        out = out[:, None]
    if out.ndim != 2:
        raise ValueError(f"{what}: expected head outputs of shape [N, K], found {out.shape}")
    return out


def expected_calibration_error(confidence: np.ndarray, correct: np.ndarray,
                               n_bins: int = ECE_BINS) -> float:
    """Expected calibration error (Guo et al. 2017, "On Calibration of Modern Neural Networks").

    ``confidence [N]`` is the probability the model gave to the label it predicted and
    ``correct [N]`` whether that prediction was right. The confidences are split into
    ``n_bins`` equal-width bins over ``[0, 1]``; ECE is the sample-weighted mean over bins of
    ``|accuracy(bin) - mean confidence(bin)|``. ``NaN`` for empty input.
    """
    conf = np.asarray(confidence, dtype=np.float64)
    hit = np.asarray(correct, dtype=np.float64)
    if conf.shape != hit.shape or conf.ndim != 1:
        raise ValueError(f"expected_calibration_error: expected two [N] arrays, found shapes "
                         f"{conf.shape} and {hit.shape}")
    if n_bins < 1:
        raise ValueError(f"expected_calibration_error: expected n_bins >= 1, found {n_bins}")
    n = len(conf)
    if n == 0:
        return _NAN
    # Bin i holds confidences in (edges[i], edges[i+1]] with the reference implementation's
    # edges (Guo et al.'s code: linspace(0, 1, n_bins + 1)); a confidence of exactly 0 joins
    # bin 0. Searching the edges, rather than ceil(conf * n_bins), keeps a confidence equal to
    # an edge (0.6 with 15 bins: 0.6 * 15 = 9.000000000000002) in the bin it closes.
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    idx = np.clip(np.searchsorted(edges[1:-1], conf, side="left"), 0, n_bins - 1)
    count = np.bincount(idx, minlength=n_bins).astype(np.float64)
    acc_sum = np.bincount(idx, weights=hit, minlength=n_bins)
    conf_sum = np.bincount(idx, weights=conf, minlength=n_bins)
    # sum_b |B_b|/N * |acc_b - conf_b| = sum_b |acc_sum_b - conf_sum_b| / N
    return _f(np.abs(acc_sum - conf_sum).sum() / n) if count.sum() else _NAN


def multiclass_metrics(output: np.ndarray, target: np.ndarray,
                       classes: Sequence[str] | None = None,
                       n_bins: int = ECE_BINS) -> dict[str, Any]:
    """Multiclass metrics from logits ``[N, K]`` and class indices ``[N]`` (NaN = missing).

    Returns accuracy, balanced accuracy (mean recall over the classes present in ``y_true``),
    macro-F1 (over classes present in ``y_true`` or the predictions), top-5 accuracy when
    ``K > 5``, the top-label expected calibration error of the softmax probabilities, ``n``, and
    ``per_class``: ``{class name: {precision, recall, f1, support}}`` for every class (``NaN``
    where undefined: recall of a class absent from ``y_true``, precision of a class never
    predicted).
    """
    logits = _as_2d(output, "multiclass_metrics")
    y = np.asarray(target, dtype=np.float64).reshape(-1)
    _check_rows(logits, y, "multiclass_metrics")
    k = logits.shape[1]
    names = [str(c) for c in classes] if classes is not None else [str(i) for i in range(k)]
    if len(names) != k:
        raise ValueError(f"multiclass_metrics: expected {k} class names (one per output column), "
                         f"found {len(names)}")
    keep = ~np.isnan(y)
    logits, y_true = logits[keep], y[keep].astype(np.int64)
    if len(y_true) and (y_true.min() < 0 or y_true.max() >= k):
        raise ValueError(f"multiclass_metrics: expected class indices in [0, {k - 1}], found "
                         f"values from {y_true.min()} to {y_true.max()}")
    n = len(y_true)
    labels = np.arange(k)
    out: dict[str, Any] = {"accuracy": _NAN, "balanced_accuracy": _NAN, "macro_f1": _NAN}
    if k > 5:
        out["top5_accuracy"] = _NAN
    out["ece"] = _NAN
    out["n"] = n
    if n == 0:
        out["per_class"] = {c: {"precision": _NAN, "recall": _NAN, "f1": _NAN, "support": 0}
                            for c in names}
        return out
    prob = softmax(logits, axis=1)  # [N, K]
    y_pred = prob.argmax(axis=1)
    with warnings.catch_warnings():
        # "y_pred contains classes not in y_true" and 0/0 precision: handled via NaN below.
        warnings.simplefilter("ignore", (UndefinedMetricWarning, UserWarning, RuntimeWarning))
        out["accuracy"] = _f(accuracy_score(y_true, y_pred))
        out["balanced_accuracy"] = _f(balanced_accuracy_score(y_true, y_pred))
        # labels=None: sklearn averages over the union of y_true and y_pred classes.
        out["macro_f1"] = _f(f1_score(y_true, y_pred, average="macro", zero_division=0.0))
        if k > 5:
            out["top5_accuracy"] = _f(top_k_accuracy_score(y_true, prob, k=5, labels=labels))
        p, r, f1, support = precision_recall_fscore_support(
            y_true, y_pred, labels=labels, zero_division=np.nan)
    out["ece"] = expected_calibration_error(prob.max(axis=1), y_pred == y_true, n_bins)
    out["per_class"] = {
        c: {"precision": _f(p[i]), "recall": _f(r[i]),
            # F1 is 2tp / (2tp + fp + fn): defined as soon as the class is true or predicted.
            "f1": _f(f1[i]) if support[i] or (y_pred == i).any() else _NAN,
            "support": int(support[i])}
        for i, c in enumerate(names)
    }
    return out


def binary_metrics(output: np.ndarray, target: np.ndarray,
                   n_bins: int = ECE_BINS) -> dict[str, Any]:
    """Binary metrics from one logit per row ``[N, 1]`` and ``0/1`` targets (NaN = missing).

    Returns accuracy and F1 of the positive class (threshold: probability 0.5), AUROC and average
    precision of the positive-class probability (``NaN`` when ``y_true`` has one class only, or
    no positive for average precision), the top-label expected calibration error and ``n``.
    """
    logit = _as_2d(output, "binary_metrics")
    if logit.shape[1] != 1:
        raise ValueError(f"binary_metrics: expected one logit per row ([N, 1]), found "
                         f"{logit.shape}")
    y = np.asarray(target, dtype=np.float64).reshape(-1)
    _check_rows(logit, y, "binary_metrics")
    keep = ~np.isnan(y)
    y_true = y[keep].astype(np.int64)
    if len(y_true) and not np.isin(y_true, (0, 1)).all():
        raise ValueError(f"binary_metrics: expected 0/1 targets, found {sorted(set(y_true))}")
    p_pos = expit(logit[keep, 0])  # [N] probability of class 1
    n = len(y_true)
    out: dict[str, Any] = {"accuracy": _NAN, "f1": _NAN, "auroc": _NAN,
                           "average_precision": _NAN, "ece": _NAN, "n": n}
    if n == 0:
        return out
    y_pred = (p_pos > 0.5).astype(np.int64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UndefinedMetricWarning)
        out["accuracy"] = _f(accuracy_score(y_true, y_pred))
        out["f1"] = _f(f1_score(y_true, y_pred, zero_division=0.0))
    two_classes = len(np.unique(y_true)) == 2
    if two_classes:
        out["auroc"] = _f(roc_auc_score(y_true, p_pos))
    if y_true.any():
        out["average_precision"] = _f(average_precision_score(y_true, p_pos))
    # Top-label calibration: the confidence of the predicted class, max(p, 1 - p).
    out["ece"] = expected_calibration_error(np.where(y_pred == 1, p_pos, 1.0 - p_pos),
                                            y_pred == y_true, n_bins)
    return out


def multilabel_metrics(output: np.ndarray, target: np.ndarray,
                       classes: Sequence[str] | None = None,
                       n_bins: int = ECE_BINS) -> dict[str, Any]:
    """Metrics of a multilabel task from logits ``[N, K]`` and multi-hot targets ``[N, K]``.

    A row is scored when its target row carries no ``NaN``. Returns subset accuracy (exact
    match of the whole label set), micro-F1, macro-F1 (over labels present in ``y_true`` or the
    predictions), mAP (macro average precision over the labels that have at least one positive;
    ``NaN`` when none has), ``ece`` (expected calibration error over every sample × label
    decision), ``n`` and ``per_label`` average precision (``NaN`` for a label without positives).
    """
    logits = _as_2d(output, "multilabel_metrics")
    y = np.asarray(target, dtype=np.float64)
    if y.ndim == 1:
        y = y[:, None]
    _check_rows(logits, y, "multilabel_metrics")
    if y.shape[1] != logits.shape[1]:
        raise ValueError(f"multilabel_metrics: expected targets with {logits.shape[1]} columns "
                         f"(one per output), found {y.shape[1]}")
    k = logits.shape[1]
    names = [str(c) for c in classes] if classes is not None else [str(i) for i in range(k)]
    if len(names) != k:
        raise ValueError(f"multilabel_metrics: expected {k} label names, found {len(names)}")
    keep = ~np.isnan(y).any(axis=1)
    y_true = y[keep].astype(np.int64)  # [N, K] multi-hot
    prob = expit(logits[keep])  # [N, K] independent label probabilities
    n = len(y_true)
    out: dict[str, Any] = {"accuracy": _NAN, "micro_f1": _NAN, "macro_f1": _NAN, "map": _NAN,
                           "ece": _NAN, "n": n, "per_label": dict.fromkeys(names, _NAN)}
    if n == 0:
        return out
    y_pred = (prob > 0.5).astype(np.int64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UndefinedMetricWarning)
        out["accuracy"] = _f(accuracy_score(y_true, y_pred))  # subset accuracy on multi-hot
        out["micro_f1"] = _f(f1_score(y_true, y_pred, average="micro", zero_division=np.nan))
        # zero_division=NaN drops labels neither true nor predicted from the macro average.
        out["macro_f1"] = _f(f1_score(y_true, y_pred, average="macro", zero_division=np.nan))
    has_pos = y_true.sum(axis=0) > 0
    ap = {c: (_f(average_precision_score(y_true[:, i], prob[:, i])) if has_pos[i] else _NAN)
          for i, c in enumerate(names)}
    out["per_label"] = ap
    if has_pos.any():
        out["map"] = _f(np.mean([v for v in ap.values() if not math.isnan(v)]))
    # Each sample × label is one binary decision; its confidence is max(p, 1 - p).
    conf = np.where(y_pred == 1, prob, 1.0 - prob).reshape(-1)
    out["ece"] = expected_calibration_error(conf, (y_pred == y_true).reshape(-1), n_bins)
    return out


def regression_metrics(output: np.ndarray, target: np.ndarray, mean: float = 0.0,
                       std: float = 1.0) -> dict[str, Any]:
    """MAE, RMSE and R² in original units from standardised outputs ``[N, 1]`` and targets ``[N]``.

    Both are mapped back with ``value * std + mean`` (the schema's standardisation). R² is
    computed on the rows being scored (1 - SS_res / SS_tot around *their* mean), so a model that
    always predicts the mean of this split scores 0; ``NaN`` when fewer than two rows or a
    constant ``y_true`` make it undefined.
    """
    pred = _as_2d(output, "regression_metrics")
    if pred.shape[1] != 1:
        raise ValueError(f"regression_metrics: expected one output per row ([N, 1]), found "
                         f"{pred.shape}")
    y = np.asarray(target, dtype=np.float64).reshape(-1)
    _check_rows(pred, y, "regression_metrics")
    keep = ~np.isnan(y)
    y_true = y[keep] * std + mean
    y_pred = pred[keep, 0] * std + mean
    n = len(y_true)
    out: dict[str, Any] = {"mae": _NAN, "rmse": _NAN, "r2": _NAN, "n": n}
    if n == 0:
        return out
    out["mae"] = _f(mean_absolute_error(y_true, y_pred))
    out["rmse"] = _f(root_mean_squared_error(y_true, y_pred))
    if n >= 2 and np.ptp(y_true) > 0:
        out["r2"] = _f(r2_score(y_true, y_pred))
    return out


def kind_metrics(task: TaskSchema, output: np.ndarray, target: np.ndarray) -> dict[str, Any]:
    """The metrics that fit ``task.kind`` (its :class:`mtl.tasks.KindSpec` chooses), from the
    head's raw output and the target column."""
    # Function-level import: mtl.tasks builds its kind specs on the functions above.
    from mtl.tasks import kind_spec

    return kind_spec(task).test_metrics(task, output, target)
