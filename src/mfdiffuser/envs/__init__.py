"""Population environments behind one batched API, a plain-dict registry and named settings.

``make(name, n_agents=..., **kwargs)`` accepts an env name (``list_envs()``) or a named setting
(``list_settings()``, e.g. ``ising-32x32``); keyword arguments override a setting's values.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from importlib import resources
from typing import Any

import yaml

from mfdiffuser.envs.base import QUALITIES, PopulationEnv, PopulationPolicy

__all__ = [
    "QUALITIES",
    "PopulationEnv",
    "PopulationPolicy",
    "env_class",
    "list_envs",
    "list_settings",
    "make",
    "observation_view",
    "resolve",
]


def _gaussian_squeeze() -> type[PopulationEnv]:
    from mfdiffuser.envs.gaussian_squeeze import GaussianSqueeze

    return GaussianSqueeze


def _ising() -> type[PopulationEnv]:
    from mfdiffuser.envs.ising import Ising

    return Ising


def _crowd() -> type[PopulationEnv]:
    from mfdiffuser.envs.crowd import Crowd

    return Crowd


def _crowd_2d() -> type[PopulationEnv]:
    from mfdiffuser.envs.crowd import Crowd2D

    return Crowd2D


def _battle() -> type[PopulationEnv]:
    from mfdiffuser.envs.battle import Battle  # imports magent2 lazily, naming the extra if missing

    return Battle


# name -> loader of the env class (lazy, so optional engines load only when asked for).
REGISTRY: dict[str, Callable[[], type[PopulationEnv]]] = {
    "gaussian-squeeze": _gaussian_squeeze,
    "ising": _ising,
    "crowd": _crowd,
    "crowd-2d": _crowd_2d,
    "battle": _battle,
}


@functools.cache
def _settings() -> dict[str, dict[str, Any]]:
    text = resources.files("mfdiffuser.envs").joinpath("settings.yaml").read_text()
    return yaml.safe_load(text)


def list_envs() -> list[str]:
    """Names of the registered envs."""
    return list(REGISTRY)


def list_settings() -> dict[str, dict[str, Any]]:
    """Named settings: ``{setting: {"env": name, **kwargs}}``."""
    return {k: dict(v) for k, v in _settings().items()}


def env_class(name: str) -> type[PopulationEnv]:
    """The class registered under ``name`` (ValueError listing the choices otherwise)."""
    if name not in REGISTRY:
        raise ValueError(f"unknown env {name!r}; choose from {', '.join(REGISTRY)}")
    return REGISTRY[name]()


def observation_view(name: str, config: dict[str, Any]) -> tuple[int, int, int] | None:
    """``[V, V, C]`` of the view closing each observation of env ``name`` built with ``config``, or None.

    See :meth:`~mfdiffuser.envs.base.PopulationEnv.observation_view`.
    """
    return env_class(name).observation_view(config)


def env_parameters(name: str) -> dict[str, Any]:
    """Constructor parameters of env ``name`` with their defaults."""
    sig = inspect.signature(env_class(name).__init__)
    return {k: p.default for k, p in sig.parameters.items() if k != "self"}


def resolve(name: str, **kwargs: Any) -> tuple[str, dict[str, Any]]:
    """Turn an env or setting name plus overrides into ``(env_name, kwargs)``."""
    settings = _settings()
    if name in settings:
        spec = dict(settings[name])
        env_name = spec.pop("env")
        spec.update({k: v for k, v in kwargs.items() if v is not None})
        return env_name, spec
    if name not in REGISTRY:
        raise ValueError(
            f"unknown env or setting {name!r}; envs: {', '.join(REGISTRY)}; "
            f"settings: {', '.join(settings)}"
        )
    return name, {k: v for k, v in kwargs.items() if v is not None}


def make(name: str, n_agents: int | None = None, **kwargs: Any) -> PopulationEnv:
    """Build an env by env name or setting name, e.g. ``make("ising", n_agents=1024)``.

    Raises:
        ValueError: unknown name, unknown argument, or a parameter the env rejects.
    """
    env_name, args = resolve(name, n_agents=n_agents, **kwargs)
    cls = env_class(env_name)
    allowed = env_parameters(env_name)
    unknown = sorted(set(args) - set(allowed))
    if unknown:
        raise ValueError(
            f"{env_name}: unknown argument(s) {', '.join(unknown)}; accepted: {', '.join(allowed)}"
        )
    return cls(**args)
