"""Label normalisation per task: whitespace, missing tokens, synonyms, case, declared classes.

Order of operations for one raw cell (each step that changes a value is counted in the report):

1. strip and collapse internal runs of whitespace (``"Navy  Blue "`` -> ``"Navy Blue"``);
2. empty or one of ``dataset.missing_values`` (case-insensitive) -> missing, no issue;
3. ``synonyms`` (keys compared case-insensitively when ``casefold`` is on);
4. ``casefold``: every spelling of a label maps to one canonical spelling: the declared class
   when ``classes`` is set, else the most frequent spelling in the column (ties: sorted first);
5. kind-specific parsing: regression -> finite float (``not_a_number``, ``not_finite``);
   binary -> ``"0"``/``"1"`` (``not_binary``); multiclass with declared ``classes``: any other
   value -> missing (``undeclared_class``); multilabel: the cell is split on the task's
   ``separator``, each label normalised as above, undeclared labels dropped (recorded as
   ``undeclared_class``), and the canonical form is the sorted distinct labels joined again.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from mtl.config import TaskConfig

__all__ = ["LabelNormaliser", "collapse_whitespace"]

_TRUE = {"1", "true", "yes", "y", "t", "1.0"}
_FALSE = {"0", "false", "no", "n", "f", "0.0"}


def collapse_whitespace(value: str) -> str:
    """Strip and replace every internal run of whitespace by one space."""
    return " ".join(value.split())


@dataclass
class LabelNormaliser:
    """Normalises the raw cells of one task column (built from the whole column)."""

    task: TaskConfig
    missing_values: frozenset[str]
    canonical: dict[str, str] = field(default_factory=dict)
    synonyms: dict[str, str] = field(default_factory=dict)
    changes: Counter[str] = field(default_factory=Counter)

    @classmethod
    def fit(cls, task: TaskConfig, values: Iterable[str | None],
            missing_values: Iterable[str]) -> LabelNormaliser:
        """Build the normaliser; with ``casefold`` it learns the canonical spellings."""
        norm = cls(task, frozenset(m.strip().casefold() for m in missing_values))
        for k, v in task.synonyms.items():
            key = collapse_whitespace(k)
            norm.synonyms[key.casefold() if task.casefold else key] = collapse_whitespace(v)
        if task.casefold:
            spellings: Counter[str] = Counter()
            for raw in values:
                for pre in norm._tags(raw):
                    spellings[pre] += 1
            best: dict[str, tuple[int, str]] = {}
            for sp, n in spellings.items():
                key = sp.casefold()
                cur = best.get(key)
                # Most frequent spelling wins; ties go to the alphabetically first spelling.
                if cur is None or (-n, sp) < (-cur[0], cur[1]):
                    best[key] = (n, sp)
            norm.canonical = {k: sp for k, (_, sp) in best.items()}
            for c in task.classes or ():
                norm.canonical[c.casefold()] = c
        return norm

    def _pre(self, raw: str | None) -> str | None:
        """Steps 1-3 (whitespace, missing tokens, synonyms)."""
        if raw is None:
            return None
        v = collapse_whitespace(raw)
        if not v or v.casefold() in self.missing_values:
            return None
        key = v.casefold() if self.task.casefold else v
        return self.synonyms.get(key, v)

    def _tags(self, raw: str | None) -> list[str]:
        """Steps 1-3 for every label of a cell (one label unless the task is multilabel)."""
        if raw is None:
            return []
        parts = raw.split(self.task.separator) if self.task.kind == "multilabel" else [raw]
        return [v for v in (self._pre(p) for p in parts) if v is not None]

    def _multilabel(self, raw: str) -> tuple[Any, str | None]:
        """``"Red | blue|red"`` -> ``"blue|red"`` (canonical, sorted, distinct); undeclared
        labels are dropped (the cell's issue says so) and an empty cell is missing."""
        tags = []
        for v in self._tags(raw):
            c = self.canonical.get(v.casefold(), v) if self.task.casefold else v
            tags.append(c)
        issue = None
        if self.task.classes is not None:
            declared = [t for t in tags if t in self.task.classes]
            issue = "undeclared_class" if len(declared) != len(tags) else None
            tags = declared
        if not tags:
            return None, issue
        return self.task.separator.join(sorted(set(tags))), issue

    def __call__(self, raw: str | None) -> tuple[Any, str | None]:
        """(normalised label or ``None``, issue reason or ``None``) for one raw cell."""
        if raw is None:
            return None, None
        if self.task.kind == "multilabel":
            return self._multilabel(raw)
        v = self._pre(raw)
        if v is None:
            return None, None
        if v != raw:
            self.changes["synonym" if v != collapse_whitespace(raw) else "whitespace"] += 1
        if self.task.casefold:
            c = self.canonical.get(v.casefold(), v)
            if c != v:
                self.changes["case"] += 1
            v = c
        kind = self.task.kind
        if kind == "regression":
            try:
                x = float(v)
            except ValueError:
                return None, "not_a_number"
            return (x, None) if math.isfinite(x) else (None, "not_finite")
        if kind == "binary":
            classes = self.task.classes
            if classes is not None and len(classes) == 2 and v in classes:
                return str(classes.index(v)), None
            low = v.lower()
            if low in _TRUE:
                return "1", None
            if low in _FALSE:
                return "0", None
            return None, "not_binary"
        if self.task.classes is not None and v not in self.task.classes:
            return None, "undeclared_class"
        return v, None
