"""``mfd select``: choose each method's settings and training budget from a validation grid's store."""

from __future__ import annotations

import argparse


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "select",
        help="select settings and budgets per method and benchmark from a tuning (validation) store",
        description=(
            "Read the records of a validation grid (e.g. results/tune from experiments/tune.yaml), "
            "pick per method and benchmark the tuning configuration with the best mean validation "
            "score and the smallest training budget within the best's 95% interval, print the "
            "learning curves and write the choices with their reasons as YAML, for a grid's "
            "`selected:` key. Refuses test-split records."
        ),
    )
    p.add_argument("results", help="results directory of a validation grid, e.g. results/tune")
    p.add_argument("--out", default="experiments/selected.yaml", help="selection file to write")
    p.add_argument("--plot", default=None, help="also write the learning curves as a PNG here")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from rich.console import Console
    from rich.table import Table

    from mfdiffuser.experiments.store import ResultStore
    from mfdiffuser.experiments.tune import plot_learning_curves, select, write_selection

    root = Path(args.results)
    if not root.is_dir():
        raise ValueError(f"{root} is not a results directory")
    records = ResultStore(root).records()
    choices = select(records)
    budgets = sorted({c.budget for ch in choices for c in ch.candidates})
    table = Table(title=f"validation score by training steps ({root})")
    for name in ("method", "benchmark", "config"):
        table.add_column(name)
    for b in budgets:
        table.add_column(f"{b:,}", justify="right")
    for ch in choices:
        for config in sorted({c.config for c in ch.candidates}):
            row = {c.budget: c for c in ch.candidates if c.config == config}
            cells = []
            for b in budgets:
                c = row.get(b)
                mark = "*" if c is not None and c == ch.chosen else ""
                cells.append("" if c is None else f"{c.score.mean:.1f}{mark}")
            table.add_row(ch.method, ch.benchmark, config or "-", *cells)
    Console().print(table)
    path = write_selection(choices, args.out, {"results": str(root), "records": len(records)})
    print(f"selected settings (* in the table): {path}")
    if args.plot:
        print(f"learning curves: {plot_learning_curves(choices, args.plot)}")
    return 0
