"""``mfd sweep``: run an experiment grid (benchmark x quality x N x method x seed) as Ray tasks."""

from __future__ import annotations

import argparse


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "sweep",
        help="run an experiment grid on a local Ray or a cluster (resumable)",
        description=(
            "Run every cell of a YAML grid as a Ray task: datasets once, then train and evaluate each "
            "cell, storing one JSON record per cell. Rerunning skips finished cells."
        ),
    )
    p.add_argument("spec", help="grid YAML file, e.g. experiments/main.yaml")
    p.add_argument("--results", default=None, help="results directory (default: results/<grid name>)")
    p.add_argument("--data-dir", default=None, help="dataset directory (default: <results>/datasets)")
    p.add_argument(
        "--address", default=None, help="Ray cluster to join ('auto' or host:port); default: a local Ray"
    )
    p.add_argument(
        "--connect-timeout",
        type=float,
        default=30.0,
        metavar="SECONDS",
        help="give up joining the --address cluster after this long (default 30)",
    )
    p.add_argument("--num-cpus", type=int, default=None, help="CPUs of the local Ray (default: all)")
    p.add_argument(
        "--nice",
        type=int,
        default=None,
        metavar="N",
        help=(
            "run the datasets and cells at niceness N (0-19, 19 the lowest priority) on every node; "
            "use this rather than `nice mfd sweep`, under which a local Ray may not start on a busy "
            "machine"
        ),
    )
    p.add_argument(
        "--only",
        action="append",
        default=[],
        metavar="KEY=V1,V2",
        help="run a subset: benchmark, quality, method or seed in the values (repeatable, all must match)",
    )
    p.add_argument("--dry-run", action="store_true", help="list the cells and their status, run nothing")
    p.add_argument(
        "--estimate",
        action="append",
        default=[],
        metavar="STORE",
        help=(
            "with --dry-run: estimate the unfinished cells' time from the timings of the finished records "
            "in STORE (repeatable; e.g. this grid's own results or a tuning store)"
        ),
    )
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from mfdiffuser.experiments.grid import parse_grid, select_cells
    from mfdiffuser.experiments.runner import run_grid
    from mfdiffuser.experiments.store import FINISHED, ResultStore
    from mfdiffuser.utils import check_nice

    if args.num_cpus is not None and args.num_cpus < 1:
        raise ValueError(f"--num-cpus must be >= 1, got {args.num_cpus}")
    check_nice(args.nice)
    if not 0 < args.connect_timeout < float("inf"):
        raise ValueError(f"--connect-timeout must be a positive finite number, got {args.connect_timeout:g}")
    if args.dry_run:
        from mfdiffuser.utils import check_dir_target

        grid = parse_grid(args.spec)
        results = Path(args.results or grid.spec.get("results") or Path("results") / grid.name)
        check_dir_target(results, "the results directory")
        if args.data_dir is not None:
            check_dir_target(args.data_dir, "the datasets directory")
        if args.address is not None:
            from mfdiffuser.raycluster import check_ray_address

            check_ray_address(args.address)
        store = ResultStore(results)
        cells = select_cells(grid.cells, args.only)
        done: dict[str, list[int] | None] = {}
        for cell in cells:
            rec = store.read(cell.record_ids[-1])  # the last budget's record, if any
            status = "todo"
            if rec is not None:
                status = rec["status"] if rec.get("fingerprint") == cell.fingerprint else "stale"
            done[cell.id] = (  # None: finished; else the budgets already recorded
                None
                if status in FINISHED
                else [b for b in cell.budgets[:-1] if store.is_finished(cell.record_id(b), cell.fingerprint)]
            )
            print(f"{status:8s} {cell.id}")
        print(
            f"{len(cells)} of {len(grid.cells)} cells, {len(grid.datasets())} datasets, "
            f"{grid.split} split -> {results}"
        )
        if args.estimate:
            import os

            from mfdiffuser.experiments.estimate import estimate_grid, estimate_table, gather

            refs = []
            for ref in args.estimate:
                check_dir_target(ref, "the --estimate store")
                if not (Path(ref) / "cells").is_dir():
                    raise ValueError(f"--estimate: {ref} is no results store (it has no cells/ directory)")
                refs.extend(ResultStore(ref).records())
            rates = gather(refs)
            print(f"rates from {rates.records} finished records in {', '.join(args.estimate)}")
            print(estimate_table(estimate_grid(cells, done, rates), args.num_cpus or os.cpu_count() or 1))
        return 0
    if args.estimate:
        raise ValueError("--estimate only sizes a grid: use it with --dry-run")
    summary = run_grid(
        args.spec,
        args.results,
        address=args.address,
        num_cpus=args.num_cpus,
        data_dir=args.data_dir,
        progress=not args.no_progress,
        only=args.only,
        connect_timeout=args.connect_timeout,
        nice=args.nice,
    )
    print(
        f"grid: {summary.total} cells: {summary.done} done, {summary.skipped} skipped (budget), "
        f"{summary.failed} failed, {summary.skipped_existing} already finished "
        f"({summary.seconds:.1f} s) -> {summary.results_dir}"
    )
    for cell_id, err in summary.failures.items():
        print(f"  failed {cell_id}: {err}")
    return 1 if summary.failed else 0
