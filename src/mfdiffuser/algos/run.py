"""Train an algorithm on a dataset into a run directory, and load a run back as a population policy.

The algorithm module contract (see :mod:`mfdiffuser.algos`): ``Config`` dataclass with at least
``horizon`` (H, window length the sampler yields) and ``m_range`` (range of M, agents per segment);
``build(config, meta, dataset) -> nn.Module`` (``dataset`` is None when loading a trained run: state
computed from data must live in buffers); ``make_policy(learner, config, env, **options)``.
"""

from __future__ import annotations

import ast
import contextlib
import dataclasses
import inspect
import json
import textwrap
import types
import typing
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple

from torch import nn

from mfdiffuser import __version__
from mfdiffuser.algos.base import (
    _json_default,
    algo_module,
    coerce_value,
    config_from_dict,
    read_run,
    write_json,
)
from mfdiffuser.algos.trainer import CHECKPOINT, TrainerConfig, TrainingInterrupted, fit, load_ema_weights
from mfdiffuser.cost import check_memory, training_batch_cost
from mfdiffuser.envs.base import PopulationEnv, PopulationPolicy
from mfdiffuser.errors import MfdError, first_line
from mfdiffuser.utils import check_device, removed_on_failure, seed_everything


class LoadedRun(NamedTuple):
    """A trained run: its algorithm module, config, EMA learner and the dataset metadata it saw."""

    algo: str
    module: types.ModuleType
    config: Any
    learner: nn.Module
    meta: Any
    step: int
    run_dir: Path


def train(
    algo: str,
    dataset_path: str | Path,
    run_dir: str | Path,
    options: dict[str, Any] | None = None,
    trainer: TrainerConfig | None = None,
    *,
    verify: bool = True,
    force: bool = False,
) -> LoadedRun:
    """Train ``algo`` on the dataset at ``dataset_path``; resume if ``run_dir`` holds the same run.

    Reproducible from ``trainer.seed`` alone: the global generators are seeded with it before the
    network is built, and the trainer and window sampler draw from it too. ``verify=False`` loads the
    dataset without checking its file digest and checksums (see :func:`~mfdiffuser.data.load_dataset`).
    A batch that cannot fit in the memory available is refused before anything is written, unless
    ``force`` (see :func:`mfdiffuser.cost.training_batch_cost`).

    Raises:
        MfdError: ``run_dir`` holds a different run (other algorithm, options or dataset).
    """
    from mfdiffuser.data import WindowSampler, load_dataset

    trainer = trainer or TrainerConfig()
    run_dir = Path(run_dir)
    module = algo_module(algo)
    config = config_from_dict(module.Config, options or {})
    dataset = load_dataset(dataset_path, verify=verify)
    record = {
        "algo": algo,
        "config": dataclasses.asdict(config),
        "trainer": dataclasses.asdict(trainer),
        "dataset": str(Path(dataset_path).resolve()),
        "meta": dataclasses.asdict(dataset.meta),
        "version": __version__,
    }
    # compare in JSON form: tuples in configs come back from run.json as lists
    record = json.loads(json.dumps(record, default=_json_default))
    # The initial weights (and anything else drawn while building) come from the training seed.
    seed_everything(trainer.seed)
    # Build everything that can reject the input before anything is written to run_dir.
    learner = module.build(config, dataset.meta, dataset)
    sampler = WindowSampler(
        dataset,
        horizon=config.horizon,
        batch_size=trainer.batch_size,
        m_range=tuple(config.m_range),
        seed=trainer.seed,
        **sampler_options(config),
    )
    check_memory(
        training_batch_cost(
            batch_size=trainer.batch_size,
            m_max=sampler.m_range[1],
            horizon=config.horizon,
            state_size=dataset.meta.state_size,
            summary_size=dataset.meta.summary_size,
        ),
        force=force,
    )
    if (run_dir / "run.json").exists() and (run_dir / CHECKPOINT).exists():
        # a run with trained weights is only ever resumed, never overwritten by another configuration
        old = read_run(run_dir)
        same = (
            all(old.get(k) == record[k] for k in ("algo", "meta"))
            and _weights_config(module, old.get("config", {})) == _weights_config(module, record["config"])
            and trainer_key(old["trainer"]) == trainer_key(record["trainer"])
        )
        if not same:
            raise MfdError(
                f"{run_dir} holds a different run (algorithm, options or dataset differ); "
                "choose another --out or delete it"
            )
    # A run directory this call creates is removed again if training fails before its first
    # checkpoint (a full disk, a bad batch): nothing in it could be resumed.
    with removed_on_failure(run_dir, keep=(run_dir / CHECKPOINT).exists), recorded(run_dir, record):
        result = fit(learner, sampler, run_dir, trainer)
    done = {**record, "status": "done", "step": result.step, "metrics": result.metrics}
    write_json(run_dir / "run.json", done)
    return LoadedRun(algo, module, config, result.ema.eval(), dataset.meta, result.step, run_dir)


@contextlib.contextmanager
def recorded(run_dir: Path, record: dict[str, Any]) -> Iterator[None]:
    """``run.json`` says ``running`` during the block, and ``interrupted`` or ``failed`` if it raises.

    An interrupted run records the step it saved (rerunning the same command continues from it); a
    failed one its error's first line. The caller records ``done``.
    """
    write_json(run_dir / "run.json", {**record, "status": "running"})
    try:
        yield
    except TrainingInterrupted as exc:
        write_json(run_dir / "run.json", {**record, "status": "interrupted", "step": exc.step})
        raise
    except KeyboardInterrupt:  # outside fit's signal handling: no step was saved by this call
        write_json(run_dir / "run.json", {**record, "status": "interrupted"})
        raise
    except Exception as exc:
        with contextlib.suppress(OSError):  # on a full disk this write fails too: report the first
            write_json(run_dir / "run.json", {**record, "status": "failed", "error": first_line(exc)})
        raise


_RUN_ONLY_TRAINER_FIELDS = ("steps", "progress", "device", "bf16", "wandb")
"""Trainer fields a resumed run may change: the budget, where and how precisely it runs, its logging."""


def trainer_key(values: dict[str, Any]) -> dict[str, Any]:
    """Trainer fields that shape the trained weights; fields missing from an older run take defaults."""
    full = {**dataclasses.asdict(TrainerConfig()), **values}
    return {k: v for k, v in full.items() if k not in _RUN_ONLY_TRAINER_FIELDS}


def sampler_options(config: Any) -> dict[str, Any]:
    """The window sampler's options an algorithm's config may set (how M is drawn, B x M bound)."""
    return {k: getattr(config, k) for k in ("m_draw", "agents_per_batch") if hasattr(config, k)}


def _weights_config(module: types.ModuleType, values: dict[str, Any]) -> dict[str, Any] | None:
    """The config fields that shape the trained weights, in JSON form (None if ``values`` is invalid).

    Fields added since a run was written take their defaults; planner-only fields (the module's
    ``PLAN_OPTIONS``) are left out, so changing how a trained model acts never orphans its weights.
    """
    try:
        full = dataclasses.asdict(config_from_dict(module.Config, values))
    except ValueError:
        return None
    acting = set(getattr(module, "PLAN_OPTIONS", ()))
    return json.loads(json.dumps({k: v for k, v in full.items() if k not in acting}, default=_json_default))


def load_run(run_dir: str | Path, device: str = "cpu") -> LoadedRun:
    """Load a run directory's config and EMA weights (no dataset needed)."""
    from mfdiffuser.data.dataset import DatasetMeta

    check_device(device)
    record = read_run(run_dir)
    module = algo_module(record["algo"])
    config = config_from_dict(module.Config, record["config"])
    meta = DatasetMeta.from_dict(record["meta"])
    learner = module.build(config, meta, None)
    if not (Path(run_dir) / CHECKPOINT).exists():
        raise MfdError(f"{run_dir}: no checkpoint yet; train it with `mfd train`")
    step = load_ema_weights(learner, run_dir, device)
    return LoadedRun(record["algo"], module, config, learner.to(device).eval(), meta, step, Path(run_dir))


def make_policy(run: LoadedRun, env: PopulationEnv, **options: Any) -> PopulationPolicy:
    """A population policy of a trained run for ``env`` (any N of the same benchmark)."""
    if env.name != run.meta.env:
        raise MfdError(f"run {run.run_dir} was trained on {run.meta.env!r}, not {env.name!r}")
    # acting options override config fields of the same name: check them against the field's type
    hints = typing.get_type_hints(type(run.config))
    options = {
        k: coerce_value(f"{run.algo} option {k}", v, hints[k]) if k in hints else v
        for k, v in options.items()
    }
    return run.module.make_policy(run.learner, run.config, env, **options)


def field_docs(cls: type) -> dict[str, str]:
    """Attribute docstrings of a dataclass (the string literal under each field), for ``--help``."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if not dataclasses.is_dataclass(klass):
            continue
        try:
            tree = ast.parse(textwrap.dedent(inspect.getsource(klass)))
        except (OSError, TypeError):
            continue
        body = tree.body[0].body  # type: ignore[attr-defined]
        for node, nxt in zip(body, body[1:], strict=False):
            if (
                isinstance(node, ast.AnnAssign)
                and isinstance(node.target, ast.Name)
                and isinstance(nxt, ast.Expr)
                and isinstance(nxt.value, ast.Constant)
                and isinstance(nxt.value.value, str)
            ):
                docs[node.target.id] = " ".join(nxt.value.value.split())
    return docs
