"""dvc.yaml's code dependencies equal what each stage runs (so the DVC cache is never stale).

Each stage's closure is computed from the source: ``cmd_<stage>`` in ``mtl/cli.py`` (its own
and ``cli.py``'s module-level imports) and, transitively, every mtl module imported at module
or function level. ``dvc.yaml`` may list a package folder only when the stage runs every module
in it.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from mtl.closure import PACKAGE_ROOT, function_closure, module_closure
from tests.conftest import REPO_ROOT

STAGES = ("ingest", "clean", "select", "augment", "train", "baseline", "teach", "evaluate")


def _listed(stage: str) -> set[str]:
    """The ``mtl/`` files a stage's deps name, folders expanded to their ``.py`` files."""
    deps = yaml.safe_load((REPO_ROOT / "dvc.yaml").read_text())["stages"][stage]["deps"]
    files: set[str] = set()
    for dep in deps:
        if not str(dep).startswith("mtl"):
            continue
        path = REPO_ROOT / dep
        assert path.exists(), f"dvc.yaml: stage {stage} lists {dep}, which does not exist"
        found = ([path] if path.is_file() else
                 [p for p in path.rglob("*.py") if "__pycache__" not in p.parts])
        files.update(str(p.relative_to(REPO_ROOT)) for p in found)
    return files


def _closure(stage: str) -> set[str]:
    return {str(p.relative_to(PACKAGE_ROOT)) for p in function_closure("mtl.cli", f"cmd_{stage}")}


@pytest.mark.parametrize("stage", STAGES)
def test_stage_deps_equal_its_import_closure(stage: str) -> None:
    used, listed = _closure(stage), _listed(stage)
    missing, unused = sorted(used - listed), sorted(listed - used)
    assert not missing and not unused, (
        f"dvc.yaml stage {stage!r}: expected its deps to equal the modules it runs; "
        f"missing {missing}, listed but not run {unused}")


def test_cli_and_config_decide_every_stage() -> None:
    for stage in STAGES:
        assert {"mtl/cli.py", "mtl/config.py"} <= _closure(stage), stage


def test_granularity_one_weighting_method_stales_only_train_and_evaluate() -> None:
    """A change to one weighting method (or to the training code) does not touch the data
    stages' deps; evaluate does not run the weightings either."""
    for stage in ("ingest", "clean", "select", "augment", "evaluate"):
        assert "mtl/weighting/pcgrad.py" not in _listed(stage), stage
        assert "mtl/train.py" not in _listed(stage), stage
    assert "mtl/weighting/pcgrad.py" in _listed("train")


def test_no_stage_module_imports_another_stage_module() -> None:
    stages = {"mtl.data.ingest": "ingest", "mtl.data.clean": "clean", "mtl.data.select": "select",
              "mtl.augment": "augment", "mtl.train": "train", "mtl.teach": "teach",
              "mtl.evaluate": "evaluate"}
    own = {"augment": {"mtl/augment/__init__.py", "mtl/augment/pipeline.py"}}
    files = {s: own.get(s, {m.replace(".", "/") + ".py"}) for m, s in stages.items()}
    # Known and owned by the data stages' engineer: augment and select still import
    # resolve_image_path / FEATURE_PREFIX from clean (issue 7); checked for the others.
    for module, stage in stages.items():
        closure = {str(p.relative_to(PACKAGE_ROOT)) for p in module_closure([module])}
        for other, other_files in files.items():
            if other != stage:
                assert not closure & other_files, f"{module} imports the {other} stage"


def test_closure_follows_function_level_imports_and_skips_type_checking(tmp_path: Path) -> None:
    pkg = tmp_path / "mtl"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n"
                              "    from mtl import typed\n\ndef f():\n    from .sub import b\n")
    (pkg / "sub" / "b.py").write_text("import mtl.c\n")
    (pkg / "c.py").write_text("")
    (pkg / "typed.py").write_text("")
    (pkg / "cli.py").write_text("import mtl.c\n\ndef cmd_x():\n    helper()\n\n"
                                "def helper():\n    from mtl import a\n\n"
                                "def cmd_y():\n    from mtl.sub import b\n")
    got = {str(p.relative_to(tmp_path)) for p in module_closure(["mtl.a"], tmp_path)}
    assert got == {"mtl/__init__.py", "mtl/a.py", "mtl/sub/__init__.py", "mtl/sub/b.py",
                   "mtl/c.py"}
    x = {str(p.relative_to(tmp_path)) for p in function_closure("mtl.cli", "cmd_x", tmp_path)}
    assert x == got | {"mtl/cli.py"}
    y = {str(p.relative_to(tmp_path)) for p in function_closure("mtl.cli", "cmd_y", tmp_path)}
    assert y == {"mtl/__init__.py", "mtl/cli.py", "mtl/c.py", "mtl/sub/__init__.py",
                 "mtl/sub/b.py"}
