"""Experiment tracking: TensorBoard always, Weights & Biases on request, for training and evaluation.

A run directory holds its TensorBoard events in ``tb/`` (training scalars) and ``tb/eval/``
(evaluation metrics at the checkpoint's step, a separate TensorBoard run, so that a resumed training
run, which purges its own events past the checkpoint, never drops them). With W&B the run's id is
kept in ``wandb_id`` in the run directory, so a resumed training run and the evaluations of a run
all log to the same W&B run; ``WANDB_MODE=offline`` writes it under ``wandb/`` without any network.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from mfdiffuser.errors import MfdError

WANDB_ID = "wandb_id"
"""File in a run directory holding the id of its W&B run."""

EVAL_METRICS: tuple[str, ...] = (
    "return",
    "score",
    "order_parameter",
    "win_rate",
    "kill_ratio",
    "act_ms",
)
"""Per-N metrics of an evaluation that are logged (their mean over seeds)."""


def import_wandb() -> Any:
    """The ``wandb`` module, or an :class:`MfdError` naming the extra that installs it."""
    try:
        import wandb
    except ImportError as exc:
        raise MfdError("--wandb needs the wandb package: pip install 'mfdiffuser[wandb]'") from exc
    return wandb


class Tracker:
    """Scalars to TensorBoard (``<run_dir>/<subdir>``) and, with ``wandb``, to the run's W&B run.

    Args:
        run_dir: the run directory.
        subdir: TensorBoard directory inside it (``tb`` for training, ``tb/eval`` for evaluations).
        purge_step: a resumed run's step: TensorBoard drops this directory's events from it on.
        wandb: also log to Weights & Biases.
    """

    def __init__(
        self, run_dir: str | Path, *, subdir: str = "tb", purge_step: int = 0, wandb: bool = False
    ) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.run_dir = Path(run_dir)
        self._wandb_run = _wandb_run(self.run_dir) if wandb else None
        self._writer = SummaryWriter(str(self.run_dir / subdir), purge_step=purge_step or None)

    def log(self, scalars: Mapping[str, float], step: int, prefix: str) -> None:
        """Log ``scalars`` at ``step`` as ``<prefix>/<name>``."""
        for key, value in scalars.items():
            self._writer.add_scalar(f"{prefix}/{key}", value, step)
        if self._wandb_run is not None:
            self._wandb_run.log({f"{prefix}/{k}": v for k, v in scalars.items()}, step=step)

    def close(self) -> None:
        self._writer.close()
        if self._wandb_run is not None:
            self._wandb_run.finish()


def _wandb_run(run_dir: Path) -> Any:
    """Start or resume the W&B run of ``run_dir`` (config from its ``run.json`` when present)."""
    wandb = import_wandb()
    id_path = run_dir / WANDB_ID
    run_id = id_path.read_text().strip() if id_path.is_file() else uuid.uuid4().hex[:12]
    id_path.write_text(run_id + "\n")
    record_path = run_dir / "run.json"
    config = json.loads(record_path.read_text()) if record_path.is_file() else {}
    return wandb.init(
        project=os.environ.get("WANDB_PROJECT", "mfdiffuser"),
        name=run_dir.name,
        id=run_id,
        resume="allow",
        dir=str(run_dir),
        config={k: config[k] for k in ("algo", "config", "trainer", "meta") if k in config},
    )


def evaluation_scalars(result: Mapping[str, Any]) -> dict[str, float]:
    """``{"N1000/score": 71.2, ...}``: the mean of each logged metric at each evaluated N.

    Args:
        result: what :func:`mfdiffuser.eval.evaluate.evaluate_policy` returns (plus an optional
            ``exploitability`` entry).
    """
    out: dict[str, float] = {}
    for n, metrics in result["results"].items():
        if metrics.get("status") != "done":
            continue
        for key in EVAL_METRICS:
            if isinstance(metrics.get(key), Mapping):
                out[f"N{int(n)}/{key}"] = float(metrics[key]["mean"])
    if "exploitability" in result:
        e = result["exploitability"]
        out[f"N{int(e['n_agents'])}/exploitability"] = float(e["exploitability"])
    return out


def log_evaluation(run_dir: str | Path, step: int, result: Mapping[str, Any], *, wandb: bool = False) -> Path:
    """Log an evaluation of a run (at its checkpoint's ``step``) as ``eval/N<N>/<metric>``.

    Returns:
        The TensorBoard directory written.
    """
    tracker = Tracker(run_dir, subdir="tb/eval", wandb=wandb)
    try:
        tracker.log(evaluation_scalars(result), step, "eval")
    finally:
        tracker.close()
    return Path(run_dir) / "tb" / "eval"
