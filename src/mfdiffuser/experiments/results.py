"""The records of a results store, indexed by row (benchmark x quality x N) and method for reports.

One :class:`Results` per report: it picks each record's per-episode values of a metric, groups the
training seeds of a (benchmark, quality, N, method) and caches their statistics and the row's winners.
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from mfdiffuser.eval.stats import (
    Interval,
    RowVerdict,
    Samples,
    bootstrap_mean,
    row_winners,
)
from mfdiffuser.experiments.store import RECORD_KEYS

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
        """Aggregates across rows, computed once per report
        (:func:`~mfdiffuser.experiments.aggregates.set_aggregates`)."""

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


def method_label(res: Results, method: str) -> str:
    """A method's name as tables and plots show it (reference columns marked)."""
    return f"{method} (reference)" if method in res.references else method
