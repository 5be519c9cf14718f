"""``mfd report``: aggregates, Markdown and LaTeX tables and PNG plots from a grid's results store."""

from __future__ import annotations

import argparse


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "report",
        help="aggregates, tables (Markdown, LaTeX) and plots (PNG) of a results store",
        description=(
            "Aggregate the cell records of a results directory into report.md, tables.tex and PNG "
            "plots: IQM, mean, probability of improvement and performance profiles across rows first "
            "(rliable, stratified bootstrap), then per-row tables with bootstrap intervals and the "
            "row's winners in bold (paired comparison on shared evaluation episodes)."
        ),
    )
    p.add_argument("results", help="results directory written by `mfd sweep`, e.g. results/main")
    p.add_argument("--out", default=None, help="output directory (default: reports/<results name>)")
    p.add_argument(
        "--skip-unreadable",
        action="store_true",
        help="report the readable records when some record files are unreadable (default: refuse)",
    )
    p.add_argument(
        "--preface",
        default=None,
        metavar="MD",
        help="a Markdown file written by hand (how the grid ran, what its numbers say), placed after "
        "the report's opening paragraph",
    )
    p.add_argument(
        "--page",
        default=None,
        metavar="PATH",
        help="also write the report to PATH (e.g. RESULTS.md), its plots linked relative to PATH",
    )
    p.add_argument(
        "--pair",
        nargs=2,
        action="append",
        default=[],
        metavar=("A", "B"),
        help="also tabulate method A minus method B per row, paired on shared episodes (repeatable)",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from mfdiffuser.experiments.report import build_report, unreadable_message
    from mfdiffuser.experiments.results import REPORT_KEYS
    from mfdiffuser.experiments.store import ResultStore
    from mfdiffuser.utils import check_dir_target

    out = Path(args.out) if args.out else Path("reports") / Path(args.results).name
    check_dir_target(out, "--out")
    if args.preface is not None and not Path(args.preface).is_file():
        raise ValueError(f"--preface {args.preface}: no such file")
    if args.page is not None:
        if Path(args.page).is_dir():
            raise ValueError(f"--page {args.page}: is a directory; give the page's file name")
        check_dir_target(Path(args.page).parent, "--page")
    path = build_report(
        args.results,
        out,
        skip_unreadable=args.skip_unreadable,
        preface=args.preface,
        page=args.page,
        pairs=[(a, b) for a, b in args.pair],
    )
    store = ResultStore(args.results)
    unreadable = store.scan(REPORT_KEYS).unreadable
    if unreadable:
        print(f"skipped {unreadable_message(store.cells_dir, unreadable)}")
    print(f"report: {path}" + (f" and {args.page}" if args.page else ""))
    return 0
