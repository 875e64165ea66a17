"""Unit tests of the sweep's pure parts: grid syntax, records from `dvc exp show`, aggregation."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest

from mtl.sweep import (
    GridError,
    RunRecord,
    compare_groups,
    dataset_dir_problems,
    expand_grid,
    parse_grid,
    plot_sweep,
    promotion_decision,
    record_from_exp,
    render_markdown,
    run_names,
    set_param_args,
    split_values,
    summarize,
)

SWEPT = ["train.weighting", "train.seed"]


def test_grid_is_the_product_of_dvc_style_axes() -> None:
    axes = parse_grid(["train.weighting=equal,famo", "train.seed=0,1,2", "train.epochs=4"])
    assert axes == [("train.weighting", ["equal", "famo"]), ("train.seed", ["0", "1", "2"]),
                    ("train.epochs", ["4"])]
    points = expand_grid(axes)
    assert len(points) == 6
    assert points[0] == {"train.weighting": "equal", "train.seed": "0", "train.epochs": "4"}
    assert points[-1] == {"train.weighting": "famo", "train.seed": "2", "train.epochs": "4"}
    names = run_names("my sweep", axes, points)
    assert names[0] == "my-sweep-00-equal-0" and names[4] == "my-sweep-04-famo-1"
    assert len(set(names)) == 6  # the constant axis is left out of the names


def test_commas_inside_yaml_lists_do_not_split() -> None:
    assert split_values("[28,28],[32, 32]") == ["[28,28]", "[32, 32]"]
    assert split_values("'a,b',c") == ["'a,b'", "c"]
    assert parse_grid(["augment.image_size=[28,28],[32,32]"])[0][1] == ["[28,28]", "[32,32]"]


@pytest.mark.parametrize("spec, message", [
    ("train.weighting", "expected -S key=value"),
    ("=1,2", "expected -S key=value"),
    ("train.seed=0,,1", "empty value"),
])
def test_bad_grid_specs_are_refused(spec: str, message: str) -> None:
    with pytest.raises(GridError, match=message):
        parse_grid([spec])


def test_range_choice_and_the_params_file_prefix_follow_dvc() -> None:
    axes = parse_grid(["params.yaml:train.lr=range(0.001, 0.004, 0.001)",
                       "train.seed=range(0, 3)", "train.weighting=choice(equal, famo)"])
    assert axes == [("train.lr", ["0.001", "0.002", "0.003"]), ("train.seed", ["0", "1", "2"]),
                    ("train.weighting", ["equal", "famo"])]
    assert parse_grid(["train.epochs=range(10, 0, -4)"])[0][1] == ["10", "6", "2"]
    # choice() keeps YAML lists whole, as the plain syntax does.
    assert parse_grid(["augment.image_size=choice([28,28], [32,32])"])[0][1] == [
        "[28,28]", "[32,32]"]


@pytest.mark.parametrize("spec, message", [
    ("other.yaml:train.seed=0,1", "expected a key of params.yaml"),
    ("train.seed=range(3)", "expected range\\(start, stop"),
    ("train.seed=range(0, 3, 0)", "non-zero range\\(\\) step"),
    ("train.seed=range(3, 0)", "gives no values"),
    ("train.lr=range(a, 1)", "expected numbers"),
    ("train.lr=interval(0.1, 1)", "interval\\(\\) needs a sampler"),
])
def test_bad_sweep_functions_are_refused(spec: str, message: str) -> None:
    with pytest.raises(GridError, match=message):
        parse_grid([spec])


def test_a_key_given_twice_is_refused() -> None:
    with pytest.raises(GridError, match="given twice"):
        parse_grid(["train.seed=0", "train.seed=1"])


def _exp_data(left: float, right: float, delta_m: float | None = None,
              ips: float = 100.0) -> dict[str, Any]:
    """The shape of one experiment's ``data`` in ``dvc exp show --json`` (dvc 3.67)."""
    evaluation: dict[str, Any] = {
        "left": {"accuracy": left, "macro_f1": left - 0.01, "n": 100},
        "right": {"accuracy": right, "macro_f1": right - 0.01, "n": 100},
    }
    if delta_m is not None:
        evaluation["delta_m"] = delta_m
        for task in ("left", "right"):
            evaluation[task].update({"stl": {"accuracy": 0.9, "n": 100}, "delta_pct": 1.0,
                                     "delta_metric": "accuracy", "higher_is_better": True})
    return {
        "rev": "abc123",
        "params": {"params.yaml": {"data": {"train": {"batch_size": 64, "seed": 0}}}},
        "metrics": {
            "metrics/eval.json": {"data": evaluation},
            "dvclive/metrics.json": {"data": {"val": {"score": 0.5},
                                              "train": {"images_per_second": ips}, "step": 0}},
        },
    }


def _rec(name: str, weighting: str, seed: int, left: float, right: float,
         delta_m: float | None = None, ips: float = 100.0, val: float = 0.5) -> RunRecord:
    return record_from_exp(name, {"train.weighting": weighting, "train.seed": str(seed)},
                           _exp_data(left, right, delta_m, ips), val_score=val)


def test_record_reads_eval_live_and_params() -> None:
    rec = _rec("r", "famo", 1, 0.8, 0.7, delta_m=-1.5, ips=200.0, val=0.75)
    assert rec.ok and rec.params == {"train.weighting": "famo", "train.seed": 1}
    assert rec.test["left"] == {"accuracy": 0.8, "macro_f1": pytest.approx(0.79)}
    assert rec.stl["right"] == {"accuracy": 0.9}
    assert rec.delta_m == -1.5 and rec.val_score == 0.75
    assert rec.images_per_second == 200.0
    assert rec.step_time_s == pytest.approx(64 / 200.0)  # one step = one batch of 64 images


def test_record_without_delta_m_or_metrics() -> None:
    assert _rec("r", "equal", 0, 0.8, 0.7).delta_m is None
    empty = record_from_exp("r", {}, {"rev": "x", "metrics": {}}, val_score=math.nan)
    assert empty.status == "failed" and "eval.json" in (empty.error or "")
    assert empty.val_score is None  # NaN is not a score


def _sweep() -> list[RunRecord]:
    return [
        _rec("e0", "equal", 0, 0.80, 0.70, delta_m=-1.0, ips=100.0, val=0.70),
        _rec("e1", "equal", 1, 0.82, 0.72, delta_m=1.0, ips=100.0, val=0.72),
        _rec("f0", "famo", 0, 0.90, 0.71, delta_m=3.0, ips=50.0, val=0.80),
        _rec("f1", "famo", 1, 0.92, 0.69, delta_m=5.0, ips=50.0, val=0.81),
        RunRecord("b0", {"train.weighting": "bogus", "train.seed": 0}, status="failed",
                  error="ValueError: unknown weighting 'bogus'"),
    ]


def test_summary_groups_over_seeds_ranks_and_costs() -> None:
    summaries = {s.label: s for s in summarize(_sweep(), SWEPT)}
    assert set(summaries) == {"equal", "famo", "bogus"}
    equal, famo, bogus = summaries["equal"], summaries["famo"], summaries["bogus"]
    assert equal.runs == ["e0", "e1"] and equal.n_ok == 2 and bogus.n_ok == 0
    name, higher, mean, std = famo.metrics["left"]
    assert (name, higher) == ("accuracy", True)
    assert mean == pytest.approx(0.91) and std == pytest.approx(math.sqrt(0.0002))
    assert famo.delta_m == (pytest.approx(4.0), pytest.approx(math.sqrt(2.0)))
    assert equal.delta_m[0] == pytest.approx(0.0)
    # left: famo 1st, equal 2nd; right: equal 0.71 vs famo 0.70 → equal 1st.
    assert famo.mean_rank == pytest.approx(1.5) and equal.mean_rank == pytest.approx(1.5)
    assert famo.cost_vs_equal == pytest.approx(2.0) and equal.cost_vs_equal == pytest.approx(1.0)
    assert bogus.mean_rank is None and bogus.delta_m == (None, None)


def test_lower_is_better_metrics_rank_the_smaller_first() -> None:
    def reg(name: str, weighting: str, mae: float) -> RunRecord:
        data = _exp_data(0.5, 0.5)
        data["metrics"]["metrics/eval.json"]["data"] = {"price": {"mae": mae, "rmse": mae * 2}}
        return record_from_exp(name, {"train.weighting": weighting, "train.seed": "0"}, data)

    summaries = {s.label: s for s in summarize([reg("a", "equal", 3.0), reg("b", "famo", 1.0)],
                                               SWEPT)}
    assert summaries["famo"].metrics["price"][:2] == ("mae", False)
    assert summaries["famo"].mean_rank == 1.0 and summaries["equal"].mean_rank == 2.0


def test_differences_inside_the_seed_spread_are_not_wins() -> None:
    s = summarize(_sweep(), SWEPT)
    # right accuracy: equal 0.71 ± 0.014, famo 0.70 ± 0.014: the 0.01 lead is noise.
    inside = compare_groups(s, "right accuracy", {"equal": (0.71, 0.014), "famo": (0.70, 0.014)})
    assert "within the seed spread" in inside and "no winner" in inside
    outside = compare_groups(s, "left accuracy", {"equal": (0.81, 0.014), "famo": (0.91, 0.014)})
    assert outside.startswith("left accuracy: famo is best")
    lower = compare_groups(s, "mae", {"a": (3.0, 0.1), "b": (1.0, 0.1)}, higher_is_better=False)
    assert lower.startswith("mae: b is best")
    single = compare_groups(s, "Δm", {"a": (1.0, None), "b": (0.0, None)})
    assert "no winner claimed" in single


def test_markdown_table_verdicts_and_failures() -> None:
    records = _sweep()
    text = render_markdown(records, summarize(records, SWEPT), SWEPT, "sweep.png")
    assert "| famo | 2/2 | 0.9100 ± 0.0141 | 0.7000 ± 0.0141 | +4.00 ± 1.41 |" in text
    assert "| bogus | 0/2 |" not in text and "| bogus | 0/1 |" in text
    assert "right accuracy: equal and famo differ by 0.01, within the seed spread" in text
    assert "left accuracy: famo is best" in text
    # equal's Δm 0.00 ± 1.41 straddles zero: said so, not read as a gain or a loss.
    assert "equal: Δm +0.00 % is within its seed spread" in text
    assert "unknown weighting 'bogus'" in text and "![sweep](sweep.png)" in text
    no_dm = [_rec("e0", "equal", 0, 0.8, 0.7), _rec("e1", "equal", 1, 0.8, 0.7)]
    assert "Δm: n/a" in render_markdown(no_dm, summarize(no_dm, SWEPT), SWEPT)


def test_promotion_by_validation_score_and_margin() -> None:
    records = _sweep()
    # f1 has the best validation score (0.81) even though f0 has the same test accuracy pattern.
    yes = promotion_decision(records, current=0.75, margin=0.05)
    assert yes.promote and yes.run == "f1" and "+0.0600" in yes.reason
    no = promotion_decision(records, current=0.78, margin=0.05)
    assert not no.promote and no.run == "f1" and "nothing applied" in no.reason
    assert promotion_decision(records, current=None, margin=10.0).promote  # no workspace model
    failed_only = [r for r in records if not r.ok]
    assert not promotion_decision(failed_only, current=0.1, margin=0.0).promote


def test_test_metrics_do_not_drive_promotion() -> None:
    best_test = _rec("t", "famo", 0, 0.99, 0.99, val=0.60)
    best_val = _rec("v", "equal", 0, 0.50, 0.50, val=0.70)
    assert promotion_decision([best_test, best_val], current=0.0, margin=0.0).run == "v"


@pytest.mark.parametrize("with_dm, tasks", [(True, 2), (True, 3), (False, 3)])
def test_picture_is_written(tmp_path: Path, with_dm: bool, tasks: int) -> None:
    records = _sweep()
    for r in records:
        if tasks == 3 and r.ok:
            r.test["third"] = {"accuracy": 0.5}
        if not with_dm:
            r.delta_m = None
    out = plot_sweep(records, summarize(records, SWEPT), SWEPT, tmp_path / "sweep.png")
    assert out == tmp_path / "sweep.png" and out.read_bytes()[:4] == b"\x89PNG"
    assert plot_sweep(records[4:], summarize(records[4:], SWEPT), SWEPT,
                      tmp_path / "none.png") is None


def test_a_relative_dataset_dir_outside_the_project_is_refused(tmp_path: Path) -> None:
    """`dvc exp run --temp` resolves it from a copy under .dvc/tmp/exps/: every run would fail."""
    root = tmp_path / "project"
    assert dataset_dir_problems(root, "data/raw/multimnist") == []  # in the copy too
    assert dataset_dir_problems(root, "./data/../data/raw") == []
    assert dataset_dir_problems(root, str(tmp_path / "shared" / "fashion")) == []  # absolute
    (problem,) = dataset_dir_problems(root, "../shared/datasets/fashion-product")
    assert f"dataset.dir: {tmp_path / 'shared' / 'datasets' / 'fashion-product'}" in problem
    assert "'../shared/datasets/fashion-product'" in problem
    # a swept value is checked too (as DVC reads it: YAML), the params.yaml one being fine
    axes = [("train.seed", ["0", "1"]), ("dataset.dir", ["data/a", "'../b'"])]
    (problem,) = dataset_dir_problems(root, "data/raw", axes)
    assert "'../b'" in problem and f"dataset.dir: {tmp_path / 'b'}" in problem
    assert dataset_dir_problems(root, "data/raw", [("train.seed", ["../x"])]) == []
    # a sibling whose name starts with the project's is still outside it
    assert len(dataset_dir_problems(root, "../project-data")) == 1


def test_the_sweep_flow_checks_the_dataset_dir_before_any_run(tmp_path: Path) -> None:
    from flows.sweep import check_dataset_dir, mtl_sweep

    repo = Path(__file__).resolve().parents[1]
    (tmp_path / "params.yaml").write_text((repo / "configs" / "fashion-product.yaml").read_text())
    with pytest.raises(GridError, match="relative and outside the project"):
        check_dataset_dir(tmp_path, parse_grid(["train.seed=0,1"]))
    with pytest.raises(GridError, match="relative and outside the project"):  # the flow's body
        mtl_sweep.fn(["train.seed=0,1"], project_dir=str(tmp_path))
    (tmp_path / "params.yaml").write_text((repo / "params.yaml").read_text())
    check_dataset_dir(tmp_path, parse_grid(["train.seed=0,1"]))  # data/raw/multimnist: fine


def test_a_key_params_yaml_leaves_at_its_default_is_added_not_replaced(tmp_path: Path) -> None:
    """Hydra (DVC's -S) refuses `key=v` for a key absent from params.yaml, and `+key=v` for a
    present one: configs/fashion-product.yaml has no sweep section."""
    params = {"augment": {"copies": 1}, "dataset": {"image_template": None}}
    point = {"augment.online": "false", "augment.copies": "2", "train.seed": "1",
             "dataset.image_template": "'{id}.png'"}
    assert set_param_args(params, point) == [
        "-S", "+augment.online=false", "-S", "augment.copies=2", "-S", "+train.seed=1",
        "-S", "dataset.image_template='{id}.png'"]  # present although null
    from flows.sweep import exp_run_command

    repo = Path(__file__).resolve().parents[1]
    (tmp_path / "params.yaml").write_text((repo / "configs" / "fashion-product.yaml").read_text())
    cmd = exp_run_command("r-0", {"sweep.promote_margin": "0.1", "train.seed": "0"}, tmp_path)
    assert cmd[1:] == ["-m", "dvc", "exp", "run", "--temp", "-n", "r-0",
                       "-S", "+sweep.promote_margin=0.1", "-S", "train.seed=0"]
    cmd = exp_run_command("r-0", {"train.seed": "0"}, tmp_path, ["evaluate"])
    assert cmd[-3:] == ["-S", "train.seed=0", "evaluate"]  # the stages to reproduce, last
