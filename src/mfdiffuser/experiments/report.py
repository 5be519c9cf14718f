"""Reports of a results store: Markdown and LaTeX tables, PNG plots (matplotlib, Agg backend).

Each cell record holds one training seed's metrics at every evaluation N (means over its evaluation
episodes). The report aggregates over seeds: mean and 95% t confidence interval. In every table row
(benchmark x quality x N) the best method is bold: the highest mean (lowest for exploitability),
and every method whose mean lies within one standard error (over seeds) of the best is bold too,
since with 3 seeds such differences are not resolved.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import numpy as np
import yaml

from mfdiffuser.errors import MfdError
from mfdiffuser.eval.stats import MeanCI, mean_ci
from mfdiffuser.experiments.store import ResultStore
from mfdiffuser.utils import save_figure

QUALITY_ORDER = ("expert", "medium", "mixed", "random")

# metric -> (title, higher is better, decimals)
METRICS: dict[str, tuple[str, bool, int]] = {
    "score": ("Normalized score", True, 1),
    "return": ("Per-agent return", True, 3),
    "win_rate": ("Battle win rate", True, 2),
    "kill_ratio": ("Battle kill ratio", True, 2),
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
    """Seed statistics of one metric of one (benchmark, quality, N, method)."""

    stats: MeanCI | None
    status: str
    """``done``, ``partial`` (some seeds failed or were skipped), ``skipped``, ``failed``."""
    note: str = ""


def _value(rec: dict[str, Any], n: str, metric: str) -> float | None:
    m = rec.get("metrics", {}).get(n, {})
    v = m.get(metric)
    if isinstance(v, dict):
        v = v.get("mean")
    if v is None or not isinstance(v, int | float) or not math.isfinite(v):
        return None
    return float(v)


def _ordered(names: Iterable[str], order: Iterable[str]) -> list[str]:
    """The distinct ``names``: those listed in ``order`` first, in that order, then the others as met."""
    present = list(dict.fromkeys(names))
    first = [n for n in order if n in present]
    return first + [n for n in present if n not in first]


class Results:
    """The records of a results store, indexed for tables and plots."""

    def __init__(self, records: Sequence[dict[str, Any]], spec: Mapping[str, Any] | None = None) -> None:
        """Index ``records``; benchmarks and methods follow the order of the grid ``spec`` if given.

        Reference columns (behaviour policies, evaluated without training) come first.
        """
        self.records = list(records)
        self.by_key: dict[tuple[str, str, str], list[dict[str, Any]]] = defaultdict(list)
        for rec in self.records:
            self.by_key[(rec["benchmark"], rec["quality"], rec["method"])].append(rec)
        spec = spec or {}
        self.benchmarks = _ordered((r["benchmark"] for r in self.records), spec.get("benchmarks") or {})
        methods = _ordered((r["method"] for r in self.records), spec.get("methods") or {})
        # behaviour policies evaluated without training: reference columns, never bold
        self.references = {r["method"] for r in self.records if r.get("config", {}).get("behaviour")}
        self.methods = [m for m in methods if m in self.references] + [
            m for m in methods if m not in self.references
        ]

    def best_flags(self, cells: Sequence[Agg | None], higher: bool) -> list[bool]:
        """:func:`best_flags` over the trained methods of a row (``cells`` in :attr:`methods` order)."""
        trained = [None if m in self.references else c for m, c in zip(self.methods, cells, strict=True)]
        return best_flags(trained, higher)

    def qualities(self, bench: str) -> list[str]:
        qs = {r["quality"] for r in self.records if r["benchmark"] == bench}
        return [q for q in QUALITY_ORDER if q in qs] + sorted(qs - set(QUALITY_ORDER))

    def eval_ns(self, bench: str) -> list[int]:
        ns: set[int] = set()
        for r in self.records:
            if r["benchmark"] == bench:
                ns.update(int(p["n_agents"]) for p in r.get("config", {}).get("eval_points", []))
                ns.update(int(n) for n in r.get("metrics", {}))
        return sorted(ns)

    def agg(self, bench: str, quality: str, n: int, method: str, metric: str) -> Agg | None:
        """Statistics over seeds of ``metric`` at N (None if no record exists)."""
        recs = self.by_key.get((bench, quality, method))
        if not recs:
            return None
        vals, statuses, notes = [], [], []
        for r in recs:
            statuses.append(r["status"])
            if r["status"] != "done":
                notes.append(r.get("reason") or r.get("error") or "")
                continue
            at_n = r.get("metrics", {}).get(str(n), {})
            if at_n.get("status") == "skipped":
                statuses[-1] = "skipped"
                notes.append(at_n.get("reason", ""))
                continue
            v = _value(r, str(n), metric)
            if v is not None:
                vals.append(v)
        if not vals:
            status = "skipped" if "skipped" in statuses else ("failed" if "failed" in statuses else "n/a")
            return Agg(None, status, notes[0] if notes else "")
        status = "done" if all(s == "done" for s in statuses) else "partial"
        return Agg(mean_ci(vals), status)

    def exploitability(self, bench: str, quality: str, method: str) -> Agg | None:
        recs = self.by_key.get((bench, quality, method))
        if not recs:
            return None
        vals = [
            float(r["exploitability"]["exploitability"])
            for r in recs
            if r["status"] == "done" and r.get("exploitability")
        ]
        if not vals:
            return None
        return Agg(mean_ci(vals), "done")


def _fmt(stats: MeanCI, decimals: int, latex: bool) -> str:
    pm = r"$\pm$" if latex else "±"
    if math.isnan(stats.half_width):
        return f"{stats.mean:.{decimals}f}"
    return f"{stats.mean:.{decimals}f} {pm} {stats.half_width:.{decimals}f}"


def best_flags(cells: Sequence[Agg | None], higher: bool) -> list[bool]:
    """Which entries of a row are bold: the best mean, and means within one standard error of it."""
    means = [c.stats.mean if c is not None and c.stats is not None else None for c in cells]
    valid = [(i, m) for i, m in enumerate(means) if m is not None]
    if not valid:
        return [False] * len(cells)
    best_i, best = (max if higher else min)(valid, key=lambda im: im[1])
    sem = cells[best_i].stats.sem  # type: ignore[union-attr]
    tol = 0.0 if sem is None or math.isnan(sem) else sem
    flags = []
    for m in means:
        if m is None:
            flags.append(False)
        else:
            flags.append(m >= best - tol - 1e-12 if higher else m <= best + tol + 1e-12)
    return flags


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


def markdown_table(res: Results, metric: str) -> str:
    """A Markdown table of ``metric``: rows benchmark x quality x N, columns methods."""
    _, higher, dec = METRICS[metric]
    rows = metric_rows(res, metric)
    if not rows:
        return ""
    head = "| benchmark | quality | N | " + " | ".join(res.methods) + " |"
    sep = "|---|---|---:|" + "---:|" * len(res.methods)
    lines = [head, sep]
    for b, q, n, cells in rows:
        flags = res.best_flags(cells, higher)
        entries = [_entry(c, dec, f, latex=False) for c, f in zip(cells, flags, strict=True)]
        lines.append(f"| {b} | {q} | {n:,} | " + " | ".join(entries) + " |")
    return "\n".join(lines)


def _tex(text: str) -> str:
    return text.replace("_", r"\_").replace("&", r"\&").replace("%", r"\%")


def latex_table(res: Results, metric: str) -> str:
    """A LaTeX (booktabs) table of ``metric``, best per row in bold."""
    title, higher, dec = METRICS[metric]
    rows = metric_rows(res, metric)
    if not rows:
        return ""
    cols = "lll" + "r" * len(res.methods)
    lines = [
        r"\begin{table}[t]",
        r"\centering",
        r"\small",
        rf"\caption{{{_tex(title)}: mean $\pm$ 95\% CI over seeds; best and ties within one s.e.\ in bold.}}",
        rf"\begin{{tabular}}{{{cols}}}",
        r"\toprule",
        "benchmark & quality & $N$ & " + " & ".join(_tex(m) for m in res.methods) + r" \\",
        r"\midrule",
    ]
    for b, q, n, cells in rows:
        flags = res.best_flags(cells, higher)
        entries = [_entry(c, dec, f, latex=True) for c, f in zip(cells, flags, strict=True)]
        lines.append(f"{_tex(b)} & {q} & {n:,} & " + " & ".join(entries) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}", r"\end{table}"]
    return "\n".join(lines)


def exploitability_table(res: Results) -> str:
    """Markdown table of exploitability (lower is better) per benchmark x quality, columns methods."""
    lines = []
    for b in res.benchmarks:
        for q in res.qualities(b):
            cells = [res.exploitability(b, q, m) for m in res.methods]
            if not any(c is not None for c in cells):
                continue
            flags = res.best_flags(cells, higher=False)
            entries = [_entry(c, 4, f, latex=False) for c, f in zip(cells, flags, strict=True)]
            n = next(
                r["exploitability"].get("n_agents")
                for m in res.methods
                for r in res.by_key.get((b, q, m), [])
                if r.get("exploitability")
            )
            kind = next(
                r["exploitability"].get("kind", "")
                for m in res.methods
                for r in res.by_key.get((b, q, m), [])
                if r.get("exploitability")
            )
            lines.append(f"| {b} ({kind}) | {q} | {n:,} | " + " | ".join(entries) + " |")
    if not lines:
        return ""
    head = "| benchmark | quality | N | " + " | ".join(res.methods) + " |"
    sep = "|---|---|---:|" + "---:|" * len(res.methods)
    return "\n".join([head, sep, *lines])


def summary_table(res: Results, metric: str = "score") -> str:
    """Head to head on ``metric``, per trained method, over the rows where it and another method have entries.

    Columns: those rows; the rows where the method is bold (best, or within one s.e. of the best);
    the mean over those rows of its mean minus the best other trained method's mean (positive: ahead),
    over all rows and over the ``medium``/``mixed`` rows.
    """
    _, higher, dec = METRICS[metric]
    rows = metric_rows(res, metric)
    trained = [m for m in res.methods if m not in res.references]
    if len(trained) < 2 or not rows:
        return ""
    lines = [
        "| method | rows | best or within one s.e. | ahead of the best other (all rows) "
        "| ahead of the best other (medium, mixed) |",
        "|---|---:|---:|---:|---:|",
    ]
    flags = [res.best_flags(cells, higher) for _, _, _, cells in rows]
    for i, m in enumerate(res.methods):
        if m not in trained:
            continue
        n_best, gaps, gaps_mm = 0, [], []
        for (_, q, _, cells), bold in zip(rows, flags, strict=True):
            own = cells[i]
            others = [
                c.stats.mean
                for k, c in zip(res.methods, cells, strict=True)
                if k in trained and k != m and c is not None and c.stats is not None
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
    """Counts of done / skipped / failed cells per method, and the reasons of the others."""
    counts: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    for r in res.records:
        counts[r["method"]][r["status"]] += 1
    lines = ["| method | done | skipped | failed |", "|---|---:|---:|---:|"]
    for m in res.methods:
        c = counts[m]
        lines.append(f"| {m} | {c['done']} | {c['skipped']} | {c['failed']} |")
    notes = [
        f"* `{r['id']}` {r['status']}: {r.get('reason') or r.get('error', '')}"
        for r in res.records
        if r["status"] != "done"
    ]
    notes += [
        f"* `{r['id']}` skipped at N = {int(n):,}: {m.get('reason', '')}"
        for r in res.records
        if r["status"] == "done"
        for n, m in r.get("metrics", {}).items()
        if m.get("status") == "skipped"
    ]
    return "\n".join(lines + ([""] + notes if notes else []))


# --------------------------------------------------------------------------------------- plots
def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _series(res: Results, bench: str, qualities: Sequence[str], method: str, metric: str) -> tuple:
    """Points ``(N, mean over qualities of the seed means, mean of their CI half widths)``."""
    xs, ys, es = [], [], []
    for n in res.eval_ns(bench):
        aggs = [res.agg(bench, q, n, method, metric) for q in qualities]
        stats = [a.stats for a in aggs if a is not None and a.stats is not None]
        if not stats:
            continue
        xs.append(n)
        ys.append(float(np.mean([s.mean for s in stats])))
        hw = [s.half_width for s in stats if not math.isnan(s.half_width)]
        es.append(float(np.mean(hw)) if hw else 0.0)
    return xs, ys, es


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
                lower = [min(e, 0.999 * y) if log_y and y > 0 else e for e, y in zip(es, ys, strict=True)]
                ax.errorbar(xs, ys, yerr=[lower, es], marker="o", capsize=3, label=m, color=_color(res, m))
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

    Bars show ``metric`` at the benchmark's largest N, or exploitability when ``metric`` is None.
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
        for j, m in enumerate(res.methods):
            ys, es = [], []
            for q in qs:
                a = res.exploitability(b, q, m) if metric is None else res.agg(b, q, n_max, m, metric)
                ok = a is not None and a.stats is not None
                ys.append(a.stats.mean if ok else np.nan)  # type: ignore[union-attr]
                hw = a.stats.half_width if ok else np.nan  # type: ignore[union-attr]
                es.append(0.0 if np.isnan(hw) else hw)
            if not np.all(np.isnan(ys)):
                drawn = True
            ax.bar(
                np.arange(len(qs)) + j * width, ys, width, yerr=es, capsize=2, label=m, color=_color(res, m)
            )
        ax.set_xticks(np.arange(len(qs)) + 0.4 - width / 2, qs)
        ylabel = "exploitability" if metric is None else PLOT_LABELS.get(metric, metric)
        ax.set_ylabel(ylabel, fontsize=8)
        ax.set_title(b if metric is None else f"{b} (N = {n_max:,})", fontsize=9)
    return _finish(plt, fig, axes, path, drawn, legend_height=0.1)


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
    records: list[dict[str, Any]], spec: dict[str, Any] | None
) -> tuple[list[dict[str, Any]], str]:
    """Records whose cell is in the grid ``spec`` with the same fingerprint, and a note on the rest.

    A record made before its cell's configuration changed (or of a cell no longer in the grid) would
    mix two configurations in one table; ``mfd sweep`` reruns such cells, the report leaves them out.
    """
    if spec is None:
        return records, ""
    from mfdiffuser.experiments.grid import parse_grid

    try:
        current = {c.id: c.fingerprint for c in parse_grid(spec).cells}
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


def build_report(results_dir: str | Path, out_dir: str | Path) -> Path:
    """Write ``report.md``, ``tables.tex`` and PNG plots of a results store into ``out_dir``.

    Returns:
        Path of the Markdown report.

    Raises:
        FileNotFoundError: ``results_dir`` holds no cell records.
    """
    store = ResultStore(results_dir)
    records = store.records()
    if not records:
        raise FileNotFoundError(f"{results_dir}: no cell records (run `mfd sweep` first)")
    spec_path = Path(results_dir) / "grid.yaml"
    spec = yaml.safe_load(spec_path.read_text()) if spec_path.is_file() else None
    spec = spec if isinstance(spec, dict) else None
    records, stale_note = _drop_stale(records, spec)
    res = Results(records, spec)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)

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
    md = [
        f"# Results: {Path(results_dir).name}",
        "",
        f"{len(records)} cells from `{results_dir}`. Entries are mean ± 95% confidence interval "
        "(Student t) over training seeds; each seed's value is the mean over its evaluation episodes. "
        "Bold: the best mean in the row and every mean within one standard error of it "
        "(lower is better for exploitability, latency and memory). `*`: some seeds failed or were skipped; "
        "an entry without ± has one seed. "
        "Normalized score = 100 (R − R_random) / (R_expert − R_random), with the references rolled out "
        "at each N."
        + (
            f" Behaviour policies evaluated without training ({', '.join(sorted(res.references))}) are "
            "references: never bold."
            if res.references
            else ""
        ),
        *(["", stale_note] if stale_note else []),
        "",
        "## Cells",
        "",
        status_table(res),
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
    expl = exploitability_table(res)
    if expl:
        md += [
            "",
            "## Exploitability (at the largest evaluation N)",
            "",
            "exact: mean-field exploitability of the measured policy table; estimate: see "
            "`mfdiffuser.eval.exploitability`.",
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
    (out / "tables.tex").write_text("\n".join(tex))
    report = out / "report.md"
    report.write_text("\n".join(md) + "\n")
    return report
