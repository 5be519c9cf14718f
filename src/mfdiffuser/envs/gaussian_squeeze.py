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

MEDIUM_SCORE = 50.0
"""Expected normalized score the ``medium`` behaviour is calibrated to."""
_QUADRATURE_NODES = 64


class GaussianSqueeze(PopulationEnv):
    """The Gaussian squeeze stage game, repeated ``horizon`` times (default once).

    Observation: ``[1, t / T]`` (agents have no state of their own). Summary ``phi``: the histogram
    of the previous joint action over the A actions (zeros before the first step).
    """

    name = "gaussian-squeeze"
    stochastic_transitions = False  # no state: rewards are a function of the joint action
    reward_scope = "population"  # every agent gets G(x) / N

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

    def expected_reward(self, probs: np.ndarray) -> float:
        """Expected per-agent reward when every agent draws its action i.i.d. from ``probs [A]``.

        The action sum ``x`` of N i.i.d. draws is taken as normal (mean ``N m``, variance ``N v`` of
        one draw's mean and variance), and ``E[G(x)] / N`` is integrated by Gauss-Hermite quadrature.
        """
        probs = np.asarray(probs, dtype=np.float64) / np.sum(probs)
        a = np.arange(self.n_actions, dtype=np.float64)
        mean = float(probs @ a)
        var = float(probs @ (a - mean) ** 2)
        nodes, weights = np.polynomial.hermite_e.hermegauss(_QUADRATURE_NODES)
        x = np.clip(self.n_agents * mean + math.sqrt(self.n_agents * var) * nodes, 0.0, None)
        x = np.minimum(x, self.n_agents * (self.n_actions - 1))
        return float(weights @ self.shared_reward(x) / weights.sum()) / self.n_agents

    def medium_mix(self) -> float:
        """Fraction ``eps`` of uniform actions mixed into the expert for a normalized score of 50.

        The expected normalized score ``100 (R(eps) - R_random) / (R_expert - R_random)`` of
        :meth:`expected_reward` falls from 100 at ``eps = 0`` to 0 at ``eps = 1``; ``eps`` is found by
        bisection, so ``medium`` means about 50 points for any ``mu_frac``, ``sigma_frac``,
        ``n_actions`` and N (a fixed ``eps = 0.04`` scored 49 at the defaults but 27-30 at other
        arguments). Simulated at N = 1,000 (200 episodes, references rolled out): defaults eps =
        0.040, 50.4 normalized; mu_frac 0.6, sigma_frac 0.1: eps = 0.022, 49.8; mu_frac 0.3,
        sigma_frac 0.3: eps = 0.056, 50.6; mu_frac 1.5, sigma_frac 0.5: eps = 0.140, 50.7. The
        normal approximation is coarser at small N (N = 100, mu_frac 0.6, sigma_frac 0.1: 54.5).

        Raises:
            ValueError: expert and uniform play earn the same expected reward (no score is defined).
        """
        uniform = np.full(self.n_actions, 1.0 / self.n_actions)
        expert = self.expert_probs()
        r_exp, r_rand = self.expected_reward(expert), self.expected_reward(uniform)
        if not r_exp - r_rand > 1e-12:
            raise ValueError(
                f"{self.name}: expert and random play earn the same reward at these arguments; "
                "no medium quality is defined"
            )

        def score(eps: float) -> float:
            mixed = self.expected_reward((1 - eps) * expert + eps * uniform)
            return 100.0 * (mixed - r_rand) / (r_exp - r_rand)

        lo, hi = 0.0, 1.0
        for _ in range(40):
            mid = 0.5 * (lo + hi)
            if score(mid) > MEDIUM_SCORE:
                lo = mid
            else:
                hi = mid
        return 0.5 * (lo + hi)

    def behaviour_policy(self, quality: str) -> PopulationPolicy:
        if quality == "random":
            return RandomPolicy()
        if quality == "expert":
            return MixedStrategyPolicy(self.expert_probs())
        if quality == "medium":
            eps = self.medium_mix()
            return MixedStrategyPolicy((1 - eps) * self.expert_probs() + eps / self.n_actions)
        raise ValueError(f"{self.name}: unknown quality {quality!r}; choose from expert, medium, random")


class MixedStrategyPolicy:
    """Every agent draws its action i.i.d. from a fixed distribution over the A actions."""

    def __init__(self, probs: np.ndarray) -> None:
        self.probs = np.asarray(probs, dtype=np.float64) / np.sum(probs)

    def reset(self, env: PopulationEnv, rng: np.random.Generator) -> None:
        self._n, self._rng = env.n_agents, rng

    def act(self, obs: np.ndarray, info: dict[str, Any]) -> np.ndarray:
        return self._rng.choice(len(self.probs), size=self._n, p=self.probs).astype(np.int64)
