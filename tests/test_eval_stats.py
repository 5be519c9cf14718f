import math

import numpy as np
import pytest

from mfdiffuser.eval.stats import mean_ci, t_quantile


@pytest.mark.parametrize(
    ("df", "expected"),
    [(1, 12.706204736), (2, 4.302652730), (4, 2.776445105), (9, 2.262157163), (30, 2.042272456)]
    + [(100, 1.983971519)],
)
def test_t_quantile_matches_tables(df, expected):
    assert t_quantile(0.975, df) == pytest.approx(expected, abs=1e-6)


def test_t_quantile_symmetry_and_median():
    assert t_quantile(0.5, 3) == 0.0
    assert t_quantile(0.025, 5) == pytest.approx(-t_quantile(0.975, 5))
    assert t_quantile(0.95, 1) == pytest.approx(6.313751515, abs=1e-6)


def test_ci_of_one_two_three():
    ci = mean_ci([1.0, 2.0, 3.0])
    assert ci.mean == 2.0 and ci.std == 1.0 and ci.n == 3
    assert ci.sem == pytest.approx(1 / math.sqrt(3))
    assert ci.half_width == pytest.approx(4.302652730 / math.sqrt(3), abs=1e-6)  # 2.48414
    assert (ci.lo, ci.hi) == pytest.approx((2 - 2.484138, 2 + 2.484138), abs=1e-5)


def test_ci_constant_and_single_values():
    assert mean_ci([5.0, 5.0]).half_width == 0.0
    one = mean_ci([7.0])
    assert one.mean == 7.0 and math.isnan(one.half_width)


def test_ci_90_percent_is_narrower():
    x = np.array([0.1, 0.5, 0.2, 0.9])
    assert mean_ci(x, 0.90).half_width < mean_ci(x, 0.95).half_width


@pytest.mark.parametrize("bad", [[], [1.0, float("nan")], [1.0, float("inf")]])
def test_ci_rejects_bad_input(bad):
    with pytest.raises(ValueError):
        mean_ci(bad)


def test_quantile_rejects_bad_input():
    with pytest.raises(ValueError):
        t_quantile(1.0, 3)
    with pytest.raises(ValueError):
        t_quantile(0.9, 0)
