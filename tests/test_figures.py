"""Report figures: valid PNGs of sensible size from real dvclive step files; clear errors."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from mtl.figures import (
    MAX_CONFUSION_CLASSES,
    inline_images,
    plot_confusion,
    plot_delta,
    plot_gradient_cosine,
    plot_task_weights,
    plot_training_curves,
    read_live_metrics,
)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _live(path: Path) -> Any:
    """dvclive as the train stage uses it: files only, no git / DVC experiment integration."""
    from dvclive import Live

    class FilesOnlyLive(Live):  # type: ignore[misc]
        def _init_dvc(self) -> None:
            return None

    return FilesOnlyLive(str(path), dvcyaml=False, save_dvc_exp=False, report=None)


def _write_run(path: Path, tasks: tuple[str, ...] = ("left", "right"), epochs: int = 4,
               conflict: bool = True) -> Path:
    """The keys `mtl train` logs once per epoch, written by dvclive itself."""
    live = _live(path)
    for e in range(epochs):
        live.log_metric("val/score", 0.5 + 0.1 * e)
        for i, t in enumerate(tasks):
            live.log_metric(f"train/loss/{t}", 1.0 / (e + 1 + i))
            live.log_metric(f"train/weight/{t}", 1.0 + 0.1 * i * e)
            live.log_metric(f"val/accuracy/{t}", 0.6 + 0.08 * e)
            live.log_metric(f"val/macro_f1/{t}", 0.55 + 0.08 * e)
        if conflict:
            for a in range(len(tasks)):
                for b in range(a + 1, len(tasks)):
                    live.log_metric(f"conflict/cosine/{tasks[a]}~{tasks[b]}", 0.3 - 0.2 * e)
        live.next_step()
    live.end()
    return path


def _check_png(path: Path, min_w: int = 300, min_h: int = 200) -> tuple[int, int]:
    assert path.is_file() and path.read_bytes()[:8] == PNG_MAGIC
    with Image.open(path) as img:
        img.verify()
    with Image.open(path) as img:
        w, h = img.size
        colours = img.convert("RGB").getcolors(maxcolors=1 << 16)
    assert w >= min_w and h >= min_h and w <= 4000 and h <= 4000
    # Not a blank canvas: lines, text and fills give many distinct colours.
    assert colours is None or len(colours) > 20
    return w, h


def test_read_live_metrics_reads_every_dvclive_series(tmp_path: Path) -> None:
    frame = read_live_metrics(_write_run(tmp_path / "live", epochs=3))
    assert list(frame.index) == [0, 1, 2]
    assert {"train/loss/left", "train/weight/right", "conflict/cosine/left~right",
            "val/accuracy/left", "val/score"} <= set(frame.columns)
    assert frame["train/loss/left"].tolist() == pytest.approx([1.0, 0.5, 1 / 3])


def test_training_figures_are_pngs(tmp_path: Path) -> None:
    live = _write_run(tmp_path / "live")
    curves = plot_training_curves(live, tmp_path / "fig" / "curves.png")
    assert curves == tmp_path / "fig" / "curves.png"
    _check_png(curves)
    _check_png(plot_task_weights(live, tmp_path / "fig" / "weights.png"))
    _check_png(plot_gradient_cosine(read_live_metrics(live), tmp_path / "fig" / "cosine.png"))


def test_training_curves_get_one_panel_per_task(tmp_path: Path) -> None:
    one = _check_png(plot_training_curves(_write_run(tmp_path / "one", ("a",)),
                                          tmp_path / "one.png"))
    four = _check_png(plot_training_curves(_write_run(tmp_path / "four", ("a", "b", "c", "d")),
                                           tmp_path / "four.png"))
    assert four[0] > one[0] and four[1] > one[1]  # a 2×2 grid, not one crowded panel


def test_missing_series_give_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="expected dvclive step files"):
        read_live_metrics(tmp_path / "nothing")
    live = _write_run(tmp_path / "live", conflict=False)
    with pytest.raises(ValueError, match="log_conflict_every"):
        plot_gradient_cosine(live, tmp_path / "cosine.png")
    with pytest.raises(ValueError, match=r"ending in \.png"):
        plot_task_weights(live, tmp_path / "weights.jpg")


def test_confusion_heatmap(tmp_path: Path) -> None:
    cm = np.array([[50, 3, 1], [2, 40, 8], [0, 0, 0]])  # a class without test rows is fine
    _check_png(plot_confusion(cm, ["cat", "dog", "eel"], tmp_path / "cm.png", "task a"))
    k = MAX_CONFUSION_CLASSES
    big = np.eye(k, dtype=np.int64) * 5 + 1
    _check_png(plot_confusion(big, [f"c{i}" for i in range(k)], tmp_path / "big.png"))


def test_confusion_bad_input(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="square"):
        plot_confusion(np.zeros((2, 3)), ["a", "b"], tmp_path / "x.png")
    with pytest.raises(ValueError, match="expected 2 class names"):
        plot_confusion(np.eye(2), ["a"], tmp_path / "x.png")
    k = MAX_CONFUSION_CLASSES + 1
    with pytest.raises(ValueError, match=f"at most {MAX_CONFUSION_CLASSES} classes .*found {k}"):
        plot_confusion(np.eye(k), [str(i) for i in range(k)], tmp_path / "x.png")
    assert not (tmp_path / "x.png").exists()


def test_delta_bar(tmp_path: Path) -> None:
    path = plot_delta({"left": -0.31, "right": 0.64, "age": math.nan}, 0.16,
                      tmp_path / "delta.png", errors={"left": 0.2}, delta_m_error=0.3,
                      metrics={"left": "accuracy", "right": "accuracy", "age": "mae"})
    _check_png(path)
    with pytest.raises(ValueError, match="at least one task"):
        plot_delta({}, 0.0, tmp_path / "empty.png")


def test_inline_images_embeds_relative_pngs(tmp_path: Path) -> None:
    import base64

    png = plot_confusion(np.eye(2, dtype=np.int64), ["a", "b"], tmp_path / "figures" / "cm.png")
    md = ("# r\n![confusion](figures/cm.png)\n![gone](figures/missing.png)\n"
          "![remote](https://example.org/x.png)\n")
    out = inline_images(md, tmp_path)
    encoded = base64.b64encode(png.read_bytes()).decode("ascii")
    assert f"![confusion](data:image/png;base64,{encoded})" in out
    assert "![gone](figures/missing.png)" in out  # left alone, not dropped
    assert "![remote](https://example.org/x.png)" in out
    assert out.startswith("# r\n")
