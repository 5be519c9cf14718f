"""Reports of a results store: aggregates across rows first, then per-row tables and PNG plots.

Every statistic comes from :mod:`mfdiffuser.eval.stats`; this module picks the records' values and
formats them. Each cell record holds one training seed's per-episode values at every evaluation N.

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

import math
import os
import re
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple, cast

import numpy as np
import yaml

from mfdiffuser.errors import MfdError
from mfdiffuser.eval.stats import (
    Aggregate,
    Interval,
    RowVerdict,
    Samples,
    aggregates,
    bootstrap_mean,
    common_runs,
    compare,
    mean_over_rows,
    performance_profiles,
    probability_of_improvement,
    row_winners,
)
from mfdiffuser.experiments.store import RECORD_KEYS, ResultStore, Unreadable
from mfdiffuser.utils import save_figure

QUALITY_ORDER = ("expert", "medium", "mixed", "random")
TARGET_QUALITIES = ("medium", "mixed", "random")
TARGET_MIN_N = 1000
"""The product's target rows: these dataset qualities at N of at least this."""
CORE_QUALITIES = ("medium", "mixed")
"""The qualities that carry the comparison (a grid may train more seeds on them)."""
REPORT_KEYS = (*RECORD_KEYS, "benchmark", "quality", "method")
"""Keys a record needs to appear in a report."""

# metric -> (title, higher is better, decimals)
METRICS: dict[str, tuple[str, bool, int]] = {
    "score": ("Normalized score", True, 1),
    "return": ("Per-agent return", True, 3),
    "win_rate": ("Battle win rate", True, 2),
    "kill_ratio": ("Battle kill ratio", True, 2),
    "survivors": ("Battle survivors (share of our team alive at the end)", True, 2),
    "order_parameter": ("Ising order parameter |m|", True, 3),
    "act_ms": ("Mean act latency (ms per step)", False, 2),
    "act_ms_max": ("Plan latency (ms, slowest act call: a replanning step)", False, 1),
    "peak_mem_mb": ("Peak memory of rollouts (MiB above baseline)", False, 1),
}


# Short axis labels of the plots.
PLOT_LABELS: dict[str, str] = {
    "score": "normalized score",
    "return": "per-agent return",
    "act_ms_max": "plan latency (ms)",
    "act_ms": "act latency (ms)",
    "peak_mem_mb": "peak memory (MiB)",
}


@dataclass(frozen=True)
class Agg:
    """Statistics over training seeds of one metric of one (benchmark, quality, N, method)."""

    stats: Interval | None
    status: str
    """``done``, ``partial`` (some seeds failed or were skipped), ``skipped``, ``failed``."""
    note: str = ""
    samples: Samples | None = None
    """The values the interval came from (per training seed, per episode)."""


def episode_values(at_n: Mapping[str, Any], metric: str) -> tuple[np.ndarray, np.ndarray | None] | None:
    """One record's values of ``metric`` at one N: ``([E] values, [E] episode seeds or None)``.

    Per-episode ``values`` where the record has them, else its single mean (or plain number); episode
    seeds where the record names them, aligned with the values: the metric's own ``episode_seeds`` (a
    metric that some episodes do not report lists only its own), else those of the N. Non-finite
    values are left out; None if nothing is left.
    """
    entry = at_n.get(metric)
    seeds: Any = None
    if isinstance(entry, dict):
        vals = entry.get("values")
        if isinstance(vals, list) and vals:
            seeds = entry.get("episode_seeds", at_n.get("episode_seeds"))
        else:
            vals = [entry.get("mean")]
    else:
        vals = [entry]
    try:
        x = np.asarray(vals, dtype=np.float64).ravel()
        eps = None if seeds is None else np.asarray(seeds).ravel()
    except (TypeError, ValueError):
        return None
    if eps is not None and (eps.shape != x.shape or eps.dtype.kind not in "iu"):
        eps = None
    ok = np.isfinite(x)
    if not ok.any():
        return None
    return x[ok], None if eps is None else eps[ok]


def _ordered(names: Iterable[str], order: Iterable[str]) -> list[str]:
    """The distinct ``names``: those listed in ``order`` first, in that order, then the others as met."""
    present = list(dict.fromkeys(names))
    first = [n for n in order if n in present]
    return first + [n for n in present if n not in first]


Row = tuple[str, str, int]
"""A table row: (benchmark, quality, N)."""


class Results:
    """The records of a results store, indexed for tables and plots (statistics cached)."""

    def __init__(self, records: Sequence[dict[str, Any]], spec: Mapping[str, Any] | None = None) -> None:
        """Index ``records``; benchmarks and methods follow the order of the grid ``spec`` if given.

        Reference columns (behaviour policies, evaluated without training) come first.
        """
        self.records = list(records)
        self.by_key: dict[tuple[str, str, str], list[dict[str, Any]]] = defaultdict(list)
        for rec in self.records:
            self.by_key[(rec["benchmark"], rec["quality"], rec["method"])].append(rec)
        spec = spec or {}
        self.name = str(spec.get("name") or "")
        self.benchmarks = _ordered((r["benchmark"] for r in self.records), spec.get("benchmarks") or {})
        methods = _ordered((r["method"] for r in self.records), spec.get("methods") or {})
        # behaviour policies evaluated without training: reference columns, never bold
        self.references = {r["method"] for r in self.records if (r.get("config") or {}).get("behaviour")}
        self.methods = [m for m in methods if m in self.references] + [
            m for m in methods if m not in self.references
        ]
        self.trained = [m for m in self.methods if m not in self.references]
        self._aggs: dict[tuple[str, str, int, str, str], Agg | None] = {}
        self._verdicts: dict[tuple[str, str, int, str], RowVerdict] = {}
        self.cache: dict[tuple[str, ...], object] = {}
        """Aggregates across rows, computed once per report (see :func:`set_aggregates`)."""

    @property
    def diffuser(self) -> str | None:
        """The MF-Diffuser method of the store (the first trained with ``algo: mf-diffuser``), if any."""
        for m in self.trained:
            recs = [r for (_, _, k), rs in self.by_key.items() if k == m for r in rs]
            if m == "mf-diffuser" or any((r.get("config") or {}).get("algo") == "mf-diffuser" for r in recs):
                return m
        return None

    def qualities(self, bench: str) -> list[str]:
        qs = {r["quality"] for r in self.records if r["benchmark"] == bench}
        return [q for q in QUALITY_ORDER if q in qs] + sorted(qs - set(QUALITY_ORDER))

    def eval_ns(self, bench: str) -> list[int]:
        ns: set[int] = set()
        for r in self.records:
            if r["benchmark"] == bench:
                ns.update(int(p["n_agents"]) for p in (r.get("config") or {}).get("eval_points", []))
                ns.update(int(n) for n in r.get("metrics") or {})
        return sorted(ns)

    def agg(self, bench: str, quality: str, n: int, method: str, metric: str) -> Agg | None:
        """Statistics over seeds of ``metric`` at N (None if no record exists)."""
        key = (bench, quality, n, method, metric)
        if key not in self._aggs:
            self._aggs[key] = self._agg(*key)
        return self._aggs[key]

    def _agg(self, bench: str, quality: str, n: int, method: str, metric: str) -> Agg | None:
        recs = self.by_key.get((bench, quality, method))
        if not recs:
            return None
        values, episodes, statuses, notes = [], [], [], []
        for r in recs:
            statuses.append(r["status"])
            if r["status"] != "done":
                notes.append(r.get("reason") or r.get("error") or "")
                continue
            at_n = (r.get("metrics") or {}).get(str(n), {})
            if at_n.get("status") == "skipped":
                statuses[-1] = "skipped"
                notes.append(at_n.get("reason", ""))
                continue
            got = episode_values(at_n, metric)
            if got is not None:
                values.append(got[0])
                episodes.append(got[1])
        if not values:
            status = "skipped" if "skipped" in statuses else ("failed" if "failed" in statuses else "n/a")
            return Agg(None, status, notes[0] if notes else "")
        status = "done" if all(s == "done" for s in statuses) else "partial"
        samples = Samples(values, episodes)
        return Agg(samples.interval(), status, samples=samples)

    def verdict(self, bench: str, quality: str, n: int, metric: str) -> RowVerdict:
        """The row's winners among the trained methods (:func:`~mfdiffuser.eval.stats.row_winners`)."""
        key = (bench, quality, n, metric)
        if key not in self._verdicts:
            cells = [self.agg(bench, quality, n, m, metric) for m in self.methods]
            self._verdicts[key] = self._winners(cells, METRICS[metric][1])
        return self._verdicts[key]

    def _winners(self, cells: Sequence[Agg | None], higher: bool) -> RowVerdict:
        """Winners among the trained methods; the unpaired fallback compares the intervals shown."""
        kept = [None if m in self.references else c for m, c in zip(self.methods, cells, strict=True)]
        return row_winners(
            [None if c is None else c.samples for c in kept],
            higher=higher,
            intervals=[None if c is None else c.stats for c in kept],
        )

    def exploitability_entries(self, bench: str, quality: str, method: str) -> list[tuple[int, float, str]]:
        """``(N, exploitability, kind)`` of each finished record's measurement (one per training seed)."""
        out = []
        for r in self.by_key.get((bench, quality, method), []):
            e = r.get("exploitability") if r["status"] == "done" else None
            if not isinstance(e, dict):
                continue
            v, n = e.get("exploitability"), e.get("n_agents")
            if isinstance(v, int | float) and math.isfinite(v) and isinstance(n, int):
                out.append((n, float(v), str(e.get("kind", ""))))
        return out

    def exploitability_ns(self, bench: str, quality: str | None = None) -> list[int]:
        """The N exploitability was measured at on ``bench`` (one quality, or any), most entries first.

        Methods are measured at their largest evaluated N up to their own ``max_n``, so a slow planner
        may be measured at a smaller N than the rest: values at different N are never compared.
        """
        counts: Counter[int] = Counter()
        for q in [quality] if quality is not None else self.qualities(bench):
            for m in self.methods:
                counts.update(n for n, _, _ in self.exploitability_entries(bench, q, m))
        return sorted(counts, key=lambda n: (-counts[n], -n))

    def exploitability(self, bench: str, quality: str, method: str, n: int) -> Agg | None:
        """Exploitability at N over training seeds (one value per seed)."""
        vals = [np.array([v]) for at, v, _ in self.exploitability_entries(bench, quality, method) if at == n]
        if not vals:
            return None
        return Agg(bootstrap_mean(vals), "done", samples=Samples(vals, [None] * len(vals)))

    def seed_scores(self, row: Row, method: str) -> dict[int, float]:
        """``{training seed: its mean normalized score over its episodes}`` at a row."""
        bench, quality, n = row
        out = {}
        for r in self.by_key.get((bench, quality, method), []):
            at_n = (r.get("metrics") or {}).get(str(n), {}) if r["status"] == "done" else {}
            got = None if at_n.get("status") == "skipped" else episode_values(at_n, "score")
            if got is not None and isinstance(r.get("seed"), int):
                out[int(r["seed"])] = float(got[0].mean())
        return out


def _fmt(stats: Interval, decimals: int, latex: bool) -> str:
    if not stats.defined:
        return f"{stats.mean:.{decimals}f}"
    return f"{stats.mean:.{decimals}f} [{stats.lo:.{decimals}f}, {stats.hi:.{decimals}f}]"


def _entry(agg: Agg | None, decimals: int, bold: bool, latex: bool) -> str:
    if agg is None:
        return "–" if not latex else "--"
    if agg.stats is None:
        return agg.status
    text = _fmt(agg.stats, decimals, latex)
    if agg.status == "partial":
        text += "*"
    if bold:
        return rf"\textbf{{{text}}}" if latex else f"**{text}**"
    return text


def decided_by(verdict: RowVerdict) -> str:
    """How a row's winners were decided: ``paired``, ``intervals``, both, or ``–`` (one method)."""
    kinds = {p for p in verdict.paired if p is not None}
    if not kinds:
        return "–"
    return " + ".join(name for flag, name in ((True, "paired"), (False, "intervals")) if flag in kinds)


def metric_rows(res: Results, metric: str) -> list[tuple[str, str, int, list[Agg | None]]]:
    """Rows ``(benchmark, quality, N, [agg per method])`` of a metric, only those with some value."""
    rows = []
    for b in res.benchmarks:
        for q in res.qualities(b):
            for n in res.eval_ns(b):
                cells = [res.agg(b, q, n, m, metric) for m in res.methods]
                if any(c is not None and c.stats is not None for c in cells):
                    rows.append((b, q, n, cells))
    return rows


def _head(res: Results, extra: str = "") -> list[str]:
    head = "| benchmark | quality | N | " + " | ".join(res.methods) + " |" + (f" {extra} |" if extra else "")
    sep = "|---|---|---:|" + "---:|" * len(res.methods) + ("---|" if extra else "")
    return [head, sep]


def markdown_table(res: Results, metric: str) -> str:
    """A Markdown table of ``metric``: rows benchmark x quality x N, columns methods, winners bold.

    The last column says how the row's winners were decided (:func:`decided_by`).
    """
    _, _, dec = METRICS[metric]
    rows = metric_rows(res, metric)
    if not rows:
        return ""
    lines = _head(res, "winners by")
    for b, q, n, cells in rows:
        verdict = res.verdict(b, q, n, metric)
        entries = [_entry(c, dec, f, latex=False) for c, f in zip(cells, verdict.winners, strict=True)]
        lines.append(f"| {b} | {q} | {n:,} | " + " | ".join(entries) + f" | {decided_by(verdict)} |")
    return "\n".join(lines)


def difference_table(res: Results, metric: str = "score") -> str:
    """Each trained method's difference from MF-Diffuser per row, paired where the records allow.

    Rows benchmark x quality x N, columns the other trained methods; an entry is ``method - ours``
    with its 95% bootstrap interval (:func:`~mfdiffuser.eval.stats.compare`: episode by episode on
    the evaluation episodes both ran), bold where the interval excludes 0, ``(unpaired)`` where the
    records share no episodes. An ablation grid's table: each variant against the full model.
    """
    ours = res.diffuser
    _, _, dec = METRICS[metric]
    others = [m for m in res.trained if m != ours]
    if ours is None or not others:
        return ""
    lines = [
        "| benchmark | quality | N | " + ours + " | " + " | ".join(f"{m} − {ours}" for m in others) + " |",
        "|---|---|---:|---:|" + "---:|" * len(others),
    ]
    for b, q, n, _ in metric_rows(res, metric):
        base = res.agg(b, q, n, ours, metric)
        if base is None or base.samples is None or base.stats is None:
            continue
        entries = []
        for m in others:
            other = res.agg(b, q, n, m, metric)
            if other is None or other.samples is None or other.stats is None:
                entries.append("–")
                continue
            cmp = compare(other.samples, base.samples, intervals=(other.stats, base.stats))
            text = f"{cmp.diff:+.{dec}f}"
            text += f" [{cmp.lo:+.{dec}f}, {cmp.hi:+.{dec}f}]" if cmp.paired else " (unpaired)"
            entries.append(f"**{text}**" if cmp.resolved else text)
        lines.append(f"| {b} | {q} | {n:,} | {_fmt(base.stats, dec, False)} | " + " | ".join(entries) + " |")
    return "\n".join(lines) if len(lines) > 2 else ""


def _tex(text: str) -> str:
    return text.replace("_", r"\_").replace("&", r"\&").replace("%", r"\%")


def latex_table(res: Results, metric: str) -> str:
    """A LaTeX (booktabs) table of ``metric``, the row's winners in bold."""
    title, _, dec = METRICS[metric]
    rows = metric_rows(res, metric)
    if not rows:
        return ""
    cols = "lll" + "r" * len(res.methods)
    lines = [
        r"\begin{table}[t]",
        r"\centering",
        r"\small",
        rf"\caption{{{_tex(title)}: mean over training seeds [95\% bootstrap interval]; bold: the best "
        r"and every method a paired comparison on shared evaluation episodes (or, without shared "
        r"episodes, overlapping intervals) does not separate from it.}",
        rf"\begin{{tabular}}{{{cols}}}",
        r"\toprule",
        "benchmark & quality & $N$ & " + " & ".join(_tex(m) for m in res.methods) + r" \\",
        r"\midrule",
    ]
    for b, q, n, cells in rows:
        flags = res.verdict(b, q, n, metric).winners
        entries = [_entry(c, dec, f, latex=True) for c, f in zip(cells, flags, strict=True)]
        lines.append(f"{_tex(b)} & {q} & {n:,} & " + " & ".join(entries) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}", r"\end{table}"]
    return "\n".join(lines)


def exploitability_table(res: Results) -> str:
    """Markdown table of exploitability (lower is better) per benchmark x quality x N, columns methods.

    One value per training seed: winners by overlapping intervals over seeds, among the methods
    measured at the row's N only (a method measured at a smaller N has its own row).
    """
    lines = []
    for b in res.benchmarks:
        for q in res.qualities(b):
            for n in sorted(res.exploitability_ns(b, q), reverse=True):
                cells = [res.exploitability(b, q, m, n) for m in res.methods]
                flags = res._winners(cells, higher=False).winners
                entries = [_entry(c, 4, f, latex=False) for c, f in zip(cells, flags, strict=True)]
                kind = next(
                    k for m in res.methods for at, _, k in res.exploitability_entries(b, q, m) if at == n
                )
                lines.append(f"| {b} ({kind}) | {q} | {n:,} | " + " | ".join(entries) + " |")
    if not lines:
        return ""
    return "\n".join([*_head(res), *lines])


def summary_table(res: Results, metric: str = "score") -> str:
    """Head to head on ``metric``, per trained method, over the rows where it and another method have entries.

    Columns: those rows; the rows where the method is a winner (bold); the mean over those rows of its
    mean minus the best other trained method's mean (positive: ahead), over all rows and over the
    ``medium``/``mixed`` rows.
    """
    _, higher, dec = METRICS[metric]
    rows = metric_rows(res, metric)
    if len(res.trained) < 2 or not rows:
        return ""
    lines = [
        "| method | rows | winner | ahead of the best other (all rows) "
        "| ahead of the best other (medium, mixed) |",
        "|---|---:|---:|---:|---:|",
    ]
    flags = [res.verdict(b, q, n, metric).winners for b, q, n, _ in rows]
    for i, m in enumerate(res.methods):
        if m not in res.trained:
            continue
        n_best, gaps, gaps_mm = 0, [], []
        for (_, q, _, cells), bold in zip(rows, flags, strict=True):
            own = cells[i]
            others = [
                c.stats.mean
                for k, c in zip(res.methods, cells, strict=True)
                if k in res.trained and k != m and c is not None and c.stats is not None
            ]
            if own is None or own.stats is None or not others:
                continue
            n_best += bold[i]
            best_other = max(others) if higher else min(others)
            gap = own.stats.mean - best_other if higher else best_other - own.stats.mean
            gaps.append(gap)
            if q in ("medium", "mixed"):
                gaps_mm.append(gap)
        if not gaps:
            continue
        mean_gaps = [f"{np.mean(g):+.{dec}f} ({len(g)})" if g else "–" for g in (gaps, gaps_mm)]
        lines.append(
            f"| {m} | {len(gaps)} | {n_best} ({100 * n_best / len(gaps):.0f}%) | "
            + " | ".join(mean_gaps)
            + " |"
        )
    return "\n".join(lines)


# ------------------------------------------------------------------------------ aggregates across rows
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


def _rows_text(rows: Sequence[Row]) -> str:
    by_bench: dict[str, list[str]] = defaultdict(list)
    for b, q, n in rows:
        by_bench[b].append(f"{q} {n:,}")
    return "; ".join(f"{b}: " + ", ".join(v) for b, v in by_bench.items())


def _label(res: Results, method: str) -> str:
    return f"{method} (reference)" if method in res.references else method


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
        iqm, mean = _fmt(agg.iqm, 1, False), _fmt(agg.mean, 1, False)
        lines.append(f"| {_label(res, m)} | {r} x {t} | {iqm} | {mean} |")
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
            entries += [str(n_rows), "–" if poi is None else _fmt(poi, 2, False)]
        lines.append(f"| {_label(res, m)} | " + " | ".join(entries) + " |")
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
        f"({_fmt(baselines[best].iqm, 1, False)}); P({ours} > {best}) = {_fmt(poi, 2, False)} "
        f"over {n_rows} rows."
    )


def not_evaluated_table(res: Results) -> str:
    """What was not evaluated, one table: method x benchmark x N (``all``: whole cells), status, reason."""
    groups: dict[tuple[str, str, int, str], list[str]] = defaultdict(list)
    for r in res.records:
        if r["status"] != "done":
            groups[(r["method"], r["benchmark"], -1, r["status"])].append(
                str(r.get("reason") or r.get("error") or "")
            )
            continue
        for n, at_n in (r.get("metrics") or {}).items():
            if isinstance(at_n, dict) and at_n.get("status") == "skipped":
                groups[(r["method"], r["benchmark"], int(n), "skipped")].append(str(at_n.get("reason", "")))
    if not groups:
        return ""
    order = {m: i for i, m in enumerate(res.methods)}
    bench = {b: i for i, b in enumerate(res.benchmarks)}
    lines = ["| method | benchmark | N | status | cells | reason |", "|---|---|---:|---|---:|---|"]
    keys = sorted(groups, key=lambda k: (order[k[0]], bench[k[1]], k[2], k[3]))
    for m, b, n, status in keys:
        reasons = groups[(m, b, n, status)]
        distinct = list(dict.fromkeys(reasons))
        reason = "; ".join(distinct[:3])
        if len(distinct) > 3:
            reason += f"; and {len(distinct) - 3} other reasons"
        n_text = "all" if n < 0 else f"{n:,}"
        lines.append(f"| {m} | {b} | {n_text} | {status} | {len(reasons)} | {reason.replace('|', '/')} |")
    return "\n".join(lines)


def cost_table(res: Results) -> tuple[str, float, int]:
    """Compute cost from the records' timings: mean minutes per cell, per method x benchmark.

    Entries are ``train + evaluation`` minutes (evaluation includes exploitability), averaged over the
    method's cells on the benchmark; the last column sums them in core-hours (each cell's time times its
    ``num_cpus``). Training time is the run's own (``train_run_s``, from its training log, whichever
    attempt trained it); records without it give that of the attempt that wrote them, which counts
    only loading a run an earlier attempt had trained.

    Returns:
        The Markdown table ("" if no record has timings), the total core-hours and the number of
        trained cells whose records lack the run's own training time.
    """
    minutes: dict[tuple[str, str], list[tuple[float, float]]] = defaultdict(list)
    core_h: dict[str, float] = defaultdict(float)
    attempt_only = 0
    for r in res.records:
        t = r.get("timings") or {}
        if "total_s" not in t:
            continue
        attempt_train = float(t.get("train_s", 0.0))
        rest = float(t["total_s"]) - attempt_train
        train = float(t.get("train_run_s", attempt_train))
        attempt_only += "train" in r and "train_run_s" not in t
        minutes[(r["method"], r["benchmark"])].append((train / 60, rest / 60))
        cpus = float((r.get("config") or {}).get("resources", {}).get("num_cpus", 1))
        core_h[r["method"]] += (train + rest) * cpus / 3600
    if not minutes:
        return "", 0.0, 0
    lines = [
        "| method | " + " | ".join(res.benchmarks) + " | core-hours |",
        "|---|" + "---:|" * (len(res.benchmarks) + 1),
    ]
    for m in res.methods:
        if m not in core_h:
            continue
        entries = []
        for b in res.benchmarks:
            cells = minutes.get((m, b))
            if not cells:
                entries.append("–")
                continue
            train, rest = np.mean(cells, axis=0)
            entries.append(f"{train:.1f} + {rest:.1f} ({len(cells)})")
        lines.append(f"| {m} | " + " | ".join(entries) + f" | {core_h[m]:.2f} |")
    total = sum(core_h.values())
    lines.append("| total | " + " | ".join("" for _ in res.benchmarks) + f" | {total:.2f} |")
    return "\n".join(lines), total, attempt_only


def sweep_table(sweeps: Sequence[Mapping[str, Any]]) -> tuple[str, float]:
    """The sweeps that ran cells: start, wall hours, CPUs, cells run; and their wall hours in all.

    A sweep with no end line (see :meth:`ResultStore.sweeps`) is counted to its last record.

    Returns:
        The Markdown table ("" without sweeps) and the sum of the sweeps' wall hours.
    """
    if not sweeps:
        return "", 0.0
    lines = [
        "| started (UTC) | wall (h) | CPUs | cells run: done / skipped / failed | already finished | |",
        "|---|---:|---:|---:|---:|---|",
    ]
    hours = 0.0
    for sw in sweeps:
        h = float(sw.get("seconds", 0.0)) / 3600
        hours += h
        cpus = sw.get("cpus")
        counts = " / ".join(str(int(sw.get(k, 0))) for k in ("done", "skipped", "failed"))
        note = "interrupted" if sw.get("interrupted") else ""
        if sw.get("ended") is False:
            note = "no end logged (killed, or still running): wall time to its last record"
        lines.append(
            f"| {sw.get('started_at') or '–'} | {h:.2f} | {f'{float(cpus):g}' if cpus else '–'} | "
            f"{counts} | {int(sw.get('skipped_existing', 0))} | {note} |"
        )
    return "\n".join(lines), hours


def status_table(res: Results) -> str:
    """Counts of done / skipped / failed cells per method."""
    counts: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    for r in res.records:
        counts[r["method"]][r["status"]] += 1
    lines = ["| method | done | skipped | failed |", "|---|---:|---:|---:|"]
    for m in res.methods:
        c = counts[m]
        lines.append(f"| {m} | {c['done']} | {c['skipped']} | {c['failed']} |")
    return "\n".join(lines)


# --------------------------------------------------------------------------------------- plots
def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _error_bars(stats: Interval | None) -> tuple[float, float]:
    """Lengths of an interval below and above its mean (0 where it is undefined)."""
    if stats is None or not stats.defined:
        return 0.0, 0.0
    return stats.mean - stats.lo, stats.hi - stats.mean


def _series(res: Results, bench: str, qualities: Sequence[str], method: str, metric: str) -> tuple:
    """Points ``(N, mean over qualities of the seed means, lengths of the error bars below and above)``.

    The bars are the interval of that mean (:func:`~mfdiffuser.eval.stats.mean_over_rows`).
    """
    xs, ys, below, above = [], [], [], []
    for n in res.eval_ns(bench):
        aggs = [res.agg(bench, q, n, method, metric) for q in qualities]
        rows = [a.samples for a in aggs if a is not None and a.samples is not None]
        if not rows:
            continue
        stats = mean_over_rows(rows)
        xs.append(n)
        ys.append(stats.mean)
        lo, hi = _error_bars(stats)
        below.append(lo)
        above.append(hi)
    return xs, ys, (below, above)


def plot_vs_n(
    res: Results, metric: str, path: Path, *, per_quality: bool, log_y: bool = False
) -> Path | None:
    """Lines of ``metric`` against N per method: a subplot per benchmark (x quality if asked)."""
    plt = _plt()
    panels = cast(
        "list[tuple[str, list[str]]]",
        [
            (b, [q]) if per_quality else (b, res.qualities(b))
            for b in res.benchmarks
            for q in (res.qualities(b) if per_quality else [None])
        ],
    )
    if not panels:
        return None
    cols = min(4, len(panels))
    rows = math.ceil(len(panels) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 3.2 * rows), squeeze=False)
    drawn = False
    for ax, (b, qs) in zip(axes.flat, panels, strict=False):
        for m in res.methods:
            xs, ys, es = _series(res, b, qs, m, metric)
            if xs:
                below, above = es
                lower = [min(e, 0.999 * y) if log_y and y > 0 else e for e, y in zip(below, ys, strict=True)]
                ax.errorbar(xs, ys, yerr=[lower, above], marker="o", capsize=3, label=m, color=_color(res, m))
                drawn = True
        ax.set_xscale("log")
        if log_y:
            ax.set_yscale("log")
        ax.set_title(f"{b} / {qs[0]}" if per_quality else b, fontsize=9)
        ax.set_xlabel("N")
        ax.set_ylabel(PLOT_LABELS.get(metric, metric), fontsize=8)
    for ax in list(axes.flat)[len(panels) :]:
        ax.axis("off")
    return _finish(plt, fig, axes, path, drawn, legend_height=0.06)


def plot_bars(res: Results, path: Path, *, metric: str | None) -> Path | None:
    """Grouped bars per benchmark: x = quality, one bar per method.

    Bars show ``metric`` at the benchmark's largest N, or exploitability when ``metric`` is None (at
    the N most methods were measured at; the table has the others).
    """
    plt = _plt()
    benches = res.benchmarks
    if not benches:
        return None
    fig, axes = plt.subplots(1, len(benches), figsize=(4.5 * len(benches), 3.4), squeeze=False)
    drawn = False
    width = 0.8 / max(len(res.methods), 1)
    for ax, b in zip(axes.flat, benches, strict=True):
        qs = res.qualities(b)
        n_max = max(res.eval_ns(b)) if res.eval_ns(b) else 0
        if metric is None:  # exploitability at the N most methods were measured at
            n_max = next(iter(res.exploitability_ns(b)), 0)
        for j, m in enumerate(res.methods):
            ys, below, above = [], [], []
            for q in qs:
                a = res.exploitability(b, q, m, n_max) if metric is None else res.agg(b, q, n_max, m, metric)
                stats = a.stats if a is not None else None
                ys.append(stats.mean if stats is not None else np.nan)
                lo, hi = _error_bars(stats)
                below.append(lo)
                above.append(hi)
            if not np.all(np.isnan(ys)):
                drawn = True
            ax.bar(
                np.arange(len(qs)) + j * width,
                ys,
                width,
                yerr=[below, above],
                capsize=2,
                label=m,
                color=_color(res, m),
            )
        ax.set_xticks(np.arange(len(qs)) + 0.4 - width / 2, qs)
        ylabel = "exploitability" if metric is None else PLOT_LABELS.get(metric, metric)
        ax.set_ylabel(ylabel, fontsize=8)
        ax.set_title(f"{b} (N = {n_max:,})" if n_max else b, fontsize=9)
    return _finish(plt, fig, axes, path, drawn, legend_height=0.1)


def plot_profiles(res: Results, sets: Sequence[RowSet], path: Path) -> Path | None:
    """Performance profiles of normalized score, a panel per row set, with stratified bootstrap bands."""
    plt = _plt()
    panels = []
    for rs in sets:
        mats = score_matrices(res, rs.rows, res.methods).scores if rs.rows else {}
        if mats:
            panels.append((rs, mats))
    if not panels:
        return None
    fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 3.8), squeeze=False)
    for ax, (rs, mats) in zip(axes.flat, panels, strict=True):
        every = np.concatenate([x.ravel() for x in mats.values()])
        # random to expert at least, and the central 98% of the runs: one far-off run does not squeeze
        # the rest of the axis (the curves still count it: the fraction of runs above each tau)
        low, high = np.percentile(every, [1, 99])
        taus = np.linspace(min(0.0, float(low)), max(100.0, float(high)), 101)
        for m, prof in performance_profiles(mats, taus).items():
            ax.plot(taus, prof.fraction, label=_label(res, m), color=_color(res, m))
            ax.fill_between(taus, prof.lo, prof.hi, color=_color(res, m), alpha=0.15, linewidth=0)
        ax.set_title(f"{rs.title} ({len(rs.rows)} rows)", fontsize=9)
        ax.set_xlabel("normalized score τ")
        ax.set_ylabel("fraction of seeds x rows scoring above τ", fontsize=8)
        ax.set_ylim(0.0, 1.0)
    return _finish(plt, fig, axes, path, True, legend_height=0.12)


def _color(res: Results, method: str) -> str:
    """One fixed colour per method across every panel and plot."""
    return f"C{res.methods.index(method) % 10}"


def _finish(plt: Any, fig: Any, axes: Any, path: Path, drawn: bool, legend_height: float) -> Path | None:
    """Add the shared legend below the panels and save the figure; None (and no file) if nothing was drawn."""
    if not drawn:
        plt.close(fig)
        return None
    by_label: dict[str, Any] = {}  # a method may be missing from some panels: gather from all of them
    for ax in axes.flat:
        for handle, label in zip(*ax.get_legend_handles_labels(), strict=True):
            by_label.setdefault(label, handle)
    labels = sorted(by_label)
    fig.legend(
        [by_label[k] for k in labels], labels, loc="lower center", ncol=min(len(labels), 8), fontsize=8
    )
    fig.tight_layout(rect=(0, legend_height, 1, 1))
    try:
        return save_figure(fig, path, dpi=110)
    finally:
        plt.close(fig)


# -------------------------------------------------------------------------------------- report
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

    Returns:
        Path of the Markdown report.

    A failure part-way (a full disk, an interrupt) removes ``out_dir`` again if this call created it;
    an existing ``out_dir`` keeps what it held, each file whole (every file is written atomically).

    Raises:
        FileNotFoundError: ``results_dir`` holds no readable cell records.
        MfdError: some record files are unreadable and ``skip_unreadable`` is False.
    """
    from mfdiffuser.utils import atomic_path, removed_on_failure

    text = ""
    if preface is not None:
        try:
            text = Path(preface).read_text().strip()
        except (OSError, UnicodeDecodeError) as exc:
            raise MfdError(f"--preface {preface}: cannot read it ({type(exc).__name__})") from None
    with removed_on_failure(out_dir, errors=(BaseException,)):
        head, body = _write_report(results_dir, out_dir, skip_unreadable)
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
    results_dir: str | Path, out_dir: str | Path, skip_unreadable: bool
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
            md += ["", f"### IQM and mean: {rs.title}", "", f"{len(rs.rows)} rows: {_rows_text(rs.rows)}.",
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
