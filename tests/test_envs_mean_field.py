"""The exact mean-field limit against OpenSpiel's own algorithms on its own games."""

import dataclasses
import math
import re

import numpy as np
import pytest

from mfdiffuser.envs import mean_field as mf

pyspiel = pytest.importorskip("pyspiel")
from open_spiel.python import policy as os_policy  # noqa: E402
from open_spiel.python.mfg import value as os_value  # noqa: E402
from open_spiel.python.mfg.algorithms import (  # noqa: E402
    best_response_value,
    distribution,
    nash_conv,
    policy_value,
)


class _TablePolicy(os_policy.Policy):
    """Our ``pi[T, X, A]`` seen as an OpenSpiel policy (cell index x * size + y in 2-D)."""

    def __init__(self, game, pi, size, two_d):
        super().__init__(game, [0])
        self.pi, self.size, self.two_d = pi, size, two_d

    def action_probabilities(self, state, player_id=None):
        nums = [int(v) for v in re.findall(r"-?\d+", str(state))]
        cell, t = (nums[0] * self.size + nums[1], nums[2]) if self.two_d else (nums[0], nums[1])
        return {a: float(self.pi[t, cell, a]) for a in state.legal_actions()}


class _NoMemo(os_value.TabularValueFunction):
    """Disables OpenSpiel's value memo: it is keyed by ``(x, t)`` although the reward at a node
    depends on the previous action too (its move cost), so memoised values mix paths."""

    def has(self, state):
        return False


def _openspiel_nash_conv(game, pol, memo=True):
    if memo:
        return nash_conv.NashConv(game, pol).nash_conv()
    dist = distribution.DistributionPolicy(game, pol)
    br = best_response_value.BestResponse(game, dist, _NoMemo(game))
    pv = policy_value.PolicyValue(game, dist, pol, _NoMemo(game))
    root = game.new_initial_state()
    return br.eval_state(root) - pv.eval_state(root)


def _random_policy(shape, seed):
    return np.random.default_rng(seed).dirichlet(np.ones(shape[-1]), size=shape[:-1])


def _openspiel_flow(game, pol, size, horizon, two_d=False):
    dist = distribution.DistributionPolicy(game, pol)
    if two_d:
        keys = [[f"({x}, {y}, {t})" for x in range(size) for y in range(size)] for t in range(horizon)]
    else:
        keys = [[f"({x}, {t})" for x in range(size)] for t in range(horizon)]
    return np.array([[dist.value_str(k, 0.0) for k in row] for row in keys])


# ------------------------------------------------------------------------------------ flows
def test_uniform_flow_stays_uniform():
    game = mf.crowd_game(10, 10)
    mu = mf.mean_field_flow(game, game.uniform_policy())
    assert np.allclose(mu, 0.1)


def test_flow_equals_openspiel_distribution_1d():
    size, horizon = 10, 10
    os_game = pyspiel.load_game("mfg_crowd_modelling", {"size": size, "horizon": horizon})
    game = mf.crowd_game(size, horizon)
    for pi in (game.uniform_policy(), _random_policy((horizon, size, 3), 0)):
        ours = mf.mean_field_flow(game, pi)
        theirs = _openspiel_flow(os_game, _TablePolicy(os_game, pi, size, False), size, horizon)
        assert np.abs(ours[:horizon] - theirs).max() < 1e-12
    # hand-known: everyone moves +1 from uniform -> still uniform; a drift does not change it
    assert np.allclose(mf.mean_field_flow(game, np.eye(3)[np.full((horizon, size), 2)]), 0.1)


def test_flow_equals_openspiel_distribution_2d():
    size, horizon = 4, 3
    params = {"size": size, "horizon": horizon, "noise_intensity": 0.6}
    os_game = pyspiel.load_game("mfg_crowd_modelling_2d", params)
    game = mf.crowd_2d_game(size, horizon, noise_intensity=0.6)
    pi = _random_policy((horizon, size * size, 5), 1)
    theirs = _openspiel_flow(os_game, _TablePolicy(os_game, pi, size, True), size, horizon, two_d=True)
    assert np.abs(mf.mean_field_flow(game, pi)[:horizon] - theirs).max() < 1e-12


def test_concentrated_flow_by_hand():
    game = mf.crowd_game(10, 2)
    game = mf.CrowdGame(
        game.transition, game.positional_reward, game.move_cost, np.eye(10)[4], game.horizon
    )
    stay = np.eye(3)[np.ones((2, 10), dtype=int)]
    mu = mf.mean_field_flow(game, stay)
    assert np.allclose(mu[1][[3, 4, 5]], 1 / 3) and mu[1].sum() == pytest.approx(1.0)
    assert np.allclose(mu[2][[2, 3, 4, 5, 6]], [1 / 9, 2 / 9, 3 / 9, 2 / 9, 1 / 9])


# ---------------------------------------------------------------------------- exploitability
@pytest.mark.parametrize("which", ["uniform", "random", "equilibrium"])
def test_exploitability_equals_openspiel_nash_conv_1d(which):
    # Short horizon: OpenSpiel's values are computed here without memo (tree of 10 * 9^T paths).
    size, horizon = 10, 3
    os_game = pyspiel.load_game("mfg_crowd_modelling", {"size": size, "horizon": horizon})
    game = mf.crowd_game(size, horizon)
    pi = {
        "uniform": game.uniform_policy(),
        "random": _random_policy((horizon, size, 3), 2),
        "equilibrium": mf.mirror_descent(game, 300, track_exploitability=False).policy,
    }[which]
    ours = mf.exploitability(game, pi).exploitability
    theirs = _openspiel_nash_conv(os_game, _TablePolicy(os_game, pi, size, False), memo=False)
    assert ours == pytest.approx(theirs, abs=1e-9)
    if which == "equilibrium":
        assert ours < 1e-4
    else:
        assert ours > 0.1


def _openspiel_mu0(os_game, size):
    """OpenSpiel's initial distribution over our cell index ``x * size + y``."""
    root = os_game.new_initial_state()
    mu0 = np.zeros(size * size)
    for action, prob in root.chance_outcomes():
        x, y, _ = (int(v) for v in re.findall(r"-?\d+", str(root.child(action))))
        mu0[x * size + y] += prob
    return mu0


@pytest.mark.parametrize("which", ["uniform", "random", "fictitious-play", "mirror-descent"])
def test_exploitability_equals_openspiel_nash_conv_2d(which):
    # Without the move cost the reward does not depend on the previous action, so OpenSpiel's
    # memoised NashConv is exact and we compare with it directly, at full horizon. A start
    # concentrated on two cells makes the equilibrium non-trivial (uniform is one otherwise).
    size, horizon = 5, 6
    params = {"size": size, "horizon": horizon, "only_distribution_reward": True,
              "noise_intensity": 0.5, "crowd_aversion_coef": 0.8,
              "initial_distribution": "[0|0;1|2]", "initial_distribution_value": "[0.6;0.4]"}  # fmt: skip
    os_game = pyspiel.load_game("mfg_crowd_modelling_2d", params)
    game = dataclasses.replace(
        mf.crowd_2d_game(size, horizon, 0.5, 0.8, only_distribution_reward=True),
        mu0=_openspiel_mu0(os_game, size),
    )
    pi = {
        "uniform": game.uniform_policy(),
        "random": _random_policy((horizon, size * size, 5), 3),
        "fictitious-play": mf.fictitious_play(game, 30).policy,
        "mirror-descent": mf.mirror_descent(game, 300, track_exploitability=False).policy,
    }[which]
    ours = mf.exploitability(game, pi).exploitability
    theirs = _openspiel_nash_conv(os_game, _TablePolicy(os_game, pi, size, True))
    assert ours == pytest.approx(theirs, abs=1e-9)
    if which == "mirror-descent":
        assert ours < 1e-3
    elif which == "fictitious-play":
        assert ours < 0.2
    else:
        assert ours > 1.0


def test_exploitability_of_uniform_by_hand():
    # With horizon 1 the return is r(x) at t = 0 whatever one does (the last move is free):
    # exploitability 0 and return = mean positional reward 0.5 + log(10).
    game = mf.crowd_game(10, 1)
    res = mf.exploitability(game, game.uniform_policy())
    assert res.exploitability == pytest.approx(0.0, abs=1e-12)
    assert res.policy_return == pytest.approx(0.5 + math.log(10))
    # Horizon 2, uniform flow: from x the best response maximises r(x) + E[r(x')] - cost(move).
    game = mf.crowd_game(10, 2)
    res = mf.exploitability(game, game.uniform_policy())
    r = 1 - np.abs(np.arange(10) - 5) / 5
    cont = np.array([[np.mean(r[(x + m + np.array([-1, 0, 1])) % 10]) - abs(m) / 10 for m in (-1, 0, 1)]
                     for x in range(10)])  # fmt: skip
    br = np.mean(r + math.log(10) + cont.max(1) + math.log(10))
    assert res.best_response_return == pytest.approx(br)


def test_equilibrium_solvers_converge_on_the_default_games():
    game = mf.crowd_game()
    omd = mf.mirror_descent(game, 1000, track_exploitability=False)
    assert omd.exploitability[-1] < 1e-4
    fp = mf.fictitious_play(game, 100)
    assert fp.exploitability[-1] < 0.05 and fp.exploitability[-1] < fp.exploitability[0] / 50
    assert mf.exploitability(game, fp.policy).exploitability == pytest.approx(fp.exploitability[-1])
    # the best response to the equilibrium's flow earns (almost) what the equilibrium earns
    br = mf.best_response(game, mf.mean_field_flow(game, omd.policy))
    assert game.mu0 @ br.value[0] == pytest.approx(mf.policy_return(game, omd.policy), abs=1e-4)


@pytest.mark.slow
def test_2d_equilibrium_solver_converges():
    game = mf.crowd_2d_game()
    assert mf.mirror_descent(game, 1000, track_exploitability=False).exploitability[-1] < 1e-3


def test_bad_policies_raise():
    game = mf.crowd_game(10, 3)
    with pytest.raises(ValueError, match="shape"):
        mf.exploitability(game, np.full((3, 10, 2), 0.5))
    with pytest.raises(ValueError, match="sum to 1"):
        mf.exploitability(game, np.full((3, 10, 3), 0.5))
    bad = game.uniform_policy()
    bad[0, 0] = [1.5, -0.5, 0.0]
    with pytest.raises(ValueError, match="non-negative"):
        mf.mean_field_flow(game, bad)
    with pytest.raises(ValueError):
        mf.crowd_game(1, 3)
    with pytest.raises(ValueError, match="noise_intensity"):
        mf.crowd_2d_game(5, 3, noise_intensity=2.0)


# --------------------------------------------------------------------------- Gaussian squeeze
def test_gaussian_squeeze_exploitability():
    opt = mf.gaussian_squeeze_exploitability(np.array([0.55505, 0.44495] + [0.0] * 8))
    assert opt.mean_action == pytest.approx(0.44495)
    assert opt.exploitability == pytest.approx(0.0, abs=1e-4)
    assert opt.team_gap == pytest.approx(0.0, abs=1e-8)
    # all agents play 0: g'(0) = exp(-4) > 0, the best deviation plays 9 and adds 9 e^-4 to G
    zero = mf.gaussian_squeeze_exploitability(np.eye(10)[0])
    assert zero.exploitability == pytest.approx(9 * math.exp(-4))
    assert zero.value == 0.0 and zero.team_gap == pytest.approx(opt.value)
    # uniform: m = 4.5, far right of the peak, g' < 0: the best deviation plays 0
    unif = mf.gaussian_squeeze_exploitability(np.full(10, 0.1))
    m = 4.5
    grad = math.exp(-((m - 0.4) ** 2) / 0.04) * (1 - 2 * m * (m - 0.4) / 0.04)
    assert unif.exploitability == pytest.approx(-grad * m)
    with pytest.raises(ValueError, match="probability"):
        mf.gaussian_squeeze_exploitability(np.full(10, 0.2))


def test_gaussian_squeeze_exploitability_matches_finite_n_deviation():
    # Exact finite-N check: the gain in G of one agent switching its action, N large.
    n = 2000
    probs = np.zeros(10)
    probs[0], probs[1] = 0.7, 0.3  # m = 0.3 < m*: deviating up helps
    pmf = np.array([1.0])
    for _ in range(n - 1):
        pmf = np.convolve(pmf, probs[:2])
    x = np.arange(pmf.size)

    def big_g(v):
        return v * np.exp(-((v - 0.4 * n) ** 2) / (0.2 * n) ** 2)

    gains = [pmf @ big_g(x + a) for a in range(10)]
    own = probs[0] * gains[0] + probs[1] * gains[1]
    finite = max(gains) - own
    assert mf.gaussian_squeeze_exploitability(probs).exploitability == pytest.approx(finite, rel=0.01)


def _openspiel_monte_carlo(os_game, pi, mu, episodes, seed):
    """Mean return of ``pi[T, X, A]`` in OpenSpiel's own engine, the population fixed to flow ``mu``."""
    rng = np.random.default_rng(seed)
    returns = np.empty(episodes)
    for i in range(episodes):
        state = os_game.new_initial_state()
        while not state.is_terminal():
            player = state.current_player()
            if player == pyspiel.PlayerId.CHANCE:
                outcomes = state.chance_outcomes()
                k = np.searchsorted(np.cumsum([p for _, p in outcomes]), rng.random() * (1 - 1e-12))
                state.apply_action(outcomes[k][0])
            elif player == pyspiel.PlayerId.MEAN_FIELD:
                t = int(re.findall(r"\d+", str(state))[1])
                state.update_distribution(list(mu[t]))
            else:
                x, t = (int(v) for v in re.findall(r"\d+", str(state))[:2])
                state.apply_action(int(np.searchsorted(np.cumsum(pi[t, x]), rng.random() * (1 - 1e-12))))
        returns[i] = state.returns()[0]
    return returns.mean(), returns.std() / np.sqrt(episodes)


def test_full_horizon_values_against_openspiel_engine_monte_carlo():
    # Full default game (T = 10), where OpenSpiel's memoised NashConv is off (0.32 for this
    # equilibrium, ours 2e-5): the policy's return and its best response's return, simulated in
    # OpenSpiel's engine against the exact flow, agree with our backward induction.
    from mfdiffuser.envs import make

    env = make("crowd")
    game, pi = env.mean_field_game(), env.expert_policy()
    os_game = pyspiel.load_game("mfg_crowd_modelling")
    res = mf.exploitability(game, pi)
    br = mf.best_response(game, res.flow)
    mc_pi, se_pi = _openspiel_monte_carlo(os_game, pi, res.flow, 1500, 0)
    mc_br, se_br = _openspiel_monte_carlo(os_game, br.policy, res.flow, 1500, 1)
    assert abs(mc_pi - res.policy_return) < 4 * se_pi
    assert abs(mc_br - res.best_response_return) < 4 * se_br
    assert res.exploitability < 1e-4 and mc_br - mc_pi < 0.15


@pytest.mark.parametrize("congestion", [False, True])
def test_2d_move_cost_and_congestion_against_openspiel_without_memo(congestion):
    size, horizon = 4, 2
    params = {"size": size, "horizon": horizon, "noise_intensity": 0.7, "crowd_aversion_coef": 1.3,
              "with_congestion": congestion}  # fmt: skip
    os_game = pyspiel.load_game("mfg_crowd_modelling_2d", params)
    game = mf.crowd_2d_game(size, horizon, 0.7, 1.3, with_congestion=congestion)
    pi = _random_policy((horizon, size * size, 5), 4)
    ours = mf.exploitability(game, pi).exploitability
    theirs = _openspiel_nash_conv(os_game, _TablePolicy(os_game, pi, size, True), memo=False)
    assert ours == pytest.approx(theirs, abs=1e-9) and ours > 0.05
