"""A corpus of malformed inputs (files and tables): each is rejected with a specific reason or
stopped with a clear message naming the file, row or column; nothing is ever lost.

Every case starts from a small valid dataset (``make_dataset``: tasks ``a`` multiclass and ``b``
binary), adds one bad row or file (or breaks the table), runs the clean stage, and checks the
outcome and the invariant that manifest + rejects account for every raw row.
"""

from __future__ import annotations

import os
import struct
import zlib
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import yaml
from PIL import Image

from mtl.cli import main
from mtl.config import CleanConfig, DatasetConfig, TaskConfig
from mtl.data.clean import LABEL_ISSUE_REASONS, REJECT_REASONS, clean
from mtl.data.io import DataError
from tests.conftest import write_png

Setup = Callable[[Path, pd.DataFrame], tuple[pd.DataFrame | None, dict[str, Any], dict[str, Any]]]


def _row(id_: str | None, image: str | None, a: str | None = "cat",
         b: str | None = "yes") -> dict[str, Any]:
    return {"id": id_, "image": image, "a": a, "b": b}


def _add(table: pd.DataFrame, *rows: dict[str, Any]) -> pd.DataFrame:
    return pd.concat([table, pd.DataFrame(list(rows))], ignore_index=True)


def _file_case(write: Callable[[Path], None], name: str = "bad.png",
               **clean_kw: Any) -> Setup:
    def setup(root: Path, table: pd.DataFrame) -> tuple[pd.DataFrame, dict[str, Any],
                                                        dict[str, Any]]:
        write(root / "images" / name)
        return _add(table, _row("x-bad", f"images/{name}")), {}, clean_kw
    return setup


def _rows_case(*rows: dict[str, Any], dataset_kw: dict[str, Any] | None = None,
               **clean_kw: Any) -> Setup:
    def setup(root: Path, table: pd.DataFrame) -> tuple[pd.DataFrame, dict[str, Any],
                                                        dict[str, Any]]:
        return _add(table, *rows), dataset_kw or {}, clean_kw
    return setup


def _good_png(path: Path) -> bytes:
    buf = path.parent / "_tmp.png"
    write_png(buf, np.random.default_rng(7).integers(0, 255, (16, 16), dtype=np.uint8))
    data = buf.read_bytes()
    buf.unlink()
    return data


def _bomb_png(path: Path) -> None:
    """A valid 1×1 PNG whose header claims 40000×40000 pixels."""
    Image.new("L", (1, 1)).save(path)
    data = bytearray(path.read_bytes())
    data[16:24] = struct.pack(">II", 40_000, 40_000)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])) & 0xFFFFFFFF)
    path.write_bytes(bytes(data))


def _truncated_jpeg(path: Path) -> None:
    rng = np.random.default_rng(1)
    Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(path, "JPEG")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _corrupt_png(path: Path) -> None:
    good = _good_png(path)
    path.write_bytes(good[:60] + bytes(255 - b for b in good[60:-20]) + good[-20:])


def _symlink_out(root: Path, table: pd.DataFrame) -> tuple[pd.DataFrame, dict[str, Any],
                                                           dict[str, Any]]:
    outside = root.parent / "outside.png"
    write_png(outside, np.zeros((16, 16), np.uint8))
    os.symlink(outside, root / "images" / "link.png")
    return _add(table, _row("x-bad", "images/link.png")), {}, {}


def _symlink_dir_out(root: Path, table: pd.DataFrame) -> tuple[pd.DataFrame, dict[str, Any],
                                                               dict[str, Any]]:
    other = root.parent / "elsewhere"
    write_png(other / "a.png", np.zeros((16, 16), np.uint8))
    os.symlink(other, root / "linked")
    return _add(table, _row("x-bad", "linked/a.png")), {}, {}


def _symlink_loop(root: Path, table: pd.DataFrame) -> tuple[pd.DataFrame, dict[str, Any],
                                                            dict[str, Any]]:
    os.symlink(root / "images" / "loop2.png", root / "images" / "loop1.png")
    os.symlink(root / "images" / "loop1.png", root / "images" / "loop2.png")
    return _add(table, _row("x-bad", "images/loop1.png")), {}, {}


def _bad_split(root: Path, table: pd.DataFrame) -> tuple[pd.DataFrame, dict[str, Any],
                                                         dict[str, Any]]:
    table = _add(table, _row("x-bad", "images/0001.png"))
    table["split"] = ["train"] * (len(table) - 1) + ["holdout"]
    return table, {"split_column": "split"}, {}


def _conflicting_dup(root: Path, table: pd.DataFrame) -> tuple[pd.DataFrame, dict[str, Any],
                                                               dict[str, Any]]:
    flipped = "no" if table.loc[2, "b"] == "yes" else "yes"
    return _add(table, _row("x-bad", "images/0002.png", table.loc[2, "a"], flipped)), {}, {}


def _hierarchy(root: Path, table: pd.DataFrame) -> tuple[pd.DataFrame, dict[str, Any],
                                                         dict[str, Any]]:
    table = _add(table, _row("x-bad", "images/0005.png"))
    table = table.drop(index=5).reset_index(drop=True)  # its image is now only used by x-bad
    table["coarse"] = ["pet" if a in ("cat", "dog") else "fish" for a in table["a"]]
    table.loc[[0, 1], ["a", "coarse"]] = ["cat", "pet"]  # cat -> pet twice …
    table.loc[len(table) - 1, ["a", "coarse"]] = ["cat", "fish"]  # … and once cat -> fish
    tasks = (TaskConfig("a", "a"), TaskConfig("b", "b", "binary"), TaskConfig("coarse", "coarse"))
    return table, {"tasks": tasks, "hierarchy": (("a", "coarse"),)}, {
        "hierarchy_action": "reject"}


def _with_year(value: str) -> Setup:
    def setup(root: Path, table: pd.DataFrame) -> tuple[pd.DataFrame, dict[str, Any],
                                                        dict[str, Any]]:
        table = _add(table, _row("x-bad", "images/0005.png"))
        table = table.drop(index=5).reset_index(drop=True)
        table["year"] = ["2010"] * (len(table) - 1) + [value]
        tasks = (TaskConfig("a", "a"), TaskConfig("b", "b", "binary"),
                 TaskConfig("year", "year", "regression"))
        return table, {"tasks": tasks}, {}
    return setup


def _reuse(id_: str, a: str | None = "cat", b: str | None = "yes", **ds: Any) -> Setup:
    """A row that reuses image 0005 (its own row removed, so it is no duplicate)."""
    def setup(root: Path, table: pd.DataFrame) -> tuple[pd.DataFrame, dict[str, Any],
                                                        dict[str, Any]]:
        table = _add(table, _row(id_, "images/0005.png", a, b)).drop(index=5)
        return table.reset_index(drop=True), ds, {}
    return setup


def _image_mode(make: Callable[[], Image.Image], fmt: str = "PNG", **clean_kw: Any) -> Setup:
    def write(path: Path) -> None:
        make().save(path, fmt)
    return _file_case(write, "mode." + fmt.lower(), **clean_kw)


def _id_reused_after_reject(root: Path, table: pd.DataFrame) -> tuple[pd.DataFrame,
                                                                      dict[str, Any],
                                                                      dict[str, Any]]:
    """A row rejected for its file, then a valid row with the same id: the valid one stays."""
    table = _add(table, _row("x-bad", "images/nope.png"), _row("x-bad", "images/0005.png"))
    return table.drop(index=5).reset_index(drop=True), {}, {}


def _id_reused_after_duplicate_image(root: Path, table: pd.DataFrame,
                                     ) -> tuple[pd.DataFrame, dict[str, Any], dict[str, Any]]:
    """A row dropped as an exact duplicate (of row 2), then a valid row with its id: the id
    goes to the valid row, the one that ends in the manifest."""
    dup = _row("x-bad", "images/0002.png", table.loc[2, "a"], table.loc[2, "b"])
    table = _add(table, dup, _row("x-bad", "images/0005.png"))
    return table.drop(index=5).reset_index(drop=True), {}, {}


def _codes_written_as_floats(root: Path, table: pd.DataFrame,
                             ) -> tuple[pd.DataFrame, dict[str, Any], dict[str, Any]]:
    """Class codes stored as float by the writer ("3.0"): they still match classes [3, 7]."""
    table = _add(table, _row("x-bad", "images/0005.png")).drop(index=5).reset_index(drop=True)
    table["code"] = ["3.0" if i % 2 else "7.0" for i in range(len(table))]
    tasks = (TaskConfig("a", "a"), TaskConfig("b", "b", "binary"),
             TaskConfig("code", "code", classes=("3", "7")))
    return table, {"tasks": tasks}, {}


def _pos_neg(root: Path, table: pd.DataFrame) -> tuple[pd.DataFrame, dict[str, Any],
                                                       dict[str, Any]]:
    """Declared classes [pos, neg] have no truth value: ``TRUE`` could mean either."""
    table = _add(table, _row("x-bad", "images/0005.png", "cat", "TRUE")).drop(index=5)
    table["b"] = table["b"].replace({"yes": "pos", "no": "neg"})
    tasks = (TaskConfig("a", "a"), TaskConfig("b", "b", "binary", classes=("pos", "neg")))
    return table.reset_index(drop=True), {"tasks": tasks}, {}


_YES_NO = (TaskConfig("a", "a"), TaskConfig("b", "b", "binary", classes=("yes", "no")))

# (case id, setup, expected): ("reject", reason) | ("issue", task, reason) | ("kept", mode) |
# ("label", task, value): the row is kept with that label
ROW_CASES: list[tuple[str, Setup, tuple[str, ...]]] = [
    ("empty_file", _file_case(lambda p: p.write_bytes(b"")), ("reject", "empty_file")),
    ("missing_file", _rows_case(_row("x-bad", "images/nope.png")), ("reject", "missing_file")),
    ("text_named_png", _file_case(lambda p: p.write_text("hello")), ("reject", "not_an_image")),
    ("html_named_jpg", _file_case(lambda p: p.write_text("<html><body>404</body></html>"),
                                  "page.jpg"), ("reject", "not_an_image")),
    ("truncated_png", _file_case(lambda p: p.write_bytes(_good_png(p)[:120])),
     ("reject", "truncated_image")),
    ("truncated_jpeg", _file_case(_truncated_jpeg, "cut.jpg"), ("reject", "truncated_image")),
    ("corrupt_png_data", _file_case(_corrupt_png), ("reject", "unreadable_image")),
    ("decompression_bomb", _file_case(_bomb_png), ("reject", "too_many_pixels")),
    ("too_small", _file_case(lambda p: write_png(p, np.zeros((2, 2), np.uint8))),
     ("reject", "too_small")),
    ("folder_not_file", _file_case(lambda p: p.mkdir()), ("reject", "not_a_file")),
    ("dotdot_escape", _rows_case(_row("x-bad", "../outside.png")),
     ("reject", "path_outside_dataset")),
    ("absolute_path", _rows_case(_row("x-bad", "/etc/passwd")),
     ("reject", "path_outside_dataset")),
    ("symlink_out", _symlink_out, ("reject", "path_outside_dataset")),
    ("symlinked_dir_out", _symlink_dir_out, ("reject", "path_outside_dataset")),
    ("symlink_loop", _symlink_loop, ("reject", "invalid_path")),
    ("missing_id", _rows_case(_row(None, "images/0001.png")), ("reject", "missing_id")),
    ("duplicate_id", _rows_case(_row("s0001", "images/0002.png")), ("reject", "duplicate_id")),
    ("missing_path", _rows_case(_row("x-bad", None)), ("reject", "missing_path")),
    ("bad_split", _bad_split, ("reject", "bad_split")),
    ("no_labels", _reuse("x-bad", None, None), ("reject", "no_labels")),
    ("only_missing_tokens", _reuse("x-bad", "N/A", " null "), ("reject", "no_labels")),
    ("conflicting_duplicate", _conflicting_dup, ("reject", "conflicting_duplicate")),
    ("hierarchy_violation", _hierarchy, ("reject", "hierarchy_violation")),
    ("cmyk_rejected", _image_mode(lambda: Image.new("CMYK", (16, 16)), "JPEG",
                                  reject_modes=("CMYK",)), ("reject", "unsupported_mode")),
    ("undeclared_class", _reuse("x-bad", "wolf", "yes", tasks=(
        TaskConfig("a", "a", classes=("cat", "dog", "eel")), TaskConfig("b", "b", "binary"))),
     ("issue", "a", "undeclared_class")),
    ("not_binary", _reuse("x-bad", "cat", "maybe"), ("issue", "b", "not_binary")),
    ("year_not_a_number", _with_year("twenty ten"), ("issue", "year", "not_a_number")),
    ("year_infinite", _with_year("inf"), ("issue", "year", "not_finite")),
    # Declared classes [yes, no]: index 0 is "yes", so every spelling of yes must give "0".
    ("binary_true_means_declared_yes", _reuse("x-bad", "cat", "TRUE", tasks=_YES_NO),
     ("label", "b", "0")),
    ("binary_one_means_declared_yes", _reuse("x-bad", "cat", "1", tasks=_YES_NO),
     ("label", "b", "0")),
    ("binary_capital_no", _reuse("x-bad", "cat", "NO", tasks=_YES_NO), ("label", "b", "1")),
    ("binary_ambiguous_spelling", _pos_neg, ("issue", "b", "not_binary")),
    ("id_reused_after_a_rejected_row", _id_reused_after_reject, ("label", "a", "cat")),
    ("id_reused_after_a_dropped_duplicate", _id_reused_after_duplicate_image,
     ("label", "a", "cat")),
    ("class_codes_written_as_floats", _codes_written_as_floats, ("label", "code", "3")),
    ("cmyk_converted", _image_mode(lambda: Image.new("CMYK", (16, 16), (0, 0, 0, 255)), "JPEG"),
     ("kept", "CMYK")),
    ("sixteen_bit", _image_mode(lambda: Image.fromarray(
        np.arange(256, dtype=np.uint16).reshape(16, 16) * 200)), ("kept", "I;16")),
    ("palette_transparent", _image_mode(lambda: _palette()), ("kept", "P")),
    ("rgba", _image_mode(lambda: Image.new("RGBA", (16, 16), (9, 9, 9, 0))), ("kept", "RGBA")),
    ("animated_gif", _image_mode(lambda: _gif(), "GIF"), ("kept", "P")),
]


def _palette() -> Image.Image:
    im = Image.new("P", (16, 16), 1)
    im.info["transparency"] = 1
    return im


def _gif() -> Image.Image:
    frames = [Image.new("L", (16, 16), v) for v in (0, 128, 255)]
    im = frames[0].convert("P")
    im.info["save_all_frames"] = [f.convert("P") for f in frames[1:]]
    return im


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
@pytest.mark.parametrize(("setup", "expected"), [c[1:] for c in ROW_CASES],
                         ids=[c[0] for c in ROW_CASES])
def test_bad_row_or_file(make_dataset: Callable[..., tuple[DatasetConfig, Path]],
                         clean_cfg: CleanConfig, setup: Setup,
                         expected: tuple[str, ...], fmt: str) -> None:
    """Every case as CSV and as Parquet (where the empty cells are real nulls)."""
    cfg, root = make_dataset(n=6)
    table = pd.read_csv(root / "labels.csv", dtype=str)
    new_table, ds_kw, clean_kw = setup(root, table)
    assert new_table is not None
    if fmt == "parquet":
        new_table.astype(object).to_parquet(root / "labels.parquet", index=False)
        ds_kw = {"labels": "labels.parquet", **ds_kw}
    else:
        new_table.to_csv(root / "labels.csv", index=False)
    before = {p: p.read_bytes() for p in (root / "images").glob("*.png") if p.is_file()
              and not p.is_symlink()}
    result = clean(replace(cfg, **ds_kw), replace(clean_cfg, **clean_kw))
    last = len(new_table) - 1
    rows = sorted(list(result.manifest["row"]) + list(result.rejects["row"]))
    assert rows == list(range(len(new_table)))  # nothing lost, nothing twice
    rejects = result.rejects.set_index("row")
    if expected[0] == "reject":
        assert expected[1] in REJECT_REASONS
        assert rejects.loc[last, "reason"] == expected[1], rejects.loc[last, "detail"]
        assert len(str(rejects.loc[last, "detail"])) > 5
        assert result.report["rejects_by_reason"][expected[1]] >= 1
    elif expected[0] == "issue":
        assert expected[2] in LABEL_ISSUE_REASONS
        issues = result.label_issues
        hit = issues[(issues["row"] == last) & (issues["task"] == expected[1])]
        assert list(hit["reason"]) == [expected[2]]
        assert last in set(result.manifest["row"])
    elif expected[0] == "label":
        kept = result.manifest.set_index("row")
        assert last in kept.index, rejects.to_dict("index")
        assert kept.loc[last, expected[1]] == expected[2]
        assert result.label_issues[result.label_issues["row"] == last].empty
    else:
        kept = result.manifest.set_index("row")
        assert last in kept.index, rejects.to_dict("index")
        assert kept.loc[last, "source_mode"] == expected[1]
    assert {p: p.read_bytes() for p in before} == before  # raw data never modified


# Table-level problems: (case id, writer of labels file, dataset overrides, message patterns)
def _write(text: str | bytes, name: str = "labels.csv") -> Callable[[Path], str]:
    def write(root: Path) -> str:
        path = root / name
        if isinstance(text, bytes):
            path.write_bytes(text)
        else:
            path.write_text(text)
        return name
    return write


TABLE_CASES: list[tuple[str, Callable[[Path], str], dict[str, Any], tuple[str, ...]]] = [
    ("missing_columns", _write("id,image,a\ns1,images/0000.png,cat\n"), {},
     ("missing column", "'b'", "labels.csv")),
    ("not_utf8", _write("id,image,a,b\ns1,caf\xe9.png,cat,yes\n".encode("latin-1")), {},
     ("not UTF-8", "labels.csv")),
    ("empty_table", _write(""), {}, ("empty", "labels.csv")),
    ("header_only", _write("id,image,a,b\n"), {}, ("no data rows", "labels.csv")),
    ("ragged_rows", _write("id,image,a,b\ns1,images/0000.png,cat,yes,extra,more\n"), {},
     ("cannot be parsed", "labels.csv")),
    ("duplicate_columns", _write("id,image,a,a,b\ns1,images/0000.png,cat,dog,yes\n"), {},
     ("duplicate column", "labels.csv")),
    ("unsupported_format", _write("PK\x03\x04", "labels.xlsx"), {"labels": "labels.xlsx"},
     ("unsupported labels table format", "labels.xlsx")),
    ("labels_not_found", lambda root: "nope.csv", {"labels": "nope.csv"},
     ("labels table not found", "nope.csv")),
    ("corrupt_parquet", _write(b"PAR1garbagePAR1", "labels.parquet"),
     {"labels": "labels.parquet"}, ("cannot be parsed", "labels.parquet")),
    ("regression_wrong_type", _write(
        "id,image,a,b,year\ns1,images/0000.png,cat,yes,new\ns2,images/0001.png,dog,no,old\n"
        "s3,images/0002.png,eel,no,old\n"),
     {"tasks": (TaskConfig("a", "a"), TaskConfig("year", "year", "regression"))},
     ("column 'year'", "not numbers", "rows 0 ('new')", "labels.csv")),
    ("semicolon_separated", _write("id;image;a;b\ns1;images/0000.png;cat;yes\n"), {},
     ("missing column", "'id'", "labels.csv")),
    ("several_problems_at_once", _write("id,image,a\ns1,images/0000.png,cat\n"),
     {"tasks": (TaskConfig("a", "a"), TaskConfig("b", "b", "binary")),
      "group_column": "patient", "feature_columns": {"price": "numeric"}},
     ("'b'", "'patient'", "'price'")),
]


@pytest.mark.parametrize(("write", "ds_kw", "needles"), [c[1:] for c in TABLE_CASES],
                         ids=[c[0] for c in TABLE_CASES])
def test_bad_table_is_a_clear_error(make_dataset: Callable[..., tuple[DatasetConfig, Path]],
                                    clean_cfg: CleanConfig, write: Callable[[Path], str],
                                    ds_kw: dict[str, Any], needles: tuple[str, ...]) -> None:
    cfg, root = make_dataset(n=3)
    write(root)
    with pytest.raises(DataError) as err:
        clean(replace(cfg, **ds_kw), clean_cfg)
    for needle in needles:
        assert needle in str(err.value), (needle, str(err.value))


@pytest.mark.parametrize("variant", ["bom", "crlf", "padded"])
def test_awkward_but_valid_tables_are_read(make_dataset: Callable[..., tuple[DatasetConfig, Path]],
                                           clean_cfg: CleanConfig, variant: str) -> None:
    cfg, root = make_dataset(n=5)
    text = (root / "labels.csv").read_text()
    if variant == "bom":
        (root / "labels.csv").write_bytes(b"\xef\xbb\xbf" + text.encode())
    elif variant == "crlf":
        (root / "labels.csv").write_bytes(text.replace("\n", "\r\n").encode())
    else:
        table = pd.read_csv(root / "labels.csv", dtype=str)
        table["a"] = "  " + table["a"].str.replace("", " ").str.strip() + "  "
        table["a"] = table["a"].str.replace(" ", "")  # back to the word …
        table["a"] = "  " + table["a"] + " \t"  # … padded with whitespace
        table.to_csv(root / "labels.csv", index=False)
    result = clean(cfg, clean_cfg)
    assert len(result.manifest) == 5
    assert set(result.manifest["a"]) <= {"cat", "dog", "eel"}


def test_corpus_is_large_enough() -> None:
    assert len(ROW_CASES) + len(TABLE_CASES) >= 25
    assert len({c[0] for c in ROW_CASES + TABLE_CASES}) == len(ROW_CASES) + len(TABLE_CASES)


def _params_file(tmp_path: Path, cfg: DatasetConfig) -> Path:
    raw = {"dataset": {"dir": cfg.dir, "labels": cfg.labels, "image_column": "image",
                       "split_column": None,
                       "tasks": [{"name": t.name, "column": t.column, "kind": t.kind}
                                 for t in cfg.tasks]},
           "clean": {"mode": "L", "min_size": 4, "workers": 1}}
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def test_cli_turns_bad_data_into_a_message_not_a_traceback(
        make_dataset: Callable[..., tuple[DatasetConfig, Path]], tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    cfg, root = make_dataset(n=4)
    params = _params_file(tmp_path, cfg)
    (root / "labels.csv").write_bytes("id,image,a,b\ns1,x\xe9,cat,yes\n".encode("latin-1"))
    rc = main(["clean", "--params", str(params), "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert rc == 2
    assert "Traceback" not in err and "labels.csv" in err and "not UTF-8" in err


def test_cli_clean_and_select_write_every_output(
        make_dataset: Callable[..., tuple[DatasetConfig, Path]], tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    cfg, root = make_dataset(n=40)
    table = pd.read_csv(root / "labels.csv", dtype=str)
    (root / "images" / "empty.png").write_bytes(b"")
    table = _add(table, _row("x-empty", "images/empty.png"))
    table.to_csv(root / "labels.csv", index=False)
    params = _params_file(tmp_path, cfg)
    out = tmp_path / "clean"
    assert main(["clean", "--params", str(params), "--out", str(out)]) == 0
    for name in ("manifest.parquet", "rejects.csv", "label_issues.csv", "near_duplicates.csv",
                 "report.json"):
        assert (out / name).is_file(), name
    rejects = pd.read_csv(out / "rejects.csv")
    assert list(rejects["reason"]) == ["empty_file"] and list(rejects["row"]) == [40]
    sel = tmp_path / "selected"
    assert main(["select", "--params", str(params), "--manifest", str(out / "manifest.parquet"),
                 "--out", str(sel)]) == 0
    assert "features" in (sel / "schema.json").read_text()
    assert "select: tasks" in capsys.readouterr().out
