"""Gaussian squeeze: a stage game of N agents with shared reward (Yang et al. 2018, MF-Q, section 5).

Each agent picks ``a in {0..A-1}``; with ``x = sum_i a_i`` the population earns
``G(x) = x exp(-(x - mu)^2 / sigma^2)``, reported per agent as ``G / N``. With ``mu = 0.4 N`` and
``sigma = 0.2 N`` (defaults, as fractions of N) the per-agent reward depends on the mean action
``m = x / N`` only: ``g(m) = m exp(-(m - 0.4)^2 / 0.04)``, maximised at ``m* = 0.44495``.
"""

from __future__ import annotations

import math
from typing import Any

import gymnasium as gym
import numpy as np

from mfdiffuser.envs.base import PopulationEnv, PopulationPolicy, RandomPolicy, check_int, check_positive


class GaussianSqueeze(PopulationEnv):
    """The Gaussian squeeze stage game, repeated ``horizon`` times (default once).

    Observation: ``[1, t / T]`` (agents have no state of their own). Summary ``phi``: the histogram
    of the previous joint action over the A actions (zeros before the first step).
    """

    name = "gaussian-squeeze"
    stochastic_transitions = False  # no state: rewards are a function of the joint action

    def __init__(
        self,
        n_agents: int = 1000,
        mu_frac: float = 0.4,
        sigma_frac: float = 0.2,
        n_actions: int = 10,
        horizon: int = 1,
    ) -> None:
        super().__init__()
        self.n_agents = check_int(self.name, "n_agents", n_agents, minimum=1)
        self.mu_frac = check_positive("mu_frac", mu_frac, env=self.name)
        self.sigma_frac = check_positive("sigma_frac", sigma_frac, env=self.name)
        n_actions = check_int(self.name, "n_actions", n_actions, minimum=2)
        self.horizon = check_int(self.name, "horizon", horizon, minimum=1)
        self.mu = self.mu_frac * self.n_agents
        self.sigma = self.sigma_frac * self.n_agents
        self.observation_space = gym.spaces.Box(0.0, 1.0, shape=(2,), dtype=np.float32)
        self.action_space = gym.spaces.Discrete(n_actions)
        self.summary_space = gym.spaces.Box(0.0, 1.0, shape=(n_actions,), dtype=np.float32)
        self._hist = np.zeros(n_actions, dtype=np.float32)

    def config(self) -> dict[str, Any]:
        return {
            "n_agents": self.n_agents,
            "mu_frac": self.mu_frac,
            "sigma_frac": self.sigma_frac,
            "n_actions": self.n_actions,
            "horizon": self.horizon,
        }

    # --------------------------------------------------------------- dynamics
    def shared_reward(self, x: float | np.ndarray) -> float | np.ndarray:
        """``G(x) = x exp(-(x - mu)^2 / sigma^2)`` for the action sum ``x``."""
        return x * np.exp(-((x - self.mu) ** 2) / self.sigma**2)

    def _obs(self, t: int) -> np.ndarray:
        obs = np.empty((self.n_agents, 2), dtype=np.float32)
        obs[:, 0] = 1.0
        obs[:, 1] = t / self.horizon
        return obs

    def _reset(self, options: dict[str, Any]) -> np.ndarray:
        self._hist[:] = 0.0
        return self._obs(0)

    def _step(self, actions: np.ndarray) -> tuple[np.ndarray, np.ndarray, bool, dict[str, Any]]:
        x = float(actions.sum())
        per_agent = float(self.shared_reward(x)) / self.n_agents
        counts = np.bincount(actions, minlength=self.n_actions)
        self._hist = (counts / self.n_agents).astype(np.float32)
        reward = np.full(self.n_agents, per_agent, dtype=np.float32)
        return self._obs(self.t + 1), reward, False, {"action_sum": x, "mean_action": x / self.n_agents}

    def summary(self) -> np.ndarray:
        return self._hist.copy()

    # ----------------------------------------------------- analytic optimum
    def optimal_mean_action(self) -> float:
        """Mean action ``m*`` maximising ``g(m) = m exp(-(m N - mu)^2 / sigma^2)``."""
        # In units of N: 1 = 2 m (m - mu_f) / sigma_f^2  ->  2 m^2 - 2 mu_f m - sigma_f^2 = 0.
        mu_f, s_f = self.mu_frac, self.sigma_frac
        m = (2 * mu_f + math.sqrt(4 * mu_f**2 + 8 * s_f**2)) / 4
        return min(m, float(self.n_actions - 1))

    def optimal_return(self) -> float:
        """Per-agent reward per step of the mean-field optimum ``g(m*)`` (upper bound at any N)."""
        m = self.optimal_mean_action()
        return float(self.shared_reward(m * self.n_agents)) / self.n_agents

    def expert_probs(self) -> np.ndarray:
        """Optimal symmetric mixed strategy: mass on the two actions around ``m*`` with mean ``m*``."""
        m = self.optimal_mean_action()
        lo = int(math.floor(m))
        probs = np.zeros(self.n_actions)
        frac = m - lo
        probs[lo] = 1.0 - frac
        if frac > 0:
            probs[lo + 1] = frac
        return probs

    def behaviour_policy(self, quality: str) -> PopulationPolicy:
        if quality == "random":
            return RandomPolicy()
        if quality == "expert":
            return MixedStrategyPolicy(self.expert_probs())
        if quality == "medium":
            # An epsilon-mix of the expert with uniform actions; eps = 0.04 lands at about 50
            # normalized points at N >= 1,000 (each extra percent of random agents costs ~15 points).
            # Measured (300 episodes, per-agent reward): N = 1,000: expert 0.4201, random 0.0000,
            # medium 0.2079 = 49.5 +- 0.9 normalized; N = 10,000: expert 0.4228, medium 49.2 +- 0.3.
            # Mean-field limit: g = 0.2077 (m = 0.607), 49.1 normalized against g(m*) = 0.4230.
            eps = 0.04
            probs = (1 - eps) * self.expert_probs() + eps / self.n_actions
            return MixedStrategyPolicy(probs)
        raise ValueError(f"{self.name}: unknown quality {quality!r}; choose from expert, medium, random")


class MixedStrategyPolicy:
    """Every agent draws its action i.i.d. from a fixed distribution over the A actions."""

    def __init__(self, probs: np.ndarray) -> None:
        self.probs = np.asarray(probs, dtype=np.float64) / np.sum(probs)

    def reset(self, env: PopulationEnv, rng: np.random.Generator) -> None:
        self._n, self._rng = env.n_agents, rng

    def act(self, obs: np.ndarray, info: dict[str, Any]) -> np.ndarray:
        return self._rng.choice(len(self.probs), size=self._n, p=self.probs).astype(np.int64)
