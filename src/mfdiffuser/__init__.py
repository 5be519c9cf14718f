"""mfdiffuser: offline reinforcement learning for populations of thousands of agents.

MF-Diffuser (a mean-field trajectory diffusion planner), the baselines, the mean-field benchmarks,
the offline datasets and the evaluation pipeline that compares them.

The Python API in one place (each name is imported on first use, so ``import mfdiffuser`` stays
cheap)::

    from mfdiffuser import make, generate_dataset, load_dataset, train, load_run, make_policy, evaluate

``make`` builds a benchmark at any N, ``generate_dataset`` writes an offline dataset,
``load_dataset`` opens one, ``train`` trains an algorithm into a run directory, ``load_run`` loads a
trained run, ``make_policy`` turns it into a population policy for an env at any N, and ``evaluate``
measures a run at a list of N.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from mfdiffuser.errors import MfdError

__version__ = "0.1.0"

# public name -> module that defines it (imported lazily by __getattr__)
_API: dict[str, str] = {
    "make": "mfdiffuser.envs",
    "list_envs": "mfdiffuser.envs",
    "GenerateConfig": "mfdiffuser.data.generate",
    "generate_dataset": "mfdiffuser.data.generate",
    "load_dataset": "mfdiffuser.data",
    "TrainerConfig": "mfdiffuser.algos.trainer",
    "train": "mfdiffuser.algos.run",
    "load_run": "mfdiffuser.algos.run",
    "make_policy": "mfdiffuser.algos.run",
    "list_algos": "mfdiffuser.algos.base",
}
_RENAMED: dict[str, tuple[str, str]] = {"evaluate": ("mfdiffuser.eval.evaluate", "evaluate_run")}

__all__ = [
    "GenerateConfig",
    "MfdError",
    "TrainerConfig",
    "__version__",
    "evaluate",
    "generate_dataset",
    "list_algos",
    "list_envs",
    "load_dataset",
    "load_run",
    "make",
    "make_policy",
    "train",
]

if TYPE_CHECKING:
    from mfdiffuser.algos.base import list_algos
    from mfdiffuser.algos.run import load_run, make_policy, train
    from mfdiffuser.algos.trainer import TrainerConfig
    from mfdiffuser.data import load_dataset
    from mfdiffuser.data.generate import GenerateConfig, generate_dataset
    from mfdiffuser.envs import list_envs, make
    from mfdiffuser.eval.evaluate import evaluate_run as evaluate


def __getattr__(name: str) -> Any:
    if name in _API:
        module, attr = _API[name], name
    elif name in _RENAMED:
        module, attr = _RENAMED[name]
    else:
        raise AttributeError(f"module 'mfdiffuser' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), attr)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
