"""``mfd report``: Markdown and LaTeX tables and PNG plots from a grid's results store."""

from __future__ import annotations

import argparse


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "report",
        help="tables (Markdown, LaTeX) and plots (PNG) of a results store",
        description=(
            "Aggregate the cell records of a results directory over seeds (mean and 95% CI) into "
            "report.md, tables.tex and PNG plots; the best method per row is bold."
        ),
    )
    p.add_argument("results", help="results directory written by `mfd sweep`, e.g. results/main")
    p.add_argument("--out", default=None, help="output directory (default: reports/<results name>)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from mfdiffuser.experiments.report import build_report

    out = Path(args.out) if args.out else Path("reports") / Path(args.results).name
    path = build_report(args.results, out)
    print(f"report: {path}")
    return 0
