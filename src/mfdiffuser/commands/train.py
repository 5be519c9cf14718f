"""``mfd train``: train an algorithm on an offline dataset into a run directory (resumable)."""

from __future__ import annotations

import argparse
import dataclasses
import sys
from collections.abc import Callable
from typing import Any, cast

import yaml

THREADS_HELP = "torch threads (default: OMP_NUM_THREADS or MKL_NUM_THREADS, else the idle share of the cores)"


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train",
        help="train MF-Diffuser or a baseline on a dataset",
        description="Train an algorithm; rerunning the same command resumes from the last checkpoint.",
    )
    p.add_argument("--algo", required=True, help="algorithm name (mf-diffuser, bc, mf-iql, ...)")
    p.add_argument("--dataset", help="dataset file written by `mfd data generate`")
    p.add_argument("--out", help="run directory to create or resume")
    p.add_argument(
        "--set",
        dest="options",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="algorithm option (repeatable); see --list-options",
    )
    p.add_argument("--list-options", action="store_true", help="print the algorithm's options and exit")
    p.add_argument("--steps", type=int, default=None, help="gradient steps (default: trainer default)")
    p.add_argument("--batch-size", type=int, default=None, help="B, population segments per batch")
    p.add_argument("--lr", type=float, default=None, help="learning rate")
    p.add_argument("--checkpoint-every", type=int, default=None, help="checkpoint every this many steps")
    add_loop_arguments(p, seed_help="training seed")
    p.add_argument(
        "--force", action="store_true", help="start even when a training batch exceeds the memory available"
    )
    p.add_argument("--bf16", action="store_true", help="bfloat16 autocast of forward and loss (GPUs)")
    p.add_argument("--deterministic", action="store_true",
                   help="deterministic kernels only: a resumed CUDA run equals an uninterrupted one (slower)")
    p.add_argument("--wandb", action="store_true", help="also log to Weights & Biases (extra: wandb)")
    p.set_defaults(func=run)


def add_loop_arguments(p: argparse.ArgumentParser, seed_help: str) -> None:
    """Options of every command that runs the training loop: seed, device, progress, verify, threads."""
    p.add_argument("--seed", type=int, default=0, help=seed_help)
    p.add_argument("--device", default="auto", help="torch device (auto, cpu, cuda)")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    p.add_argument("--no-verify", action="store_true",
                   help="load the dataset without checking its digest and checksums (trusted files only)")
    p.add_argument("--threads", type=int, default=None, help=THREADS_HELP)


def parse_options(items: list[str]) -> dict[str, Any]:
    """``["beta=1.0", "m_range=[16, 64]"]`` -> ``{"beta": 1.0, "m_range": [16, 64]}`` (YAML values)."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"option {item!r} is not KEY=VALUE")
        key = key.strip().replace("-", "_")
        if key in out:
            raise ValueError(f"option {key!r} given twice")
        try:
            out[key] = yaml.safe_load(value)
        except yaml.YAMLError as exc:
            raise ValueError(f"option {item!r}: cannot parse the value ({type(exc).__name__})") from None
    return out


def run(args: argparse.Namespace) -> int:
    from mfdiffuser.algos.base import algo_module
    from mfdiffuser.algos.run import field_docs, train
    from mfdiffuser.algos.trainer import TrainerConfig, TrainingInterrupted
    from mfdiffuser.cli import interrupted_message
    from mfdiffuser.utils import check_not_dangling, seed_everything, set_threads

    module = algo_module(args.algo)
    if args.list_options:
        docs = field_docs(module.Config)
        for f in dataclasses.fields(module.Config):
            factory = cast(Callable[[], Any], f.default_factory)
            default = f.default if f.default is not dataclasses.MISSING else factory()
            print(f"{f.name} = {default!r}\n    {docs.get(f.name, '')}")
        return 0
    if not args.dataset or not args.out:
        raise ValueError("--dataset and --out are required (or --list-options)")
    check_not_dangling(args.out)
    if args.wandb:
        from mfdiffuser.tracking import import_wandb

        import_wandb()  # a missing package fails before anything is written
    trainer_args = {
        "seed": args.seed,
        "device": args.device,
        "progress": not args.no_progress,
        "bf16": args.bf16,
        "deterministic": args.deterministic,
        "wandb": args.wandb,
    }
    for name in ("steps", "batch_size", "lr", "checkpoint_every"):
        if getattr(args, name) is not None:
            trainer_args[name] = getattr(args, name)
    seed_everything(args.seed)
    options = parse_options(args.options)
    print(set_threads(args.threads).describe())
    trainer = TrainerConfig(**trainer_args)
    try:
        result = train(
            args.algo, args.dataset, args.out, options, trainer, verify=not args.no_verify, force=args.force
        )
    except TrainingInterrupted as exc:
        saved = f"saved step {exc.step} of {exc.total}" if exc.step is not None else "no checkpoint yet"
        sys.stderr.write(interrupted_message("train", saved) + "\n")
        return 128 + exc.signum

    if args.steps is not None and result.step > args.steps:
        print(f"note: {result.run_dir} was already trained for {result.step} > --steps {args.steps} steps")
    print(f"trained {args.algo} for {result.step} steps -> {result.run_dir}")
    return 0
