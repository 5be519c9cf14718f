"""``mfd distill``: progressive distillation of an MF-Diffuser run into a faster planner (resumable)."""

from __future__ import annotations

import argparse
import sys


def add_parser(sub: argparse._SubParsersAction) -> None:
    from mfdiffuser.commands.train import add_loop_arguments

    p = sub.add_parser(
        "distill",
        help="distil an MF-Diffuser run into one that plans in half the steps per round",
        description=(
            "Progressive distillation: each round trains a student whose one deterministic denoising "
            "step matches two of its teacher's, halving the steps of a plan. The result is a run "
            "directory like any other; rerunning the same command resumes."
        ),
    )
    p.add_argument("run", help="a trained mf-diffuser run directory (the teacher)")
    p.add_argument("--out", required=True, help="the distilled run directory to create or resume")
    p.add_argument("--rounds", type=int, default=1, help="halvings of the planning steps (default 1)")
    p.add_argument("--steps", type=int, default=None, help="training steps per round (default 2000)")
    p.add_argument("--lr", type=float, default=None, help="learning rate (default 1e-4)")
    p.add_argument("--batch-size", type=int, default=None, help="B (default: the teacher's)")
    p.add_argument("--dataset", default=None, help="dataset to draw segments from (default: the teacher's)")
    add_loop_arguments(p, seed_help="seed of the rounds' batches and noise")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from mfdiffuser.algos.base import read_run
    from mfdiffuser.algos.distill import distill, round_trainer
    from mfdiffuser.algos.trainer import TrainingInterrupted
    from mfdiffuser.cli import interrupted_message
    from mfdiffuser.utils import check_not_dangling, set_threads

    check_not_dangling(args.out)
    trainer = round_trainer(
        read_run(args.run),
        steps=args.steps,
        lr=args.lr,
        batch_size=args.batch_size,
        seed=args.seed,
        device=args.device,
        progress=not args.no_progress,
    )
    print(set_threads(args.threads).describe())
    try:
        result = distill(
            args.run, args.out, args.rounds, trainer, dataset_path=args.dataset, verify=not args.no_verify
        )
    except TrainingInterrupted as exc:
        saved = "no checkpoint yet" if exc.step is None else f"saved step {exc.step} of {exc.total}"
        sys.stderr.write(interrupted_message("distill", saved) + "\n")
        return 128 + exc.signum
    grid = result.config.distilled_grid
    print(f"distilled {args.run} -> {result.run_dir}: plans in {len(grid)} steps {list(grid)}")
    return 0
