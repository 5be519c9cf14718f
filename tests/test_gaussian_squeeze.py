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


@pytest.mark.parametrize(
    ("mu_frac", "sigma_frac", "eps"),
    [(0.4, 0.2, 0.0400), (0.6, 0.1, 0.0220), (0.3, 0.3, 0.0563)],
)
def test_medium_scores_about_50_for_any_arguments(mu_frac, sigma_frac, eps):
    """The medium mix is calibrated per game; simulated scores land near 50 (a fixed 4% scored 27-30)."""
    from mfdiffuser.eval.metrics import normalized_score, reference_returns
    from mfdiffuser.eval.rollout import rollout

    def build(n):
        return make("gaussian-squeeze", n_agents=n, mu_frac=mu_frac, sigma_frac=sigma_frac)

    assert build(1000).medium_mix() == pytest.approx(eps, abs=5e-4)
    refs = reference_returns(build, 1000, [0], 40)
    (res,) = rollout(build, lambda env: env.behaviour_policy("medium"), [1000], [0], 40, progress=False)
    score = normalized_score(np.mean([e.mean_return for e in res.episodes]), refs["random"], refs["expert"])
    assert 40 <= score <= 60


def test_expected_reward_matches_hand_computed_pure_strategies():
    env = make("gaussian-squeeze", n_agents=10)
    # every agent plays 0: x = 0, reward 0; every agent plays 1: x = 10 = 2.5 mu, per agent
    # g = 1 * exp(-(10 - 4)^2 / 2^2) = exp(-9)
    assert env.expected_reward(np.eye(10)[0]) == 0.0
    assert env.expected_reward(np.eye(10)[1]) == pytest.approx(math.exp(-9.0), rel=1e-9)
    with pytest.raises(ValueError, match="no medium quality"):
        make("gaussian-squeeze", n_agents=10, mu_frac=50.0, sigma_frac=0.01).medium_mix()
