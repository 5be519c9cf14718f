"""Statistics of evaluations: intervals per row, paired comparisons, and aggregates across rows.

* :func:`mean_ci`: mean and Student-t interval of one cell's episodes (stored in every record).
* :func:`bootstrap_mean`, :func:`compare`, :func:`row_winners`: a row's (benchmark x quality x N)
  bootstrap intervals over training seeds and episodes, and its winners by a paired comparison on
  shared evaluation episodes (by non-overlapping intervals where the records share none).
* :func:`aggregates`, :func:`probability_of_improvement`, :func:`performance_profiles`: IQM, mean,
  probability of improvement and performance profiles over rows with stratified bootstrap intervals,
  from the ``rliable`` library (Agarwal et al., "Deep RL at the Edge of the Statistical Precipice",
  NeurIPS 2021).

The t quantile is computed here (numerical integration of the t density, then bisection); it matches
tabulated values to better than 1e-6.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, NamedTuple, cast

import numpy as np


class MeanCI(NamedTuple):
    """Mean of a sample with its 95% (or other) confidence interval ``mean +- half_width``."""

    mean: float
    half_width: float
    std: float
    sem: float
    n: int

    @property
    def lo(self) -> float:
        """Lower end of the interval."""
        return self.mean - self.half_width

    @property
    def hi(self) -> float:
        """Upper end of the interval."""
        return self.mean + self.half_width

    def as_dict(self) -> dict[str, float]:
        """Plain JSON-friendly dict (``mean, ci, std, sem, n``)."""
        return {"mean": self.mean, "ci": self.half_width, "std": self.std, "sem": self.sem, "n": self.n}


def _t_cdf(x: float, df: int) -> float:
    """CDF of Student's t with ``df`` degrees of freedom at ``x >= 0`` (Simpson's rule on [0, x])."""
    log_c = math.lgamma((df + 1) / 2) - math.lgamma(df / 2) - 0.5 * math.log(df * math.pi)
    # Substituting x = tan(u) maps [0, inf) to [0, pi/2) and makes the integrand smooth for every df.
    u_max = math.atan(x)
    n = 2000
    u = np.linspace(0.0, u_max, n + 1)
    t = np.tan(u)
    f = np.exp(log_c - (df + 1) / 2 * np.log1p(t * t / df)) / np.cos(u) ** 2
    w = np.ones(n + 1)
    w[1:-1:2], w[2:-1:2] = 4.0, 2.0
    return 0.5 + float(np.dot(w, f)) * (u_max / n) / 3.0


def t_quantile(p: float, df: int) -> float:
    """Quantile ``q`` with ``P(T <= q) = p`` for Student's t with ``df >= 1`` degrees of freedom.

    Raises:
        ValueError: ``p`` outside (0, 1) or ``df < 1``.
    """
    if not 0.0 < p < 1.0:
        raise ValueError(f"t_quantile: p must lie in (0, 1), got {p}")
    if df < 1 or int(df) != df:
        raise ValueError(f"t_quantile: df must be a positive integer, got {df}")
    if p < 0.5:
        return -t_quantile(1.0 - p, df)
    if p == 0.5:
        return 0.0
    lo, hi = 0.0, 1.0
    while _t_cdf(hi, df) < p:
        hi *= 2.0
    for _ in range(60):
        mid = 0.5 * (lo + hi)
        if _t_cdf(mid, df) < p:
            lo = mid
        else:
            hi = mid
    return 0.5 * (lo + hi)


def mean_ci(values: Sequence[float] | np.ndarray, confidence: float = 0.95) -> MeanCI:
    """Mean and two-sided confidence interval of ``values`` (one value per seed).

    The half width is ``t_{(1+c)/2, n-1} * s / sqrt(n)`` with the sample standard deviation ``s``
    (ddof = 1). With a single value the interval is undefined and reported as NaN.

    Raises:
        ValueError: no values, a non-finite value, or ``confidence`` outside (0, 1).
    """
    x = np.asarray(values, dtype=np.float64).ravel()
    if x.size == 0:
        raise ValueError("mean_ci: no values")
    if not np.all(np.isfinite(x)):
        raise ValueError(f"mean_ci: non-finite values in {x.tolist()}")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"mean_ci: confidence must lie in (0, 1), got {confidence}")
    n = int(x.size)
    mean = float(x.mean())
    if n == 1:
        return MeanCI(mean, float("nan"), float("nan"), float("nan"), 1)
    std = float(x.std(ddof=1))
    sem = std / math.sqrt(n)
    half = t_quantile(0.5 * (1.0 + confidence), n - 1) * sem
    return MeanCI(mean, half, std, sem, n)


# ------------------------------------------------------------------------------ bootstrap intervals
BOOT_REPS = 4000
"""Bootstrap resamples of per-row intervals and paired comparisons."""
AGG_REPS = 2000
"""Stratified bootstrap resamples of the aggregates across rows (IQM, mean, improvement, profiles)."""
CONFIDENCE = 0.95


class Interval(NamedTuple):
    """A point estimate with a two-sided percentile bootstrap interval ``[lo, hi]``.

    ``mean`` is the point estimate (a mean, an IQM or a probability of improvement). ``seeds`` and
    ``episodes`` say what was resampled: training seeds, and values in all (evaluation episodes, or
    seeds x rows for aggregates); an interval from a single value is NaN.
    """

    mean: float
    lo: float
    hi: float
    seeds: int
    episodes: int

    @property
    def defined(self) -> bool:
        """False where one value leaves nothing to resample (the interval is NaN)."""
        return not (math.isnan(self.lo) or math.isnan(self.hi))

    def overlaps(self, other: Interval) -> bool:
        """True if the two intervals share a point (an undefined interval overlaps everything)."""
        if not (self.defined and other.defined):
            return True
        return self.lo <= other.hi and other.lo <= self.hi


def _check_groups(groups: Sequence[Sequence[float] | np.ndarray]) -> list[np.ndarray]:
    out = [np.asarray(g, dtype=np.float64).ravel() for g in groups]
    if not out or any(g.size == 0 for g in out):
        raise ValueError("bootstrap: every training seed needs at least one value")
    if not all(np.all(np.isfinite(g)) for g in out):
        raise ValueError("bootstrap: non-finite values")
    return out


def _percentile(stat: np.ndarray, confidence: float) -> tuple[float, float]:
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must lie in (0, 1), got {confidence}")
    alpha = 1.0 - confidence
    lo, hi = np.quantile(stat, [alpha / 2, 1.0 - alpha / 2])
    return float(lo), float(hi)


def _counts(rng: np.random.Generator, n: int, reps: int) -> np.ndarray:
    """``[reps, n]`` multiplicities of ``reps`` resamples with replacement of ``n`` items."""
    idx = rng.integers(0, n, size=(reps, n)) + n * np.arange(reps)[:, None]  # row r: bins r n .. r n + n - 1
    return np.bincount(idx.ravel(), minlength=reps * n).reshape(reps, n)


def bootstrap_mean(
    groups: Sequence[Sequence[float] | np.ndarray],
    *,
    reps: int = BOOT_REPS,
    confidence: float = CONFIDENCE,
    seed: int = 0,
    shared_episodes: bool = False,
) -> Interval:
    """Mean over training seeds of each seed's mean over its episodes, with a two-level bootstrap interval.

    ``groups[s]`` holds training seed ``s``'s per-episode values. One resample draws ``S`` training
    seeds with replacement, then redraws episodes with replacement, and takes the mean over the drawn
    seeds of their resampled episode means. Each seed's episodes are its own (a grid's blocks), so
    each drawn seed gets its own episode resample, unless ``shared_episodes``: every seed ran the same
    episodes, in the same order, and one episode draw serves all seeds (an episode hard for one seed
    is hard for all; redrawing per seed would average that away and narrow the interval). The
    interval is the percentile interval of ``reps`` such resamples. With one training seed only
    episodes are resampled; with one value per seed only seeds are; one value in all gives a NaN
    interval. A percentile interval lies within the values' range, so a quantity that cannot be
    negative (exploitability, latency, memory) never gets an interval below zero, and an estimate
    that can (Ising's exploitability) keeps its negative values.

    Args:
        groups: per training seed, its per-episode values (``[S]`` lists of ``[E_s]`` values).
        reps: number of resamples.
        confidence: coverage of the interval.
        seed: seed of the resampling generator (the interval is reproducible).
        shared_episodes: every seed's values are on the same episodes, in the same order.

    Raises:
        ValueError: no values, a seed without values, a non-finite value, a bad ``confidence``, or
            ``shared_episodes`` with seeds of different episode counts.
    """
    gs = _check_groups(groups)
    mean = float(np.mean([g.mean() for g in gs]))
    n_s, n_e = len(gs), sum(g.size for g in gs)
    if n_e == 1:
        return Interval(mean, math.nan, math.nan, 1, 1)
    lo, hi = _percentile(_resampled_means(gs, reps, np.random.default_rng(seed), shared_episodes), confidence)
    return Interval(mean, lo, hi, n_s, n_e)


def _resampled_means(
    gs: list[np.ndarray], reps: int, rng: np.random.Generator, shared_episodes: bool
) -> np.ndarray:
    """``[reps]`` two-level bootstrap resamples of the mean over seeds (see :func:`bootstrap_mean`)."""
    n_s = len(gs)
    if shared_episodes:
        if len({g.size for g in gs}) != 1:
            raise ValueError("bootstrap: shared episodes need the same episode count for every seed")
        return _two_level(np.stack(gs), _counts(rng, gs[0].size, reps), rng)
    pick = rng.integers(0, n_s, size=(reps, n_s))  # [reps, S]: which seed fills each slot
    slot_means = np.empty((reps, n_s))
    for s, g in enumerate(gs):
        # every slot gets its own episode resample of seed s; keep those of the slots that drew s
        ep_means = g[rng.integers(0, g.size, size=(reps, n_s, g.size))].mean(axis=2)
        np.copyto(slot_means, ep_means, where=pick == s)
    return slot_means.mean(axis=1)


def mean_over_rows(
    rows: Sequence[Samples], *, reps: int = BOOT_REPS, confidence: float = CONFIDENCE, seed: int = 0
) -> Interval:
    """Mean over rows of each row's mean over training seeds, with a bootstrap interval.

    The rows are independent (their own datasets, trainings and episodes: a method's rows of one
    benchmark at one N, over dataset qualities), so each is resampled on its own, as
    :func:`bootstrap_mean` resamples it, and a resample of the whole is the mean of the rows'
    resamples. Where every row holds one value the interval is NaN.

    Raises:
        ValueError: no rows, or a row :func:`bootstrap_mean` refuses.
    """
    if not rows:
        raise ValueError("mean_over_rows: no rows")
    groups = [_check_groups(r.values) for r in rows]
    mean = float(np.mean([np.mean([g.mean() for g in gs]) for gs in groups]))
    n_s, n_e = sum(len(gs) for gs in groups), sum(g.size for gs in groups for g in gs)
    if all(sum(g.size for g in gs) == 1 for gs in groups):  # nothing to resample
        return Interval(mean, math.nan, math.nan, n_s, n_e)
    rng = np.random.default_rng(seed)
    draws = [_resampled_means(gs, reps, rng, r.shared_episodes) for gs, r in zip(groups, rows, strict=True)]
    lo, hi = _percentile(np.mean(draws, axis=0), confidence)
    return Interval(mean, lo, hi, n_s, n_e)


def _two_level(mat: np.ndarray, episode_counts: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """``[reps]`` means of ``mat[S, E]`` over seeds drawn with replacement x the given episode draws."""
    n_s, n_e = mat.shape
    seed_counts = _counts(rng, n_s, episode_counts.shape[0])
    return np.einsum("rs,se,re->r", seed_counts, mat, episode_counts) / (n_s * n_e)


class Samples(NamedTuple):
    """One method's evaluation at one row: per training seed, its per-episode values.

    ``episode_seeds[s]`` (aligned with ``values[s]``) names the evaluation episodes, or is None where
    the record does not say (then no paired comparison is possible).
    """

    values: Sequence[np.ndarray]
    episode_seeds: Sequence[np.ndarray | None]

    @property
    def shared_episodes(self) -> bool:
        """True if two or more seeds all ran the same episodes in the same order."""
        if len(self.episode_seeds) < 2 or any(e is None for e in self.episode_seeds):
            return False
        first, *rest = (np.asarray(e) for e in self.episode_seeds)
        return all(np.array_equal(first, e) for e in rest)

    def interval(self, **kwargs: Any) -> Interval:
        """:func:`bootstrap_mean` of the values (keyword arguments passed on)."""
        return bootstrap_mean(self.values, shared_episodes=self.shared_episodes, **kwargs)


def _episode_maps(sample: Samples) -> list[dict[int, float]] | None:
    """Per training seed, ``{episode seed: value}``; None where a seed's episodes are unnamed or repeated."""
    maps = []
    for vals, eps in zip(sample.values, sample.episode_seeds, strict=True):
        if eps is None or len(eps) != len(vals):
            return None
        keys = np.asarray(eps).tolist()
        if len(set(keys)) != len(keys):
            return None
        maps.append(dict(zip(keys, np.asarray(vals, dtype=np.float64), strict=True)))
    return maps


def _on_shared_episodes(a: Samples, b: Samples) -> tuple[np.ndarray, np.ndarray] | None:
    """``A[S_a, E]`` and ``B[S_b, E]``: both methods' values on the episodes every seed of both ran."""
    ma, mb = _episode_maps(a), _episode_maps(b)
    if not ma or not mb:
        return None
    maps = ma + mb
    shared = sorted(set.intersection(*(set(m) for m in maps)))
    if len(shared) < 2:
        return None
    mat = np.array([[m[e] for e in shared] for m in maps])
    return mat[: len(ma)], mat[len(ma) :]


def _paired_blocks(a: Samples, b: Samples) -> list[np.ndarray] | None:
    """Per training seed of ``a``, the differences ``a - b`` on its episodes that ``b`` also ran.

    For seeds evaluated on blocks of their own (a grid's layout): each episode seed is run by at most
    one seed of each method, and the episode names the pair. The blocks must pair one to one: each
    seed of ``a`` shares its episodes with one seed of ``b`` only, and no two seeds of ``a`` with the
    same one (methods evaluated on blocks of different lengths do not pair: ``a``'s seeds would all
    meet ``b``'s first). None where they do not, where an episode is unnamed or run twice by one
    method, or where fewer than 2 episodes are shared.
    """
    ma, mb = _episode_maps(a), _episode_maps(b)
    if ma is None or mb is None:
        return None
    for maps in (ma, mb):  # each episode run by one seed of the method at most
        if sum(len(m) for m in maps) != len(set().union(*maps)):
            return None
    owner = {e: s for s, m in enumerate(mb) for e in m}
    partners: list[int] = []
    blocks = []
    for m in ma:
        shared = sorted(e for e in m if e in owner)
        if not shared:
            continue
        seeds_b = {owner[e] for e in shared}
        if len(seeds_b) != 1:
            return None
        partners.append(seeds_b.pop())
        blocks.append(np.array([m[e] - mb[partners[-1]][e] for e in shared]))
    if len(set(partners)) != len(partners):
        return None
    return blocks if sum(d.size for d in blocks) >= 2 else None


class Comparison(NamedTuple):
    """Difference ``a - b`` of two methods' means at one row, and whether the data resolve it.

    ``paired``: True if decided on shared evaluation episodes (``episodes`` of them), False if by
    non-overlapping intervals of the two means (then ``lo``/``hi`` are NaN).
    """

    diff: float
    lo: float
    hi: float
    paired: bool
    episodes: int
    resolved: bool
    """True if ``a`` and ``b`` differ at the interval's confidence (the sign is that of ``diff``)."""


def compare(
    a: Samples,
    b: Samples,
    *,
    reps: int = BOOT_REPS,
    confidence: float = CONFIDENCE,
    seed: int = 0,
    intervals: tuple[Interval, Interval] | None = None,
) -> Comparison:
    """Compare two methods at one row: paired on shared evaluation episodes where the records allow.

    Paired, every seed on the same episodes: the values on the episode seeds that every training seed
    of both methods ran form ``A[S_a, E]`` and ``B[S_b, E]``. One resample draws the ``E`` episodes
    once with replacement (the same draw for both methods, which is the pairing: both faced the same
    episodes), and each method's training seeds independently with replacement; the statistic is the
    difference of the two means over drawn seeds x drawn episodes.

    Paired, each seed on its own block of episodes (a grid's layout): the per-episode differences on
    the episodes both ran, grouped by ``a``'s training seed, with :func:`bootstrap_mean`'s two-level
    interval (seeds, then episodes within them).

    ``a`` and ``b`` differ if the percentile interval of the difference excludes 0. Unpaired (no
    episode seeds, or fewer than 2 shared): they differ if their intervals do not overlap:
    ``intervals`` if given (those a report shows), else :func:`bootstrap_mean`'s.
    """
    shared = _on_shared_episodes(a, b)
    blocks = _paired_blocks(a, b) if shared is None else None
    if blocks is not None:
        iv = bootstrap_mean(blocks, reps=reps, confidence=confidence, seed=seed)
        resolved = iv.defined and (iv.lo > 0.0 or iv.hi < 0.0)
        return Comparison(iv.mean, iv.lo, iv.hi, True, iv.episodes, resolved)
    if shared is None:
        ia, ib = intervals or (
            a.interval(reps=reps, confidence=confidence, seed=seed),
            b.interval(reps=reps, confidence=confidence, seed=seed),
        )
        return Comparison(ia.mean - ib.mean, math.nan, math.nan, False, 0, not ia.overlaps(ib))
    ma, mb = shared
    e = ma.shape[1]
    diff = float(ma.mean() - mb.mean())
    rng = np.random.default_rng(seed)
    w = _counts(rng, e, reps)  # [reps, E], shared by both methods
    stat = _two_level(ma, w, rng) - _two_level(mb, w, rng)
    lo, hi = _percentile(stat, confidence)
    return Comparison(diff, lo, hi, True, e, lo > 0.0 or hi < 0.0)


class RowVerdict(NamedTuple):
    """The winners of one row: the best mean and every method the data do not separate from it."""

    best: int | None
    """Index of the best mean (None if no method has values)."""
    winners: list[bool]
    """Per method: best, or not resolved from the best."""
    paired: list[bool | None]
    """Per method: how it was compared with the best (True paired, False intervals, None not compared)."""


def row_winners(
    cells: Sequence[Samples | None],
    *,
    higher: bool,
    reps: int = BOOT_REPS,
    seed: int = 0,
    intervals: Sequence[Interval | None] | None = None,
) -> RowVerdict:
    """Winners of a row of methods (``None``: a method without values here).

    The best is the highest mean (the lowest if not ``higher``); each other method is compared with it
    by :func:`compare` and is a winner too unless the comparison resolves it as worse. ``intervals``
    (per method, aligned with ``cells``) are those the unpaired fallback compares, if given.
    """
    means = [None if c is None else float(np.mean([np.mean(v) for v in c.values])) for c in cells]
    valid = [(i, m) for i, m in enumerate(means) if m is not None]
    if not valid:
        return RowVerdict(None, [False] * len(cells), [None] * len(cells))
    best = (max if higher else min)(valid, key=lambda im: im[1])[0]
    winners, paired = [False] * len(cells), cast("list[bool | None]", [None] * len(cells))
    winners[best] = True
    for i, c in enumerate(cells):
        if c is None or i == best:
            continue
        pair = None
        if intervals is not None and intervals[i] is not None and intervals[best] is not None:
            pair = (cast(Interval, intervals[i]), cast(Interval, intervals[best]))
        cmp = compare(c, cast(Samples, cells[best]), reps=reps, seed=seed, intervals=pair)
        # worse only if resolved below the best (above, where lower is better); on the shared episodes
        # alone a method can come out ahead of the best mean over all episodes: then it wins too
        worse = cmp.resolved and (cmp.diff < 0.0 if higher else cmp.diff > 0.0)
        winners[i], paired[i] = not worse, cmp.paired
    return RowVerdict(best, winners, paired)


# ------------------------------------------------------------------ aggregates across rows (rliable)
@contextlib.contextmanager
def _seeded_global_numpy(seed: int) -> Iterator[None]:
    """Seed NumPy's global generator for a block, restoring its state after.

    rliable's stratified bootstrap draws its indices from ``np.random`` itself (its ``random_state``
    argument does not reach them), so this is the only way to make its intervals reproducible.
    """
    state = np.random.get_state()
    np.random.seed(seed)
    try:
        yield
    finally:
        np.random.set_state(state)


class Aggregate(NamedTuple):
    """IQM and mean of one method's normalized scores over rows, with stratified bootstrap intervals."""

    iqm: Interval
    mean: Interval


def aggregates(
    scores: Mapping[str, np.ndarray], *, reps: int = AGG_REPS, confidence: float = CONFIDENCE, seed: int = 0
) -> dict[str, Aggregate]:
    """IQM and mean over runs x rows per method, with rliable's stratified bootstrap intervals.

    Args:
        scores: per method, ``[R, T]`` normalized scores of ``R`` training seeds on ``T`` rows (each
            entry a seed's mean over its episodes). The bootstrap redraws the seeds within each row.
        reps: bootstrap resamples.
        confidence: coverage of the intervals.
        seed: seed of the resampling.

    Returns:
        Per method, its :class:`Aggregate`; IQM is the mean of the middle half of all ``R * T`` scores
        (rliable's ``aggregate_iqm``: ``int(R T / 4)`` scores cut at each end).
    """
    from rliable import library as rly
    from rliable import metrics as rm

    def both(x: np.ndarray) -> np.ndarray:
        return np.array([iqm(x), rm.aggregate_mean(x)])

    out = {}
    for name, x in scores.items():
        x = _score_matrix(x)
        with _seeded_global_numpy(seed):
            point, ci = rly.get_interval_estimates(
                {name: x}, both, reps=reps, confidence_interval_size=confidence
            )
        (p_iqm, p_mean), ((iqm_lo, mean_lo), (iqm_hi, mean_hi)) = point[name], ci[name]
        out[name] = Aggregate(
            Interval(float(p_iqm), float(iqm_lo), float(iqm_hi), x.shape[0], x.size),
            Interval(float(p_mean), float(mean_lo), float(mean_hi), x.shape[0], x.size),
        )
    return out


def iqm(x: np.ndarray) -> float:
    """Interquartile mean of all entries: ``int(n / 4)`` cut at each end of the ``n`` sorted values.

    rliable's ``aggregate_iqm`` (SciPy's ``trim_mean(x, 0.25)``), without SciPy's per-call overhead,
    which dominated the bootstrap.
    """
    v = np.sort(np.asarray(x, dtype=np.float64).ravel())
    k = int(0.25 * v.size)
    return float(v[k : v.size - k].mean())


def _score_matrix(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2 or x.size == 0 or not np.all(np.isfinite(x)):
        raise ValueError(f"scores must be a finite, non-empty [runs, rows] matrix, got shape {x.shape}")
    return x


def improvement_probability(x: np.ndarray, y: np.ndarray) -> float:
    """P(X > Y) + P(X = Y) / 2 for a random run of X and of Y on the same row, averaged over rows.

    The same quantity as rliable's ``probability_of_improvement`` (the Mann-Whitney U statistic over
    ``R_x R_y`` per row), computed for all rows at once: rliable's loop over rows calling SciPy is some
    100x slower, too slow for thousands of bootstrap resamples.

    Args:
        x: ``[R_x, T]`` scores of method X.
        y: ``[R_y, T]`` scores of method Y on the same ``T`` rows.
    """
    gt = x[:, None, :] > y[None, :, :]  # [R_x, R_y, T]
    eq = x[:, None, :] == y[None, :, :]
    return float(np.mean(gt.mean(axis=(0, 1)) + 0.5 * eq.mean(axis=(0, 1))))


def probability_of_improvement(
    x: np.ndarray, y: np.ndarray, *, reps: int = AGG_REPS, confidence: float = CONFIDENCE, seed: int = 0
) -> Interval:
    """Probability that X improves on Y, with rliable's stratified bootstrap interval.

    Args:
        x: ``[R_x, T]`` normalized scores of X (training seeds x rows).
        y: ``[R_y, T]`` normalized scores of Y on the same rows; the bootstrap redraws each method's
            seeds within each row independently.
        reps: bootstrap resamples.
        confidence: coverage of the interval.
        seed: seed of the resampling.

    Raises:
        ValueError: the two matrices cover different numbers of rows.
    """
    from rliable import library as rly

    x, y = _score_matrix(x), _score_matrix(y)
    if x.shape[1] != y.shape[1]:
        raise ValueError(f"probability_of_improvement: {x.shape[1]} rows against {y.shape[1]}")
    with _seeded_global_numpy(seed):
        point, ci = rly.get_interval_estimates(
            {"xy": [x, y]}, improvement_probability, reps=reps, confidence_interval_size=confidence
        )
    (lo,), (hi,) = np.asarray(ci["xy"]).reshape(2, 1)
    return Interval(float(point["xy"]), float(lo), float(hi), min(x.shape[0], y.shape[0]), x.shape[1])


def score_distribution(scores: np.ndarray, taus: np.ndarray) -> np.ndarray:
    """``[K]`` fraction of all entries of ``scores`` above each threshold of ``taus`` ``[K]``.

    rliable's default profile (``score_distributions``), vectorized: rliable's evaluates one threshold
    per Python call, some 100x slower inside a bootstrap.
    """
    return (np.asarray(scores)[..., None] > np.asarray(taus)).reshape(-1, len(taus)).mean(axis=0)


class Profile(NamedTuple):
    """A performance profile: the fraction of runs x rows scoring above each threshold, with its band."""

    taus: np.ndarray
    """``[K]`` thresholds (normalized score)."""
    fraction: np.ndarray
    """``[K]`` fraction of scores above each threshold."""
    lo: np.ndarray
    """``[K]`` lower end of the stratified bootstrap band."""
    hi: np.ndarray
    """``[K]`` upper end."""


def performance_profiles(
    scores: Mapping[str, np.ndarray],
    taus: np.ndarray,
    *,
    reps: int = AGG_REPS,
    confidence: float = CONFIDENCE,
    seed: int = 0,
) -> dict[str, Profile]:
    """Performance profiles (rliable's score distributions) with stratified bootstrap bands.

    Args:
        scores: per method, ``[R, T]`` normalized scores (training seeds x rows).
        taus: ``[K]`` thresholds.
        reps: bootstrap resamples.
        confidence: coverage of the bands.
        seed: seed of the resampling.
    """
    from rliable import library as rly

    mats = {k: _score_matrix(v) for k, v in scores.items()}
    taus = np.asarray(taus, dtype=np.float64)
    with _seeded_global_numpy(seed):
        prof, cis = rly.create_performance_profile(
            mats, taus, custom_profile_func=score_distribution, reps=reps, confidence_interval_size=confidence
        )
    return {
        k: Profile(taus, np.asarray(prof[k], dtype=np.float64), *np.asarray(cis[k], dtype=np.float64))
        for k in mats
    }


def common_runs(per_row: Sequence[Mapping[int, float]]) -> tuple[np.ndarray, list[int]]:
    """A ``[R, T]`` score matrix from per-row ``{training seed: score}``: the seeds present in every row.

    rliable's stratified bootstrap needs the same runs in every row; a seed missing from one row
    (failed, skipped) is left out of all of them.

    Returns:
        The matrix (``R`` may be 0) and the seeds kept, ascending.
    """
    seeds = sorted(set.intersection(*(set(r) for r in per_row))) if per_row else []
    return np.array([[row[s] for row in per_row] for s in seeds], dtype=np.float64).reshape(
        len(seeds), len(per_row)
    ), seeds
