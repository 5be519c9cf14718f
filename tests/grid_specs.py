"""Shared helper of the grid tests: a copy of a grid spec with some nested entries replaced."""

from __future__ import annotations

import copy
from typing import Any


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
