"""Offline datasets: the HDF5 format, generation with behaviour policies, and the window sampler.

The sampler yields ``[B, M, H, ...]`` batches of representative agents (:class:`TrajBatch`).

Names are imported lazily, so that generating or inspecting data does not import torch.
"""

from __future__ import annotations

import importlib
from typing import Any

# public name -> defining module (lazy: mfdiffuser.data.batch and .sampler import torch)
_EXPORTS: dict[str, str] = {
    "TrajBatch": "mfdiffuser.data.batch",
    "DatasetError": "mfdiffuser.data.dataset",
    "DatasetMeta": "mfdiffuser.data.dataset",
    "Episode": "mfdiffuser.data.dataset",
    "OfflineDataset": "mfdiffuser.data.dataset",
    "load_dataset": "mfdiffuser.data.dataset",
    "DATASET_QUALITIES": "mfdiffuser.data.dataset",
    "GenerateConfig": "mfdiffuser.data.generate",
    "GenerateResult": "mfdiffuser.data.generate",
    "generate_dataset": "mfdiffuser.data.generate",
    "rollout": "mfdiffuser.data.generate",
    "WindowSampler": "mfdiffuser.data.sampler",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'mfdiffuser.data' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
