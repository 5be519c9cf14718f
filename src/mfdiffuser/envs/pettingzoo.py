"""PettingZoo ``ParallelEnv`` view of a population env, for interoperability only.

Per-agent dicts cost O(N) Python objects per step: use the batched API for anything at scale.
Requires the ``pettingzoo`` extra.
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np

from mfdiffuser.envs.base import PopulationEnv
from mfdiffuser.errors import require

require("pettingzoo", "pettingzoo")

from pettingzoo import ParallelEnv  # noqa: E402


class PopulationParallelEnv(ParallelEnv):
    """Wrap a :class:`PopulationEnv` as a PettingZoo ``ParallelEnv`` with agents ``agent_0..agent_{N-1}``.

    Every agent shares one observation and one action space object. An agent leaves ``agents``
    when the episode ends or when the wrapped env reports it dead (``info["alive"]``, then
    ``terminations[agent]`` is true); dead agents' actions are filled with action 0. Per-agent
    ``infos`` hold ``t``; the batched ``info`` of the last call is :attr:`last_info` and
    :meth:`state` returns ``phi(mu_t)``.
    """

    metadata: dict[str, Any] = {"render_modes": [], "is_parallelizable": True}

    def __init__(self, env: PopulationEnv) -> None:
        self.env = env
        self.possible_agents = [f"agent_{i}" for i in range(env.n_agents)]
        self._index = {name: i for i, name in enumerate(self.possible_agents)}
        self.agents: list[str] = []
        self.render_mode = None
        self.metadata = {**self.metadata, "name": f"mfdiffuser/{env.name}"}
        self.observation_spaces = dict.fromkeys(self.possible_agents, env.observation_space)
        self.action_spaces = dict.fromkeys(self.possible_agents, env.action_space)
        self.last_info: dict[str, Any] = {}
        self._alive = np.ones(env.n_agents, dtype=bool)

    def observation_space(self, agent: str) -> gym.spaces.Space:
        return self.observation_spaces[agent]

    def action_space(self, agent: str) -> gym.spaces.Space:
        return self.action_spaces[agent]

    def reset(
        self, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[dict[str, np.ndarray], dict[str, dict[str, Any]]]:
        obs, info = self.env.reset(seed=seed, options=options)
        if seed is not None:
            for i, space in enumerate((self.env.action_space, self.env.observation_space)):
                space.seed(seed + i)
        self.last_info = info
        self._alive = np.asarray(info["alive"], dtype=bool).copy()
        self.agents = [a for a, alive in zip(self.possible_agents, self._alive, strict=True) if alive]
        return {a: obs[self._index[a]] for a in self.agents}, {a: {"t": info["t"]} for a in self.agents}

    def step(self, actions: dict[str, Any]) -> tuple[dict[str, Any], ...]:
        if not self.agents:
            raise RuntimeError("step() called with no live agents: call reset()")
        unknown = set(actions) - set(self.agents)
        if unknown:
            raise ValueError(f"actions for agents that are not live: {sorted(unknown)[:5]}")
        missing = [a for a in self.agents if a not in actions]
        if missing:
            raise ValueError(f"no action for live agents {missing[:5]} ({len(missing)} missing)")
        batch = np.zeros(self.env.n_agents, dtype=np.int64)
        for agent, act in actions.items():
            batch[self._index[agent]] = int(act)
        obs, reward, term, trunc, info = self.env.step(batch)
        self.last_info = info
        alive = np.asarray(info["alive"], dtype=bool)
        live = self.agents
        observations = {a: obs[self._index[a]] for a in live}
        rewards = {a: float(reward[self._index[a]]) for a in live}
        terminations = {a: bool(term or not alive[self._index[a]]) for a in live}
        truncations = {a: bool(trunc) for a in live}
        infos = {a: {"t": info["t"]} for a in live}
        self._alive = alive.copy()
        self.agents = [a for a in live if not (terminations[a] or truncations[a])]
        return observations, rewards, terminations, truncations, infos

    def state(self) -> np.ndarray:
        return np.asarray(self.env.summary())

    def close(self) -> None:
        self.env.close()


def parallel_env(name: str, n_agents: int | None = None, **kwargs: Any) -> PopulationParallelEnv:
    """Build a registered env or setting and wrap it: ``parallel_env("crowd", n_agents=20)``."""
    from mfdiffuser.envs import make

    return PopulationParallelEnv(make(name, n_agents=n_agents, **kwargs))
