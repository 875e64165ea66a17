"""Δm known answers (LibMTL's formula on hand numbers), seed aggregation and the noise verdict."""

from __future__ import annotations

import math

import pytest

from mtl.delta import (
    MeanStd,
    Verdict,
    aggregate_seeds,
    compare,
    compare_to_baselines,
    delta_m,
    format_mean_std,
    mean_std,
    primary_metric,
    relative_delta,
    verdict,
)
from mtl.schema import TaskKind


def test_primary_metric_per_kind() -> None:
    assert primary_metric(TaskKind.MULTICLASS) == ("accuracy", True)
    assert primary_metric("binary") == ("accuracy", True)
    assert primary_metric(TaskKind.MULTILABEL) == ("micro_f1", True)
    assert primary_metric(TaskKind.REGRESSION) == ("mae", False)


def test_delta_m_matches_libmtl_count_improvement_example() -> None:
    # The example in LibMTL's count_improvement docstring (there weight 1 = higher is better,
    # and the result is a fraction): task A has two metrics, averaged within the task first.
    base = {"A": [96.0, 98.0], "B": [0.2]}
    new = {"A": [93.0, 99.0], "B": [0.5]}
    higher = {"A": [True, False], "B": [True]}
    a = ((93 - 96) / 96 + (98 - 99) / 98) / 2
    b = (0.5 - 0.2) / 0.2
    assert delta_m(new, base, higher) == pytest.approx((a + b) / 2 * 100)
    assert delta_m(new, base, higher) == pytest.approx(73.96364796, abs=1e-6)


def test_delta_m_issue_numbers_are_negative_when_mtl_is_worse() -> None:
    # Shared model 0.954 / 0.925 vs single-task 0.957 / 0.931 (issue 10).
    d = delta_m({"left": 0.954, "right": 0.925}, {"left": 0.957, "right": 0.931},
                {"left": True, "right": True})
    assert d == pytest.approx(((0.954 - 0.957) / 0.957 + (0.925 - 0.931) / 0.931) / 2 * 100)
    assert d < 0


def test_lower_is_better_task_flips_the_sign() -> None:
    # MAE 1.8 against 2.0 is a 10 % improvement; accuracy 0.9 against 1.0 a 10 % loss.
    assert relative_delta(1.8, 2.0, higher_is_better=False) == pytest.approx(10.0)
    assert relative_delta(0.9, 1.0, higher_is_better=True) == pytest.approx(-10.0)
    d = delta_m({"age": 1.8, "kind": 0.9}, {"age": 2.0, "kind": 1.0},
                {"age": False, "kind": True})
    assert d == pytest.approx(0.0)
    assert delta_m({"age": 1.8}, {"age": 2.0}, {"age": False}) == pytest.approx(10.0)


def test_undefined_relative_difference_is_nan_not_a_number() -> None:
    assert math.isnan(relative_delta(0.5, 0.0, True))
    assert math.isnan(relative_delta(math.nan, 0.5, True))
    assert math.isnan(delta_m({"a": 0.5, "b": 0.5}, {"a": 0.0, "b": 0.5}, {"a": True, "b": True}))


def test_delta_m_refuses_missing_tasks() -> None:
    with pytest.raises(ValueError, match="missing for \\['b'\\]"):
        delta_m({"a": 1.0}, {"a": 1.0, "b": 1.0}, {"a": True, "b": True})
    with pytest.raises(ValueError, match="found none"):
        delta_m({}, {}, {})


def test_mean_std_uses_sample_std() -> None:
    ms = mean_std([0.95, 0.96, 0.97])
    assert ms.mean == pytest.approx(0.96) and ms.std == pytest.approx(0.01) and ms.n == 3
    one = mean_std([0.5])
    assert one.mean == 0.5 and math.isnan(one.std) and one.n == 1
    assert mean_std([1.0, math.nan, 3.0]).n == 2  # NaN runs are left out, and counted out
    assert mean_std([]).n == 0 and math.isnan(mean_std([]).mean)
    assert format_mean_std(ms) == "0.9600 ± 0.0100"
    assert format_mean_std(one) == "0.5000"


def test_aggregate_seeds_flattens_nested_metrics() -> None:
    runs = [{"delta_m": -1.0, "left": {"accuracy": 0.90, "n": 100}},
            {"delta_m": 1.0, "left": {"accuracy": 0.92, "n": 100}},
            {"delta_m": 3.0, "left": {"accuracy": 0.94, "n": 100}, "extra": 5.0}]
    agg = aggregate_seeds(runs)
    assert agg["delta_m"].mean == pytest.approx(1.0) and agg["delta_m"].std == pytest.approx(2.0)
    assert agg["left/accuracy"].mean == pytest.approx(0.92)
    assert agg["left/accuracy"].std == pytest.approx(0.02)
    assert agg["extra"].n == 1


def test_verdict_calls_small_differences_noise() -> None:
    assert verdict(0.5, 1.0) is Verdict.NOISE
    assert verdict(-0.5, 1.0) is Verdict.NOISE
    assert verdict(2.0, 1.0) is Verdict.BETTER
    assert verdict(-2.0, 1.0) is Verdict.WORSE
    assert verdict(2.0, math.nan) is Verdict.UNKNOWN
    # Δm over seeds: mean 1.0, std 2.0 -> the gain is inside the noise.
    assert verdict(1.0, 2.0).value == "within seed noise"


def test_compare_uses_the_larger_spread_and_direction() -> None:
    a, b = MeanStd(0.95, 0.005, 3), MeanStd(0.94, 0.02, 3)
    assert compare(a, b) is Verdict.NOISE  # 0.01 apart, but b varies by 0.02
    c = MeanStd(0.90, 0.005, 3)
    assert compare(a, c) is Verdict.BETTER and compare(c, a) is Verdict.WORSE
    # Lower is better (MAE): a smaller value is the better one.
    assert compare(MeanStd(1.0, 0.1, 3), MeanStd(2.0, 0.1, 3), higher_is_better=False) \
        is Verdict.BETTER


def test_compare_to_baselines_fills_the_eval_json_fields() -> None:
    kinds = {"digit": TaskKind.MULTICLASS, "age": TaskKind.REGRESSION, "tags": "multilabel"}
    mtl = {"digit": {"accuracy": 0.9, "n": 10}, "age": {"mae": 1.8, "rmse": 2.0},
           "tags": {"micro_f1": 0.5}}
    stl = {"digit": {"accuracy": 1.0, "n": 10}, "age": {"mae": 2.0, "rmse": 2.5}}
    c = compare_to_baselines(kinds, mtl, stl)
    assert c.tasks == ("digit", "age")  # tags has no baseline: left out of Δm
    assert c.per_task["age"] == {"stl": {"mae": 2.0, "rmse": 2.5}, "delta_metric": "mae",
                                 "higher_is_better": False, "delta_pct": pytest.approx(10.0)}
    assert c.per_task["digit"]["delta_pct"] == pytest.approx(-10.0)
    assert c.delta_m == pytest.approx(0.0)
    with pytest.raises(ValueError, match="unknown tasks \\['colour'\\]"):
        compare_to_baselines(kinds, mtl, {"colour": {"accuracy": 1.0}})
    with pytest.raises(ValueError, match="expected a number for 'micro_f1'"):
        compare_to_baselines(kinds, mtl, {"tags": {"accuracy": 1.0}})
    assert math.isnan(compare_to_baselines(kinds, mtl, {}).delta_m)


def test_skipped_baseline_marker_says_why() -> None:
    from mtl.delta import SKIPPED_BASELINE_FORMAT, skipped_baseline

    marker = skipped_baseline("left", "evaluate.baselines is false")
    assert marker == {"format": SKIPPED_BASELINE_FORMAT, "task": "left",
                      "reason": "evaluate.baselines is false"}
    assert SKIPPED_BASELINE_FORMAT != "mtl.checkpoint/1"  # never mistaken for a model
