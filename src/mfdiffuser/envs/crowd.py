"""Crowd modelling on a ring and on a 2-D torus, simulated for N agents (OpenSpiel semantics).

Finite-N versions of OpenSpiel's ``mfg_crowd_modelling`` and ``mfg_crowd_modelling_2d`` (Perrin et
al. 2020, section 4.2): the crowd-aversion term ``-log(density)`` uses the empirical distribution of
the N agents. The exact mean-field limit of the same game is :mod:`mfdiffuser.envs.mean_field`.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Any

import gymnasium as gym
import numpy as np

from mfdiffuser.envs import mean_field as mf
from mfdiffuser.envs.base import (
    PopulationEnv,
    PopulationPolicy,
    RandomPolicy,
    check_bool,
    check_float,
    check_int,
)

# Mirror descent iterations for the expert; exploitability after them is below 1e-3 for both
# default games (1-D: 2.2e-5, 2-D: 1.3e-4), see tests/test_envs_mean_field.py.
_OMD_ITERATIONS = 1000
_MEDIUM_SCORE = 50.0


class _CrowdEnv(PopulationEnv):
    """Shared N-agent simulator of a :class:`~mfdiffuser.envs.mean_field.CrowdGame`.

    Subclasses build the game, the destination table ``dest[A, E, X]`` (cell after action ``a``
    and noise outcome ``e`` from cell ``x``), the noise probabilities ``[E]`` and the observation
    table ``[X, S - 1]`` (the last observation feature is ``t / T``).

    Step at time t: every agent earns OpenSpiel's decision-node reward ``r_t`` (position,
    ``-log`` of the empirical density ``mu^N_t`` at its cell, cost of its previous move), then moves
    with its action and the noise. Summary ``phi``: the histogram of cells ``mu^N_t`` ([X]).
    """

    game: mf.CrowdGame
    stochastic_transitions = True

    if TYPE_CHECKING:

        def cells_from_obs(self, obs: np.ndarray) -> np.ndarray:
            """Cell index ``[N]`` of each agent from ``obs[N, S]`` (every subclass defines it)."""
            ...

    def _setup(
        self, n_agents: int, dest: np.ndarray, noise_probs: np.ndarray, obs_table: np.ndarray
    ) -> None:
        self.n_agents = n_agents
        self.horizon = self.game.horizon
        a, e, x = dest.shape
        self._n_cells, self._n_noise = x, e
        self._dest = dest.reshape(-1).astype(np.intp)  # flat index (a * E + e) * X + x
        self._noise_cdf = np.cumsum(noise_probs)[:-1]
        self._uniform_noise = bool(np.allclose(noise_probs, 1.0 / e))
        # One observation table per time step: obs = table[t][cell] is a single gather.
        feat = obs_table.shape[1]
        self._obs_tables = np.zeros((self.horizon + 1, x, feat + 1), dtype=np.float32)
        self._obs_tables[:, :, :feat] = obs_table
        self._obs_tables[:, :, feat] = (np.arange(self.horizon + 1) / self.horizon)[:, None]
        self.observation_space = gym.spaces.Box(0.0, 1.0, shape=(feat + 1,), dtype=np.float32)
        self.action_space = gym.spaces.Discrete(a)
        self.summary_space = gym.spaces.Box(0.0, 1.0, shape=(x,), dtype=np.float32)
        self._pos = np.zeros(n_agents, dtype=np.intp)
        self._last = np.zeros(n_agents, dtype=np.intp)
        self._counts = np.zeros(x, dtype=np.intp)
        self._cost = self.game.move_cost.astype(np.float32)
        self._inv_n = 1.0 / n_agents

    @property
    def neutral_action(self) -> int:
        """The action that does not move (charged no cost at the next step)."""
        return int(np.argmin(self.game.move_cost))

    def mean_field_game(self) -> mf.CrowdGame:
        """The exact mean-field (N -> inf) limit of this env as a tabular game."""
        return self.game

    # --------------------------------------------------------------- dynamics
    def _reset(self, options: dict[str, Any]) -> np.ndarray:
        """Cells i.i.d. from ``mu0`` (uniform), or ``options["positions"]`` (``[N]`` cell indices)."""
        x = self._n_cells
        if options.get("positions") is not None:
            pos = np.asarray(options["positions"])
            if pos.shape != (self.n_agents,) or not np.issubdtype(pos.dtype, np.integer):
                raise ValueError(f"{self.name}: options['positions'] must be {self.n_agents} integer cells")
            if pos.min() < 0 or pos.max() >= x:
                raise ValueError(f"{self.name}: options['positions'] must lie in [0, {x - 1}]")
            self._pos[:] = pos
        else:
            self._pos[:] = self.np_random.integers(0, x, size=self.n_agents)
        self._last[:] = self.neutral_action
        self._counts[:] = np.bincount(self._pos, minlength=x)
        return self._obs_tables[0].take(self._pos, axis=0)

    def _step(self, actions: np.ndarray) -> tuple[np.ndarray, np.ndarray, bool, dict[str, Any]]:
        game, x = self.game, self._n_cells
        density = self._counts * self._inv_n
        # Per-cell part of the reward, then one gather per agent.
        cell_reward = (game.positional_reward - game.crowd_aversion_coef * np.log(density + 1e-25)).astype(
            np.float32
        )
        reward = cell_reward.take(self._pos)
        move_cost = self._cost.take(self._last)
        if game.congestion:
            move_cost *= density.astype(np.float32).take(self._pos)
        reward -= move_cost
        # Move: dest[(a * E + e) * X + x], with e the noise outcome.
        if self._uniform_noise:
            noise = self.np_random.integers(0, self._n_noise, size=self.n_agents)
        else:
            noise = np.searchsorted(self._noise_cdf, self.np_random.random(self.n_agents), side="right")
        idx = actions * self._n_noise
        idx += noise
        idx *= x
        idx += self._pos
        self._dest.take(idx, out=self._pos)
        self._last[:] = actions
        self._counts[:] = np.bincount(self._pos, minlength=x)
        return self._obs_tables[self.t + 1].take(self._pos, axis=0), reward, False, {}

    def summary(self) -> np.ndarray:
        return (self._counts * self._inv_n).astype(np.float32)

    def cell_observations(self, t: int) -> np.ndarray:
        """``obs[X, S]``: the observation of an agent in each cell at time ``t`` (to tabulate policies)."""
        if not 0 <= t <= self.horizon:
            raise ValueError(f"{self.name}: t must lie in [0, {self.horizon}], got {t}")
        return self._obs_tables[t].copy()

    def positions(self) -> np.ndarray:
        """Current cell index of every agent, ``[N]``."""
        return self._pos.copy()

    # ------------------------------------------------------------- symmetries
    def permute(self, perm: np.ndarray) -> np.ndarray:
        """Relabel agents in place (new agent ``i`` is old agent ``perm[i]``); return the new obs."""
        perm = np.asarray(perm)
        if perm.shape != (self.n_agents,) or not np.array_equal(np.sort(perm), np.arange(self.n_agents)):
            raise ValueError(f"{self.name}: perm must be a permutation of range({self.n_agents})")
        self._pos[:] = self._pos[perm]
        self._last[:] = self._last[perm]
        return self._obs_tables[self.t].take(self._pos, axis=0)

    def agent_symmetry(self, rng: np.random.Generator) -> np.ndarray:
        """Agents are exchangeable: any permutation is a symmetry."""
        return rng.permutation(self.n_agents)

    # ------------------------------------------------------------- behaviour
    def expert_policy(self) -> np.ndarray:
        """Mean-field Nash equilibrium ``pi[T, X, A]`` by online mirror descent (cached per game)."""
        return _equilibrium(self._game_key())[0]

    def medium_policy(self) -> np.ndarray:
        """``(1 - eps) * expert + eps * uniform``, eps set for a mean-field normalized score of 50.

        Found by bisection on the exact mean-field returns; cached per game.
        """
        return _equilibrium(self._game_key())[1]

    def behaviour_policy(self, quality: str) -> PopulationPolicy:
        """``expert`` (mean-field Nash equilibrium), ``medium`` (about 50 normalized) or ``random``.

        The expert is computed by our online mirror descent (``_OMD_ITERATIONS`` iterations) on
        the exact mean-field game; N agents each sample from it independently. The medium policy
        mixes it with the uniform policy; ``eps`` is found by bisection so that the normalized
        score ``100 (J(pi) - J(uniform)) / (J(expert) - J(uniform))`` of the exact mean-field
        returns is 50 (default 1-D game: eps = 0.549; default 2-D game: eps = 0.580). Simulated
        at finite N, see the calibration figures in :class:`Crowd` and :class:`Crowd2D`.
        """
        if quality == "random":
            return RandomPolicy()
        if quality == "expert":
            return TabularPolicy(self.expert_policy())
        if quality == "medium":
            return TabularPolicy(self.medium_policy())
        raise ValueError(f"{self.name}: unknown quality {quality!r}; choose from expert, medium, random")

    def _game_key(self) -> tuple[str, tuple[tuple[str, Any], ...]]:
        cfg = {k: v for k, v in self.config().items() if k != "n_agents"}
        return self.name, tuple(sorted(cfg.items()))


@functools.lru_cache(maxsize=16)
def _equilibrium(key: tuple[str, tuple[tuple[str, Any], ...]]) -> tuple[np.ndarray, np.ndarray, float]:
    """``(expert, medium, eps)`` for a game given by ``(env name, sorted config items)``."""
    name, items = key
    cfg = dict(items)
    game = mf.crowd_game(**cfg) if name == "crowd" else mf.crowd_2d_game(**cfg)
    expert = mf.mirror_descent(game, iterations=_OMD_ITERATIONS, track_exploitability=False).policy
    uniform = game.uniform_policy()
    j_exp = mf.policy_return(game, expert)
    j_uni = mf.policy_return(game, uniform)
    if not j_exp > j_uni:
        # The equilibrium need not beat uniform play in every game; then no mix scores 50.
        return expert, expert, 0.0

    def score(eps: float) -> float:
        j = mf.policy_return(game, (1 - eps) * expert + eps * uniform)
        return 100 * (j - j_uni) / (j_exp - j_uni)

    lo, hi = 0.0, 1.0  # score(0) = 100, score(1) = 0; the score decreases with eps in these games
    for _ in range(40):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if score(mid) > _MEDIUM_SCORE else (lo, mid)
    eps = 0.5 * (lo + hi)
    return expert, (1 - eps) * expert + eps * uniform, eps


class TabularPolicy:
    """Every agent samples its action from ``pi[t, cell]`` of a tabular policy ``pi[T, X, A]``.

    Reads the cell from the env (the observation's one-hot block) and t from ``info["t"]``.
    """

    def __init__(self, pi: np.ndarray) -> None:
        self.pi = np.asarray(pi, dtype=np.float64)
        self._cdf = np.cumsum(self.pi, axis=-1)
        self._cdf[..., -1] = 1.0 + 1e-12  # guard against round-off in the last bin

    def reset(self, env: PopulationEnv, rng: np.random.Generator) -> None:
        if not isinstance(env, _CrowdEnv):
            raise ValueError(f"TabularPolicy needs a crowd env, got {env.name}")
        if self.pi.shape != (env.horizon, env.summary_size, env.n_actions):
            raise ValueError(
                f"TabularPolicy: pi has shape {self.pi.shape}, env needs "
                f"{(env.horizon, env.summary_size, env.n_actions)}"
            )
        self._env, self._rng = env, rng

    def act(self, obs: np.ndarray, info: dict[str, Any]) -> np.ndarray:
        t = min(int(info["t"]), self.pi.shape[0] - 1)
        cdf = self._cdf[t].take(self._env.cells_from_obs(obs), axis=0)  # [N, A]
        u = self._rng.random(len(obs))
        return (u[:, None] >= cdf).sum(-1).astype(np.int64)


class Crowd(_CrowdEnv):
    """OpenSpiel's ``mfg_crowd_modelling`` for N agents: a ring of ``size`` cells, horizon T.

    Actions 0, 1, 2 move -1, 0, +1; then noise moves -1, 0, +1 with probability 1/3 each. Reward at
    time t: ``1 - |x - size // 2| / (size // 2) - |previous move| / size - log(mu^N_t(x))``.
    Initial cells i.i.d. uniform. Observation: one-hot cell (``size``) and ``t / T``.

    Behaviour policies, measured per-agent returns (mean-field limit: expert 28.34, random 27.43,
    medium 50 normalized by construction): N = 1000, 200 episodes: expert 28.29, random 27.38,
    medium 49.8 +- 0.4 normalized; N = 10,000, 30 episodes: 28.33, 27.43, medium 50.0 +- 0.3.
    The finite-N returns sit below the limit by about 0.045 (the entropy deficit of an empirical
    histogram), equally for every policy.
    """

    name = "crowd"

    def __init__(self, n_agents: int = 1000, size: int = 10, horizon: int = 10) -> None:
        super().__init__()
        n_agents = check_int(self.name, "n_agents", n_agents, minimum=1)
        self.size = check_int(self.name, "size", size, minimum=2)
        horizon = check_int(self.name, "horizon", horizon, minimum=1)
        self.game = mf.crowd_game(self.size, int(horizon))
        moves = np.array([-1, 0, 1])
        cells = np.arange(self.size)
        dest = (cells[None, None, :] + moves[:, None, None] + moves[None, :, None]) % self.size
        self._setup(n_agents, dest, np.full(3, 1 / 3), np.eye(self.size, dtype=np.float32))

    def config(self) -> dict[str, Any]:
        return {"n_agents": self.n_agents, "size": self.size, "horizon": self.horizon}

    def cells_from_obs(self, obs: np.ndarray) -> np.ndarray:
        """Cell index ``[N]`` of each agent from ``obs[N, S]``."""
        return obs[:, : self.size].argmax(-1)


class Crowd2D(_CrowdEnv):
    """OpenSpiel's ``mfg_crowd_modelling_2d`` for N agents on a ``size x size`` torus.

    Actions 0..4 move (0,-1), (-1,0), (0,0), (1,0), (0,1); chance then replays one of these moves,
    each with probability ``noise_intensity / 5`` plus ``1 - noise_intensity`` on (0,0). Reward:
    ``2 - (2 / size)(|x - size // 2| + |y - size // 2|) - (|dx| + |dy|) / size
    - crowd_aversion_coef * log(mu^N_t(x, y))`` (only the log term if
    ``only_distribution_reward``; the move cost scaled by the density with ``with_congestion``).
    Cell ``(x, y)`` has index ``x * size + y``. Observation: one-hot x, one-hot y, ``t / T``.
    OpenSpiel's forbidden states and custom initial distributions are not supported.

    Behaviour policies, measured per-agent returns (mean-field limit: expert 56.70, random 55.33,
    medium 50 normalized by construction): N = 1000, 100 episodes: expert 56.20, random 54.83,
    medium 50.3 +- 0.6 normalized (100 cells hold only 10 agents each, hence the larger finite-N
    offset of about 0.5, again shared by all policies).
    """

    name = "crowd-2d"

    def __init__(
        self,
        n_agents: int = 1000,
        size: int = 10,
        horizon: int = 10,
        noise_intensity: float = 1.0,
        crowd_aversion_coef: float = 1.0,
        only_distribution_reward: bool = False,
        with_congestion: bool = False,
    ) -> None:
        super().__init__()
        n_agents = check_int(self.name, "n_agents", n_agents, minimum=1)
        self.size = check_int(self.name, "size", size, minimum=2)
        horizon = check_int(self.name, "horizon", horizon, minimum=1)
        name = self.name
        self.noise_intensity = check_float(name, "noise_intensity", noise_intensity, minimum=0.0, maximum=1.0)
        self.crowd_aversion_coef = check_float(name, "crowd_aversion_coef", crowd_aversion_coef, minimum=0.0)
        self.only_distribution_reward = check_bool(name, "only_distribution_reward", only_distribution_reward)
        self.with_congestion = check_bool(name, "with_congestion", with_congestion)
        self.game = mf.crowd_2d_game(
            self.size,
            int(horizon),
            self.noise_intensity,
            self.crowd_aversion_coef,
            self.only_distribution_reward,
            self.with_congestion,
        )
        size, moves = self.size, mf.MOVES_2D
        cells = np.arange(size * size)
        cx, cy = cells // size, cells % size
        step = moves[:, None, :] + moves[None, :, :]  # [A, E, 2]
        dest = ((cx + step[..., 0:1]) % size) * size + (cy + step[..., 1:2]) % size
        noise = np.full(5, self.noise_intensity / 5)
        noise[mf.NEUTRAL_2D] += 1.0 - self.noise_intensity
        table = np.zeros((size * size, 2 * size), dtype=np.float32)
        table[cells, cx] = 1.0
        table[cells, size + cy] = 1.0
        self._setup(n_agents, dest, noise, table)

    def config(self) -> dict[str, Any]:
        return {
            "n_agents": self.n_agents,
            "size": self.size,
            "horizon": self.horizon,
            "noise_intensity": self.noise_intensity,
            "crowd_aversion_coef": self.crowd_aversion_coef,
            "only_distribution_reward": self.only_distribution_reward,
            "with_congestion": self.with_congestion,
        }

    def cells_from_obs(self, obs: np.ndarray) -> np.ndarray:
        """Cell index ``[N]`` (``x * size + y``) of each agent from ``obs[N, S]``."""
        s = self.size
        return obs[:, :s].argmax(-1) * s + obs[:, s : 2 * s].argmax(-1)
