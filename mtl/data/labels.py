"""Label normalisation per task: whitespace, missing tokens, synonyms, case, declared classes.

Order of operations for one raw cell (each step that changes a value is counted in the report):

1. strip and collapse internal runs of whitespace (``"Navy  Blue "`` -> ``"Navy Blue"``);
2. empty or one of ``dataset.missing_values`` (case-insensitive) -> missing, no issue;
3. ``synonyms`` (keys compared case-insensitively when ``casefold`` is on, and a whole number
   written ``N.0`` equal to ``N``: the reader rewrites a float-stored integer column's
   ``"1.0"`` to ``"1"``, so a key or class written ``"1.0"`` must still match);
4. ``casefold``: every spelling of a label maps to one canonical spelling: the declared class
   when ``classes`` is set, else the most frequent spelling in the column (ties: sorted first);
   then a value that is a declared class written differently as a whole number (``"1"`` for
   the class ``"1.0"``, or ``"1.0"`` for ``"1"``) becomes that declared class;
5. kind-specific parsing: regression -> finite float (``not_a_number``, ``not_finite``);
   binary -> ``"0"``/``"1"`` (``not_binary``; with two declared classes the index of the
   class the value means: a built-in spelling such as ``TRUE`` maps only to the one declared
   class with the same truth value, else it is ``not_binary``); multiclass with declared
   ``classes``: any other value -> missing (``undeclared_class``); multilabel: the cell is
   split on the task's ``separator``, each label normalised as above, undeclared labels
   dropped (recorded as ``undeclared_class``), and the canonical form is the sorted distinct
   labels joined again.

Every change of steps 1-4 is counted per label (so per tag of a multilabel cell) in
``changes`` (``whitespace``, ``synonym``, ``case``), reported as ``label_normalisation``.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from mtl.config import TaskConfig
from mtl.schema import TaskKind

__all__ = ["LabelNormaliser", "collapse_whitespace"]

_TRUE = {"1", "true", "yes", "y", "t", "1.0"}
_FALSE = {"0", "false", "no", "n", "f", "0.0"}


def _truth(value: str) -> bool | None:
    """Truth value of a built-in binary spelling (case-insensitive), ``None`` for others."""
    low = value.casefold()
    return True if low in _TRUE else False if low in _FALSE else None


_WHOLE = re.compile(r"[+-]?\d+\.0+")


def _whole_key(value: str) -> str:
    """``"1.0"`` -> ``"1"`` (``"-0.0"`` -> ``"0"``): the reader's whole-number text; any other
    value unchanged. Used to compare declared classes and synonym keys with cells."""
    return str(int(value.split(".", 1)[0])) if _WHOLE.fullmatch(value) else value


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
    #: whole-number text of a declared class -> the class as declared (``"1"`` -> ``"1.0"``)
    class_of_whole: dict[str, str] = field(default_factory=dict)
    changes: Counter[str] = field(default_factory=Counter)

    @classmethod
    def fit(cls, task: TaskConfig, values: Iterable[str | None],
            missing_values: Iterable[str]) -> LabelNormaliser:
        """Build the normaliser; with ``casefold`` it learns the canonical spellings."""
        norm = cls(task, frozenset(m.strip().casefold() for m in missing_values))
        for k, v in task.synonyms.items():
            key = collapse_whitespace(k)
            key = _whole_key(key)
            norm.synonyms[key.casefold() if task.casefold else key] = collapse_whitespace(v)
        norm.class_of_whole = {_whole_key(c): c for c in task.classes or ()}
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
        key = _whole_key(v)
        key = key.casefold() if self.task.casefold else key
        return self.synonyms.get(key, v)

    def _tags(self, raw: str | None) -> list[str]:
        """Steps 1-3 for every label of a cell (one label unless the task is multilabel)."""
        if raw is None:
            return []
        multi = TaskKind(self.task.kind) is TaskKind.MULTILABEL
        parts = raw.split(self.task.separator) if multi else [raw]
        return [v for v in (self._pre(p) for p in parts) if v is not None]

    def _label(self, raw: str) -> str | None:
        """Steps 1-4 for one label, counting each change in ``changes``."""
        v = self._pre(raw)
        if v is None:
            return None
        if v != raw:
            self.changes["synonym" if v != collapse_whitespace(raw) else "whitespace"] += 1
        if self.task.casefold:
            c = self.canonical.get(v.casefold(), v)
            if c != v:
                self.changes["case"] += 1
            v = c
        if self.task.classes is not None and v not in self.task.classes:
            v = self.class_of_whole.get(_whole_key(v), v)
        return v

    def _multilabel(self, raw: str) -> tuple[Any, str | None]:
        """``"Red | blue|red"`` -> ``"blue|red"`` (canonical, sorted, distinct); undeclared
        labels are dropped (the cell's issue says so) and an empty cell is missing."""
        tags = [t for t in (self._label(p) for p in raw.split(self.task.separator))
                if t is not None]
        issue = None
        if self.task.classes is not None:
            declared = [t for t in tags if t in self.task.classes]
            issue = "undeclared_class" if len(declared) != len(tags) else None
            tags = declared
        if not tags:
            return None, issue
        return self.task.separator.join(sorted(set(tags))), issue

    def _binary(self, v: str) -> tuple[Any, str | None]:
        """``"0"``/``"1"``; with two declared classes, the index of the class ``v`` means.

        A value that is not a declared class maps through the built-in spellings
        (true/false, yes/no, 1/0, …) only to the one declared class with the same truth
        value (``TRUE`` -> ``yes`` for classes ``[yes, no]``); when no declared class (or both)
        has that truth value the mapping is ambiguous and the value is ``not_binary``, never
        a guess.
        """
        classes = self.task.classes
        truth = _truth(v)
        if classes is not None and len(classes) == 2:
            if v in classes:
                return str(classes.index(v)), None
            same = [i for i, c in enumerate(classes) if truth is not None and _truth(c) == truth]
            return (str(same[0]), None) if len(same) == 1 else (None, "not_binary")
        if truth is None:
            return None, "not_binary"
        return ("1" if truth else "0"), None

    def __call__(self, raw: str | None) -> tuple[Any, str | None]:
        """(normalised label or ``None``, issue reason or ``None``) for one raw cell."""
        if raw is None:
            return None, None
        kind = TaskKind(self.task.kind)
        if kind is TaskKind.MULTILABEL:
            return self._multilabel(raw)
        v = self._label(raw)
        if v is None:
            return None, None
        if kind is TaskKind.REGRESSION:
            try:
                x = float(v)
            except ValueError:
                return None, "not_a_number"
            return (x, None) if math.isfinite(x) else (None, "not_finite")
        if kind is TaskKind.BINARY:
            return self._binary(v)
        if self.task.classes is not None and v not in self.task.classes:
            return None, "undeclared_class"
        return v, None
