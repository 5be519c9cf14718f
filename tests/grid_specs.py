"""Shared helpers of the grid tests: a tiny valid grid, and a copy of a spec with nested entries replaced."""

from __future__ import annotations

import copy
from typing import Any

TINY_GRID: dict[str, Any] = {
    "seeds": [0],
    "data": {"episodes": 2, "ref_episodes": 1},
    "eval": {"episodes": 1},
    "trainer": {"steps": 2},
    "benchmarks": {"gs": {"env": "gaussian-squeeze", "train": 100, "eval": [100], "qualities": ["medium"]}},
    "methods": {"bc": {"algo": "bc"}},
}
"""A valid grid of one cell (bc on gaussian-squeeze N=100, 2 training steps)."""


def with_changes(spec: dict[str, Any], **changes: Any) -> dict[str, Any]:
    """A deep copy of ``spec`` with ``a__b__c=value`` setting ``spec["a"]["b"]["c"] = value``."""
    out = copy.deepcopy(spec)
    for path, value in changes.items():
        *parents, leaf = path.split("__")
        node = out
        for key in parents:
            node = node[key]
        node[leaf] = value
    return out
