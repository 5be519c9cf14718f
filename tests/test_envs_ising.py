import numpy as np
import pytest

from mfdiffuser.envs import make
from mfdiffuser.envs.ising import HeatBathPolicy


def _checkerboard(side):
    r, c = np.divmod(np.arange(side * side), side)
    return np.where((r + c) % 2 == 0, 1, -1)


@pytest.mark.parametrize("coupling,field", [(1.0, 0.0), (0.5, 0.3), (2.0, -0.7)])
def test_reward_of_hand_made_lattices(coupling, field):
    env = make("ising", n_agents=16, coupling=coupling, field=field)  # 4 x 4: checkerboard fits the torus
    env.reset(seed=0)
    # all spins up: each agent h + (J/2) * 4 = h + 2J
    obs, r, term, trunc, info = env.step(np.ones(16, dtype=np.int64))
    assert np.allclose(r, field + 2 * coupling)
    assert info["order_parameter"] == 1.0 and not term and not trunc
    assert np.allclose(obs[:, :2], [1.0, 1.0])
    # all down: -h + 2J
    _, r, *_ = env.step(np.zeros(16, dtype=np.int64))
    assert np.allclose(r, -field + 2 * coupling)
    # checkerboard: h s - 2J, order parameter 0
    board = _checkerboard(4)
    obs, r, _, _, info = env.step((board + 1) // 2)
    assert np.allclose(r, field * board - 2 * coupling)
    assert info["order_parameter"] == 0.0
    assert np.allclose(obs[:, 1], -board)  # the neighbour sum is -4 s, /4
    assert np.allclose(env.energy_reward(board), field * board - 2 * coupling)


def test_reward_of_a_single_flipped_spin():
    env = make("ising", n_agents=25)  # J = 1, h = 0
    env.reset(seed=0)
    spins = np.ones(25, dtype=np.int64)
    spins[12] = 0  # centre site down
    _, r, *_ = env.step(spins)
    grid = r.reshape(5, 5)
    assert grid[2, 2] == pytest.approx(-2.0)  # -1 * (1/2) * 4
    for i, j in ((1, 2), (3, 2), (2, 1), (2, 3)):  # neighbours: (1/2)(3 - 1) = 1
        assert grid[i, j] == pytest.approx(1.0)
    assert grid[0, 0] == pytest.approx(2.0)
    assert np.allclose(r, env.energy_reward(spins * 2 - 1))
    assert r.sum() == pytest.approx(2.0 * 25 - 8.0)  # 4 broken bonds, each costs 2J in total


def test_summary_histogram_and_reset_options():
    env = make("ising", n_agents=16, horizon=3)
    obs, info = env.reset(options={"spins": np.ones(16)})
    # every agent: spin +1 with neighbour sum +4 -> bin 5 * 1 + 4 = 9
    assert np.allclose(info["summary"], np.eye(10)[9])
    obs, info = env.reset(options={"spins": _checkerboard(4)})
    expected = np.zeros(10)
    expected[4], expected[5] = 0.5, 0.5  # (spin -1, sum +4) -> bin 4; (spin +1, sum -4) -> bin 5
    assert np.allclose(info["summary"], expected)
    assert np.allclose(obs[:, 2], 0.0)
    with pytest.raises(ValueError, match="spins"):
        env.reset(options={"spins": np.zeros(16)})


def test_episode_length_and_time_feature():
    env = make("ising", n_agents=9, horizon=3)
    env.reset(seed=1)
    for t in range(1, 4):
        obs, _, term, trunc, info = env.step(np.zeros(9, dtype=np.int64))
        assert info["t"] == t and np.allclose(obs[:, 2], t / 3)
    assert trunc and not term
    with pytest.raises(RuntimeError):
        env.step(np.zeros(9, dtype=np.int64))


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"n_agents": 10}, "perfect square"),
        ({"n_agents": 4}, "L must be >= 3"),
        ({"n_agents": 0}, "positive integer"),
        ({"n_agents": 9.5}, "positive integer"),
        ({"n_agents": 9, "horizon": 0}, "horizon"),
        ({"n_agents": 9, "coupling": float("nan")}, "coupling"),
        ({"n_agents": 9, "field": float("inf")}, "field"),
    ],
)
def test_bad_parameters(kwargs, match):
    with pytest.raises(ValueError, match=match):
        make("ising", **kwargs)


def test_bad_actions():
    env = make("ising", n_agents=9)
    env.reset(seed=0)
    with pytest.raises(ValueError, match="shape"):
        env.step(np.zeros(8, dtype=int))
    with pytest.raises(ValueError, match="integers"):
        env.step(np.zeros(9))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        env.step(np.full(9, 2))


def _mean_reward(env, policy, episodes, seed=0):
    total = 0.0
    for e in range(episodes):
        obs, info = env.reset(seed=seed + e)
        policy.reset(env, np.random.default_rng([seed, e, 7]))
        done = False
        while not done:
            obs, r, term, trunc, info = env.step(policy.act(obs, info))
            total += r.mean()
            done = term or trunc
    return total / (episodes * env.horizon)


def test_behaviour_policies_order_as_documented():
    env = make("ising", n_agents=400)
    expert = _mean_reward(env, env.behaviour_policy("expert"), 4)
    medium = _mean_reward(env, env.behaviour_policy("medium"), 4)
    rand = _mean_reward(env, env.behaviour_policy("random"), 4)
    assert expert > 1.15  # documented: about 1.27 per agent-step
    assert abs(rand) < 0.05
    score = 100 * (medium - rand) / (expert - rand)
    assert 35 < score < 65


def test_synchronous_heat_bath_oscillates_and_partial_updates_order():
    # Lesson from the SPEC: every agent updating at once locks into a period-2 oscillation.
    env = make("ising", n_agents=400)
    sync = _mean_reward(env, HeatBathPolicy(beta=2.0, update_prob=1.0, coupling=1.0, field=0.0), 2)
    partial = _mean_reward(env, HeatBathPolicy(beta=2.0, update_prob=0.7, coupling=1.0, field=0.0), 2)
    assert sync < 0.5 < 1.0 < partial


def test_lattice_translation_is_a_symmetry():
    env = make("ising", n_agents=16)
    obs, _ = env.reset(seed=3)
    perm = env.agent_symmetry(np.random.default_rng(0))
    assert sorted(perm) == list(range(16))
    new_obs = env.permute(perm)
    assert np.array_equal(new_obs, obs[perm])
    with pytest.raises(ValueError, match="permutation"):
        env.permute(np.zeros(16, dtype=int))


def test_medium_is_calibrated_for_any_coupling():
    """Temperatures in units of |J|: the same game for any coupling, medium about 50 points."""
    scores = []
    for coupling in (0.5, 1.0, 2.0):
        env = make("ising", n_agents=400, coupling=coupling)
        expert, medium, rand = (
            _mean_reward(env, env.behaviour_policy(q), 4) for q in ("expert", "medium", "random")
        )
        scores.append(100 * (medium - rand) / (expert - rand))
    assert scores == pytest.approx([scores[1]] * 3, rel=1e-6)  # exactly the same dynamics, scaled
    assert 35 < scores[1] < 65
