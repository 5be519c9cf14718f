"""The one training loop every learner uses: AdamW, gradient clipping, EMA weights, exact resume.

``fit`` draws batches from a sampler, minimises ``learner.loss(batch).loss``, calls the learner's
optional ``after_step()`` (target networks), keeps an exponential moving average of the weights (the
weights used for acting: without it, scores swing wildly between checkpoints), logs scalars to
TensorBoard and ``metrics.jsonl``, and writes ``checkpoint.pt`` atomically. A run killed at any point
resumes from its last checkpoint with the same RNG states, so the loss curve continues unchanged.
"""

from __future__ import annotations

import copy
import json
import math
import time
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple, cast

import torch
from torch import nn

from mfdiffuser.algos.base import Learner, coerce_value
from mfdiffuser.errors import MfdError
from mfdiffuser.utils import atomic_path, check_device, resolve_device

CHECKPOINT = "checkpoint.pt"
METRICS = "metrics.jsonl"


@dataclass
class TrainerConfig:
    """Options of the shared training loop."""

    steps: int = 20_000
    """Number of gradient steps."""
    batch_size: int = 64
    """B, population segments per batch."""
    lr: float = 3e-4
    """AdamW learning rate."""
    weight_decay: float = 0.0
    """AdamW weight decay."""
    grad_clip: float = 1.0
    """Clip the global gradient norm to this value (0 disables)."""
    ema_decay: float = 0.995
    """Decay of the exponential moving average of the weights used for acting."""
    ema_start: int = 200
    """Steps before the EMA starts tracking (it copies the weights until then)."""
    log_every: int = 100
    """Log scalars every this many steps."""
    checkpoint_every: int = 1000
    """Write a checkpoint every this many steps (and at the end)."""
    seed: int = 0
    """Seed of the torch generator and the batch sampler."""
    device: str = "auto"
    """Torch device; ``auto`` picks CUDA when available."""
    progress: bool = True
    """Show a progress bar."""

    def __post_init__(self) -> None:
        # the same typed check that algorithm options get (ints not bools, finite floats, ...)
        for name, tp in typing.get_type_hints(TrainerConfig).items():
            setattr(self, name, coerce_value(f"trainer: {name}", getattr(self, name), tp))
        for name in ("steps", "batch_size", "log_every", "checkpoint_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"trainer: {name} must be >= 1, got {getattr(self, name)}")
        if self.seed < 0 or self.ema_start < 0:
            raise ValueError(f"trainer: seed and ema_start must be >= 0, got {self.seed}, {self.ema_start}")
        if not 0.0 <= self.ema_decay < 1.0:
            raise ValueError(f"trainer: ema_decay must lie in [0, 1), got {self.ema_decay}")
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise ValueError(f"trainer: lr must be a finite number > 0, got {self.lr}")
        if not (math.isfinite(self.weight_decay) and self.weight_decay >= 0):
            raise ValueError(f"trainer: weight_decay must be >= 0, got {self.weight_decay}")
        if not (math.isfinite(self.grad_clip) and self.grad_clip >= 0):
            raise ValueError(f"trainer: grad_clip must be >= 0, got {self.grad_clip}")
        check_device(self.device)


class TrainResult(NamedTuple):
    """What ``fit`` returns."""

    step: int
    metrics: dict[str, float]
    ema: nn.Module


def _update_ema(ema: nn.Module, model: nn.Module, decay: float) -> None:
    with torch.no_grad():
        for pe, pm in zip(ema.parameters(), model.parameters(), strict=True):
            pe.lerp_(pm, 1.0 - decay)
        for be, bm in zip(ema.buffers(), model.buffers(), strict=True):
            be.copy_(bm)


def fit(learner: nn.Module, sampler: Any, run_dir: str | Path, cfg: TrainerConfig) -> TrainResult:
    """Train ``learner`` on batches from ``sampler`` for ``cfg.steps`` steps, resuming if possible.

    Args:
        learner: module with ``loss(batch) -> LossOutput`` and optionally ``after_step()``.
        sampler: object with ``sample() -> TrajBatch`` and ``rng`` (its ``np.random.Generator``,
            whose state is checkpointed so that a resumed run draws the same batches).
        run_dir: directory for ``checkpoint.pt``, ``metrics.jsonl`` and ``tb/``.
        cfg: trainer options.

    Returns:
        The final step, the last logged metrics and the EMA module (the weights to act with).
    """
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    device = torch.device(resolve_device(cfg.device))
    learner.to(device)
    ema = copy.deepcopy(learner).requires_grad_(False)
    params = [p for p in learner.parameters() if p.requires_grad]
    optim = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    torch_gen_state = torch.Generator().manual_seed(cfg.seed).get_state()
    torch.set_rng_state(torch_gen_state)
    step = 0

    ckpt_path = run_dir / CHECKPOINT
    if ckpt_path.exists():
        state = torch.load(ckpt_path, map_location=device, weights_only=False)
        learner.load_state_dict(state["learner"])
        ema.load_state_dict(state["ema"])
        optim.load_state_dict(state["optim"])
        torch.set_rng_state(state["torch_rng"])
        sampler.rng.bit_generator.state = state["sampler_rng"]
        step = int(state["step"])
    _truncate_metrics(run_dir / METRICS, step)

    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(str(run_dir / "tb"), purge_step=step if step else None)
    metrics: dict[str, float] = {}
    progress = _progress(cfg, step)
    t_start, last_log = time.perf_counter(), step
    try:
        while step < cfg.steps:
            batch = sampler.sample().to(device)
            out = cast(Learner, learner).loss(batch)
            optim.zero_grad(set_to_none=True)
            out.loss.backward()
            grad_norm = (
                float(nn.utils.clip_grad_norm_(params, cfg.grad_clip)) if cfg.grad_clip > 0 else float("nan")
            )
            optim.step()
            if hasattr(learner, "after_step"):
                cast(Any, learner).after_step()
            step += 1
            _update_ema(ema, learner, 0.0 if step <= cfg.ema_start else cfg.ema_decay)
            if step % cfg.log_every == 0 or step == cfg.steps:
                metrics = {"loss": float(out.loss.detach()), "grad_norm": grad_norm, **out.metrics}
                interval = max(time.perf_counter() - t_start, 1e-9)
                metrics["steps_per_s"] = (step - last_log) / interval
                t_start, last_log = time.perf_counter(), step
                for k, v in metrics.items():
                    writer.add_scalar(f"train/{k}", v, step)
                with open(run_dir / METRICS, "a") as f:
                    f.write(json.dumps({"step": step, **metrics, "interval_s": interval}) + "\n")
            if step % cfg.checkpoint_every == 0 or step == cfg.steps:
                save_checkpoint(ckpt_path, learner, ema, optim, sampler, step)
            if progress is not None:
                progress.update(1, loss=float(out.loss.detach()))
    except KeyboardInterrupt:
        # keep what was learned: an interrupted run resumes from here, not from its last checkpoint
        save_checkpoint(ckpt_path, learner, ema, optim, sampler, step)
        raise
    finally:
        writer.close()
        if progress is not None:
            progress.close()
    return TrainResult(step, metrics, ema)


def save_checkpoint(
    path: Path, learner: nn.Module, ema: nn.Module, optim: torch.optim.Optimizer, sampler: Any, step: int
) -> None:
    """Write the whole training state atomically."""
    state = {
        "learner": learner.state_dict(),
        "ema": ema.state_dict(),
        "optim": optim.state_dict(),
        "torch_rng": torch.get_rng_state(),
        "sampler_rng": sampler.rng.bit_generator.state,
        "step": step,
    }
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def load_ema_weights(learner: nn.Module, run_dir: str | Path, device: str = "cpu") -> int:
    """Load the EMA weights of a run's checkpoint into ``learner``; return the checkpoint's step."""
    path = Path(run_dir) / CHECKPOINT
    try:
        state = torch.load(path, map_location=device, weights_only=False)
    except (RuntimeError, EOFError, OSError) as exc:
        raise MfdError(f"{path}: cannot read the checkpoint ({str(exc).splitlines()[0]})") from exc
    try:
        learner.load_state_dict(state["ema"])
    except (RuntimeError, KeyError) as exc:
        raise MfdError(
            f"{path}: the checkpoint does not match the run's configuration (written by another version?)"
        ) from exc
    return int(state["step"])


def logged_train_seconds(run_dir: str | Path) -> float:
    """Seconds a run spent in its training loop, over all its attempts, from ``metrics.jsonl``.

    Each logged line holds the seconds since the previous line or since its attempt started
    (``interval_s``; logs written before that field existed give the steps since the previous line
    over ``steps_per_s``). Steps done after the last line of an interrupted attempt, and loading, are
    not counted. 0 when nothing is logged.
    """
    path = Path(run_dir) / METRICS
    if not path.exists():
        return 0.0
    seconds, last = 0.0, 0
    for line in path.read_text().splitlines():
        if not line:
            continue
        entry = json.loads(line)
        if "interval_s" in entry:
            seconds += float(entry["interval_s"])
        elif float(entry.get("steps_per_s", 0.0)) > 0:
            seconds += (int(entry["step"]) - last) / float(entry["steps_per_s"])
        last = int(entry["step"])
    return seconds


def _truncate_metrics(path: Path, step: int) -> None:
    """Drop logged lines past ``step`` (written after the checkpoint a resumed run restarts from)."""
    if not path.exists():
        return
    lines = [ln for ln in path.read_text().splitlines() if ln and json.loads(ln)["step"] <= step]
    with atomic_path(path) as tmp:
        tmp.write_text("".join(ln + "\n" for ln in lines))


class _Bar:
    """A thin rich progress bar over training steps."""

    def __init__(self, total: int, done: int) -> None:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        self._p = Progress(
            TextColumn("train"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("loss {task.fields[loss]:.4f}"),
            TimeRemainingColumn(),
            transient=False,
        )
        self._task = self._p.add_task("train", total=total, completed=done, loss=float("nan"))
        self._p.start()

    def update(self, n: int, **fields: Any) -> None:
        self._p.update(self._task, advance=n, **fields)

    def close(self) -> None:
        self._p.stop()


def _progress(cfg: TrainerConfig, done: int) -> _Bar | None:
    return _Bar(cfg.steps, done) if cfg.progress else None

