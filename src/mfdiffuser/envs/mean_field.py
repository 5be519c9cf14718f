"""Exact mean-field limits: distribution flow, best response, exploitability, equilibrium solvers.

Finite-horizon tabular mean-field games with OpenSpiel's crowd-modelling reward (Perrin et al. 2020,
"Fictitious play for mean field games", section 4.2): policies are tables ``pi[T, X, A]`` over T
decision steps, X cells and A actions. Also the mean-field exploitability of Gaussian squeeze.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

_LOG_EPS = 1e-25  # OpenSpiel's crowd_modelling_2d adds this inside the log; harmless when mu > 0.


@dataclass(frozen=True)
class CrowdGame:
    """A tabular finite-horizon mean-field game with a crowd-aversion reward.

    The reward at the decision node of time ``t`` in cell ``x``, reached by the previous action
    ``a'`` (the neutral action at ``t = 0``), is OpenSpiel's::

        r_t(x, a') = positional_reward[x] - coef * log(mu_t[x] + 1e-25) - move_cost[a'] * w_t(x)

    with ``w_t(x) = mu_t[x]`` under congestion and 1 otherwise. Charging the move cost at the next
    node means the action taken at ``t = T - 1`` is free, exactly as in OpenSpiel.

    Attributes:
        transition: ``[A, X, X]`` probability of the next cell given the cell and the action,
            the agent's own move and the environment noise together.
        positional_reward: ``[X]`` reward for standing in each cell.
        move_cost: ``[A]`` cost of each action, charged at the next decision node.
        mu0: ``[X]`` initial distribution.
        horizon: T, number of decision steps.
        crowd_aversion_coef: weight of the ``-log(density)`` term.
        congestion: scale the move cost by the density at the arrival cell (OpenSpiel 2-D option).
    """

    transition: np.ndarray
    positional_reward: np.ndarray
    move_cost: np.ndarray
    mu0: np.ndarray
    horizon: int
    crowd_aversion_coef: float = 1.0
    congestion: bool = False

    def __post_init__(self) -> None:
        a, x, x2 = self.transition.shape
        if x != x2 or self.positional_reward.shape != (x,) or self.mu0.shape != (x,):
            raise ValueError("CrowdGame: transition must be [A, X, X], positional_reward and mu0 [X]")
        if self.move_cost.shape != (a,):
            raise ValueError(f"CrowdGame: move_cost must have shape ({a},), got {self.move_cost.shape}")
        if not np.allclose(self.transition.sum(-1), 1.0):
            raise ValueError("CrowdGame: transition rows must sum to 1")
        if not math.isclose(float(self.mu0.sum()), 1.0, abs_tol=1e-6) or (self.mu0 < 0).any():
            raise ValueError("CrowdGame: mu0 must be a probability vector")
        if self.horizon < 1:
            raise ValueError(f"CrowdGame: horizon must be >= 1, got {self.horizon}")

    @property
    def n_cells(self) -> int:
        """X: number of cells."""
        return int(self.transition.shape[1])

    @property
    def n_actions(self) -> int:
        """A: number of actions."""
        return int(self.transition.shape[0])

    def uniform_policy(self) -> np.ndarray:
        """The uniform policy ``pi[T, X, A]``."""
        return np.full((self.horizon, self.n_cells, self.n_actions), 1.0 / self.n_actions)


def _ring_moves(size: int, moves: np.ndarray, noise: np.ndarray, noise_probs: np.ndarray) -> np.ndarray:
    """``[A, X, X]`` kernel on a ring: move ``moves[a]`` then a noise step drawn from ``noise``."""
    x = np.arange(size)
    kernel = np.zeros((len(moves), size, size))
    for a, m in enumerate(moves):  # A and the noise support are tiny; this runs once per game
        for n, p in zip(noise, noise_probs, strict=True):
            np.add.at(kernel[a], (x, (x + m + n) % size), p)
    return kernel


def crowd_game(size: int = 10, horizon: int = 10) -> CrowdGame:
    """OpenSpiel's ``mfg_crowd_modelling``: a ring of ``size`` cells, actions move -1/0/+1.

    After the agent's move, chance adds -1, 0 or +1 with probability 1/3 each. Positional reward
    ``1 - |x - size // 2| / (size // 2)``; move cost ``|move| / size``; uniform initial distribution.
    """
    if size < 2 or horizon < 1:
        raise ValueError(f"crowd_game: need size >= 2 and horizon >= 1, got size={size}, horizon={horizon}")
    moves = np.array([-1, 0, 1])
    kernel = _ring_moves(size, moves, moves, np.full(3, 1 / 3))
    half = size // 2
    x = np.arange(size)
    return CrowdGame(
        transition=kernel,
        positional_reward=1.0 - np.abs(x - half) / half,
        move_cost=np.abs(moves) / size,
        mu0=np.full(size, 1.0 / size),
        horizon=horizon,
    )


# OpenSpiel's 2-D action order: (dx, dy) = (0,-1), (-1,0), (0,0), (1,0), (0,1); action 2 is neutral.
MOVES_2D = np.array([[0, -1], [-1, 0], [0, 0], [1, 0], [0, 1]])
NEUTRAL_2D = 2


def crowd_2d_game(
    size: int = 10,
    horizon: int = 10,
    noise_intensity: float = 1.0,
    crowd_aversion_coef: float = 1.0,
    only_distribution_reward: bool = False,
    with_congestion: bool = False,
) -> CrowdGame:
    """OpenSpiel's ``mfg_crowd_modelling_2d`` (no forbidden states, uniform start, centre reward).

    Cell ``(x, y)`` has index ``x * size + y`` (OpenSpiel's order). Chance replays one of the five
    moves: each with probability ``noise_intensity / 5``, the neutral one with
    ``1 - noise_intensity + noise_intensity / 5``. Positional reward
    ``2 - (2 / size) (|x - size // 2| + |y - size // 2|)``, move cost ``(|dx| + |dy|) / size``.
    """
    if size < 2 or horizon < 1:
        raise ValueError(f"crowd_2d_game: need size >= 2 and horizon >= 1, got {size}, {horizon}")
    if not 0.0 <= noise_intensity <= 1.0:
        raise ValueError(f"crowd_2d_game: noise_intensity must lie in [0, 1], got {noise_intensity}")
    n_cells = size * size
    noise_probs = np.full(5, noise_intensity / 5)
    noise_probs[NEUTRAL_2D] += 1.0 - noise_intensity
    cell = np.arange(n_cells)
    cx, cy = cell // size, cell % size
    kernel = np.zeros((5, n_cells, n_cells))
    for a, (mx, my) in enumerate(MOVES_2D):
        for (nx, ny), p in zip(MOVES_2D, noise_probs, strict=True):
            dest = ((cx + mx + nx) % size) * size + (cy + my + ny) % size
            np.add.at(kernel[a], (cell, dest), p)
    half = size // 2
    if only_distribution_reward:
        positional = np.zeros(n_cells)
        move_cost = np.zeros(5)
    else:
        positional = 2.0 - (2.0 / size) * (np.abs(cx - half) + np.abs(cy - half))
        move_cost = np.abs(MOVES_2D).sum(1) / size
    return CrowdGame(
        transition=kernel,
        positional_reward=positional,
        move_cost=move_cost,
        mu0=np.full(n_cells, 1.0 / n_cells),
        horizon=horizon,
        crowd_aversion_coef=float(crowd_aversion_coef),
        congestion=bool(with_congestion) and not only_distribution_reward,
    )


# ----------------------------------------------------------------------------- flow and values
def check_policy(game: CrowdGame, pi: np.ndarray) -> np.ndarray:
    """Validate a tabular policy ``pi[T, X, A]`` (shape, finite, rows on the simplex)."""
    pi = np.asarray(pi, dtype=np.float64)
    shape = (game.horizon, game.n_cells, game.n_actions)
    if pi.shape != shape:
        raise ValueError(f"policy must have shape [T, X, A] = {shape}, got {pi.shape}")
    if not np.isfinite(pi).all() or (pi < -1e-12).any():
        raise ValueError("policy must hold finite non-negative probabilities")
    if not np.allclose(pi.sum(-1), 1.0, atol=1e-6):
        raise ValueError("policy rows pi[t, x, :] must sum to 1")
    return pi


def mean_field_flow(game: CrowdGame, pi: np.ndarray) -> np.ndarray:
    """Distribution flow ``mu[T + 1, X]`` of a population playing ``pi[T, X, A]`` from ``mu0``.

    ``mu[t]`` is the distribution at the decision node of time ``t`` (``mu[T]`` after the last move).
    """
    pi = check_policy(game, pi)
    mu = np.empty((game.horizon + 1, game.n_cells))
    mu[0] = game.mu0
    for t in range(game.horizon):
        joint = mu[t][:, None] * pi[t]  # [X, A] mass taking each action
        mu[t + 1] = np.einsum("xa,axy->y", joint, game.transition)
    return mu


def state_rewards(game: CrowdGame, mu: np.ndarray) -> np.ndarray:
    """``R[T, X]``: positional plus crowd-aversion reward at each decision node (no move cost)."""
    return game.positional_reward[None, :] - game.crowd_aversion_coef * np.log(mu[: game.horizon] + _LOG_EPS)


def _q_values(game: CrowdGame, mu: np.ndarray, rewards: np.ndarray, v_next: np.ndarray, t: int) -> np.ndarray:
    """``Q_t[X, A]`` given the value ``v_next[X]`` of the decision nodes at ``t + 1``."""
    cont = v_next
    if t + 1 < game.horizon:  # the move cost is charged at the next node, which exists only before T
        weight = mu[t + 1] if game.congestion else np.ones(game.n_cells)
        cont = v_next[None, :] - game.move_cost[:, None] * weight[None, :]  # [A, X']
        expected = np.einsum("axy,ay->xa", game.transition, cont)
    else:
        expected = np.einsum("axy,y->xa", game.transition, cont)
    return rewards[t][:, None] + expected


class BestResponse(NamedTuple):
    """Best response to a fixed flow: greedy ``policy[T, X, A]``, ``value[T + 1, X]``, ``q[T, X, A]``."""

    policy: np.ndarray
    value: np.ndarray
    q: np.ndarray


def best_response(game: CrowdGame, mu: np.ndarray) -> BestResponse:
    """Best response to the flow ``mu[T + 1, X]`` by backward induction (ties -> lowest action)."""
    rewards = state_rewards(game, mu)
    value = np.zeros((game.horizon + 1, game.n_cells))
    q = np.empty((game.horizon, game.n_cells, game.n_actions))
    for t in reversed(range(game.horizon)):
        q[t] = _q_values(game, mu, rewards, value[t + 1], t)
        value[t] = q[t].max(-1)
    policy = np.zeros_like(q)
    np.put_along_axis(policy, q.argmax(-1)[..., None], 1.0, axis=-1)
    return BestResponse(policy, value, q)


def policy_value(game: CrowdGame, pi: np.ndarray, mu: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Value ``V[T + 1, X]`` and ``Q[T, X, A]`` of ``pi[T, X, A]`` against the flow ``mu[T + 1, X]``."""
    pi = check_policy(game, pi)
    rewards = state_rewards(game, mu)
    value = np.zeros((game.horizon + 1, game.n_cells))
    q = np.empty((game.horizon, game.n_cells, game.n_actions))
    for t in reversed(range(game.horizon)):
        q[t] = _q_values(game, mu, rewards, value[t + 1], t)
        value[t] = (pi[t] * q[t]).sum(-1)
    return value, q


def policy_return(game: CrowdGame, pi: np.ndarray) -> float:
    """``J(pi, mu^pi)``: expected return of an agent when the whole population plays ``pi``."""
    mu = mean_field_flow(game, pi)
    value, _ = policy_value(game, pi, mu)
    return float(game.mu0 @ value[0])


def tabulate_policy(
    game: CrowdGame,
    cell_observations: Callable[[int], np.ndarray],
    probs_fn: Callable[[np.ndarray, np.ndarray, int], np.ndarray],
) -> np.ndarray:
    """Turn an observation-based policy into a table ``pi[T, X, A]`` on the mean-field flow.

    The policy may depend on the mean field: at each t it sees the flow ``mu_t`` that its own
    earlier choices produce (forward induction), as the population would in the N -> inf limit.

    Args:
        game: the tabular game.
        cell_observations: ``t -> obs[X, S]``, an agent's observation in each cell (e.g. the
            crowd envs' ``cell_observations``).
        probs_fn: ``(obs[X, S], summary[X], t) -> probs[X, A]``, the policy's action probabilities.
    """
    pi = np.empty((game.horizon, game.n_cells, game.n_actions))
    mu = game.mu0.copy()
    for t in range(game.horizon):
        probs = np.asarray(probs_fn(cell_observations(t), mu.astype(np.float32), t), dtype=np.float64)
        expected = (game.n_cells, game.n_actions)
        if probs.shape != expected:
            raise ValueError(f"probs_fn returned shape {probs.shape}, expected [X, A] = {expected}")
        pi[t] = probs
        check_policy(game, np.broadcast_to(probs, pi.shape))
        mu = np.einsum("xa,axy->y", mu[:, None] * probs, game.transition)
    return pi


class Exploitability(NamedTuple):
    """``exploitability = best_response_return - policy_return`` against the policy's own flow."""

    exploitability: float
    policy_return: float
    best_response_return: float
    flow: np.ndarray


def exploitability(game: CrowdGame, pi: np.ndarray) -> Exploitability:
    """Exact mean-field exploitability ``max_pi' J(pi', mu^pi) - J(pi, mu^pi)`` of ``pi[T, X, A]``.

    Equal to OpenSpiel's NashConv on the same game and policy to 1e-9 (tests/test_envs_mean_field.py)
    when OpenSpiel's value memo is exact. Caveat: OpenSpiel memoises values by the node string
    ``(x, t)``, which omits the previous action although the reward at a node charges its move
    cost; its NashConv then mixes paths and differs slightly wherever there is a move cost (uniform
    policy, default 1-D game: ours 2.7867, OpenSpiel's 2.8135; for our mirror-descent equilibrium:
    ours 2e-5, OpenSpiel's 0.32). With the memo disabled, or in games without move cost, the two
    agree exactly; at full horizon, Monte Carlo in OpenSpiel's engine confirms our values.
    """
    mu = mean_field_flow(game, pi)
    v_pi, _ = policy_value(game, pi, mu)
    br = best_response(game, mu)
    j_pi = float(game.mu0 @ v_pi[0])
    j_br = float(game.mu0 @ br.value[0])
    return Exploitability(j_br - j_pi, j_pi, j_br, mu)


# ----------------------------------------------------------------------------- equilibrium solvers
class Equilibrium(NamedTuple):
    """Output of a solver: the policy ``[T, X, A]`` and its exploitability after each iteration."""

    policy: np.ndarray
    exploitability: np.ndarray


def fictitious_play(game: CrowdGame, iterations: int = 200) -> Equilibrium:
    """Fictitious play (Perrin et al. 2020): best-respond to the average flow, average the policies.

    The averaged policy is the mixture of the past best responses weighted by the mass each puts
    on a state, so that its flow is the average of their flows.
    """
    if iterations < 1:
        raise ValueError(f"fictitious_play: iterations must be >= 1, got {iterations}")
    pi = game.uniform_policy()
    mu = mean_field_flow(game, pi)
    history = np.empty(iterations)
    for k in range(1, iterations + 1):
        br = best_response(game, mu).policy
        mu_br = mean_field_flow(game, br)
        w_old, w_new = k / (k + 1), 1 / (k + 1)
        num = w_old * mu[:-1, :, None] * pi + w_new * mu_br[:-1, :, None] * br
        den = num.sum(-1, keepdims=True)
        # Where no mass arrives either way, keep the previous rows (any policy is fine there).
        pi = np.where(den > 0, num / np.where(den > 0, den, 1.0), pi)
        mu = w_old * mu + w_new * mu_br
        history[k - 1] = exploitability(game, pi).exploitability
    return Equilibrium(pi, history)


def mirror_descent(
    game: CrowdGame, iterations: int = 300, learning_rate: float = 1.0, track_exploitability: bool = True
) -> Equilibrium:
    """Online mirror descent (Perolat et al. 2022): ``y += lr * Q^{pi}(mu^{pi})``, ``pi = softmax(y)``.

    Args:
        game: the tabular game.
        iterations: number of policy evaluations and updates.
        learning_rate: step size on the cumulated Q-values.
        track_exploitability: compute the exploitability after every iteration (doubles the cost);
            otherwise the returned history holds only the final value.
    """
    if iterations < 1 or not learning_rate > 0:
        raise ValueError("mirror_descent: iterations must be >= 1 and learning_rate > 0")
    y = np.zeros((game.horizon, game.n_cells, game.n_actions))
    pi = game.uniform_policy()
    history = np.empty(iterations)
    for k in range(iterations):
        mu = mean_field_flow(game, pi)
        _, q = policy_value(game, pi, mu)
        y += learning_rate * q
        z = y - y.max(-1, keepdims=True)
        pi = np.exp(z)
        pi /= pi.sum(-1, keepdims=True)
        if track_exploitability or k == iterations - 1:
            history[k] = exploitability(game, pi).exploitability
    if not track_exploitability:
        history = history[-1:]
    return Equilibrium(pi, history)


# ----------------------------------------------------------------------------- Gaussian squeeze
class StageGameExploitability(NamedTuple):
    """Mean-field exploitability of a symmetric mixed strategy in Gaussian squeeze.

    Attributes:
        mean_action: ``m``, the population's mean action.
        value: ``g(m)``, the per-agent reward of the population.
        exploitability: gain in the shared reward ``G`` from the best unilateral deviation of one
            agent, in the N -> inf limit: ``max_a g'(m) (a - m)``. A deviator's own per-agent
            reward ``G / N`` gains this divided by N, so this is the Nash gap in units of ``G``.
            Zero exactly at ``m = m*`` (``g'(m*) = 0``).
        team_gap: ``g(m*) - g(m)``, what the whole population gains by switching to the optimum.
    """

    mean_action: float
    value: float
    exploitability: float
    team_gap: float


def gaussian_squeeze_exploitability(
    probs: np.ndarray, mu_frac: float = 0.4, sigma_frac: float = 0.2
) -> StageGameExploitability:
    """Exploitability of the mixed strategy ``probs[A]`` played by all agents of Gaussian squeeze.

    With shared reward ``G(x) / N``, ``G(x) = x exp(-(x - mu)^2 / sigma^2)`` and ``x = N m``, the
    per-agent reward is ``g(m) = m exp(-(m - mu_frac)^2 / sigma_frac^2)``. One agent switching
    from ``a`` to ``a'`` moves ``G`` by ``g'(m) (a' - a) + O(1/N)``; averaged over ``a ~ probs``
    the best switch gains ``max_a' g'(m) (a' - m)``, which is 0 only where ``g'(m) = 0``.

    Args:
        probs: ``[A]`` probabilities of actions ``0..A-1``.
        mu_frac: ``mu / N``.
        sigma_frac: ``sigma / N``.
    """
    probs = np.asarray(probs, dtype=np.float64)
    if probs.ndim != 1 or probs.size < 2:
        raise ValueError(f"probs must be a vector over A >= 2 actions, got shape {probs.shape}")
    if not np.isfinite(probs).all() or (probs < 0).any() or not math.isclose(probs.sum(), 1.0, abs_tol=1e-6):
        raise ValueError("probs must be a probability vector")
    if not (mu_frac > 0 and sigma_frac > 0):
        raise ValueError(f"mu_frac and sigma_frac must be > 0, got {mu_frac}, {sigma_frac}")
    m = float(probs @ np.arange(probs.size))

    def g(v: float) -> float:
        return v * math.exp(-((v - mu_frac) ** 2) / sigma_frac**2)

    grad = math.exp(-((m - mu_frac) ** 2) / sigma_frac**2) * (1 - 2 * m * (m - mu_frac) / sigma_frac**2)
    gain = max(grad * (0 - m), grad * (probs.size - 1 - m))
    m_star = min((2 * mu_frac + math.sqrt(4 * mu_frac**2 + 8 * sigma_frac**2)) / 4, probs.size - 1)
    return StageGameExploitability(m, g(m), max(gain, 0.0), g(m_star) - g(m))
