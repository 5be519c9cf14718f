"""Markdown and LaTeX tables of a report: per-row entries, differences, exploitability, cost and status."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from mfdiffuser.eval.stats import (
    Interval,
    RowVerdict,
    compare,
)
from mfdiffuser.experiments.results import METRICS, Agg, Results


def format_interval(stats: Interval, decimals: int, latex: bool) -> str:
    """``mean [lo, hi]`` with ``decimals`` decimals (the mean alone where the interval is undefined)."""
    if not stats.defined:
        return f"{stats.mean:.{decimals}f}"
    return f"{stats.mean:.{decimals}f} [{stats.lo:.{decimals}f}, {stats.hi:.{decimals}f}]"


def _entry(agg: Agg | None, decimals: int, bold: bool, latex: bool) -> str:
    if agg is None:
        return "–" if not latex else "--"
    if agg.stats is None:
        return agg.status
    text = format_interval(agg.stats, decimals, latex)
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


def paired_difference(res: Results, row: tuple[str, str, int], method: str, base: str, metric: str) -> str:
    """``method - base`` on one row with its 95% bootstrap interval, as a table entry.

    Paired episode by episode where the two ran the same evaluation episodes
    (:func:`~mfdiffuser.eval.stats.compare`), ``(unpaired)`` where they share none; bold where the
    interval excludes 0; ``–`` where either has no value.
    """
    _, _, dec = METRICS[metric]
    this, other = res.agg(*row, method, metric), res.agg(*row, base, metric)
    if this is None or this.samples is None or this.stats is None:
        return "–"
    if other is None or other.samples is None or other.stats is None:
        return "–"
    cmp = compare(this.samples, other.samples, intervals=(this.stats, other.stats))
    text = f"{cmp.diff:+.{dec}f}"
    text += f" [{cmp.lo:+.{dec}f}, {cmp.hi:+.{dec}f}]" if cmp.paired else " (unpaired)"
    return f"**{text}**" if cmp.resolved else text


def difference_table(res: Results, metric: str = "score") -> str:
    """Each trained method's difference from MF-Diffuser per row, paired where the records allow.

    Rows benchmark x quality x N, columns the other trained methods; an entry is ``method - ours``
    (:func:`paired_difference`). An ablation grid's table: each variant against the full model.
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
        entries = [paired_difference(res, (b, q, n), m, ours, metric) for m in others]
        shown = format_interval(base.stats, dec, False)
        lines.append(f"| {b} | {q} | {n:,} | {shown} | " + " | ".join(entries) + " |")
    return "\n".join(lines) if len(lines) > 2 else ""


def pairs_table(res: Results, pairs: Sequence[tuple[str, str]], metric: str = "score") -> str:
    """The differences ``a - b`` of the named method pairs per row (:func:`paired_difference`).

    Rows benchmark x quality x N where some pair has both entries; one column per pair. For variants
    compared two by two (a planner acting one way or another), where :func:`difference_table`
    compares everything with MF-Diffuser.
    """
    rows = []
    for b, q, n, _ in metric_rows(res, metric):
        entries = [paired_difference(res, (b, q, n), a, base, metric) for a, base in pairs]
        if any(e != "–" for e in entries):
            rows.append(f"| {b} | {q} | {n:,} | " + " | ".join(entries) + " |")
    if not rows:
        return ""
    head = "| benchmark | quality | N | " + " | ".join(f"{a} − {base}" for a, base in pairs) + " |"
    return "\n".join([head, "|---|---|---:|" + "---:|" * len(pairs), *rows])


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


