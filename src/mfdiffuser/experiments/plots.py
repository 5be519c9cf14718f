"""PNG plots of a report: metrics against N, scores by dataset quality, performance profiles."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any, cast

import numpy as np

from mfdiffuser.eval.stats import (
    Interval,
    mean_over_rows,
    performance_profiles,
)
from mfdiffuser.experiments.aggregates import RowSet, score_matrices
from mfdiffuser.experiments.results import Results, method_label
from mfdiffuser.utils import save_figure

# Short axis labels of the plots.
PLOT_LABELS: dict[str, str] = {
    "score": "normalized score",
    "return": "per-agent return",
    "act_ms_max": "plan latency (ms)",
    "act_ms": "act latency (ms)",
    "peak_mem_mb": "peak memory (MiB)",
}


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
            ax.plot(taus, prof.fraction, label=method_label(res, m), color=_color(res, m))
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


