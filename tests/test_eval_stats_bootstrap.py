import math

import numpy as np
import pytest
import scipy.stats

from mfdiffuser.eval.stats import (
    Samples,
    aggregates,
    bootstrap_mean,
    common_runs,
    compare,
    improvement_probability,
    iqm,
    mean_over_rows,
    performance_profiles,
    probability_of_improvement,
    row_winners,
    score_distribution,
)

# ------------------------------------------------------------------------------ per-row intervals


def test_bootstrap_of_one_seed_matches_the_binomial_by_hand():
    # One seed, episodes [0, 0, 0, 10]: a resample's mean is 2.5 K with K ~ Binomial(4, 1/4);
    # P(K = 0) = 0.316 > 0.025 and P(K <= 2) = 0.949 < 0.975 < P(K <= 3) = 0.996, so the 95%
    # percentile interval is [0, 7.5].
    ci = bootstrap_mean([[0.0, 0.0, 0.0, 10.0]], seed=3)
    assert (ci.mean, ci.lo, ci.hi, ci.seeds, ci.episodes) == (2.5, 0.0, 7.5, 1, 4)


def test_bootstrap_resamples_seeds_when_episodes_are_constant():
    # Seeds with constant episodes: only the seed draw matters; the mean of two draws from {1, 3}
    # is 1, 2 or 3 with probabilities 1/4, 1/2, 1/4: interval [1, 3].
    ci = bootstrap_mean([[1.0, 1.0, 1.0], [3.0, 3.0, 3.0]], seed=0)
    assert (ci.mean, ci.lo, ci.hi) == (2.0, 1.0, 3.0)


def test_bootstrap_of_one_seed_agrees_with_scipy():
    x = np.random.default_rng(0).normal(10.0, 3.0, size=40)
    ours = bootstrap_mean([x], reps=20000, seed=1)
    ref = scipy.stats.bootstrap((x,), np.mean, method="percentile", n_resamples=20000, random_state=2)
    # same estimator, different draws: the ends agree within Monte Carlo error (s.e. of the mean 0.47)
    assert ours.mean == pytest.approx(x.mean())
    assert ours.lo == pytest.approx(ref.confidence_interval.low, abs=0.05)
    assert ours.hi == pytest.approx(ref.confidence_interval.high, abs=0.05)


def test_bootstrap_is_reproducible_and_seed_level_variance_widens_it():
    groups = [[10.0, 12.0, 11.0], [30.0, 29.0, 31.0], [20.0, 21.0, 19.0]]
    assert bootstrap_mean(groups, seed=5) == bootstrap_mean(groups, seed=5)
    within = bootstrap_mean([[10.0, 12.0, 11.0, 30.0, 29.0, 31.0, 20.0, 21.0, 19.0]], seed=5)
    across = bootstrap_mean(groups, seed=5)
    assert across.mean == pytest.approx(within.mean)
    assert across.hi - across.lo > within.hi - within.lo  # three seeds far apart: wide


def test_bootstrap_interval_stays_within_the_values_and_single_value():
    # skewed values that cannot be negative (a latency): the percentile interval stays at or above 0
    lat = bootstrap_mean([[0.0, 0.0, 9.0], [0.0], [0.0, 0.0]], seed=0)
    assert 0.0 == lat.lo <= lat.mean <= lat.hi <= 9.0
    # an estimate that came out negative (Ising's exploitability) is shown as it is, mean inside
    est = bootstrap_mean([[-0.03], [-0.01], [-0.02]], seed=0)
    assert est.mean == pytest.approx(-0.02) and est.lo <= est.mean <= est.hi < 0.0
    one = bootstrap_mean([[7.0]])
    assert one.mean == 7.0 and math.isnan(one.lo) and not one.defined and one.overlaps(est)


def test_blocks_of_different_lengths_are_not_paired():
    # a evaluated on 4 episodes per seed (blocks 0-3, 4-7, 8-11), b on 20 (0-19, 20-39, 40-59): every
    # seed of a meets b's seed 0 only, so a pairing would compare a with one seed of b
    a = Samples([np.full(4, 5.0) for _ in range(3)], [np.arange(4 * s, 4 * s + 4) for s in range(3)])
    blocks_of_20 = [np.arange(20 * s, 20 * s + 20) for s in range(3)]
    b = Samples([np.full(20, o) for o in (0.0, 10.0, 20.0)], blocks_of_20)
    cmp = compare(a, b)
    assert not cmp.paired and cmp.diff == pytest.approx(-5.0) and not cmp.resolved
    # the same blocks on both sides pair seed with seed
    c = Samples([np.full(4, o) for o in (0.0, 10.0, 20.0)], a.episode_seeds)
    assert compare(a, c).paired


@pytest.mark.parametrize("bad", [[], [[]], [[1.0, float("nan")]], [[1.0], [float("inf")]]])
def test_bootstrap_rejects_bad_input(bad):
    with pytest.raises(ValueError):
        bootstrap_mean(bad)


def _episodes(values_by_seed, episode_seeds):
    values = [np.asarray(v, float) for v in values_by_seed]
    return Samples(values, [np.asarray(episode_seeds)] * len(values))


def test_paired_comparison_resolves_what_overlapping_intervals_do_not():
    # Episodes differ in difficulty by tens of points, and both methods face the same episodes;
    # A is 1 point better on every episode (with a little noise).
    rng = np.random.default_rng(0)
    difficulty = rng.uniform(0.0, 60.0, size=12)
    ep = np.arange(100, 112)
    a = _episodes([difficulty + 1.0 + rng.normal(0, 0.1, 12) for _ in range(3)], ep)
    b = _episodes([difficulty + rng.normal(0, 0.1, 12) for _ in range(3)], ep)
    assert a.interval().overlaps(b.interval())  # unpaired: not separated
    cmp = compare(a, b)
    assert cmp.paired and cmp.episodes == 12 and cmp.resolved
    assert 0.8 < cmp.lo < cmp.diff < cmp.hi < 1.2
    # B's episodes listed in another order: pairing follows the episode seeds, not the positions
    order = rng.permutation(12)
    shuffled = Samples([v[order] for v in b.values], [ep[order]] * 3)
    assert compare(a, shuffled).lo == pytest.approx(cmp.lo)
    # the same values without episode seeds: only intervals, which overlap
    blind = compare(Samples(a.values, [None] * 3), Samples(b.values, [None] * 3))
    assert not blind.paired and not blind.resolved and math.isnan(blind.lo)
    assert blind.diff == pytest.approx(cmp.diff)


def test_paired_comparison_uses_only_the_shared_episodes():
    a = Samples([np.array([5.0, 6.0, 7.0])], [np.array([1, 2, 3])])
    b = Samples([np.array([4.0, 5.0, 9.0])], [np.array([2, 3, 4])])
    cmp = compare(a, b)  # shared: episodes 2 and 3: a (6, 7), b (4, 5): +2 on both
    assert cmp.paired and cmp.episodes == 2 and cmp.diff == 2.0 and (cmp.lo, cmp.hi) == (2.0, 2.0)
    one = Samples([np.array([5.0, 6.0])], [np.array([1, 9])])
    assert not compare(one, b).paired  # no two shared episodes: intervals


def test_seeds_on_the_same_episodes_share_one_episode_draw():
    # Five seeds on the same six episodes, which differ by tens of points: an episode hard for one
    # seed is hard for all. Redrawing each seed's episodes on its own would average that away.
    rng = np.random.default_rng(1)
    difficulty = rng.uniform(0.0, 60.0, size=6)
    values = [difficulty + rng.normal(0, 0.5, 6) for _ in range(5)]
    shared = _episodes(values, np.arange(6))
    assert shared.shared_episodes
    wide, narrow = shared.interval(), bootstrap_mean(values)
    assert wide.mean == narrow.mean and (wide.hi - wide.lo) > 1.8 * (narrow.hi - narrow.lo)
    # one seed's six episodes alone: the same spread as the five seeds that repeat them
    alone = bootstrap_mean([np.mean(values, axis=0)])
    assert (wide.hi - wide.lo) == pytest.approx(alone.hi - alone.lo, rel=0.15)
    blocks = Samples(values, [np.arange(6) + 6 * s for s in range(5)])  # a block of its own each
    assert not blocks.shared_episodes and blocks.interval().lo == narrow.lo
    with pytest.raises(ValueError, match="same episode count"):
        bootstrap_mean([[1.0, 2.0], [1.0]], shared_episodes=True)


def test_seeds_on_blocks_of_their_own_are_paired_episode_by_episode():
    # A grid's layout: training seed s of every method runs episodes 10 s .. 10 s + 9. Episodes differ
    # by tens of points; A is 1 point better on each.
    rng = np.random.default_rng(2)
    eps = [np.arange(10) + 10 * s for s in range(3)]
    difficulty = [rng.uniform(0.0, 60.0, size=10) for _ in range(3)]
    a = Samples([d + 1.0 + rng.normal(0, 0.1, 10) for d in difficulty], eps)
    b = Samples([d + rng.normal(0, 0.1, 10) for d in difficulty], eps)
    assert a.interval().overlaps(b.interval())
    cmp = compare(a, b)
    assert cmp.paired and cmp.episodes == 30 and cmp.resolved and 0.8 < cmp.lo < cmp.diff < cmp.hi < 1.2
    # a seed of B missing (failed): its block drops out, the rest stay paired
    part = compare(a, Samples(b.values[:2], eps[:2]))
    assert part.paired and part.episodes == 20 and part.resolved
    # by hand: one seed each, differences 1, 2, 3 on the shared episodes 7, 8, 9
    one = compare(Samples([np.array([1.0, 2.0, 3.0])], [np.array([7, 8, 9])]),
                  Samples([np.array([0.0, 0.0, 0.0, 5.0])], [np.array([7, 8, 9, 10])]))
    assert one.paired and one.diff == 2.0 and one.episodes == 3
    # an episode run by two seeds of one method names no pair: intervals only
    twice = Samples([difficulty[0], difficulty[1]], [eps[0], np.r_[eps[0][:1], eps[1][1:]]])
    assert not compare(twice, b).paired


def test_row_winners_bold_the_best_and_what_the_data_do_not_separate():
    ep = np.arange(10)
    base = np.linspace(0.0, 90.0, 10)
    good = _episodes([base + 5.0, base + 5.2], ep)
    tied = _episodes([base + 4.9, base + 5.3], ep)  # mean 5.1 vs 5.1: not separated
    worse = _episodes([base, base + 0.1], ep)
    v = row_winners([worse, None, good, tied], higher=True)
    assert v.winners == [False, False, True, True] and v.paired == [True, None, None, True]
    assert v.best in (2, 3)
    low = row_winners([worse, None, good, tied], higher=False)  # lower is better: the worse one wins
    assert low.best == 0 and low.winners == [True, False, False, False]
    assert row_winners([None, None], higher=True) == (None, [False, False], [None, None])
    # the best mean over all its episodes, but behind on the two episodes it shares with the other:
    # the other is resolved ahead there, so it is a winner too
    best = Samples([np.array([0.0, 0.0, 100.0])], [np.array([1, 2, 3])])
    other = Samples([np.array([1.0, 1.0])], [np.array([1, 2])])
    assert row_winners([best, other], higher=True).winners == [True, True]


# ------------------------------------------------------------------------- aggregates across rows


def test_iqm_and_mean_by_hand():
    # 8 scores 0..6 and 100: IQM cuts int(8 / 4) = 2 at each end -> mean of 2, 3, 4, 5 = 3.5
    x = np.array([[0.0, 1.0, 2.0, 3.0], [4.0, 5.0, 6.0, 100.0]])
    agg = aggregates({"m": x}, reps=200)["m"]
    assert agg.iqm.mean == 3.5 and agg.mean.mean == pytest.approx(121 / 8)
    assert (agg.iqm.seeds, agg.iqm.episodes) == (2, 8)


def test_stratified_bootstrap_of_iqm_matches_a_direct_numpy_computation():
    x = np.random.default_rng(1).normal(50.0, 20.0, size=(3, 5))
    agg = aggregates({"m": x}, reps=300, seed=7)["m"]
    # stratified: each row (column) redraws its own 3 runs with replacement
    np.random.seed(7)
    stats = []
    for _ in range(300):
        idx = np.random.choice(3, (3, 5), replace=True)
        stats.append(scipy.stats.trim_mean(x[idx, np.arange(5)], 0.25, axis=None))
    lo, hi = np.percentile(stats, [2.5, 97.5])
    assert (agg.iqm.lo, agg.iqm.hi) == (pytest.approx(lo), pytest.approx(hi))
    state = np.random.get_state()[1].copy()
    aggregates({"m": x}, reps=10, seed=3)
    assert np.array_equal(np.random.get_state()[1], state)  # the global generator is left as it was


@pytest.mark.parametrize("shape", [(1, 1), (3, 5), (4, 7), (5, 12)])
def test_fast_iqm_and_profile_equal_rliables(shape):
    from rliable import library, metrics

    x = np.random.default_rng(shape[1]).normal(50.0, 30.0, size=shape).round()  # rounded: ties
    assert iqm(x) == pytest.approx(metrics.aggregate_iqm(x))
    taus = np.linspace(-20.0, 120.0, 15)
    assert score_distribution(x, taus) == pytest.approx(library.score_distributions(x, taus))


def test_probability_of_improvement_on_hand_made_cases():
    x = np.array([[60.0, 70.0], [65.0, 75.0], [62.0, 71.0]])
    assert improvement_probability(x, x - 50.0) == 1.0
    assert improvement_probability(x - 50.0, x) == 0.0
    assert improvement_probability(x, x) == 0.5
    # row 0: x in (1, 3) against y = 2: P = 1/2; row 1: x in (5, 5) against y = 4: P = 1; mean 0.75
    assert improvement_probability(np.array([[1.0, 5.0], [3.0, 5.0]]), np.array([[2.0, 4.0]])) == 0.75
    dom = probability_of_improvement(x, x - 50.0, reps=200)
    assert (dom.mean, dom.lo, dom.hi) == (1.0, 1.0, 1.0)
    same = probability_of_improvement(x, x.copy(), reps=200)
    assert same.mean == 0.5


def test_improvement_probability_equals_rliables():
    from rliable import metrics

    rng = np.random.default_rng(4)
    x = rng.integers(0, 5, size=(4, 6)).astype(float)  # small integers: many ties
    y = rng.integers(0, 5, size=(3, 6)).astype(float)
    assert improvement_probability(x, y) == pytest.approx(metrics.probability_of_improvement(x, y))
    with pytest.raises(ValueError):
        probability_of_improvement(x, y[:, :5])


def test_performance_profile_by_hand():
    prof = performance_profiles({"a": np.array([[10.0, 20.0], [30.0, 40.0]])}, np.array([0, 15, 35, 50]),
                                reps=100)["a"]
    assert prof.fraction.tolist() == [1.0, 0.75, 0.25, 0.0]
    assert np.all(prof.lo <= prof.fraction) and np.all(prof.fraction <= prof.hi)


def test_common_runs_keeps_the_seeds_of_every_row():
    mat, seeds = common_runs([{0: 1.0, 1: 2.0, 2: 3.0}, {0: 4.0, 2: 6.0}])
    assert seeds == [0, 2] and mat.tolist() == [[1.0, 4.0], [3.0, 6.0]]
    assert common_runs([{0: 1.0}, {1: 2.0}])[0].shape == (0, 2)


def test_mean_over_rows_resamples_each_row_on_its_own():
    noisy = Samples([np.array([0.0, 10.0, 20.0]), np.array([5.0, 15.0])], [None, None])
    exact = Samples([np.array([50.0, 50.0])], [None])
    both = mean_over_rows([noisy, exact], seed=3)
    alone = bootstrap_mean(noisy.values, seed=3)
    assert both.mean == pytest.approx((10.0 + 50.0) / 2)
    # the exact row adds no spread: the interval is the noisy row's, halved
    assert both.lo == pytest.approx((alone.lo + 50.0) / 2) and both.hi == pytest.approx((alone.hi + 50.0) / 2)
    single = [Samples([np.array([v])], [None]) for v in (1.0, 2.0)]
    assert not mean_over_rows(single).defined  # one value per row: nothing to resample
    with pytest.raises(ValueError):
        mean_over_rows([])
