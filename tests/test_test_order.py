"""The order `make test` starts test files in (tests/conftest.py): slow first, longest first."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, cast

import pytest

from tests.conftest import DEFAULT_SLOW_SECONDS, pytest_collection_modifyitems


@dataclass
class _Item:
    """What the ordering hook reads of a collected test: its node id and its slow marker."""

    nodeid: str
    slow: dict[str, Any] | None = None  # the marker's kwargs; None: not slow
    marker: Any = field(init=False)

    def __post_init__(self) -> None:
        self.marker = None if self.slow is None else pytest.mark.slow(**self.slow).mark

    def get_closest_marker(self, name: str) -> Any:
        return self.marker if name == "slow" else None


def _order(items: list[_Item]) -> list[str]:
    pytest_collection_modifyitems(cast(pytest.Config, None), cast(list[pytest.Item], items))
    return [i.nodeid for i in items]


def test_one_long_test_starts_before_a_file_of_several_short_ones() -> None:
    items = [_Item("fast.py::a"),
             _Item("short.py::a", {}), _Item("short.py::b", {}), _Item("short.py::c", {}),
             _Item("long.py::a", {"seconds": 4 * DEFAULT_SLOW_SECONDS}),
             _Item("mixed.py::fast"), _Item("mixed.py::slow", {"seconds": 30})]
    # short.py: 3 x the default; long.py: 4 x; mixed.py: 30 s. The fast tests come last, those
    # of a file with slow tests first (by the same key), the others in their collected order.
    assert _order(items) == ["long.py::a", "short.py::a", "short.py::b", "short.py::c",
                             "mixed.py::slow", "mixed.py::fast", "fast.py::a"]
