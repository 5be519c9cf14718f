import math

import numpy as np
import pytest

from mfdiffuser.envs import make
from mfdiffuser.envs import mean_field as mf


def test_reward_of_hand_placed_agents_1d():
    env = make("crowd", n_agents=4)  # size 10, centre 5, r_x = 1 - |x - 5| / 5
    obs, info = env.reset(options={"positions": np.array([5, 5, 0, 3])})
    assert np.allclose(info["summary"][[0, 3, 5]], [0.25, 0.25, 0.5])
    assert np.array_equal(obs[:, :10].argmax(1), [5, 5, 0, 3]) and np.allclose(obs[:, 10], 0.0)
    # t = 0: no move cost yet (OpenSpiel starts from the neutral action)
    _, r, *_ = env.step(np.array([0, 1, 2, 1]))
    expected = [1 - math.log(0.5), 1 - math.log(0.5), 0 - math.log(0.25), 0.6 - math.log(0.25)]
    assert np.allclose(r, expected, atol=1e-6)


def test_move_cost_charged_at_next_step_and_wraparound():
    env = make("crowd", n_agents=1, size=4, horizon=3)  # one agent: density 1, -log 1 = 0
    env.reset(options={"positions": np.array([0])})
    _, r, *_ = env.step(np.array([0]))  # move -1 from 0 wraps to 3, then noise in {-1, 0, +1}
    assert r[0] == pytest.approx(1 - 2 / 2)  # cell 0, no cost at t = 0
    cell = int(env.positions()[0])
    assert cell in (2, 3, 0)
    _, r, *_ = env.step(np.array([1]))  # reward of the node reached: r_x - 1/4 (previous move)
    assert r[0] == pytest.approx(1 - abs(cell - 2) / 2 - 0.25)
    cell = int(env.positions()[0])
    _, r, _, trunc, _ = env.step(np.array([2]))  # previous action neutral: no cost
    assert r[0] == pytest.approx(1 - abs(cell - 2) / 2) and trunc


def test_noise_is_uniform_over_three_moves():
    env = make("crowd", n_agents=30000, size=10, horizon=2)
    env.reset(seed=0, options={"positions": np.full(30000, 5)})
    env.step(np.full(30000, 2))  # +1, then noise
    frac = np.bincount(env.positions(), minlength=10) / 30000
    assert np.allclose(frac[[5, 6, 7]], 1 / 3, atol=0.015) and frac[[5, 6, 7]].sum() == 1.0


def test_2d_reward_and_moves():
    env = make("crowd-2d", n_agents=2, size=10, noise_intensity=0.0)
    cells = np.array([5 * 10 + 5, 0 * 10 + 9])  # (5, 5) and (0, 9)
    obs, info = env.reset(options={"positions": cells})
    assert obs.shape == (2, 21) and np.array_equal(obs[1, :10].argmax(), 0) and obs[1, 10:20].argmax() == 9
    _, r, *_ = env.step(np.array([2, 4]))  # stay; (0, +1) wraps y 9 -> 0
    # r = 2 - (2/10)(|x-5| + |y-5|) - log(1/2)
    assert np.allclose(r, [2 + math.log(2), 2 - 0.2 * (5 + 4) + math.log(2)], atol=1e-6)
    assert np.array_equal(env.positions(), [55, 0])
    _, r, *_ = env.step(np.array([2, 2]))
    assert np.allclose(r, [2 + math.log(2), 2 - 0.2 * 10 + math.log(2) - 0.1], atol=1e-6)


def test_finite_n_flow_follows_the_mean_field_limit():
    env = make("crowd", n_agents=200_000)
    game = env.mean_field_game()
    pi = env.expert_policy()
    mu = mf.mean_field_flow(game, pi)
    policy = env.behaviour_policy("expert")
    obs, info = env.reset(seed=0)
    policy.reset(env, np.random.default_rng(1))
    for t in range(env.horizon):
        assert np.abs(info["summary"] - mu[t]).max() < 0.006
        obs, _, _, _, info = env.step(policy.act(obs, info))
    assert np.abs(info["summary"] - mu[-1]).max() < 0.006


def test_finite_n_return_close_to_mean_field_return():
    env = make("crowd", n_agents=20_000)
    game = env.mean_field_game()
    policy = env.behaviour_policy("random")
    obs, info = env.reset(seed=0)
    policy.reset(env, np.random.default_rng(1))
    total = np.zeros(env.n_agents)
    for _ in range(env.horizon):
        obs, r, _, _, info = env.step(policy.act(obs, info))
        total += r
    assert total.mean() == pytest.approx(mf.policy_return(game, game.uniform_policy()), abs=0.02)


def test_medium_policy_is_calibrated_in_the_limit():
    env = make("crowd")
    game = env.mean_field_game()
    j = [mf.policy_return(game, p) for p in (env.expert_policy(), env.medium_policy(), game.uniform_policy())]
    assert 100 * (j[1] - j[2]) / (j[0] - j[2]) == pytest.approx(50.0, abs=1e-3)


@pytest.mark.parametrize(
    "name,kwargs,match",
    [
        ("crowd", {"n_agents": 0}, "n_agents"),
        ("crowd", {"size": 1}, "size"),
        ("crowd", {"horizon": 0}, "horizon"),
        ("crowd", {"size": 2.5}, "size"),
        ("crowd-2d", {"noise_intensity": 1.5}, "noise_intensity"),
        ("crowd-2d", {"crowd_aversion_coef": -1.0}, "crowd_aversion_coef"),
        ("crowd-2d", {"with_congestion": "yes"}, "with_congestion"),
    ],
)
def test_bad_parameters(name, kwargs, match):
    with pytest.raises(ValueError, match=match):
        make(name, **kwargs)


def test_bad_actions_and_options():
    env = make("crowd", n_agents=5)
    env.reset(seed=0)
    with pytest.raises(ValueError, match="shape"):
        env.step(np.zeros((5, 1), dtype=int))
    with pytest.raises(ValueError, match="integers"):
        env.step(np.zeros(5, dtype=np.float32))
    with pytest.raises(ValueError, match=r"\[0, 2\]"):
        env.step(np.array([0, 1, 2, 3, 0]))
    with pytest.raises(ValueError, match="positions"):
        env.reset(options={"positions": np.array([0, 1, 2, 3, 10])})
    with pytest.raises(ValueError, match="positions"):
        env.reset(options={"positions": np.zeros(4, dtype=int)})


def test_tabulate_policy_recovers_a_table_and_sees_the_mean_field():
    env = make("crowd", n_agents=10)
    game = env.mean_field_game()
    expert = env.expert_policy()

    def from_obs(obs, summary, t):
        return expert[t, obs[:, :10].argmax(1)]

    assert np.allclose(mf.tabulate_policy(game, env.cell_observations, from_obs), expert)
    flow = mf.mean_field_flow(game, expert)
    seen = []

    def records(obs, summary, t):
        seen.append(summary)
        return expert[t]

    mf.tabulate_policy(game, env.cell_observations, records)
    assert np.allclose(np.array(seen), flow[:-1], atol=1e-6)
    with pytest.raises(ValueError, match="shape"):
        mf.tabulate_policy(game, env.cell_observations, lambda o, s, t: np.ones((10, 2)) / 2)


def test_2d_congestion_and_distribution_only_rewards():
    cells = np.array([55, 55, 0, 0])  # two agents at (5, 5), two at (0, 0); no noise
    env = make("crowd-2d", n_agents=4, noise_intensity=0.0, with_congestion=True)
    env.reset(options={"positions": cells})
    env.step(np.array([3, 2, 2, 2]))  # agent 0 moves (+1, 0) to (6, 5), alone there
    _, r, *_ = env.step(np.array([2, 2, 2, 2]))
    # agent 0: 2 - 0.2 * 1 - log(1/4) - (1/10) * density 1/4
    assert r[0] == pytest.approx(2 - 0.2 + math.log(4) - 0.1 * 0.25, abs=1e-6)
    assert r[1] == pytest.approx(2 + math.log(4), abs=1e-6)
    env = make("crowd-2d", n_agents=4, noise_intensity=0.0, only_distribution_reward=True)
    env.reset(options={"positions": cells})
    _, r, *_ = env.step(np.array([3, 2, 2, 2]))
    assert np.allclose(r, math.log(2), atol=1e-6)
