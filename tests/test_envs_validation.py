"""Type-aware validation of env constructor arguments: the shared helpers and every registered env."""

from __future__ import annotations

import numpy as np
import pytest

from mfdiffuser.envs import make
from mfdiffuser.envs.base import check_bool, check_float, check_int

# (env, a valid small n_agents, an int parameter, a float parameter or None)
ENVS = [
    ("gaussian-squeeze", 10, "n_actions", "mu_frac"),
    ("ising", 9, "horizon", "coupling"),
    ("crowd", 10, "size", None),
    ("crowd-2d", 10, "size", "crowd_aversion_coef"),
    ("battle", 4, "summary_grid", "step_reward"),
]


@pytest.mark.parametrize("value", [3, np.int64(3), np.int32(3)])
def test_check_int_accepts_ints(value):
    out = check_int("e", "k", value, minimum=1)
    assert out == 3 and type(out) is int


@pytest.mark.parametrize("value", [True, np.bool_(False), 2.5, 3.0, "3", "abc", None, [3]])
def test_check_int_rejects_non_ints(value):
    with pytest.raises(ValueError, match=r"^e: k must be an integer, got "):
        check_int("e", "k", value)


@pytest.mark.parametrize(
    ("minimum", "text"), [(0, "a non-negative integer"), (1, "a positive integer"), (2, "an integer >= 2")]
)
def test_check_int_minimum(minimum, text):
    assert check_int("e", "k", minimum, minimum=minimum) == minimum
    with pytest.raises(ValueError, match=f"e: k must be {text}, got {minimum - 1}"):
        check_int("e", "k", minimum - 1, minimum=minimum)


@pytest.mark.parametrize("value", [0.25, 1, np.float32(0.25), np.int64(1)])
def test_check_float_accepts_numbers(value):
    out = check_float("e", "x", value, minimum=0.0, maximum=1.0)
    assert out == float(value) and type(out) is float


@pytest.mark.parametrize("value", [True, "0.5", "abc", None, float("nan"), float("inf"), -float("inf")])
def test_check_float_rejects_non_numbers(value):
    with pytest.raises(ValueError, match=r"^e: x must be a finite number, got "):
        check_float("e", "x", value)


def test_check_float_bounds():
    assert check_float("e", "x", 0.0, minimum=0.0) == 0.0
    with pytest.raises(ValueError, match=r"x must be a finite number > 0, got 0\.0"):
        check_float("e", "x", 0.0, minimum=0.0, exclusive_minimum=True)
    with pytest.raises(ValueError, match=r"x must be a finite number in \[0, 1\], got 1\.5"):
        check_float("e", "x", 1.5, minimum=0.0, maximum=1.0)
    with pytest.raises(ValueError, match=r"x must be a finite number <= 2, got 3"):
        check_float("e", "x", 3, maximum=2.0)


def test_check_bool():
    assert check_bool("e", "f", np.bool_(True)) is True
    for bad in (1, "true", "no", None):
        with pytest.raises(ValueError, match="e: f must be a bool"):
            check_bool("e", "f", bad)


def _make(env: str, n: int, **kw):
    if env == "battle":
        pytest.importorskip("magent2")
        kw.setdefault("map_size", 16)
    return make(env, n_agents=n, **kw)


@pytest.mark.parametrize(("env", "n", "int_param", "float_param"), ENVS)
@pytest.mark.parametrize("bad", ["abc", "3", True, 2.5])
def test_envs_reject_bad_ints(env, n, int_param, float_param, bad):
    with pytest.raises(ValueError, match=f"^{env}: {int_param} must be "):
        _make(env, n, **{int_param: bad})
    with pytest.raises(ValueError, match=f"^{env}: n_agents must be "):
        _make(env, bad)


@pytest.mark.parametrize(("env", "n", "int_param", "float_param"), [e for e in ENVS if e[3]])
@pytest.mark.parametrize("bad", ["abc", False, float("nan"), float("inf")])
def test_envs_reject_bad_floats(env, n, int_param, float_param, bad):
    with pytest.raises(ValueError, match=f"^{env}: {float_param} must be a finite number"):
        _make(env, n, **{float_param: bad})


def test_values_are_stored_as_python_numbers():
    env = make("gaussian-squeeze", n_agents=np.int64(10), mu_frac=1, n_actions=np.int32(3))
    cfg = env.config()
    assert cfg == {"n_agents": 10, "mu_frac": 1.0, "sigma_frac": 0.2, "n_actions": 3, "horizon": 1}
    assert [type(cfg[k]) for k in ("n_agents", "mu_frac", "n_actions")] == [int, float, int]
    ising = make("ising", n_agents=9, coupling=np.float32(0.5), field=-1)
    assert (ising.coupling, ising.field) == (0.5, -1.0)


def test_crowd_2d_ranges_and_flags():
    with pytest.raises(ValueError, match=r"noise_intensity must be a finite number in \[0, 1\], got 1\.5"):
        make("crowd-2d", n_agents=10, noise_intensity=1.5)
    with pytest.raises(ValueError, match="crowd_aversion_coef must be a finite number >= 0"):
        make("crowd-2d", n_agents=10, crowd_aversion_coef=-0.1)
    with pytest.raises(ValueError, match="with_congestion must be a bool"):
        make("crowd-2d", n_agents=10, with_congestion="yes")
    with pytest.raises(ValueError, match="jitter must be a bool"):
        _make("battle", 4, jitter="no")
