"""``mfd reproduce``: rerun finished cells of a results store from its grid and compare the records."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mfdiffuser.experiments.reproduce import Outcome

DEFAULT_CELLS = 3
SHOWN_DIFFERENCES = 3
"""Differing fields listed per cell in the table (``--out`` has them all)."""


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "reproduce",
        help="rerun finished cells of a results store and check that their records repeat",
        description=(
            "Draw finished records of a results store at random (or by --only), rerun each from "
            "scratch from the store's grid.yaml (dataset, training to the record's budget, "
            "evaluation, as a sweep runs a cell) and compare the new record with the stored one "
            "field by field, apart from timings, memory, latency, hosts, paths and software "
            "versions (shown apart). Exits 0 when every record is reproduced, 1 when one differs."
        ),
    )
    p.add_argument("store", help="results store holding grid.yaml and cells/, e.g. docs/results/tune/store")
    p.add_argument(
        "--cells",
        type=int,
        default=None,
        help=f"records to draw at random (default {DEFAULT_CELLS}; with --only: every record it matches)",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the random draw (default 0)")
    p.add_argument(
        "--only",
        action="append",
        default=[],
        metavar="KEY=V1,V2",
        help="draw from the records whose benchmark, quality, method, seed or budget is in the values "
        "(repeatable, all must match)",
    )
    p.add_argument(
        "--work",
        default=None,
        help="rerun in this new or empty directory and keep it (default: a temporary one, removed after)",
    )
    p.add_argument("--out", default=None, help="also write the comparison as JSON here")
    p.add_argument("--dry-run", action="store_true", help="list the records the draw chooses, rerun nothing")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars of long steps")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from rich.console import Console
    from rich.table import Table

    from mfdiffuser.algos.base import write_json
    from mfdiffuser.experiments.reproduce import plan, reproduce_store
    from mfdiffuser.utils import check_not_dangling

    if args.out is not None:
        check_not_dangling(args.out)
        if Path(args.out).is_dir():
            raise ValueError(f"--out {args.out} is a directory; give a file name")
    cells = args.cells if args.cells is not None or args.only else DEFAULT_CELLS
    if args.dry_run:
        chosen = plan(args.store, cells=cells, seed=args.seed, only=args.only)
        for target in chosen.chosen:
            print(target.id)
        print(f"{len(chosen.chosen)} of {len(chosen.pool)} finished records (seed {args.seed})")
        return 0

    def report(i: int, n: int, outcome: Outcome) -> None:
        print(f"[{i}/{n}] {outcome.id}: {verdict(outcome)} ({outcome.seconds:.1f} s)", flush=True)

    result = reproduce_store(
        args.store,
        cells=cells,
        seed=args.seed,
        only=args.only,
        work=args.work,
        progress=not args.no_progress,
        echo=lambda line: print(line, flush=True),
        on_outcome=report,
    )
    table = Table(title=f"reproduction of {len(result.outcomes)} records of {args.store} (seed {args.seed})")
    for name in ("cell", "reproduced", "first differing fields (recorded -> now)"):
        table.add_column(name)
    for outcome in result.outcomes:
        if outcome.error is not None:
            detail = f"rerun failed: {outcome.error}"
        else:
            shown = [f"{d.path}: {short(d.recorded)} -> {short(d.now)}" for d in outcome.differences]
            more = len(shown) - SHOWN_DIFFERENCES
            detail = "\n".join(shown[:SHOWN_DIFFERENCES] + ([f"... and {more} more"] if more > 0 else []))
        table.add_row(outcome.id, "yes" if outcome.identical else "NO", detail)
    Console(width=160).print(table)
    versions = {f"{d.path}: {short(d.recorded)} -> {short(d.now)}"
                for o in result.outcomes for d in o.versions}
    for line in sorted(versions):
        print(f"note: recorded with other software (not compared): {line}")
    if args.out is not None:
        write_json(Path(args.out), {**result.as_dict(), "command": command(args)})
        print(f"comparison: {args.out}")
    good = sum(o.identical for o in result.outcomes)
    print(f"{good} of {len(result.outcomes)} records reproduced")
    return 0 if result.reproduced else 1


def verdict(outcome: Outcome) -> str:
    """``identical``, ``differs in N fields (first: path)`` or ``rerun failed: error``."""
    if outcome.error is not None:
        return f"rerun failed: {outcome.error}"
    if outcome.identical:
        return "identical"
    n = len(outcome.differences)
    return f"differs in {n} field{'s' if n > 1 else ''} (first: {outcome.differences[0].path})"


def short(value: Any, width: int = 40) -> str:
    """A value as JSON-like text, cut to ``width`` characters."""
    import json

    text = json.dumps(value, default=str)
    return text if len(text) <= width else text[: width - 3] + "..."


def command(args: argparse.Namespace) -> str:
    """The ``mfd reproduce`` command line that makes the same draw (for the JSON comparison)."""
    import shlex

    words = ["mfd", "reproduce", args.store]
    if args.cells is not None:
        words += ["--cells", str(args.cells)]
    words += ["--seed", str(args.seed)]
    for item in args.only:
        words += ["--only", item]
    if args.work is not None:
        words += ["--work", args.work]
    if args.out is not None:
        words += ["--out", args.out]
    return shlex.join(words)
