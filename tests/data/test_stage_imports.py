"""No stage module imports another stage module (shared code lives in shared modules)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2] / "mtl"
# Each pipeline stage and the module(s) that make it up.
STAGES = {
    "ingest": ("mtl.data.ingest",),
    "clean": ("mtl.data.clean",),
    "select": ("mtl.data.select",),
    "augment": ("mtl.augment",),
    "train": ("mtl.train",),
    "evaluate": ("mtl.evaluate",),
}


def _stage_of(module: str) -> str | None:
    for stage, prefixes in STAGES.items():
        if any(module == p or module.startswith(p + ".") for p in prefixes):
            return stage
    return None


def _files(stage: str) -> list[Path]:
    out = []
    for prefix in STAGES[stage]:
        rel = Path(*prefix.split(".")[1:])
        folder = ROOT / rel
        out += sorted(folder.rglob("*.py")) if folder.is_dir() else [ROOT / f"{rel}.py"]
    return [p for p in out if p.is_file()]


# The data stages and augment (train/evaluate are checked by their owners' tests).
@pytest.mark.parametrize("stage", ["augment", "clean", "ingest", "select"])
def test_stage_modules_do_not_import_other_stages(stage: str) -> None:
    files = _files(stage)
    assert files, stage
    bad = []
    for path in files:
        for node in ast.walk(ast.parse(path.read_text())):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import) else
                     [node.module] if isinstance(node, ast.ImportFrom) and node.module else [])
            for name in names:
                other = _stage_of(name)
                if other is not None and other != stage:
                    bad.append(f"{path.relative_to(ROOT.parent)} imports {name}")
    assert not bad, bad
