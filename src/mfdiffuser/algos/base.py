"""Algorithm registry, the learner contract, and saving/loading of run directories.

A run directory holds ``run.json`` (algorithm, its config, the trainer config, the dataset's path and
metadata), ``checkpoint.pt`` (the latest training state, written atomically) and ``tb/`` (TensorBoard).
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import types
from pathlib import Path
from typing import Any, NamedTuple, Protocol

import torch

from mfdiffuser.errors import MfdError

# name -> module implementing it (imported lazily by ``algo_module``).
ALGOS: dict[str, str] = {
    "mf-diffuser": "mfdiffuser.algos.mf_diffuser",
    "bc": "mfdiffuser.algos.bc",
    "rwbc": "mfdiffuser.algos.rwbc",
    "awbc": "mfdiffuser.algos.awbc",
    "mf-cql": "mfdiffuser.algos.mf_cql",
    "mf-iql": "mfdiffuser.algos.mf_iql",
    "dd-independent": "mfdiffuser.algos.dd_independent",
    "madiff": "mfdiffuser.algos.madiff",
}


class LossOutput(NamedTuple):
    """What ``Learner.loss`` returns: the scalar to minimise and scalars to log."""

    loss: torch.Tensor
    metrics: dict[str, float]


class Learner(Protocol):
    """The torch module an algorithm trains: ``loss(batch) -> LossOutput``; optional ``after_step()``."""

    def loss(self, batch: Any) -> LossOutput: ...

    def parameters(self) -> Any: ...


def list_algos() -> list[str]:
    """Registered algorithm names whose module is importable in this build."""
    return [name for name in ALGOS if importlib.util.find_spec(ALGOS[name]) is not None]


def algo_module(name: str) -> types.ModuleType:
    """The module implementing algorithm ``name`` (ValueError listing the choices otherwise)."""
    if name not in ALGOS:
        raise ValueError(f"unknown algorithm {name!r}; choose from {', '.join(list_algos())}")
    try:
        return importlib.import_module(ALGOS[name])
    except ModuleNotFoundError as exc:
        if exc.name == ALGOS[name]:
            raise ValueError(f"algorithm {name!r} is not available in this build") from exc
        raise


def config_from_dict(cls: type, values: dict[str, Any]) -> Any:
    """Build dataclass ``cls`` from ``values``; unknown keys raise ValueError naming them."""
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - names)
    if unknown:
        raise ValueError(f"{cls.__qualname__}: unknown option(s) {', '.join(unknown)}")
    kwargs = {}
    for f in dataclasses.fields(cls):
        if f.name in values:
            v = values[f.name]
            kwargs[f.name] = tuple(v) if isinstance(v, list) else v
    return cls(**kwargs)


def write_json(path: Path, obj: Any) -> None:
    """Write JSON atomically (temporary file, then rename)."""
    from mfdiffuser.utils import atomic_path

    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=True, default=_json_default))


def _json_default(o: Any) -> Any:
    if dataclasses.is_dataclass(o):
        return dataclasses.asdict(o)
    if isinstance(o, Path):
        return str(o)
    if hasattr(o, "tolist"):
        return o.tolist()
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def read_run(run_dir: str | Path) -> dict[str, Any]:
    """Read ``run.json`` of a run directory, with a clear error if it is not one."""
    path = Path(run_dir) / "run.json"
    if not path.is_file():
        raise MfdError(f"{run_dir}: not a run directory (no run.json); train one with `mfd train`")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise MfdError(f"{path}: corrupted run.json ({exc.msg})") from exc
