"""The one training loop every learner uses: AdamW, gradient clipping, EMA weights, exact resume.

``fit`` draws batches from a sampler, minimises ``learner.loss(batch).loss``, calls the learner's
optional ``after_step()`` (target networks), keeps an exponential moving average of the weights (the
weights used for acting: without it, scores swing wildly between checkpoints), logs scalars to
TensorBoard (and Weights & Biases with ``wandb``) and ``metrics.jsonl``, and writes ``checkpoint.pt``
atomically. A run killed at any point resumes from its last checkpoint with the same RNG states, so
the loss curve continues unchanged.

Checkpoints are sealed (a sha256 header, :mod:`mfdiffuser.integrity`) and hold only tensors and plain
Python values, so they are checked before ``torch.load`` parses them and load with
``weights_only=True`` (a checkpoint from a shared directory cannot run code). SIGINT and SIGTERM
during :func:`fit` finish the step in progress, save it and raise :class:`TrainingInterrupted`: a
checkpoint is never taken part-way through a step.
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import math
import os
import pickle
import signal
import sys
import threading
import time
import typing
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any, NamedTuple, cast

import torch
from torch import nn

from mfdiffuser.algos.base import Learner, ParamGroup, coerce_value
from mfdiffuser.errors import MfdError, first_line
from mfdiffuser.integrity import IntegrityError, sealed_bytes, unseal_bytes
from mfdiffuser.models.policy import polyak_update
from mfdiffuser.progress import ProgressBar, format_duration
from mfdiffuser.utils import SEED_LIMIT, append_text, atomic_path, check_device, resolve_device

CHECKPOINT = "checkpoint.pt"
METRICS = "metrics.jsonl"
CHECKPOINT_KIND = "checkpoint"
"""Kind named in a checkpoint's digest header."""
CHECKPOINT_KEYS = ("learner", "ema", "optim", "torch_rng", "sampler_rng", "step")
"""Entries every checkpoint holds (``cuda_rng``, the CUDA generators' states, when CUDA was used)."""
_RECOVER = "delete it to start the run over (or put back a good copy)"
_STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
# what torch.load raises on a payload that is not a weights-only checkpoint of this layout
_LOAD_ERRORS = (
    RuntimeError, EOFError, ValueError, TypeError, KeyError, AttributeError, pickle.UnpicklingError
)


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
    """Show a progress bar (one line at a time when stdout is not a terminal) and the ETA."""
    bf16: bool = False
    """Compute the forward pass and loss under bfloat16 autocast (for GPUs; weights stay float32)."""
    wandb: bool = False
    """Also log to Weights & Biases (extra ``wandb``; ``WANDB_MODE=offline`` needs no network)."""
    deterministic: bool = False
    """Use only deterministic kernels (``torch.use_deterministic_algorithms``), so that a CUDA run
    resumed from a checkpoint equals an uninterrupted one bit for bit; slower on GPUs. CPU runs are
    reproducible without it."""

    def __post_init__(self) -> None:
        # the same typed check that algorithm options get (ints not bools, finite floats, ...)
        for name, tp in typing.get_type_hints(TrainerConfig).items():
            setattr(self, name, coerce_value(f"trainer: {name}", getattr(self, name), tp))
        for name in ("steps", "batch_size", "log_every", "checkpoint_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"trainer: {name} must be >= 1, got {getattr(self, name)}")
        if self.seed < 0 or self.ema_start < 0:
            raise ValueError(f"trainer: seed and ema_start must be >= 0, got {self.seed}, {self.ema_start}")
        if self.seed >= SEED_LIMIT:
            raise ValueError(f"trainer: seed must be below 2**64 (torch's generators), got {self.seed}")
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


class TrainingInterrupted(KeyboardInterrupt):
    """Training stopped on SIGINT or SIGTERM; the checkpoint on disk holds ``step`` completed steps.

    ``step`` is None when no checkpoint exists (interrupted before the first one). ``signum`` is the
    signal received (a second SIGINT, or a ``KeyboardInterrupt`` raised in the loop, stops at once
    without saving: the last checkpoint written stays the one to resume from).
    """

    def __init__(self, step: int | None, total: int, signum: int, path: Path) -> None:
        self.step = step
        self.total = total
        self.signum = signum
        self.path = path
        saved = f"checkpoint at step {step} of {total}" if step is not None else "no checkpoint yet"
        super().__init__(f"training interrupted by {signal.Signals(signum).name}; {saved} ({path})")


class _StopOnSignal:
    """While active, SIGINT and SIGTERM only record a stop request, which the loop honours between steps.

    A second signal raises ``KeyboardInterrupt`` at once. Handlers can only be set in the main
    thread; elsewhere (a thread pool) signals keep their handlers and a ``KeyboardInterrupt`` stops
    training without saving. A signal that is ignored (``SIG_IGN``, e.g. SIGINT of a background
    job) or handled outside Python stays as it is.
    """

    def __init__(self) -> None:
        self.signum: int | None = None

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.signum is not None:
            raise KeyboardInterrupt
        self.signum = signum

    @contextlib.contextmanager
    def active(self) -> Iterator[_StopOnSignal]:
        if threading.current_thread() is not threading.main_thread():
            yield self
            return
        previous = {
            s: signal.signal(s, self._handle)
            for s in _STOP_SIGNALS
            if signal.getsignal(s) not in (signal.SIG_IGN, None)
        }
        try:
            yield self
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)


def _update_ema(ema: nn.Module, model: nn.Module, decay: float) -> None:
    polyak_update(ema, model, 1.0 - decay)
    ema_buffers, buffers = list(ema.buffers()), list(model.buffers())
    if len(ema_buffers) != len(buffers):
        raise ValueError(f"EMA: {len(ema_buffers)} buffers for the model's {len(buffers)}")
    if buffers:
        with torch.no_grad():
            torch._foreach_copy_(ema_buffers, buffers)


def fit(learner: nn.Module, sampler: Any, run_dir: str | Path, cfg: TrainerConfig) -> TrainResult:
    """Train ``learner`` on batches from ``sampler`` for ``cfg.steps`` steps, resuming if possible.

    Args:
        learner: module with ``loss(batch) -> LossOutput`` and optionally ``after_step()``.
        sampler: object with ``sample() -> TrajBatch`` and ``rng`` (its ``np.random.Generator``,
            whose state is checkpointed so that a resumed run draws the same batches), and
            optionally ``state_dict()`` / ``load_state_dict()`` for any further state it draws
            from (the window sampler's pool of dataset blocks).
        run_dir: directory for ``checkpoint.pt``, ``metrics.jsonl`` and ``tb/``.
        cfg: trainer options.

    Returns:
        The final step, the last logged metrics and the EMA module (the weights to act with).

    Raises:
        MfdError: ``checkpoint.pt`` is damaged, has no digest, or does not fit this run;
            ``metrics.jsonl`` is damaged before its last line.
        TrainingInterrupted: SIGINT or SIGTERM arrived; the last completed step was saved first.
    """
    with deterministic_kernels(cfg.deterministic):
        return _fit(learner, sampler, Path(run_dir), cfg)


@contextlib.contextmanager
def deterministic_kernels(enabled: bool) -> Iterator[None]:
    """Use only deterministic torch kernels inside the block (no-op when ``enabled`` is False).

    cuBLAS needs ``CUBLAS_WORKSPACE_CONFIG`` for deterministic matrix products; it is set here unless
    the environment already sets it, and takes effect if cuBLAS was not yet used in this process.
    The previous mode is restored on exit.
    """
    if not enabled:
        yield
        return
    before = torch.are_deterministic_algorithms_enabled()
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(before)


def _fit(learner: nn.Module, sampler: Any, run_dir: Path, cfg: TrainerConfig) -> TrainResult:
    """The training loop of :func:`fit` (``run_dir`` resolved, kernel mode set)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    device = torch.device(resolve_device(cfg.device))
    learner.to(device)
    ema = copy.deepcopy(learner).requires_grad_(False)
    groups = param_groups(learner, cfg)
    optim = torch.optim.AdamW(
        [{"params": g.params, "lr": g.lr} for g in groups],
        lr=cfg.lr,
        weight_decay=cfg.weight_decay,
        foreach=True,  # one multi-tensor kernel per update (CPU's default is a loop; same arithmetic)
    )
    torch_gen_state = torch.Generator().manual_seed(cfg.seed).get_state()
    torch.set_rng_state(torch_gen_state)
    step = 0

    # SIGINT and SIGTERM only request a stop from here on, loading the checkpoint included: a
    # signal before the first step still ends in an interrupted run, not a killed one.
    stop = _StopOnSignal()
    with stop.active():
        ckpt_path = run_dir / CHECKPOINT
        saved: int | None = None  # the step of the checkpoint on disk
        if ckpt_path.exists():
            state = read_checkpoint(ckpt_path, device)
            try:
                learner.load_state_dict(state["learner"])
                ema.load_state_dict(state["ema"])
                optim.load_state_dict(state["optim"])
                torch.set_rng_state(state["torch_rng"].cpu())  # generator states live on the CPU
                if "sampler" in state and hasattr(sampler, "load_state_dict"):
                    sampler.load_state_dict(state["sampler"])  # its pool of blocks too
                else:
                    sampler.rng.bit_generator.state = state["sampler_rng"]
            except (RuntimeError, KeyError, ValueError, TypeError) as exc:
                raise MfdError(
                    f"{ckpt_path}: the checkpoint does not match this run ({first_line(exc)}); {_RECOVER}"
                ) from None
            if "cuda_rng" in state and device.type == "cuda":
                cuda_states = [s.cpu() for s in state["cuda_rng"]]
                torch.cuda.set_rng_state_all(cuda_states[: torch.cuda.device_count()])
            step = saved = int(state["step"])
        _truncate_metrics(run_dir / METRICS, step)

        from mfdiffuser.tracking import Tracker

        tracker = Tracker(run_dir, purge_step=step, wandb=cfg.wandb)
        metrics: dict[str, float] = {}
        progress = ProgressBar(cfg.steps, "train", done=step) if cfg.progress else None
        eta = _EtaNote(cfg.steps, step, device) if cfg.progress else None
        t_start, last_log = time.perf_counter(), step
        try:
            # A signal only sets stop.signum; the loop ends between steps, so what is saved below is
            # the state after the last completed step (RNGs, buffers and optimizer all at one step).
            while step < cfg.steps and stop.signum is None:
                batch = sampler.sample().to(device)
                with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=cfg.bf16):
                    out = cast(Learner, learner).loss(batch)
                optim.zero_grad(set_to_none=True)
                out.loss.backward()
                grad_norms = clip_groups(groups)
                optim.step()
                if hasattr(learner, "after_step"):
                    cast(Any, learner).after_step()
                step += 1
                _update_ema(ema, learner, 0.0 if step <= cfg.ema_start else cfg.ema_decay)
                if step % cfg.log_every == 0 or step == cfg.steps:
                    metrics = {"loss": float(out.loss.detach()), **grad_norms, **out.metrics}
                    interval = max(time.perf_counter() - t_start, 1e-9)
                    metrics["steps_per_s"] = (step - last_log) / interval
                    t_start, last_log = time.perf_counter(), step
                    tracker.log(metrics, step, "train")
                    line = json.dumps({"step": step, **metrics, "interval_s": interval})
                    append_text(run_dir / METRICS, line + "\n")
                if step % cfg.checkpoint_every == 0 or step == cfg.steps:
                    save_checkpoint(ckpt_path, learner, ema, optim, sampler, step)
                    saved = step
                if progress is not None:
                    progress.update(1, fields=f"loss {float(out.loss.detach()):.4f}")
                if eta is not None:
                    eta.update(step)
            if stop.signum is not None:
                if saved != step and step > 0:  # step 0: stopped while loading, nothing to save
                    save_checkpoint(ckpt_path, learner, ema, optim, sampler, step)
                    saved = step
                raise TrainingInterrupted(saved, cfg.steps, stop.signum, ckpt_path)
        except TrainingInterrupted:
            raise
        except KeyboardInterrupt:
            # raised part-way through a step (a second signal, or no handler in this thread): the
            # state in memory is not a completed step, so nothing is saved; the last checkpoint stays
            signum = stop.signum or signal.SIGINT
            raise TrainingInterrupted(saved, cfg.steps, signum, ckpt_path) from None
        finally:
            tracker.close()
            if progress is not None:
                progress.close()
    return TrainResult(step, metrics, ema)


def param_groups(learner: nn.Module, cfg: TrainerConfig) -> list[ParamGroup]:
    """The learner's :class:`ParamGroup` list with the trainer's defaults filled in.

    A learner without ``param_groups()`` is one group ``all`` of every trainable parameter.

    Raises:
        ValueError: a trainable parameter is in no group or in two, or a group's lr/clip is invalid.
    """
    trainable = [p for p in learner.parameters() if p.requires_grad]
    if not hasattr(learner, "param_groups"):
        return [ParamGroup("all", trainable, cfg.lr, cfg.grad_clip)]
    groups = []
    seen: set[int] = set()
    for g in cast(Any, learner).param_groups():
        params = [p for p in g.params if p.requires_grad]
        if seen & {id(p) for p in params}:
            raise ValueError(f"trainer: a parameter of group {g.name!r} is also in another group")
        seen |= {id(p) for p in params}
        lr = cfg.lr if g.lr is None else float(g.lr)
        clip = cfg.grad_clip if g.clip is None else float(g.clip)
        if not (math.isfinite(lr) and lr > 0) or not (math.isfinite(clip) and clip >= 0):
            raise ValueError(f"trainer: group {g.name!r} needs lr > 0 and clip >= 0, got {lr}, {clip}")
        groups.append(ParamGroup(g.name, params, lr, clip))
    missing = sum(1 for p in trainable if id(p) not in seen)
    if missing:
        raise ValueError(f"trainer: {missing} trainable parameter(s) are in no group of param_groups()")
    return groups


def clip_groups(groups: list[ParamGroup]) -> dict[str, float]:
    """Clip each group's gradient norm to its own ``clip``; the norms before clipping (NaN: not clipped).

    One group logs as ``grad_norm``; several as ``grad_norm/<name>``.
    """
    norms = {}
    for g in groups:
        clip = cast(float, g.clip)
        norm = float(nn.utils.clip_grad_norm_(g.params, clip)) if clip > 0 and g.params else math.nan
        norms["grad_norm" if len(groups) == 1 else f"grad_norm/{g.name}"] = norm
    return norms


def save_checkpoint(
    path: Path, learner: nn.Module, ema: nn.Module, optim: torch.optim.Optimizer, sampler: Any, step: int
) -> None:
    """Write the whole training state atomically, sealed with its digest (see :func:`read_checkpoint`).

    Everything in it is a tensor or a plain Python value (dicts, lists, ints, floats, strings), so it
    loads with ``weights_only=True``. The CUDA generators' states are stored when CUDA is in use, so
    a GPU run resumes exactly too.
    """
    state: dict[str, Any] = {
        "learner": learner.state_dict(),
        "ema": ema.state_dict(),
        "optim": optim.state_dict(),
        "torch_rng": torch.get_rng_state(),
        "sampler_rng": sampler.rng.bit_generator.state,
        "step": int(step),
    }
    if hasattr(sampler, "state_dict"):  # a sampler that holds more than its generator (a block pool)
        state["sampler"] = sampler.state_dict()
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda_rng"] = torch.cuda.get_rng_state_all()
    write_checkpoint(path, state)


def write_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """Write a checkpoint's ``state`` (tensors and plain values) atomically, sealed with its digest."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    with atomic_path(path) as tmp:
        tmp.write_bytes(sealed_bytes(CHECKPOINT_KIND, buffer.getvalue()))


def read_checkpoint(path: str | Path, device: str | torch.device = "cpu") -> dict[str, Any]:
    """Check a checkpoint's digest, then load it with ``torch.load(weights_only=True)``.

    Args:
        path: the ``checkpoint.pt`` file.
        device: where tensors go (``map_location``).

    Returns:
        The state :func:`save_checkpoint` wrote: ``learner``, ``ema``, ``optim``, ``torch_rng``,
        ``sampler_rng``, ``step``, ``sampler`` (a sampler's :meth:`state_dict`, when it has one) and,
        for CUDA runs, ``cuda_rng``.

    Raises:
        MfdError: the file is unreadable, empty, truncated, corrupted, has no digest (written
            before checkpoints carried one) or lacks an entry; the message names the file and says
            to delete it to start over.
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise MfdError(f"{path}: cannot read the checkpoint ({exc.strerror or exc})") from None
    if data[:4] == b"PK\x03\x04":  # a bare torch.save zip: written before checkpoints were sealed
        raise MfdError(
            f"{path}: a checkpoint without a digest (written before checkpoints carried one); {_RECOVER}"
        )
    try:
        payload = unseal_bytes(data, path, CHECKPOINT_KIND, "checkpoint", _RECOVER)
    except IntegrityError as exc:
        raise MfdError(str(exc)) from None
    try:
        state = torch.load(io.BytesIO(payload), map_location=device, weights_only=True)
    except _LOAD_ERRORS as exc:
        raise MfdError(f"{path}: unreadable checkpoint ({first_line(exc)}); {_RECOVER}") from None
    missing = [k for k in CHECKPOINT_KEYS if not isinstance(state, dict) or k not in state]
    if missing:
        raise MfdError(f"{path}: the checkpoint lacks {', '.join(missing)}; {_RECOVER}")
    return cast(dict[str, Any], state)


def load_ema_weights(learner: nn.Module, run_dir: str | Path, device: str = "cpu") -> int:
    """Load the EMA weights of a run's checkpoint into ``learner``; return the checkpoint's step."""
    path = Path(run_dir) / CHECKPOINT
    state = read_checkpoint(path, device)
    try:
        learner.load_state_dict(state["ema"])
    except (RuntimeError, KeyError, TypeError) as exc:
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
    for _, entry in read_metrics(path):
        if "interval_s" in entry:
            seconds += float(entry["interval_s"])
        elif float(entry.get("steps_per_s", 0.0)) > 0:
            seconds += (int(entry["step"]) - last) / float(entry["steps_per_s"])
        last = int(entry["step"])
    return seconds


def read_metrics(path: str | Path) -> list[tuple[str, dict[str, Any]]]:
    """The lines of a ``metrics.jsonl`` as ``(text, entry)`` pairs, in order.

    A last line cut short (no final newline and not valid JSON) is dropped: it can only be the write
    a killed run was making, of a step after its last checkpoint (metrics are logged before the
    checkpoint of the same step), which the resumed run logs again. Any other line that is not a
    JSON object with an integer ``step`` is damage a resume cannot repair.

    Raises:
        MfdError: a damaged line; the message names the file and the line.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8", errors="strict")
    except UnicodeDecodeError:
        raise MfdError(f"{path}: not UTF-8 text (damaged log); delete it to resume") from None
    lines = text.split("\n")
    torn = lines.pop()  # "" when the file ends with a newline
    out = []
    for number, line in enumerate(lines, start=1):
        if line.strip():
            out.append((line, _metrics_entry(line, path, number)))
    if torn.strip():
        try:
            out.append((torn, _metrics_entry(torn, path, len(lines) + 1)))
        except MfdError:
            pass  # a torn final write (see above)
    return out


def _metrics_entry(line: str, path: Path, number: int) -> dict[str, Any]:
    try:
        entry = json.loads(line)
    except json.JSONDecodeError:
        entry = None
    if not isinstance(entry, dict) or type(entry.get("step")) is not int:
        raise MfdError(
            f"{path}: line {number} is not a metrics record (damaged log); delete that line, or the "
            "file, to resume"
        )
    return entry


def _truncate_metrics(path: Path, step: int) -> None:
    """Drop logged lines past ``step`` (written after the checkpoint a resumed run restarts from)."""
    if not path.exists():
        return
    lines = [text for text, entry in read_metrics(path) if entry["step"] <= step]
    with atomic_path(path) as tmp:
        tmp.write_text("".join(ln + "\n" for ln in lines))


HOURS_ON_CPU = 3600.0
"""A CPU training budget estimated above this many seconds gets a warning with what to do."""


class _EtaNote:
    """Prints once, early in training, the measured speed and how long the whole budget will take.

    The first step (allocation, warm-up) is left out of the rate; the line comes after 20 more
    steps or 10 seconds, whichever is first.
    """

    def __init__(self, total: int, done: int, device: torch.device) -> None:
        self.total, self.device = total, device
        self._first: tuple[int, float] | None = None
        self._printed = total - done <= 1

    def update(self, step: int) -> None:
        if self._printed:
            return
        now = time.perf_counter()
        if self._first is None:
            self._first = (step, now)
            return
        steps, seconds = step - self._first[0], now - self._first[1]
        if steps < 20 and seconds < 10.0:
            return
        self._printed = True
        rate = steps / max(seconds, 1e-9)
        left = (self.total - step) / rate
        finish = time.strftime("%H:%M", time.localtime(time.time() + left))
        print(
            f"train: {rate:.2f} steps/s on {self.device.type}; {self.total - step:,} steps left, "
            f"about {format_duration(left)} (done around {finish})",
            flush=True,
        )
        if self.device.type == "cpu" and left > HOURS_ON_CPU:
            print(
                "train: note: this budget takes hours on CPU; pass a smaller --steps, or train on a GPU "
                "(--device cuda). A run stopped now resumes from its last checkpoint "
                "(every --checkpoint-every steps).",
                file=sys.stderr,
                flush=True,
            )

