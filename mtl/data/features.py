"""Tabular metadata features: selection (fitted on the train split) and their encoders.

A *source* is a column of the labels table (numeric, categorical or text); it expands into
*features* (model inputs, one float32 column ``f__<name>`` each):

* numeric ``price`` -> ``price`` (standardised with train mean/std, missing -> 0) and, when the
  train split has missing values, ``price:missing`` (1 when missing);
* categorical ``colour`` -> one-hot ``colour=red`` for each category with at least
  ``select.min_category_count`` train rows (the ``select.max_categories`` most frequent);
* text ``title`` -> word indicators ``title:men`` (same thresholds on document frequency).

Categorical values and words are stripped, whitespace-collapsed and case-folded. The encoders
use no target information, and everything needed to re-apply them is stored in ``schema.json``
(``apply_feature_encoders``).

Decisions, in order, each recorded with its reason and score:

1. per source: ``high_missing`` (missing share > ``max_missing``), ``constant`` (at most one
   distinct value), ``identifier_like`` (a distinct share >= ``max_unique_ratio``: categorical,
   or numeric integers that fill most of their range like row numbers; a measurement such as
   a price of ``12345`` is not one), ``target_leak`` (the source alone predicts a task almost
   perfectly);
2. per feature: ``near_constant`` (its most common value covers >= ``max_dominance`` of train
   rows), ``target_leak``; the rest are ranked by adjusted mutual information (corrected for
   chance) with each task, averaged over the tasks; walking down the ranking,
   ``duplicate`` (identical to a better feature) and ``correlated`` (|Pearson r| >=
   ``max_correlation`` with a better feature) are dropped; the first ``max_features`` are kept,
   the rest dropped as ``below_top_k``.

Leakage score ("lift"): out-of-fold accuracy of predicting the task from the feature alone,
rescaled so the majority-class baseline scores 0 and perfect prediction 1 (for regression tasks:
out-of-fold R²). Discrete features predict the majority class of their value; numeric ones
score the best of their own distinct values, quantile bins and a 1-D k-nearest-neighbour model
(``numeric_leak_score``); a text source is scored with a naive Bayes model on its words. A
multilabel task scores its label sets and each label (``TaskTarget.parts``). A score >=
``select.leakage_threshold`` is a leak. So is a source or feature whose own values are a
one-to-one code of a task on the train rows (``one_to_one``: lift 1 whatever the number of
rows), when its share of distinct values is below ``select.max_unique_ratio`` (above it, a
column is identifier-like rather than a code: mostly distinct values are trivially one-to-one
with a label as distinct).
"""

from __future__ import annotations

import hashlib
import math
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property, lru_cache
from typing import Any

import numpy as np
import pandas as pd
from sklearn.metrics.cluster import expected_mutual_information

from mtl.config import SelectConfig
from mtl.schema import TaskKind

__all__ = [
    "FEATURE_COLUMN_PREFIX", "FEATURE_PREFIX", "ONE_TO_ONE_MAX_CHANCE", "TOKEN_PATTERN",
    "FeatureSelection", "TaskTarget", "adjusted_mutual_info", "apply_feature_encoders",
    "bijection_chance", "column_key", "detect_kind", "leak_score", "numeric_leak_score",
    "one_to_one", "relevance", "select_features", "text_leak_score", "tokenize",
]

FEATURE_COLUMN_PREFIX = "f__"
# Raw feature cells travel in the clean manifest under this prefix, so a user column can never
# collide with the manifest's own columns (row, id, image, width, …).
FEATURE_PREFIX = "src__"
TOKEN_PATTERN = r"[^\W_]+"
_TOKEN = re.compile(TOKEN_PATTERN)
_FOLDS = 5
_BINS = 10
_NEIGHBOURS = 5


@dataclass(frozen=True)
class TaskTarget:
    """One kept task as feature selection sees it: kind and encoded values (NaN = missing).

    ``values``: ``[N]`` class index / 0-1 / value, or ``[N, K]`` multi-hot for a multilabel
    task (a row of NaN = missing).
    """

    name: str
    kind: TaskKind
    values: np.ndarray

    def present(self) -> np.ndarray:
        """``[N]`` bool: rows with a label."""
        v = self.values
        return ~np.isnan(v[:, 0] if v.ndim == 2 else v)

    def parts(self) -> list[TaskTarget]:
        """Single-label targets to score against: the task itself, or for a multilabel task
        its label sets as classes plus each label as a binary task (built once per target:
        every feature is scored against them)."""
        return self._parts

    @cached_property
    def discrete(self) -> np.ndarray:
        """``[N]`` class index per row (regression values cut into quantile bins), -1 =
        missing; a single-label target only (see ``parts``)."""
        return _discrete_target(self)

    @cached_property
    def exact(self) -> np.ndarray:
        """``[N]`` index of each row's exact value (class, 0/1 or regression value) among the
        distinct values, -1 = missing; a single-label target only."""
        return pd.factorize(pd.Series(self.values))[0].astype(np.int64)

    @cached_property
    def _parts(self) -> list[TaskTarget]:
        if self.kind is not TaskKind.MULTILABEL:
            return [self]
        ok = self.present()
        rows = [tuple(np.flatnonzero(r > 0.5)) if good else None
                for r, good in zip(self.values, ok, strict=True)]
        codes, _ = pd.factorize(pd.Series(rows, dtype=object), use_na_sentinel=True)
        sets = np.where(codes >= 0, codes, np.nan).astype(np.float64)
        out = [TaskTarget(f"{self.name}[set]", TaskKind.MULTICLASS, sets)]
        for k in range(self.values.shape[1]):
            out.append(TaskTarget(f"{self.name}[{k}]", TaskKind.BINARY,
                                  np.where(ok, self.values[:, k], np.nan)))
        return out


@dataclass(frozen=True)
class FeatureSelection:
    """``features``: schema entries of the kept features; ``decisions``: every source/feature."""

    features: list[dict[str, Any]]
    decisions: list[dict[str, Any]]


def _norm_text(v: Any) -> str | None:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return None
    s = " ".join(str(v).split()).casefold()
    return s or None


def _to_float(v: Any) -> float:
    if v is None:
        return math.nan
    try:
        x = float(v)
    except (TypeError, ValueError):
        return math.nan
    return x if math.isfinite(x) else math.nan


def tokenize(v: Any) -> set[str]:
    """Distinct case-folded words of a text cell."""
    s = _norm_text(v)
    return set(_TOKEN.findall(s)) if s is not None else set()


def detect_kind(values: pd.Series) -> str:
    """numeric (>= 95% of non-missing values parse), text (>= 3 words on average), categorical."""
    present = [v for v in values if _norm_text(v) is not None]
    if not present:
        return "categorical"
    parsed = sum(not math.isnan(_to_float(v)) for v in present)
    if parsed >= 0.95 * len(present):
        return "numeric"
    words = np.mean([len(_TOKEN.findall(_norm_text(v) or "")) for v in present])
    return "text" if words >= 3 else "categorical"


def _prepare(raw: pd.Series, kind: str) -> Any:
    """A source column parsed once for all the features of one encoder type."""
    if kind in ("standardise", "missing_indicator"):
        return np.array([_to_float(v) for v in raw], dtype=np.float64)  # [N], NaN = missing
    if kind == "one_hot":
        return np.array([_norm_text(v) for v in raw], dtype=object)  # [N] str / None
    if kind == "word":
        return [tokenize(v) for v in raw]
    raise ValueError(f"unknown feature encoder type {kind!r}: expected standardise, "
                     "missing_indicator, one_hot or word")


def _encode_one(prepared: Any, enc: dict[str, Any]) -> np.ndarray:
    kind = enc["type"]
    if kind == "standardise":
        z = (prepared - enc["mean"]) / enc["std"]
        return np.where(np.isnan(z), 0.0, z).astype(np.float32)
    if kind == "missing_indicator":
        return np.isnan(prepared).astype(np.float32)
    if kind == "one_hot":
        return (prepared == enc["value"]).astype(np.float32)
    return np.array([enc["word"] in words for words in prepared], dtype=np.float32)


def apply_feature_encoders(frame: pd.DataFrame, schema_features: Sequence[dict[str, Any]],
                           prefix: str = "") -> np.ndarray:
    """Encode raw rows exactly as the select stage did: ``[N, F]`` float32.

    ``frame`` holds the raw source columns (a labels table; the clean manifest stores them as
    ``src__<column>``, so pass ``prefix="src__"`` there); ``schema_features`` is
    ``schema.json["features"]``. A source column absent from ``frame`` encodes as missing.
    Each source column is parsed once per encoder type, not once per feature (a categorical
    column with 20 one-hot features is normalised once).
    """
    out = np.zeros((len(frame), len(schema_features)), dtype=np.float32)
    prepared: dict[tuple[str, str], Any] = {}
    for j, feat in enumerate(schema_features):
        col, kind = prefix + feat["source"], feat["encoder"]["type"]
        if (col, kind) not in prepared:
            raw = (frame[col] if col in frame.columns else
                   pd.Series([None] * len(frame), dtype=object))
            prepared[col, kind] = _prepare(raw.reset_index(drop=True), kind)
        out[:, j] = _encode_one(prepared[col, kind], feat["encoder"])
    return out


# ---------------------------------------------------------------------------------------------
# Scores


def _codes(x: np.ndarray, numeric: bool) -> np.ndarray:
    """Discretise a feature: quantile bins for numeric values (NaN -> own bin), else factorize."""
    if numeric:
        finite = x[~np.isnan(x)]
        if len(finite) == 0:
            return np.zeros(len(x), dtype=np.int64)
        edges = np.unique(np.quantile(finite, np.linspace(0, 1, _BINS + 1)[1:-1]))
        codes = np.searchsorted(edges, np.where(np.isnan(x), 0, x), side="right")
        return np.where(np.isnan(x), len(edges) + 1, codes).astype(np.int64)
    codes, _ = pd.factorize(pd.Series(x, dtype=object), use_na_sentinel=False)
    return codes.astype(np.int64)


@lru_cache(maxsize=32)
def _folds(n: int, seed: int) -> np.ndarray:
    """``[n]`` fold of each row (the same for every feature scored on these rows: cached)."""
    folds = np.random.default_rng(seed).permutation(n) % _FOLDS
    folds.flags.writeable = False
    return folds


def _discrete_target(t: TaskTarget) -> np.ndarray:
    """Class index per row (regression targets cut into quantile bins); -1 = missing."""
    v = t.values
    ok = ~np.isnan(v)
    if t.kind is not TaskKind.REGRESSION:
        return np.where(ok, np.nan_to_num(v), -1).astype(np.int64)
    codes = _codes(v, numeric=True)
    return np.where(ok, codes, -1)


def leak_score(codes: np.ndarray, task: TaskTarget, seed: int) -> float:
    """Out-of-fold lift of predicting ``task`` from a discrete feature alone (0 = baseline).

    A multilabel task scores its best part (``TaskTarget.parts``): a feature that alone
    predicts the label sets, or any one label, is a leak.
    """
    return max(_leak_score(codes, part, seed) for part in task.parts())


def _leak_score(codes: np.ndarray, task: TaskTarget, seed: int) -> float:
    ok = ~np.isnan(task.values)
    x, y_raw = codes[ok], task.values[ok]
    n = len(x)
    if n < 2 * _FOLDS:
        return 0.0
    fold = _folds(n, seed)
    if task.kind is TaskKind.REGRESSION:
        pred = np.empty(n)
        for f in range(_FOLDS):
            tr, te = fold != f, fold == f
            s = pd.Series(y_raw[tr]).groupby(x[tr]).mean()
            pred[te] = pd.Series(x[te]).map(s).fillna(float(y_raw[tr].mean())).to_numpy()
        return _r2(y_raw, pred)
    y = y_raw.astype(np.int64)
    k, c = int(y.max()) + 1, int(x.max()) + 1
    if _FOLDS * c * k <= 1 << 20:
        # All folds at once (the same result as the loop below, without its per-fold
        # overhead, which dominated on wide tables): training counts of fold f are the
        # totals minus fold f's own counts.
        per = np.bincount((fold * c + x) * k + y,
                          minlength=_FOLDS * c * k).reshape(_FOLDS, c, k)  # [F, value, class]
        train = per.sum(0, keepdims=True) - per
        y_per = np.bincount(fold * k + y, minlength=_FOLDS * k).reshape(_FOLDS, k)
        overall = (y_per.sum(0, keepdims=True) - y_per).argmax(1)  # [F] training majority
        majority = np.where(train.sum(2) > 0, train.argmax(2), overall[:, None])  # [F, value]
        correct_all = int((majority[fold, x] == y).sum())
        return _lift(correct_all / n, int((y == overall[fold]).sum()) / n)
    correct = base_correct = 0
    for f in range(_FOLDS):
        tr, te = fold != f, fold == f
        counts = np.bincount(x[tr] * k + y[tr], minlength=c * k).reshape(c, k)
        overall = int(np.bincount(y[tr], minlength=k).argmax())
        majority = np.where(counts.sum(1) > 0, counts.argmax(1), overall)
        correct += int((majority[x[te]] == y[te]).sum())
        base_correct += int((y[te] == overall).sum())
    return _lift(correct / n, base_correct / n)


def _r2(y: np.ndarray, pred: np.ndarray) -> float:
    sst = float(((y - y.mean()) ** 2).sum())
    return float(1 - ((y - pred) ** 2).sum() / sst) if sst > 0 else 0.0


def _lift(acc: float, base: float) -> float:
    return float((acc - base) / (1 - base)) if base < 1 else 0.0


def numeric_leak_score(x: np.ndarray, task: TaskTarget, seed: int) -> float:
    """Lift of predicting ``task`` from a numeric feature ``x`` (``[N]``, NaN = missing) alone.

    The best of three views, so that neither a code nor a rescaled copy hides: the feature's
    own distinct values (a numeric code of a class), its quantile bins, and an out-of-fold
    k-nearest-neighbour model on the values themselves (a copy in other units, or any smooth
    function of the target, which coarse bins would blur).
    """
    exact, _ = pd.factorize(pd.Series(x), use_na_sentinel=False)
    scores = [leak_score(_codes(x, True), task, seed), leak_score(exact.astype(np.int64), task,
                                                                  seed)]
    scores += [_knn_score(x, part, seed) for part in task.parts()]
    return max(scores)


#: ``one_to_one`` calls a bijection a leak only when chance alone would give one this rarely.
ONE_TO_ONE_MAX_CHANCE = 0.01


def one_to_one(codes: np.ndarray, task: TaskTarget, max_unique_ratio: float,
               max_chance: float = ONE_TO_ONE_MAX_CHANCE) -> bool:
    """Whether the feature's own values (``codes``: ``[N]`` ints, -1 = missing) are a one-to-one
    relabelling of ``task`` (or of a part of it: a multilabel task's label sets or one label)
    on the rows where both are present.

    Such a feature is a leak whatever the number of rows: with two rows per class an
    out-of-fold score cannot see it (about one test row in five has its twin in the same
    fold, so lift is about 0.8), and under 10 rows no lift is computed at all.
    A bijection counts only where values repeat, i.e. the share of distinct values is below
    ``select.max_unique_ratio``: a mostly unique column is trivially one-to-one with anything
    as unique, which is what ``identifier_like`` stands for, not evidence of a leak.
    And only where the bijection is unlikely by chance (``bijection_chance`` below
    ``max_chance``): a task labelled on 3 train rows is matched by any feature with two values
    split 2/1 one time in three, which is a coincidence, not a code of the task.
    """
    for part in task.parts():
        ok = (part.exact >= 0) & (codes >= 0)
        x, y = codes[ok], part.exact[ok]
        if len(x) < 2:
            continue
        # Distinct counts by bincount: codes and classes are small non-negative indices.
        n_x = int(np.count_nonzero(np.bincount(x)))
        if n_x / len(x) >= max_unique_ratio or n_x < 2:
            continue
        if int(np.count_nonzero(np.bincount(y))) != n_x:
            continue
        # Distinct (value, class) pairs; np.unique, not bincount: values x classes can be
        # huge for a regression target.
        if len(np.unique(x * (int(y.max()) + 1) + y)) == n_x and \
                bijection_chance(np.bincount(y)) < max_chance:
            return True
    return False


def bijection_chance(class_counts: np.ndarray) -> float:
    """Probability that a random relabelling of the rows (a uniform shuffle of the labels,
    ``class_counts``: ``[classes]`` row counts, zeros ignored) is one-to-one with a feature
    that *is* one-to-one with the real labels (so its value groups have the same sizes).

    Of the ``N! / prod(m_j!)`` arrangements of the labels over the rows, those that give a
    bijection assign each value group a whole class of its size: ``prod_s c_s!`` of them,
    ``c_s`` the number of classes of size ``s``. With two classes on 3 rows (sizes 2 and 1)
    the chance is 1/3; with 4 classes of 2 rows, 0.0095; with 30 classes of 2 rows, 1e-50.
    """
    m = class_counts[class_counts > 0].astype(np.int64)
    sizes = np.bincount(m)  # sizes[s] = number of classes with s rows
    log_p = (sum(math.lgamma(int(c) + 1) for c in sizes)
             + sum(math.lgamma(int(k) + 1) for k in m) - math.lgamma(int(m.sum()) + 1))
    return math.exp(log_p)


def column_key(x: np.ndarray) -> bytes:
    """Content key of one feature column ``[N]``: identical columns, identical keys (a 128-bit
    BLAKE2 digest of the values' bytes). The duplicate check looks each column's key up in a
    dictionary: one key per column, so the check is linear in the number of columns."""
    return hashlib.blake2b(np.ascontiguousarray(x).tobytes(), digest_size=16).digest()


def _knn_score(x: np.ndarray, task: TaskTarget, seed: int) -> float:
    """Out-of-fold lift (classification) or R² (regression) of a 1-D k-NN on the values."""
    from sklearn.model_selection import KFold, cross_val_predict
    from sklearn.neighbors import KNeighborsClassifier, KNeighborsRegressor

    ok = ~np.isnan(task.values) & ~np.isnan(x)
    xs, y = x[ok].reshape(-1, 1), task.values[ok]
    if len(y) < 2 * _FOLDS * _NEIGHBOURS or len(np.unique(xs)) < 2:
        return 0.0
    cv = KFold(_FOLDS, shuffle=True, random_state=seed)
    if task.kind is TaskKind.REGRESSION:
        pred = cross_val_predict(KNeighborsRegressor(_NEIGHBOURS), xs, y, cv=cv)
        return _r2(y, pred)
    yi = y.astype(np.int64)
    pred = cross_val_predict(KNeighborsClassifier(_NEIGHBOURS), xs, yi, cv=cv)
    return _lift(float((pred == yi).mean()), float(np.bincount(yi).max() / len(yi)))


def text_leak_score(texts: list[set[str]], task: TaskTarget, seed: int) -> float:
    """Out-of-fold lift of a naive Bayes (classification) / ridge (regression) model on words."""
    from sklearn.feature_extraction.text import CountVectorizer
    from sklearn.linear_model import Ridge
    from sklearn.model_selection import KFold, cross_val_predict
    from sklearn.naive_bayes import BernoulliNB

    if task.kind is TaskKind.MULTILABEL:
        return max(text_leak_score(texts, part, seed) for part in task.parts())
    ok = ~np.isnan(task.values)
    docs = [" ".join(sorted(t)) for t, good in zip(texts, ok, strict=True) if good]
    y = task.values[ok]
    if len(docs) < 2 * _FOLDS or not any(docs):
        return 0.0
    try:
        bag = CountVectorizer(binary=True, token_pattern=r"\S+", min_df=2).fit_transform(docs)
    except ValueError:  # no word appears twice: nothing to learn from
        return 0.0
    cv = KFold(_FOLDS, shuffle=True, random_state=seed)
    if task.kind is TaskKind.REGRESSION:
        return _r2(y, cross_val_predict(Ridge(alpha=1.0), bag, y, cv=cv))
    yi = y.astype(np.int64)
    pred = cross_val_predict(BernoulliNB(alpha=0.1), bag, yi, cv=cv)
    return _lift(float((pred == yi).mean()), float(np.bincount(yi).max() / len(yi)))


def relevance(codes: np.ndarray, tasks: Sequence[TaskTarget]) -> dict[str, float]:
    """Adjusted mutual information (Vinh, Epps & Bailey 2010) between the discretised feature
    and each task: 0 for a feature no better than chance, 1 for a perfect one.

    Plain mutual information grows with the number of distinct values even for noise (a
    10-bin numeric column beat an informative flag); the adjustment subtracts the mutual
    information expected by chance. A multilabel task scores the mean over its labels.
    """
    out: dict[str, float] = {}
    for t in tasks:
        parts = t.parts()
        if t.kind is TaskKind.MULTILABEL:
            parts = parts[1:]  # the labels, one binary task each
        scores = []
        for part in parts:
            y = part.discrete
            ok = y >= 0
            # A task with one class here carries no information to rank by: 0, not sklearn's
            # "both constant is a perfect match" 1.
            informative = ok.sum() >= 2 and len(np.unique(y[ok])) >= 2
            scores.append(adjusted_mutual_info(y[ok], codes[ok]) if informative else 0.0)
        out[t.name] = float(np.mean(scores)) if scores else 0.0
    return out


def adjusted_mutual_info(y: np.ndarray, x: np.ndarray) -> float:
    """Adjusted mutual information (Vinh, Epps & Bailey 2010; arithmetic normalisation) of two
    labelings ``[N]``, with the value ``sklearn.metrics.adjusted_mutual_info_score`` gives.

    The contingency table is built here with one ``bincount`` and the expected mutual
    information comes from sklearn (``expected_mutual_information``): sklearn's full function
    validates its inputs on every call (about 10 ms), which was 70 % of the select stage on a
    table with thousands of columns, one call per feature and task.
    """
    _, yi = np.unique(y, return_inverse=True)
    _, xi = np.unique(x, return_inverse=True)
    ky, kx = int(yi.max(initial=-1)) + 1, int(xi.max(initial=-1)) + 1
    if ky == kx and ky <= 1:
        return 1.0  # both constant (or empty): a perfect match, as sklearn has it
    if ky == 1 or kx == 1:
        return 0.0
    n = len(yi)
    table = np.bincount(yi * kx + xi, minlength=ky * kx).reshape(ky, kx)  # [classes, values]
    a, b = table.sum(1), table.sum(0)  # row / column margins, all > 0
    nz = table > 0
    nij = table[nz]
    mi = float(max((nij / n * (np.log(nij) + math.log(n)
                                - np.log(np.outer(a, b)[nz]))).sum(), 0.0))
    emi = float(expected_mutual_information(table, n))
    h_y = float(-(a / n * np.log(a / n)).sum())
    h_x = float(-(b / n * np.log(b / n)).sum())
    eps = float(np.finfo(np.float64).eps)
    # Keep the signs away from 0/0, as sklearn does (a perfect match has mi == emi == h).
    den = (h_y + h_x) / 2 - emi
    den = min(den, -eps) if den < 0 else max(den, eps)
    num = mi - emi
    num = min(num, -eps) if num < 0 else max(num, eps)
    return num / den


# ---------------------------------------------------------------------------------------------
# Selection


def _candidate_features(name: str, raw: pd.Series, kind: str, cfg: SelectConfig,
                        normed: Sequence[str | None]) -> list[dict[str, Any]]:
    """Schema entries (name, column, source, kind, encoder) a surviving source expands into
    (``normed``: the source's cells stripped and case-folded, computed once by the caller)."""
    def entry(fname: str, enc: dict[str, Any]) -> dict[str, Any]:
        return {"name": fname, "column": FEATURE_COLUMN_PREFIX + fname, "source": name,
                "kind": kind, "encoder": enc}

    if kind == "numeric":
        x = np.array([_to_float(v) for v in raw], dtype=np.float64)
        finite = x[~np.isnan(x)]
        std = float(finite.std()) if len(finite) > 1 else 0.0
        out = [entry(name, {"type": "standardise", "mean": float(finite.mean()),
                            "std": std if std > 0 else 1.0})]
        if np.isnan(x).any():
            out.append(entry(f"{name}:missing", {"type": "missing_indicator"}))
        return out
    if kind == "categorical":
        counts = Counter(v for v in normed if v is not None)
    else:
        counts = Counter(w for r in raw for w in tokenize(r))
    common = sorted(((v, n) for v, n in counts.items() if n >= cfg.min_category_count),
                    key=lambda vn: (-vn[1], vn[0]))[: cfg.max_categories]
    if kind == "categorical":
        return [entry(f"{name}={v}", {"type": "one_hot", "value": v}) for v, _ in common]
    return [entry(f"{name}:{w}", {"type": "word", "word": w}) for w, _ in common]


def select_features(train: pd.DataFrame, sources: dict[str, str], tasks: Sequence[TaskTarget],
                    cfg: SelectConfig, seed: int = 0, prefix: str = "") -> FeatureSelection:
    """Decide which metadata features to use, from the train rows only.

    ``train``: raw source columns (``prefix + column``) of the train split; ``sources``: column
    -> kind (``auto`` is detected); ``tasks``: kept tasks with train targets aligned to ``train``.
    """
    decisions: list[dict[str, Any]] = []
    candidates: list[dict[str, Any]] = []
    n = len(train)
    for name, declared in sources.items():
        raw = train[prefix + name].reset_index(drop=True)
        kind = detect_kind(raw) if declared == "auto" else declared
        base: dict[str, Any] = {"feature": name, "level": "source", "source": name, "kind": kind}
        normed = [_norm_text(v) for v in raw]
        present = [v for v in normed if v is not None]
        missing = 1 - len(present) / n if n else 1.0
        if kind == "numeric":
            nums = np.array([_to_float(v) for v in raw], dtype=np.float64)
            missing = float(np.isnan(nums).mean()) if n else 1.0
            distinct = len(np.unique(nums[~np.isnan(nums)]))
        else:
            distinct = len(set(present))
        if missing > cfg.max_missing:
            decisions.append({**base, "kept": False, "reason": "high_missing",
                              "score": missing,
                              "detail": f"{missing:.1%} missing > select.max_missing"})
            continue
        if distinct <= 1:
            decisions.append({**base, "kept": False, "reason": "constant", "score": distinct,
                              "detail": f"{distinct} distinct value(s) in the train split"})
            continue
        n_present = max(n - round(missing * n), 1)
        unique_ratio = distinct / n_present
        if unique_ratio >= cfg.max_unique_ratio and n_present >= 10 and (
                kind == "categorical" or (kind == "numeric" and _sequence_like(nums))):
            decisions.append({**base, "kept": False, "reason": "identifier_like",
                              "score": unique_ratio,
                              "detail": f"{unique_ratio:.1%} of values are distinct "
                                        ">= select.max_unique_ratio"})
            continue
        coded: list[str] = []
        if kind == "text":
            words = [tokenize(v) for v in raw]
            lifts = {t.name: text_leak_score(words, t, seed) for t in tasks}
        else:
            # The source's own values as codes (-1 = missing) for the one-to-one check.
            exact, _ = pd.factorize(pd.Series(nums) if kind == "numeric" else
                                    pd.Series(normed, dtype=object))
            coded = [t.name for t in tasks if one_to_one(exact, t, cfg.max_unique_ratio)]
            if kind == "numeric":
                lifts = {t.name: numeric_leak_score(nums, t, seed) for t in tasks}
            else:
                codes = _codes(np.array(normed, dtype=object), False)
                lifts = {t.name: leak_score(codes, t, seed) for t in tasks}
            lifts.update(dict.fromkeys(coded, 1.0))
        worst = max(lifts, key=lambda k: lifts[k]) if lifts else None
        if worst is not None and lifts[worst] >= cfg.leakage_threshold:
            leaked = sorted(k for k, v in lifts.items() if v >= cfg.leakage_threshold)
            code = (f"its values are a one-to-one code of task(s) {coded} on the train rows; "
                    if coded else "")
            decisions.append({**base, "kept": False, "reason": "target_leak", "task": worst,
                              "leaked_tasks": leaked, "score": lifts[worst], "lifts": lifts,
                              "one_to_one": coded,
                              "detail": f"{code}alone predicts task(s) {leaked} (best: "
                                        f"{worst!r}, lift {lifts[worst]:.3f}) >= "
                                        "select.leakage_threshold"})
            continue
        decisions.append({**base, "kept": True, "reason": "expanded", "score": None,
                          "lifts": lifts})
        candidates.extend(_candidate_features(name, raw, kind, cfg, normed))

    if not candidates:
        return FeatureSelection([], decisions)
    matrix = apply_feature_encoders(train, candidates, prefix=prefix)
    scored: list[tuple[float, int, dict[str, float]]] = []
    for j, feat in enumerate(candidates):
        x = matrix[:, j].astype(np.float64)
        fbase: dict[str, Any] = {"feature": feat["name"], "level": "feature",
                                 "source": feat["source"], "kind": feat["kind"]}
        numeric = feat["encoder"]["type"] == "standardise"
        _, counts = np.unique(x, return_counts=True)
        dominance = float(counts.max() / len(x)) if len(x) else 1.0
        if dominance >= cfg.max_dominance:
            decisions.append({**fbase, "kept": False, "reason": "near_constant",
                              "score": dominance,
                              "detail": f"one value covers {dominance:.1%} of train rows"})
            continue
        # Indicators (one-hot, word, missing) are 0/1 already: their values are their codes.
        codes = _codes(x, True) if numeric else x.astype(np.int64)
        exact = pd.factorize(x)[0] if numeric else codes
        coded = [t.name for t in tasks if one_to_one(exact, t, cfg.max_unique_ratio)]
        lifts = {t.name: numeric_leak_score(x, t, seed) if numeric else
                 leak_score(codes, t, seed) for t in tasks}
        lifts.update(dict.fromkeys(coded, 1.0))
        worst = max(lifts, key=lambda k: lifts[k]) if lifts else None
        if worst is not None and lifts[worst] >= cfg.leakage_threshold:
            code = f"is a one-to-one code of task(s) {coded}; " if coded else ""
            decisions.append({**fbase, "kept": False, "reason": "target_leak", "task": worst,
                              "score": lifts[worst], "lifts": lifts, "one_to_one": coded,
                              "detail": f"{code}alone predicts task {worst!r} with lift "
                                        f"{lifts[worst]:.3f}"})
            continue
        mi = relevance(codes, tasks)
        scored.append((float(np.mean(list(mi.values()))) if mi else 0.0, j, mi))

    scored.sort(key=lambda s: (-s[0], candidates[s[1]]["name"]))
    kept: list[int] = []
    # Duplicates are found by hashing each column's bytes (one dictionary look-up per
    # feature, so the check is linear in the number of columns); correlations with every kept
    # feature come from one matrix-vector product over the unit-norm centred kept columns.
    by_hash: dict[bytes, int] = {}
    unit = np.zeros((n, min(cfg.max_features, len(scored))), dtype=np.float64)  # [N, kept]
    for rank, (score, j, mi) in enumerate(scored, start=1):
        feat = candidates[j]
        info: dict[str, Any] = {"feature": feat["name"], "level": "feature",
                                "source": feat["source"], "kind": feat["kind"], "score": score,
                                "rank": rank, "relevance": mi}
        x = matrix[:, j]
        reason, detail = None, ""
        key = column_key(x)
        twin = by_hash.get(key)
        z = _unit(x)
        r = unit[:, : len(kept)].T @ z if kept else np.zeros(0)
        if twin is not None:
            reason, detail = "duplicate", f"identical to {candidates[twin]['name']!r}"
        elif len(r) and float(np.abs(r).max()) >= cfg.max_correlation:
            k = int(np.argmax(np.abs(r) >= cfg.max_correlation))  # the best-ranked such one
            reason, detail = "correlated", (f"|r| = {abs(float(r[k])):.3f} with "
                                            f"{candidates[kept[k]]['name']!r} (better ranked)")
        elif len(kept) >= cfg.max_features:
            reason, detail = "below_top_k", f"select.max_features={cfg.max_features} reached"
        if reason is not None:
            decisions.append({**info, "kept": False, "reason": reason, "detail": detail})
            continue
        by_hash[key] = j
        unit[:, len(kept)] = z
        kept.append(j)
        decisions.append({**info, "kept": True, "reason": "top_k", "detail": ""})
    return FeatureSelection([candidates[j] for j in kept], decisions)


def _unit(x: np.ndarray) -> np.ndarray:
    """``x`` centred and scaled to unit norm (zeros for a constant column), so a dot product
    of two such columns is their Pearson correlation."""
    a = x.astype(np.float64) - float(x.mean())
    norm = math.sqrt(float((a * a).sum()))
    return a / norm if norm > 0 else np.zeros_like(a)


def _sequence_like(nums: np.ndarray) -> bool:
    """Integer values that fill most of their range, as row numbers and auto-increment ids do.

    A measurement written without decimals (a price of ``12345``) spreads over a range far
    wider than its number of distinct values, so it is not mistaken for an identifier.
    """
    v = np.unique(nums[~np.isnan(nums)])
    if len(v) < 2 or not np.all(np.mod(v, 1) == 0):
        return False
    return float(v[-1] - v[0] + 1) <= 2 * len(v)
