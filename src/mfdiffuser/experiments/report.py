"""Reports of a results store: aggregates across rows first, then per-row tables and PNG plots.

Every statistic comes from :mod:`mfdiffuser.eval.stats`. Each cell record holds one training seed's
per-episode values at every evaluation N; :mod:`~mfdiffuser.experiments.results` indexes them,
:mod:`~mfdiffuser.experiments.aggregates`, :mod:`~mfdiffuser.experiments.tables` and
:mod:`~mfdiffuser.experiments.plots` format them, and this module writes the page.

* Across rows (benchmark x quality x N) of normalized score: IQM and mean with stratified bootstrap
  intervals, the probability that MF-Diffuser improves on each other method, and performance profiles
  (``rliable``), over the medium and mixed rows at N >= 1,000, the rows of the product's target
  (medium, mixed and random data at N >= 1,000) and all rows.
* Per row: each method's mean over training seeds with a two-level bootstrap interval (training seeds,
  then each drawn seed's episodes); the winners (bold) are the best mean and every method a paired
  comparison on the shared evaluation episodes does not separate from it, or, where the records name
  no shared episodes, every method whose interval overlaps the best one's.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from mfdiffuser.errors import MfdError
from mfdiffuser.experiments.aggregates import (
    aggregate_table,
    best_baseline_line,
    improvement_table,
    row_sets,
    rows_text,
)
from mfdiffuser.experiments.plots import plot_bars, plot_profiles, plot_vs_n
from mfdiffuser.experiments.results import METRICS, REPORT_KEYS, Results
from mfdiffuser.experiments.store import ResultStore, Unreadable
from mfdiffuser.experiments.tables import (
    cost_table,
    difference_table,
    exploitability_table,
    latex_table,
    markdown_table,
    not_evaluated_table,
    pairs_table,
    status_table,
    summary_table,
    sweep_table,
)


def _drop_stale(
    records: list[dict[str, Any]], spec_path: Path | None
) -> tuple[list[dict[str, Any]], str]:
    """Records whose cell is in the grid at ``spec_path`` with the same fingerprint, and a note on the rest.

    A record made before its cell's configuration changed (or of a cell no longer in the grid) would
    mix two configurations in one table; ``mfd sweep`` reruns such cells, the report leaves them out.
    The grid is read from its file, so a ``selected:`` file beside it is found there.
    """
    if spec_path is None:
        return records, ""
    from mfdiffuser.experiments.grid import parse_grid

    try:
        current = {c.id: c.fingerprint for c in parse_grid(spec_path).cells}
    except (ValueError, MfdError) as exc:
        return records, f"Records not checked against `grid.yaml`: it does not expand here ({exc})."
    stale = sorted(r["id"] for r in records if current.get(r["id"]) != r.get("fingerprint"))
    if not stale:
        return records, ""
    shown = ", ".join(stale[:12]) + (f" and {len(stale) - 12} more" if len(stale) > 12 else "")
    plural = "s" if len(stale) > 1 else ""
    note = (
        f"{len(stale)} record{plural} left out: the configuration differs from `grid.yaml` or the cell "
        f"is no longer in it (`mfd sweep` reruns such cells): {shown}."
    )
    dropped = set(stale)
    return [r for r in records if r["id"] not in dropped], note


def unreadable_message(where: Path, unreadable: Sequence[Unreadable]) -> str:
    """One line naming every unreadable record file of a store and why it is unreadable."""
    named = ", ".join(f"{u.path.name} ({u.reason})" for u in unreadable)
    plural = "s" if len(unreadable) > 1 else ""
    return f"{len(unreadable)} unreadable record{plural} in {where}: {named}"


def _protocol_note(res: Results) -> str:
    """What the records say about their split and evaluation episodes."""
    splits = sorted({str(r["split"]) for r in res.records if r.get("split")})
    unsplit = sum(not r.get("split") for r in res.records)
    named = sum(
        isinstance(at_n, dict) and "episode_seeds" in at_n
        for r in res.records
        for at_n in (r.get("metrics") or {}).values()
    )
    parts = []
    if splits:
        parts.append(f"Split: {', '.join(splits)}" + (f" ({unsplit} records name none)." if unsplit else "."))
        if len(splits) > 1 or unsplit:
            parts.append("Records of different splits are mixed in these tables.")
    else:
        parts.append(
            "The records name no split (written before validation and test episodes were kept apart)."
        )
    if not named:
        parts.append(
            f"{'They' if not splits else 'The records'} name no evaluation episodes"
            f"{' either' if not splits else ''}, so no comparison is paired: every row's winners are "
            "decided by overlapping intervals (column `winners by`)."
        )
    seeds = [len(recs) for recs in res.by_key.values()]
    if seeds and min(seeds) < 5:
        span = f"{min(seeds)}" if min(seeds) == max(seeds) else f"{min(seeds)} to {max(seeds)}"
        parts.append(
            f"Training seeds per (benchmark, quality, method): {span}; a bootstrap over fewer than 5 "
            "seeds understates the spread between seeds, so read narrow intervals with care."
        )
    return " ".join(parts)


def build_report(
    results_dir: str | Path,
    out_dir: str | Path,
    *,
    skip_unreadable: bool = False,
    preface: str | Path | None = None,
    page: str | Path | None = None,
    pairs: Sequence[tuple[str, str]] = (),
) -> Path:
    """Write ``report.md``, ``tables.tex`` and PNG plots of a results store into ``out_dir``.

    Args:
        results_dir: the results store.
        out_dir: where the report goes (created).
        skip_unreadable: report the readable records of a store that also holds unreadable ones (the
            report names those), instead of refusing.
        preface: a Markdown file written by hand (how the grid was run, what the numbers say),
            placed after the report's opening paragraph, as it is.
        page: also write the report to this path (e.g. ``RESULTS.md``), its plots linked relative
            to the page's directory, so that one command regenerates a results page from a store.
        pairs: method pairs ``(a, b)`` whose paired differences ``a - b`` get a table of their own
            (variants compared two by two).

    Returns:
        Path of the Markdown report.

    A failure part-way (a full disk, an interrupt) removes ``out_dir`` again if this call created it;
    an existing ``out_dir`` keeps what it held, each file whole (every file is written atomically).

    Raises:
        FileNotFoundError: ``results_dir`` holds no readable cell records.
        MfdError: some record files are unreadable and ``skip_unreadable`` is False, or a pair names
            a method the store does not hold.
    """
    from mfdiffuser.utils import atomic_path, removed_on_failure

    text = ""
    if preface is not None:
        try:
            text = Path(preface).read_text().strip()
        except (OSError, UnicodeDecodeError) as exc:
            raise MfdError(f"--preface {preface}: cannot read it ({type(exc).__name__})") from None
    with removed_on_failure(out_dir, errors=(BaseException,)):
        head, body = _write_report(results_dir, out_dir, skip_unreadable, pairs)
        report = Path(out_dir) / "report.md"
        with atomic_path(report) as tmp:
            tmp.write_text(_page(head, text, body, ""))
    if page is not None:
        rel = Path(os.path.relpath(Path(out_dir).resolve(), Path(page).resolve().parent)).as_posix()
        with atomic_path(page) as tmp:
            tmp.write_text(_page(head, text, body, "" if rel == "." else rel + "/"))
    return report


def _page(head: list[str], preface: str, body: list[str], plots_at: str) -> str:
    """The report's Markdown: its opening, the preface, the rest with plots linked under ``plots_at``."""
    if plots_at:
        body = [_PLOT_LINK.sub(lambda m: f"![{m[1]}]({plots_at}{m[2]})", line) for line in body]
    return "\n".join([*head, *(["", preface] if preface else []), *body]) + "\n"


_PLOT_LINK = re.compile(r"!\[([^\]]*)\]\(([^)/]+\.png)\)")
"""A plot the report links: ``![title](name.png)``, the file beside the report."""


def _write_report(
    results_dir: str | Path, out_dir: str | Path, skip_unreadable: bool, pairs: Sequence[tuple[str, str]] = ()
) -> tuple[list[str], list[str]]:
    """Write the plots and ``tables.tex``; return the report's Markdown lines: opening, and the rest."""
    store = ResultStore(results_dir)
    scan = store.scan(REPORT_KEYS)
    if scan.unreadable and not skip_unreadable:
        raise MfdError(
            unreadable_message(store.cells_dir, scan.unreadable)
            + " (pass --skip-unreadable to report the rest)"
        )
    records = scan.records
    if not records:
        raise FileNotFoundError(f"{results_dir}: no cell records (run `mfd sweep` first)")
    if any(r.get("budget") is not None for r in records):
        raise MfdError(
            f"{results_dir} is a tuning store (a record per configuration and training budget, which a "
            f"report would pool as seeds): `mfd select {results_dir} --plot curves.png` reads it"
        )
    spec_path = Path(results_dir) / "grid.yaml"
    spec = yaml.safe_load(spec_path.read_text()) if spec_path.is_file() else None
    spec = spec if isinstance(spec, dict) else None
    records, stale_note = _drop_stale(records, spec_path if spec is not None else None)
    res = Results(records, spec)
    missing = [m for pair in pairs for m in pair if m not in res.methods]
    if missing:
        raise MfdError(
            f"--pair: {results_dir} holds no method {missing[0]!r} (methods: {', '.join(res.methods)})"
        )
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)

    sets = row_sets(res)
    plots: list[tuple[str, Path | None]] = [
        ("Per-agent return vs N", plot_vs_n(res, "return", out / "return_vs_n.png", per_quality=True)),
        (
            "Normalized score per dataset quality",
            plot_bars(res, out / "score_by_quality.png", metric="score"),
        ),
        ("Exploitability", plot_bars(res, out / "exploitability.png", metric=None)),
        (
            "Plan latency vs N",
            plot_vs_n(res, "act_ms_max", out / "latency_vs_n.png", per_quality=False, log_y=True),
        ),
        ("Peak memory vs N", plot_vs_n(res, "peak_mem_mb", out / "memory_vs_n.png", per_quality=False)),
    ]
    profile = plot_profiles(res, sets, out / "performance_profile.png")
    skipped_note = (
        [
            "",
            f"Left out: {unreadable_message(store.cells_dir, scan.unreadable)}.",
        ]
        if scan.unreadable
        else []
    )
    md = [
        f"# Results: {res.name or Path(results_dir).name}",
        "",
        f"{len(records)} cells from `{results_dir}`. Normalized score = 100 (R − R_random) / "
        "(R_expert − R_random), with the references rolled out at each N. Intervals are 95% percentile "
        "bootstrap intervals. " + _protocol_note(res)
        + (
            f" Behaviour policies evaluated without training ({', '.join(sorted(res.references))}) are "
            "references: never bold."
            if res.references
            else ""
        ),
        *skipped_note,
        *(["", stale_note] if stale_note else []),
    ]
    head, md = md, [
        "",
        "## Aggregates over rows (normalized score)",
        "",
        "Each entry of a method is one training seed's mean score over its episodes on one row "
        "(benchmark x quality x N). IQM (the mean of the middle half of those entries) and mean with "
        "stratified bootstrap intervals (training seeds redrawn within each row), the probability "
        "of improvement and the performance profiles are those of the `rliable` library. A method "
        "is aggregated over a set of rows only if it has entries on all of them (with the training seeds "
        "present on every row).",
    ]
    for rs in sets:
        table = aggregate_table(res, rs)
        if table:
            md += ["", f"### IQM and mean: {rs.title}", "", f"{len(rs.rows)} rows: {rows_text(rs.rows)}.",
                   "", table]
    poi = improvement_table(res, sets)
    if poi:
        md += [
            "",
            f"### Probability of improvement of {res.diffuser}",
            "",
            f"P({res.diffuser} > method): the probability that a training seed of {res.diffuser} scores "
            "above one of the method on a row, averaged over the rows where both have entries (how many: "
            "`rows`); 0.5 is a tie.",
            "",
            poi,
        ]
        best_line = best_baseline_line(res, sets[0])
        if best_line:
            md += ["", best_line]
    if profile is not None:
        md += [
            "",
            "### Performance profiles",
            "",
            "The fraction of (training seed, row) entries scoring above each threshold τ, with "
            "stratified bootstrap bands.",
            "",
            f"![Performance profiles]({profile.name})",
        ]
    md += [
        "",
        "## Cells",
        "",
        status_table(res),
    ]
    not_evaluated = not_evaluated_table(res)
    if not_evaluated:
        md += ["", "Not evaluated (`all`: the whole cell; `cells`: how many records):", "", not_evaluated]
    md += [
        "",
        "## Per row",
        "",
        "Entries: mean over training seeds [95% interval]. The interval redraws the training seeds with "
        "replacement and, for each drawn seed, its evaluation episodes with replacement (one draw for "
        "all seeds where they ran the same episodes); a percentile interval stays within the values, "
        "so latency, memory and exact exploitability are never drawn below zero (Ising's exploitability "
        "estimate can be negative). Bold: the row's winners, the best mean (lowest for exploitability, "
        "latency and memory) and every method not separated from it: `paired`, on the evaluation "
        "episodes both ran (the difference episode by episode, where each training seed ran a block of "
        "episodes of its own and seed s of both methods the same block, seeds then episodes redrawn; or "
        "one draw of episodes shared by both methods where every seed ran the same ones; separated if "
        "the interval of the difference excludes 0), or `intervals`, where the records share no "
        "episodes or their blocks do not pair one to one (separated if the two intervals do not "
        "overlap). `*`: some seeds failed or were skipped; an entry without an "
        "interval has one value.",
    ]
    summary = summary_table(res, "score")
    if summary:
        md += [
            "",
            "## Head to head (normalized score)",
            "",
            "Per trained method, over the rows (benchmark x quality x N) of the score table where it and "
            "at least one other trained method have entries: how often it is bold, and its mean minus the "
            "best other trained method's mean in the row, averaged over the rows (in brackets: how many).",
            "",
            summary,
        ]
    tex = []
    for metric, (title, _, _) in METRICS.items():
        table = markdown_table(res, metric)
        if table:
            md += ["", f"## {title}", "", table]
            tex += [latex_table(res, metric), ""]
        diffs = difference_table(res, metric) if metric == "score" else ""
        if diffs:
            md += [
                "",
                f"### Differences from {res.diffuser} (normalized score)",
                "",
                f"Each trained method's mean minus {res.diffuser}'s on the row, with the 95% interval of "
                "the paired comparison on the evaluation episodes both ran; bold where it excludes 0.",
                "",
                diffs,
            ]
    paired = pairs_table(res, pairs)
    if paired:
        md += [
            "",
            "## Paired differences (normalized score)",
            "",
            "Each pair's first method minus its second on the row, with the 95% interval of the paired "
            "comparison on the evaluation episodes both ran; bold where it excludes 0.",
            "",
            paired,
        ]
    expl = exploitability_table(res)
    if expl:
        md += [
            "",
            "## Exploitability",
            "",
            "At each method's largest evaluation N up to its `max_n`; methods measured at different N "
            "sit in different rows and are not compared. exact: mean-field exploitability of the "
            "measured policy table; estimate: see `mfdiffuser.eval.exploitability`.",
            "",
            expl,
        ]
    cost, core_hours, attempt_only = cost_table(res)
    if cost:
        caveat = (
            f" {attempt_only} records predate that log entry: for them it is the training done in the "
            "attempt that wrote the record, only loading the run where an earlier attempt had trained "
            "it (re-evaluated or resumed cells), so their method's figures are too low."
            if attempt_only
            else ""
        )
        md += [
            "",
            "## Compute",
            "",
            "Minutes per cell, `train + evaluation` (evaluation includes exploitability; in brackets: "
            f"cells), and core-hours per method: {core_hours:.1f} core-hours in all. Training time is "
            f"the run's own, from its training log, whichever attempt trained it.{caveat}",
            "",
            cost,
        ]
        sweeps, wall_h = sweep_table(store.sweeps())
        if sweeps:
            md += [
                "",
                f"Wall time: the sweeps that ran cells in this store took {wall_h:.2f} h in all (datasets, "
                "references and cells, including cells whose records were later replaced).",
                "",
                sweeps,
            ]
    md += ["", "## Plots", ""]
    for title, path in plots:
        if path is not None:
            md += [f"![{title}]({path.name})", ""]
    from mfdiffuser.utils import atomic_path

    with atomic_path(out / "tables.tex") as tmp:
        tmp.write_text("\n".join(tex))
    return head, md
