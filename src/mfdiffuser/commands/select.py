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
    p.add_argument(
        "--partial",
        action="store_true",
        help="select even though records of the store's grid are missing (methods then differ in tuning)",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from rich.console import Console
    from rich.table import Table

    from mfdiffuser.experiments.store import ResultStore
    from mfdiffuser.experiments.tune import plot_learning_curves, select, write_selection
    from mfdiffuser.utils import check_not_dangling

    check_not_dangling(args.out)
    if args.plot:
        check_not_dangling(args.plot, "--plot")
    root = Path(args.results)
    if not root.is_dir():
        raise ValueError(f"{root} is not a results directory")
    records = ResultStore(root).records()
    missing = missing_records(root, records)
    if missing and not args.partial:
        raise ValueError(
            f"{len(missing)} trained records of the grid in {root / 'grid.yaml'} are missing "
            f"(e.g. {missing[0]}): finish its sweep, or pass --partial to select from what is there"
        )
    if missing:
        print(f"note: selecting with {len(missing)} trained records of the grid missing (--partial)")
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
    source = {"results": str(root), "records": len(records), **({"missing": len(missing)} if missing else {})}
    path = write_selection(choices, args.out, source)
    print(f"selected settings (* in the table): {path}")
    if args.plot:
        print(f"learning curves: {plot_learning_curves(choices, args.plot)}")
    return 0


def missing_records(root: object, records: list[dict[str, object]]) -> list[str]:
    """Ids of the trained records the store's ``grid.yaml`` asks for that are not finished in it.

    Every method must be selected over the same tuning budget: a store whose sweep has not finished
    would give some methods fewer configurations or budgets than others. A store without a
    ``grid.yaml`` has nothing to check against (an empty list).
    """
    from pathlib import Path

    from mfdiffuser.experiments.grid import parse_grid

    spec = Path(str(root)) / "grid.yaml"
    if not spec.exists():
        return []
    finished = {str(r.get("id")) for r in records if r.get("status") in ("done", "skipped")}
    wanted = [i for c in parse_grid(spec).cells if c.algo is not None for i in c.record_ids]
    return [i for i in wanted if i not in finished]
