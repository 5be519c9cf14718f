import math

import numpy as np
import pytest

from mfdiffuser.envs import make


def test_reward_at_hand_known_profiles():
    env = make("gaussian-squeeze", n_agents=10)  # mu = 4, sigma = 2
    env.reset(seed=0)
    # x = 4 (four agents play 1): G = 4 * exp(0) = 4, per agent 0.4
    _, r, term, trunc, info = env.step(np.array([1, 1, 1, 1, 0, 0, 0, 0, 0, 0]))
    assert r.shape == (10,) and np.allclose(r, 0.4)
    assert not term and trunc and info["action_sum"] == 4
    env.reset(seed=0)
    # x = 6: G = 6 * exp(-(2)^2 / 4) = 6 / e
    _, r, *_ = env.step(np.array([2, 2, 2, 0, 0, 0, 0, 0, 0, 0]))
    assert np.allclose(r, 6 / math.e / 10)


def test_analytic_optimum():
    env = make("gaussian-squeeze", n_agents=1000)
    assert env.optimal_mean_action() == pytest.approx(0.44495, abs=1e-5)
    assert env.optimal_return() == pytest.approx(0.44495 * math.exp(-(0.04495**2) / 0.04), abs=1e-4)
    # the optimum is a maximum: nearby mean actions do worse
    for m in (0.40, 0.49):
        assert env.shared_reward(m * 1000) / 1000 < env.optimal_return()
    probs = env.expert_probs()
    assert probs.sum() == pytest.approx(1.0) and (probs * np.arange(10)).sum() == pytest.approx(0.44495, 1e-4)


@pytest.mark.parametrize(
    "kwargs",
    [{"n_agents": 0}, {"n_agents": 10, "sigma_frac": -1.0}, {"n_agents": 10, "n_actions": 1}],
)
def test_bad_parameters(kwargs):
    with pytest.raises(ValueError):
        make("gaussian-squeeze", **kwargs)


def test_bad_actions():
    env = make("gaussian-squeeze", n_agents=4)
    env.reset(seed=0)
    with pytest.raises(ValueError, match="shape"):
        env.step(np.zeros(3, dtype=int))
    with pytest.raises(ValueError, match="integers"):
        env.step(np.zeros(4))
    with pytest.raises(ValueError, match=r"\[0, 9\]"):
        env.step(np.array([0, 0, 0, 10]))
