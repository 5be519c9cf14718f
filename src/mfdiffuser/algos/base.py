"""Algorithm registry, the learner contract, and saving/loading of run directories.

A run directory holds ``run.json`` (algorithm, its config, the trainer config, the dataset's path and
metadata), ``checkpoint.pt`` (the latest training state, written atomically) and ``tb/`` (TensorBoard).
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import math
import types
import typing
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol, cast

import torch

from mfdiffuser.errors import MfdError

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

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


class ParamGroup(NamedTuple):
    """Parameters the trainer optimises together, with their own learning rate and gradient clip.

    A learner that defines ``param_groups() -> list[ParamGroup]`` gets one AdamW param group per
    entry, and each group's gradient norm is clipped on its own (a critic's large TD gradients then
    do not shrink the denoiser's step). Without the method every parameter is one group.
    """

    name: str
    """Name in the logs (``grad_norm/<name>``)."""
    params: list[torch.nn.Parameter]
    """The parameters (each in exactly one group)."""
    lr: float | None = None
    """Learning rate (None: the trainer's ``lr``)."""
    clip: float | None = None
    """Gradient-norm clip (None: the trainer's ``grad_clip``; 0 disables)."""


class Learner(Protocol):
    """The torch module an algorithm trains: ``loss(batch) -> LossOutput``.

    Optional: ``after_step()`` (called after each optimizer step) and ``param_groups()`` (see
    :class:`ParamGroup`).
    """

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
    """Build dataclass ``cls`` from ``values``, checking each value against its field's type.

    Unknown keys and values of the wrong type (``hidden="abc"``, ``hidden=2.5``, ``m_range=5``) raise
    ValueError naming the option, before anything is built or written.
    """
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - names)
    if unknown:
        raise ValueError(f"{cls.__qualname__}: unknown option(s) {', '.join(unknown)}")
    hints = typing.get_type_hints(cls)
    kwargs = {name: coerce_value(f"{cls.__qualname__}.{name}", v, hints[name]) for name, v in values.items()}
    try:
        return cls(**kwargs)
    except TypeError as exc:  # a __post_init__ meeting a type the annotations did not pin down
        raise ValueError(f"{cls.__qualname__}: {exc}") from exc


def coerce_value(name: str, value: Any, tp: Any) -> Any:
    """Check ``value`` against annotation ``tp`` (int, float, bool, str, Literal, tuples, optionals).

    Ints are accepted where floats are expected; lists become tuples. Raises ValueError naming ``name``.
    """
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is typing.Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in (a for a in args if a is not type(None)):
            try:
                return coerce_value(name, value, arg)
            except ValueError as exc:
                errors.append(str(exc))
        raise ValueError(errors[0] if errors else f"{name}: got {value!r}")
    if origin is typing.Literal:
        if value not in args:
            raise ValueError(f"{name} must be one of {', '.join(map(repr, args))}, got {value!r}")
        return value
    if origin is tuple:
        if not isinstance(value, list | tuple):
            raise ValueError(f"{name} must be a list like [a, b], got {value!r}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(coerce_value(name, v, args[0]) for v in value)
        if len(value) != len(args):
            raise ValueError(f"{name} must have {len(args)} entries, got {value!r}")
        return tuple(coerce_value(name, v, a) for v, a in zip(value, args, strict=True))
    if tp is bool:
        if not isinstance(value, bool):
            raise ValueError(f"{name} must be true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"{name} must be an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            raise ValueError(f"{name} must be a finite number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ValueError(f"{name} must be a string, got {value!r}")
        return value
    return value


def write_json(path: Path, obj: Any) -> None:
    """Write strict JSON atomically (temporary file, then rename); NaN and infinities become null."""
    from mfdiffuser.utils import atomic_path

    text = json.dumps(_finite(obj), indent=2, sort_keys=True, default=_json_default, allow_nan=False)
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def _finite(obj: Any) -> Any:
    """Replace non-finite floats by None, recursively (JSON has no NaN)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_finite(v) for v in obj]
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return _finite(dataclasses.asdict(obj))
    if hasattr(obj, "tolist"):  # numpy arrays and scalars, tensors
        return _finite(obj.tolist())
    return obj


def _json_default(o: Any) -> Any:
    if dataclasses.is_dataclass(o):
        return dataclasses.asdict(cast("DataclassInstance", o))
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
        record = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise MfdError(f"{path}: corrupted run.json ({exc.msg})") from exc
    if not isinstance(record, dict):
        raise MfdError(f"{path}: corrupted run.json (a {type(record).__name__}, not a run record)")
    for key, kind in (("algo", str), ("config", dict), ("meta", dict)):
        if not isinstance(record.get(key), kind):
            raise MfdError(f"{path}: corrupted run.json ({key!r} missing or not a {kind.__name__})")
    return record
