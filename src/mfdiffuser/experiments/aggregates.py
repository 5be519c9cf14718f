"""Aggregates of a report across rows: IQM and mean, and the probability of improvement.

The statistics are ``rliable``'s (:mod:`mfdiffuser.eval.stats`); this module picks the row sets
(medium and mixed data at N >= 1,000, the product's target rows, all rows) and formats them; the
performance profiles over the same sets are drawn by :func:`~mfdiffuser.experiments.plots.plot_profiles`.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from typing import NamedTuple, cast

import numpy as np

from mfdiffuser.eval.stats import (
    Aggregate,
    Interval,
    aggregates,
    common_runs,
    probability_of_improvement,
)
from mfdiffuser.experiments.results import (
    CORE_QUALITIES,
    TARGET_MIN_N,
    TARGET_QUALITIES,
    Results,
    Row,
    method_label,
)
from mfdiffuser.experiments.tables import format_interval, metric_rows


class RowSet(NamedTuple):
    """Rows of the score table that an aggregate runs over."""

    title: str
    rows: list[Row]


def row_sets(res: Results) -> list[RowSet]:
    """Row sets of the aggregates, each listed once.

    Medium and mixed data at N >= 1,000 (the comparison's core, where a grid may train more seeds),
    the product's target rows (medium, mixed and random data at N >= 1,000), and all rows of scores.

    The bootstrap needs the same training seeds on every row of a set, so a set with rows of fewer
    seeds (3 on random data against 5 on medium) aggregates those seeds only; the first set keeps all.
    """
    rows = [(b, q, n) for b, q, n, _ in metric_rows(res, "score")]
    sets = [
        RowSet(
            f"{', '.join(qs)} data at N ≥ {TARGET_MIN_N:,}",
            [r for r in rows if r[1] in qs and r[2] >= TARGET_MIN_N],
        )
        for qs in (CORE_QUALITIES, TARGET_QUALITIES)
    ]
    out: list[RowSet] = []
    for rs in [*sets, RowSet("all rows", rows)]:
        if rs.rows and all(rs.rows != kept.rows for kept in out):
            out.append(rs)
    return out


class ScoreMatrices(NamedTuple):
    """Per method, its ``[R, T]`` normalized scores on a set of rows, and the methods left out, why."""

    scores: dict[str, np.ndarray]
    left_out: dict[str, str]


def score_matrices(res: Results, rows: Sequence[Row], methods: Sequence[str]) -> ScoreMatrices:
    """The methods with entries on every row, each as training seeds x rows (seeds present in every row)."""
    scores, left_out = {}, {}
    for m in methods:
        per_row = [res.seed_scores(row, m) for row in rows]
        have = sum(bool(r) for r in per_row)
        if have < len(rows):
            left_out[m] = f"entries on {have} of {len(rows)} rows"
            continue
        mat, seeds = common_runs(per_row)
        if not seeds:
            left_out[m] = "no training seed with entries on every row"
            continue
        scores[m] = mat
    return ScoreMatrices(scores, left_out)


def rows_text(rows: Sequence[Row]) -> str:
    """The rows as text, grouped by benchmark: ``gaussian-squeeze: medium 1,000, mixed 1,000; ...``."""
    by_bench: dict[str, list[str]] = defaultdict(list)
    for b, q, n in rows:
        by_bench[b].append(f"{q} {n:,}")
    return "; ".join(f"{b}: " + ", ".join(v) for b, v in by_bench.items())


def set_aggregates(res: Results, rowset: RowSet) -> tuple[ScoreMatrices, dict[str, Aggregate]]:
    """The score matrices of ``rowset`` and their IQM and mean per method (computed once per report)."""
    key = ("aggregates", rowset.title)
    if key not in res.cache:
        mats = score_matrices(res, rowset.rows, res.methods)
        res.cache[key] = (mats, aggregates(mats.scores) if mats.scores else {})
    return cast("tuple[ScoreMatrices, dict[str, Aggregate]]", res.cache[key])


def improvement(res: Results, rowset: RowSet, method: str) -> tuple[int, Interval | None]:
    """P(MF-Diffuser > ``method``) over the rows of ``rowset`` both have entries on, and how many rows."""
    key = ("improvement", rowset.title, method)
    if key not in res.cache:
        ours = cast(str, res.diffuser)
        rows = [r for r in rowset.rows if res.seed_scores(r, method) and res.seed_scores(r, ours)]
        mats = score_matrices(res, rows, [ours, method]).scores
        poi = probability_of_improvement(mats[ours], mats[method]) if rows and len(mats) == 2 else None
        res.cache[key] = (len(rows), poi)
    return cast("tuple[int, Interval | None]", res.cache[key])


def aggregate_table(res: Results, rowset: RowSet) -> str:
    """IQM and mean of normalized score over ``rowset`` per method, with stratified bootstrap intervals."""
    if not rowset.rows:
        return ""
    mats, aggs = set_aggregates(res, rowset)
    if not aggs:
        return ""
    lines = ["| method | seeds x rows | IQM [95% CI] | mean [95% CI] |", "|---|---:|---:|---:|"]
    for m, agg in aggs.items():
        r, t = mats.scores[m].shape
        iqm, mean = format_interval(agg.iqm, 1, False), format_interval(agg.mean, 1, False)
        lines.append(f"| {method_label(res, m)} | {r} x {t} | {iqm} | {mean} |")
    if mats.left_out:
        why = "; ".join(f"{m} ({why})" for m, why in mats.left_out.items())
        lines += ["", f"Not aggregated: {why}."]
    return "\n".join(lines)


def improvement_table(res: Results, sets: Sequence[RowSet]) -> str:
    """P(MF-Diffuser > method) per other method and row set, over the rows both have entries on."""
    ours = res.diffuser
    if ours is None or not any(rs.rows for rs in sets):
        return ""
    head = "| method | " + " | ".join(f"{rs.title}: rows | P(improvement) [95% CI]" for rs in sets) + " |"
    lines = [head, "|---|" + "---:|---:|" * len(sets)]
    for m in res.methods:
        if m == ours:
            continue
        entries = []
        for rs in sets:
            n_rows, poi = improvement(res, rs, m)
            entries += [str(n_rows), "–" if poi is None else format_interval(poi, 2, False)]
        lines.append(f"| {method_label(res, m)} | " + " | ".join(entries) + " |")
    return "\n".join(lines)


def best_baseline_line(res: Results, rowset: RowSet) -> str:
    """The trained baseline with the highest IQM on ``rowset`` and MF-Diffuser's improvement over it."""
    ours = res.diffuser
    if ours is None or not rowset.rows:
        return ""
    _, aggs = set_aggregates(res, rowset)
    baselines = {m: a for m, a in aggs.items() if m in res.trained and m != ours}
    if not baselines:
        return ""
    best = max(baselines, key=lambda m: baselines[m].iqm.mean)
    n_rows, poi = improvement(res, rowset, best)
    if poi is None:
        return ""
    return (
        f"Best baseline on {rowset.title} by IQM (of those aggregated): {best} "
        f"({format_interval(baselines[best].iqm, 1, False)}); "
        f"P({ours} > {best}) = {format_interval(poi, 2, False)} "
        f"over {n_rows} rows."
    )


