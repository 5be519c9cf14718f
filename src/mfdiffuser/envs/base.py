"""The batched population API shared by every benchmark: agents are an array axis, never a dict.

Gymnasium's contract with the agent axis in front: ``reset(*, seed, options) -> (obs[N, S], info)``,
``step(actions[N]) -> (obs[N, S], reward[N], terminated, truncated, info)``. ``info`` always holds
``"t"`` (steps taken), ``"summary"`` (``phi(mu_t)``, fixed size, computed over all N agents) and
``"alive"`` (``[N]`` bool mask; all true for envs where agents never die).
"""

from __future__ import annotations

import abc
from collections.abc import Mapping
from typing import Any, ClassVar, Protocol, runtime_checkable

import gymnasium as gym
import numpy as np

QUALITIES: tuple[str, ...] = ("expert", "medium", "random")
"""Behaviour-policy qualities every env ships (``mixed`` is built from these by the dataset code)."""


@runtime_checkable
class PopulationPolicy(Protocol):
    """A policy for a whole population: behaviour policies and learned agents alike.

    ``reset`` is called once per episode with the env and a generator owned by the caller;
    ``act`` maps the population's observations to one action per agent.
    """

    def reset(self, env: PopulationEnv, rng: np.random.Generator) -> None: ...

    def act(self, obs: np.ndarray, info: dict[str, Any]) -> np.ndarray:
        """Return ``actions[N]`` (int64) for ``obs[N, S]`` and the env's latest ``info``."""
        ...


class PopulationEnv(abc.ABC):
    """Base class of a population environment with N homogeneous agents.

    Subclasses set ``observation_space`` (one agent, ``Box[S]``), ``action_space``
    (``Discrete(A)``), ``summary_space`` (``Box[P]``), ``horizon`` (T) and implement
    ``_reset``, ``_step``, ``summary`` and ``config``. Randomness comes only from ``self.np_random``,
    which ``reset(seed=...)`` re-creates.
    """

    name: ClassVar[str]
    reward_scope: ClassVar[str] = "agent"
    """``population`` where every agent receives the population's reward (the same for all agents);
    ``agent`` where each agent's reward is its own."""
    n_agents: int
    horizon: int
    observation_space: gym.spaces.Box
    action_space: gym.spaces.Discrete
    summary_space: gym.spaces.Box

    def __init__(self) -> None:
        self.np_random: np.random.Generator = np.random.default_rng()
        self.t = 0
        self._needs_reset = True

    # ----------------------------------------------------------------- public API
    @classmethod
    def observation_view(cls, config: Mapping[str, Any]) -> tuple[int, int, int] | None:
        """``[V, V, C]`` of the image view that closes each observation of an env built with ``config``.

        The last ``V * V * C`` features of ``obs[N, S]`` are then that view, flattened row-major, and the
        networks encode them with a convolution (:class:`~mfdiffuser.models.view.ObsEncoder`). None
        (the default) when the observation is a plain feature vector.
        """
        return None

    @property
    def state_size(self) -> int:
        """S: per-agent observation feature size."""
        return int(self.observation_space.shape[0])

    @property
    def n_actions(self) -> int:
        """A: number of discrete actions."""
        return int(self.action_space.n)

    @property
    def summary_size(self) -> int:
        """P: size of the mean-field summary ``phi(mu_t)``."""
        return int(self.summary_space.shape[0])

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        """Start an episode; ``seed`` re-creates the env's generator (same seed, same episode)."""
        if seed is not None:
            self.np_random = np.random.default_rng(seed)
        self.t = 0
        self._needs_reset = False
        obs = self._reset(options or {})
        return obs, self._info({})

    def step(self, actions: np.ndarray) -> tuple[np.ndarray, np.ndarray, bool, bool, dict[str, Any]]:
        """Advance every agent by one step with ``actions[N]``."""
        if self._needs_reset:
            raise RuntimeError(f"{self.name}: call reset() before step() (episode over or never started)")
        actions = self.validate_actions(actions)
        obs, reward, terminated, extra = self._step(actions)
        self.t += 1
        truncated = (not terminated) and self.t >= self.horizon
        if terminated or truncated:
            self._needs_reset = True
        return obs, reward, bool(terminated), bool(truncated), self._info(extra)

    def validate_actions(self, actions: Any) -> np.ndarray:
        """Check shape ``[N]``, integer dtype and range; return them as int64 or raise ValueError."""
        actions = np.asarray(actions)
        if actions.shape != (self.n_agents,):
            raise ValueError(
                f"{self.name}: actions must have shape ({self.n_agents},), got {actions.shape}"
            )
        if not np.issubdtype(actions.dtype, np.integer):
            raise ValueError(f"{self.name}: actions must be integers, got dtype {actions.dtype}")
        if actions.size and (actions.min() < 0 or actions.max() >= self.n_actions):
            raise ValueError(
                f"{self.name}: actions must lie in [0, {self.n_actions - 1}], "
                f"got range [{actions.min()}, {actions.max()}]"
            )
        return actions.astype(np.int64, copy=False)

    def alive(self) -> np.ndarray:
        """``[N]`` bool mask of agents still in the game (all true unless the env kills agents)."""
        return np.ones(self.n_agents, dtype=bool)

    def behaviour_policy(self, quality: str) -> PopulationPolicy:
        """The behaviour policy of a quality in :data:`QUALITIES`, batched over N."""
        raise NotImplementedError(f"{self.name} ships no behaviour policies")

    def close(self) -> None:
        """Release engine resources (no-op for pure NumPy envs)."""
        return None

    # ----------------------------------------------------------- for subclasses
    @abc.abstractmethod
    def _reset(self, options: dict[str, Any]) -> np.ndarray:
        """Reset the population state; return ``obs[N, S]``."""

    @abc.abstractmethod
    def _step(self, actions: np.ndarray) -> tuple[np.ndarray, np.ndarray, bool, dict[str, Any]]:
        """Apply validated actions; return ``(obs[N, S], reward[N], terminated, extra_info)``."""

    @abc.abstractmethod
    def summary(self) -> np.ndarray:
        """``phi(mu_t)``: fixed-size float32 summary of all N agents' current states, O(N)."""

    @abc.abstractmethod
    def config(self) -> dict[str, Any]:
        """Every constructor argument, so that ``make(name, **config)`` rebuilds this env."""

    def _info(self, extra: dict[str, Any]) -> dict[str, Any]:
        info = {"t": self.t, "summary": self.summary(), "alive": self.alive()}
        info.update(extra)
        return info

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.config().items())
        return f"{type(self).__name__}({args})"


def check_int(env: str, name: str, value: Any, *, minimum: int | None = None) -> int:
    """Return ``value`` as an int, or raise ValueError naming ``env`` and the parameter.

    Only true integers pass (Python or NumPy ints): bools, floats (even ``3.0``) and strings are
    rejected, so ``horizon=true`` or ``n_actions=abc`` from a command line never become numbers.

    Args:
        env: env name, the message's prefix.
        name: parameter name.
        value: the value given.
        minimum: smallest accepted value (None: no bound).
    """
    what = {None: "an integer", 0: "a non-negative integer", 1: "a positive integer"}.get(
        minimum, f"an integer >= {minimum}"
    )
    is_int = isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))
    if not is_int or (minimum is not None and value < minimum):
        raise ValueError(f"{env}: {name} must be {what}, got {value!r}")
    return int(value)


def check_float(
    env: str,
    name: str,
    value: Any,
    *,
    minimum: float | None = None,
    maximum: float | None = None,
    exclusive_minimum: bool = False,
) -> float:
    """Return ``value`` as a float, or raise ValueError naming ``env`` and the parameter.

    Ints and floats (Python or NumPy) pass when finite and within the bounds; bools and strings
    are rejected.

    Args:
        env: env name, the message's prefix.
        name: parameter name.
        value: the value given.
        minimum: lower bound (None: none); inclusive unless ``exclusive_minimum``.
        maximum: inclusive upper bound (None: none).
        exclusive_minimum: require ``value > minimum`` rather than ``>=``.
    """
    parts = []
    if minimum is not None and maximum is not None and not exclusive_minimum:
        parts.append(f"in [{minimum:g}, {maximum:g}]")
    else:
        if minimum is not None:
            parts.append(f"{'>' if exclusive_minimum else '>='} {minimum:g}")
        if maximum is not None:
            parts.append(f"<= {maximum:g}")
    what = "a finite number" + (" " + " and ".join(parts) if parts else "")
    is_number = isinstance(value, (int, float, np.integer, np.floating))
    if isinstance(value, (bool, np.bool_)) or not is_number or not np.isfinite(value):
        raise ValueError(f"{env}: {name} must be {what}, got {value!r}")
    low_ok = minimum is None or (value > minimum if exclusive_minimum else value >= minimum)
    if not low_ok or (maximum is not None and value > maximum):
        raise ValueError(f"{env}: {name} must be {what}, got {value!r}")
    return float(value)


def check_bool(env: str, name: str, value: Any) -> bool:
    """Return ``value`` as a bool if it is one (Python or NumPy), else raise ValueError naming it."""
    if not isinstance(value, (bool, np.bool_)):
        raise ValueError(f"{env}: {name} must be a bool (true or false), got {value!r}")
    return bool(value)


def check_positive(name: str, value: Any, *, env: str, allow_zero: bool = False) -> float:
    """:func:`check_float` with a lower bound of 0 (inclusive when ``allow_zero``); return the float."""
    return check_float(env, name, value, minimum=0.0, exclusive_minimum=not allow_zero)


class RandomPolicy:
    """Uniform random actions for every agent (the ``random`` quality of every env)."""

    def reset(self, env: PopulationEnv, rng: np.random.Generator) -> None:
        self._n, self._a, self._rng = env.n_agents, env.n_actions, rng

    def act(self, obs: np.ndarray, info: dict[str, Any]) -> np.ndarray:
        return self._rng.integers(0, self._a, size=self._n, dtype=np.int64)
