"""Progressive distillation of a trained MF-Diffuser denoiser into one that plans in half the steps.

Each round trains a student, initialised from its teacher, so that one deterministic DDIM step of the
student from step ``k`` lands where two of the teacher's land (``k -> mid -> k_next``, Salimans & Ho
2022): the student's grid is every other step of the teacher's, and R rounds divide the steps of a
plan by 2^R. Only the denoiser trains; the value, the action head and the critic are the teacher's.
The inputs are the dataset's segments noised to the student's steps, with the same conditioning
(current states inpainted, the population context) the planner gives.

A distilled run is a run directory like any other (``run.json`` and ``checkpoint.pt``, loaded by
:func:`~mfdiffuser.algos.run.load_run`): its config names the grid (``distilled_grid``) and the levels'
steps, so the planner takes exactly the steps the student was trained for. The rounds train in
``rounds/<r>/`` through the shared loop (:func:`~mfdiffuser.algos.trainer.fit`), so an interrupted
distillation resumes where it stopped, round and step.
"""

from __future__ import annotations

import copy
import dataclasses
import json
from pathlib import Path
from typing import Any, cast

import torch
from torch import nn

from mfdiffuser import __version__
from mfdiffuser.algos.base import LossOutput, _json_default, read_run, write_json
from mfdiffuser.algos.mf_diffuser import Config, MFDiffuser
from mfdiffuser.algos.run import LoadedRun, load_run, recorded, sampler_options, trainer_key
from mfdiffuser.algos.trainer import (
    CHECKPOINT,
    TrainerConfig,
    fit,
    read_checkpoint,
    write_checkpoint,
)
from mfdiffuser.errors import MfdError
from mfdiffuser.utils import removed_on_failure, seed_everything

DISTILL_STEPS = 2000
"""Default training steps per round (the student starts from its teacher)."""
DISTILL_LR = 1e-4
"""Default learning rate of a round (a third of training's: the student starts from its teacher)."""


def halve(grid: tuple[int, ...]) -> tuple[tuple[int, ...], list[tuple[int, int | None, int]]]:
    """The student grid of a teacher ``grid`` (every other step) and each student step's transition.

    Returns ``(student_grid, transitions)`` with one ``(k, mid, k_next)`` per student step: the
    teacher steps ``k -> mid -> k_next`` that the student's one step ``k -> k_next`` learns (``mid``
    None where the teacher's grid ends after ``k``: an odd grid's last step is the teacher's own).
    ``k_next = -1`` is the clean sample.
    """
    ext = list(grid) + [-1]
    n = len(grid)
    transitions: list[tuple[int, int | None, int]] = []
    for i in range(0, n, 2):
        if i + 2 <= n:
            transitions.append((ext[i], ext[i + 1], ext[i + 2]))
        else:
            transitions.append((ext[i], None, -1))
    return tuple(grid[0::2]), transitions


class Distiller(nn.Module):
    """One round: a student MF-Diffuser (its denoiser trains) matching two steps of a frozen teacher.

    The teacher is held outside the module's state (it is not saved in the round's checkpoints; a
    resumed round is given it again). ``loss(batch)`` is the masked mean squared distance between
    where the student's deterministic step lands and where the teacher's two land, over the channels
    the denoising loss covers: the sampler's own space. A step whose landing moves more than one unit
    per unit of the noise estimate (:meth:`~mfdiffuser.diffusion.schedule.NoiseSchedule.implicit_gain`:
    the first step of a plan, from ``abar`` near 0, where it is about 90 on the default schedule)
    counts its distance divided by that gain, i.e. the error of its noise estimate: weighted by the
    landing alone, that one ill-conditioned step takes the whole loss and no other step is learned.
    """

    k: torch.Tensor
    mid: torch.Tensor
    two: torch.Tensor
    k_next: torch.Tensor

    def __init__(self, student: MFDiffuser, teacher: MFDiffuser, teacher_grid: tuple[int, ...]) -> None:
        super().__init__()
        grid, transitions = halve(teacher_grid)
        if tuple(student.config.distilled_grid) != grid:
            raise ValueError(f"distill: the student's grid {student.config.distilled_grid} is not {grid}")
        self.student = student
        self._teacher = (teacher.eval().requires_grad_(False),)  # a tuple: not a registered submodule
        student.requires_grad_(False)
        student.denoiser.requires_grad_(True)
        # per student step: k, the teacher's middle step (k itself where there is none: unused), k_next
        rows = [(k, k if mid is None else mid, mid is not None, nxt) for k, mid, nxt in transitions]
        k, mid, two, nxt = (torch.tensor(col) for col in zip(*rows, strict=True))
        for name, value in (("k", k), ("mid", mid), ("two", two), ("k_next", nxt)):
            self.register_buffer(name, value, persistent=False)

    @property
    def teacher(self) -> MFDiffuser:
        return self._teacher[0]

    def _apply(self, fn: Any, recurse: bool = True) -> Distiller:  # .to(device) moves the teacher too
        super()._apply(fn, recurse)
        self._teacher[0]._apply(fn, recurse)
        return self

    def loss(self, batch: Any) -> LossOutput:
        s, teacher = self.student, self.teacher
        sched, clip = s.scheduler, s.x0_bounds()
        x0 = s.encode(batch)
        cond = s.cond_states(batch.states[:, :, 0])
        ctx = s.context(batch.summaries[:, 0], batch.timestep)
        row = torch.randint(0, len(self.k), (x0.shape[0],), device=x0.device)
        k, mid, two, k_next = self.k[row], self.mid[row], self.two[row], self.k_next[row]
        x_k = s.inpaint(sched.add_noise(x0, torch.randn_like(x0), k), cond)
        with torch.no_grad():
            first = torch.where(two, mid, k_next)
            x_mid = s.inpaint(
                sched.implicit_step(teacher.denoiser(x_k, k, cond, ctx), k, first, x_k, clip=clip), cond
            )
            eps_mid = teacher.denoiser(x_mid, mid, cond, ctx)
            x_two = sched.implicit_step(eps_mid, mid, k_next, x_mid, clip=clip)
            target = torch.where(two[:, None, None, None], x_two, x_mid)
        # where the student's own step lands, by the planner's update (clip included), in units where
        # a step that amplifies the noise estimate's error counts it only once
        landed = sched.implicit_step(s.denoiser(x_k, k, cond, ctx), k, k_next, x_k, clip=clip)
        gain = sched.implicit_gain(k, k_next, x0).clamp_min(1.0)
        m = batch.mask.unsqueeze(-1).to(x0.dtype) * s.channel_mask
        loss = (((landed - target) / gain).pow(2) * m).sum() / m.sum().clamp_min(1.0)
        return LossOutput(loss, {"distill_loss": float(loss.detach())})


def export_student(round_checkpoint: Path, path: Path) -> None:
    """Write a round's checkpoint as the distilled run's: the student's weights under their own names.

    The round's optimizer state stays (its parameters are the student denoiser's); the run is for
    acting, and ``mfd train`` refuses it as another run (its config names a distilled grid).
    """
    state = read_checkpoint(round_checkpoint)
    for key in ("learner", "ema"):
        state[key] = {
            name.removeprefix("student."): value
            for name, value in state[key].items()
            if name.startswith("student.")
        }
    write_checkpoint(path, state)


def round_trainer(teacher_record: dict[str, Any], **settings: Any) -> TrainerConfig:
    """The training loop's settings for each round of distilling a teacher.

    :data:`DISTILL_STEPS` steps at :data:`DISTILL_LR` with the batch size of the teacher's training
    (from its ``run.json`` record), except where ``settings`` say otherwise (a None is unset).
    """
    batch = teacher_record.get("trainer", {}).get("batch_size", TrainerConfig.batch_size)
    defaults = {"steps": DISTILL_STEPS, "lr": DISTILL_LR, "batch_size": int(batch)}
    return TrainerConfig(**{**defaults, **{k: v for k, v in settings.items() if v is not None}})


def _identity(record: dict[str, Any]) -> dict[str, Any]:
    """The fields two records of the same distillation share.

    Everything but status, version and how the loop ran (progress, device, precision, logging); the
    steps per round count, since each round's student teaches the next.
    """
    out = {k: v for k, v in record.items() if k not in ("status", "step", "error", "version", "trainer")}
    trainer = record.get("trainer", {})
    return {**out, "trainer": trainer_key(trainer), "steps": trainer.get("steps")}


def student_config(config: Config, grid: tuple[int, ...]) -> Config:
    """The teacher's config planning on ``grid``: its levels' steps rescaled to the grid's length."""
    levels = config.level_schedule
    if len(grid) < len(levels.steps):
        raise ValueError(
            f"distill: {len(levels.steps)} planner levels need at least {len(levels.steps)} steps; "
            f"a student would plan in {len(grid)} (fewer rounds)"
        )
    steps = levels.with_total_steps(len(grid)).steps
    return dataclasses.replace(config, distilled_grid=grid, steps_per_level=steps, sample_steps=None)


def distill(
    teacher_dir: str | Path,
    out_dir: str | Path,
    rounds: int = 1,
    trainer: TrainerConfig | None = None,
    *,
    dataset_path: str | Path | None = None,
    verify: bool = True,
) -> LoadedRun:
    """Distil a trained MF-Diffuser run into ``out_dir`` over ``rounds`` halvings; resume if started.

    Args:
        teacher_dir: a trained ``mf-diffuser`` run (itself distilled or not).
        out_dir: the distilled run; rounds train in ``out_dir/rounds/<r>``.
        rounds: R, halvings of the teacher's planning steps.
        trainer: the loop's settings per round (``steps`` per round); default :func:`round_trainer`.
        dataset_path: the dataset to draw segments from (default: the one the teacher trained on;
            it must have the teacher's metadata).
        verify: check the dataset's digest and checksums when loading it.

    Raises:
        MfdError: the teacher is not a trained MF-Diffuser run, the dataset is not the teacher's, or
            ``out_dir`` holds a different run.
    """
    from mfdiffuser.data import WindowSampler, load_dataset

    if int(rounds) != rounds or rounds < 1:
        raise ValueError(f"distill: rounds must be a positive integer, got {rounds!r}")
    teacher_dir, out_dir = Path(teacher_dir), Path(out_dir)
    record = read_run(teacher_dir)
    if record["algo"] != "mf-diffuser":
        raise MfdError(f"{teacher_dir}: a {record['algo']} run; only mf-diffuser runs can be distilled")
    teacher_run = load_run(teacher_dir)
    teacher = cast(MFDiffuser, teacher_run.learner)
    trainer = trainer or round_trainer(record)
    grid = tuple(teacher.sample_timesteps(teacher_run.config.level_schedule.total_steps))
    grids, configs = [grid], []
    for _ in range(rounds):
        grid = halve(grid)[0]
        grids.append(grid)
        configs.append(student_config(teacher_run.config, grid))
    dataset_path = Path(dataset_path or record.get("dataset", ""))
    dataset = load_dataset(dataset_path, verify=verify)
    if json.loads(json.dumps(dataclasses.asdict(dataset.meta), default=_json_default)) != record["meta"]:
        raise MfdError(f"{dataset_path}: not the dataset {teacher_dir} was trained on (its metadata differs)")
    out_record = json.loads(
        json.dumps(
            {
                "algo": "mf-diffuser",
                "config": dataclasses.asdict(configs[-1]),
                "trainer": dataclasses.asdict(trainer),
                "dataset": str(dataset_path.resolve()),
                "meta": record["meta"],
                "version": __version__,
                "distillation": {
                    "teacher": str(teacher_dir.resolve()),
                    "teacher_step": teacher_run.step,
                    "rounds": rounds,
                    "grids": [list(g) for g in grids],
                },
            },
            default=_json_default,
        )
    )
    if (out_dir / "run.json").exists():
        old = read_run(out_dir)
        if _identity(old) != _identity(out_record):
            raise MfdError(f"{out_dir} holds a different run; choose another --out or delete it")
        if old.get("status") == "done" and (out_dir / CHECKPOINT).exists():
            return load_run(out_dir)
    seed_everything(trainer.seed)
    first_round = out_dir / "rounds" / "1" / CHECKPOINT
    with removed_on_failure(out_dir, keep=first_round.exists), recorded(out_dir, out_record):
        for r, config in enumerate(configs, start=1):
            if trainer.progress:
                print(f"distill round {r}/{rounds}: {len(grids[r - 1])} -> {len(grids[r])} steps")
            student = copy.deepcopy(teacher).train()
            student.config = config
            distiller = Distiller(student, teacher, grids[r - 1])
            sampler = WindowSampler(
                dataset,
                horizon=config.horizon,
                batch_size=trainer.batch_size,
                m_range=tuple(config.m_range),
                seed=trainer.seed + r - 1,
                **sampler_options(config),
            )
            loop = dataclasses.replace(trainer, seed=trainer.seed + r - 1)
            result = fit(distiller, sampler, out_dir / "rounds" / str(r), loop)
            teacher = cast(Distiller, result.ema).student.eval()
        export_student(out_dir / "rounds" / str(rounds) / CHECKPOINT, out_dir / CHECKPOINT)
    write_json(out_dir / "run.json", {**out_record, "status": "done", "step": result.step})
    return load_run(out_dir)
