"""Fuzzing params.yaml: any mutation of the default params gives a valid ``Params`` or a
``ConfigError`` whose problems name a key path; never another exception."""

from __future__ import annotations

import copy
import tempfile
from pathlib import Path
from typing import Any

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mtl.config import ConfigError, Params, load_params
from tests.conftest import REPO_ROOT

DEFAULT = yaml.safe_load((REPO_ROOT / "params.yaml").read_text())

# Every kind of value PyYAML's safe loader can produce, nested.
SCALARS = (st.none() | st.booleans() | st.integers(-(10**12), 10**12)
           | st.sampled_from([0, -1, 1, 2, -0.5, 0.0, 1.5, 1e300, float("inf"), float("nan")])
           | st.floats() | st.text(max_size=12) | st.binary(max_size=4) | st.dates()
           | st.sampled_from(["multiclass", "regression", "auto", "cuda:0", "{id}.png", "a|b",
                              "", " ", ".x", "__class_fullname__", "2e-3", "3"]))
KEYS = st.text(max_size=8) | st.integers(-3, 3) | st.none() | st.booleans()
JUNK = st.recursive(SCALARS, lambda inner: st.lists(inner, max_size=4)
                    | st.dictionaries(KEYS, inner, max_size=4), max_leaves=12)


def _paths(node: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every path to a value inside ``node`` (dict keys and list indices), root included."""
    out = [prefix]
    if isinstance(node, dict):
        for k, v in node.items():
            out += _paths(v, (*prefix, k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            out += _paths(v, (*prefix, i))
    return out


def _get(node: Any, path: tuple[Any, ...]) -> Any:
    for part in path:
        node = node[part]
    return node


@st.composite
def mutated_params(draw: st.DrawFn) -> Any:
    raw: Any = copy.deepcopy(DEFAULT)
    for _ in range(draw(st.integers(1, 6))):
        path = draw(st.sampled_from(_paths(raw)))
        op = draw(st.sampled_from(["replace", "delete", "add_key", "negate", "wrap"]))
        if not path:
            raw = draw(JUNK) if op == "replace" else raw
            continue
        parent, last = _get(raw, path[:-1]), path[-1]
        value = parent[last]
        if op == "replace":
            parent[last] = draw(JUNK)
        elif op == "delete":
            del parent[last]
        elif op == "add_key" and isinstance(value, dict):
            value[draw(KEYS)] = draw(JUNK)
        elif op == "negate" and isinstance(value, (int, float)) and not isinstance(value, bool):
            parent[last] = -value
        elif op == "wrap":
            parent[last] = draw(st.sampled_from([[value], {"x": value}, str(value)]))
    return raw


def _check(text: str) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "params.yaml"
        path.write_text(text)
        try:
            params = load_params(path)
        except ConfigError as err:
            assert err.problems, "a ConfigError must list its problems"
            for p in err.problems:
                assert isinstance(p, str), p
                assert p.startswith(("params", "not valid YAML")), p
                assert "errors.pydantic.dev" not in p, p  # translated, not pydantic's text
                assert ": " in p, p
            return
    assert isinstance(params, Params)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutated_params())
def test_any_mutation_gives_params_or_a_config_error(raw: Any) -> None:
    _check(yaml.safe_dump(raw))


@settings(max_examples=150, deadline=None)
@given(st.text(alphabet=st.sampled_from(list("abc:-[]{}|>&*!#'\" \n\t0129.,?%@`")), max_size=80))
def test_any_text_gives_params_or_a_config_error(text: str) -> None:
    _check(text)


def test_the_mutator_reaches_every_section() -> None:
    # The fuzz test only covers what _paths can reach: every section and a task's keys.
    paths = set(_paths(DEFAULT))
    for section in ("dataset", "ingest", "clean", "select", "augment", "train", "evaluate"):
        assert (section,) in paths
    assert ("dataset", "tasks", 1, "kind") in paths
    assert ("augment", "transforms", 0, "__class_fullname__") in paths
