"""Evaluate a trained run or a behaviour policy at several N: rollouts, metrics and reference returns.

Environments at an evaluation N are rebuilt from the dataset's env name and arguments with
``n_agents`` overridden; where a named setting of the same env has that N (e.g. ``battle-256``), its
other arguments (the battle map size) are taken too, so that density stays comparable across N.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from mfdiffuser.envs.base import PopulationEnv, PopulationPolicy
from mfdiffuser.eval.metrics import reference_returns, summarize
from mfdiffuser.eval.rollout import rollout


def env_args_at(env: str, env_args: Mapping[str, Any], n_agents: int) -> dict[str, Any]:
    """Env arguments for population size ``n_agents``: ``env_args`` with N replaced (see module doc)."""
    from mfdiffuser.envs import list_settings

    args = {**dict(env_args), "n_agents": int(n_agents)}
    for spec in list_settings().values():
        if spec.get("env") == env and spec.get("n_agents") == int(n_agents):
            args.update({k: v for k, v in spec.items() if k != "env"})
            break
    return args


def env_factory(env: str, env_args: Mapping[str, Any]) -> Callable[[int], PopulationEnv]:
    """A function building env ``env`` at any N (see :func:`env_args_at`)."""
    from mfdiffuser.envs import make

    return lambda n: make(env, **env_args_at(env, env_args, n))


def references(
    env: str,
    env_args: Mapping[str, Any],
    n_agents: int,
    *,
    stored: tuple[int, Mapping[str, float]] | None = None,
    episodes: int = 10,
    cache_dir: str | Path | None = None,
) -> dict[str, float]:
    """Reference returns (random, expert) at N for the normalized score.

    Args:
        env: env name.
        env_args: env arguments (N is replaced).
        n_agents: N to get references at.
        stored: ``(N_data, ref_returns)`` of a dataset; used as is when ``N_data == n_agents``.
        episodes: episodes per reference policy when they must be computed.
        cache_dir: directory of a JSON cache of computed references (keyed by env, arguments, N).

    Computed references are rolled out on episode seeds disjoint from the evaluation's (seed 0 of
    :data:`~mfdiffuser.eval.rollout.REFERENCE_STREAM`), so an evaluated expert is not scored on the
    very episodes that define its 100.
    """
    from mfdiffuser.eval.rollout import REFERENCE_STREAM

    if stored is not None and int(stored[0]) == int(n_agents):
        return {k: float(stored[1][k]) for k in ("random", "expert")}
    args = env_args_at(env, env_args, n_agents)
    path = None
    if cache_dir is not None:
        from mfdiffuser.utils import fingerprint

        key = fingerprint({"env": env, "args": args, "episodes": episodes, "stream": REFERENCE_STREAM})[:16]
        path = Path(cache_dir) / f"{env}-n{n_agents}-{key}.json"
        if path.is_file():
            return json.loads(path.read_text())["refs"]
    refs = reference_returns(env_factory(env, env_args), n_agents, [0], episodes)
    if path is not None:
        from mfdiffuser.algos.base import write_json

        write_json(path, {"env": env, "env_args": args, "episodes": episodes, "refs": refs})
    return refs


def evaluate_policy(
    make_env: Callable[[int], PopulationEnv],
    make_policy: Callable[[PopulationEnv], PopulationPolicy],
    n_agents: Sequence[int],
    seeds: Sequence[int],
    episodes: int,
    refs: Callable[[int], Mapping[str, float] | None] | None = None,
    *,
    by: str = "seed",
    progress: bool = True,
    label: str = "evaluate",
) -> dict[str, Any]:
    """Roll out a policy at every N and summarise it (see :func:`mfdiffuser.eval.metrics.summarize`).

    Returns:
        ``{"n_agents": [...], "seeds": [...], "episodes": E, "by": by, "results": {str(N): metrics}}``;
        an N where building the policy raises ``BudgetExceeded`` holds ``{"status": "skipped",
        "reason": ...}`` instead of metrics.
    """
    from mfdiffuser.errors import BudgetExceeded

    out: dict[str, Any] = {
        "n_agents": [int(n) for n in n_agents],
        "seeds": [int(s) for s in seeds],
        "episodes": int(episodes),
        "by": by,
        "results": {},
    }
    for n in n_agents:
        try:
            (res,) = rollout(make_env, make_policy, [n], seeds, episodes, progress=progress, label=label)
        except BudgetExceeded as exc:
            # A method that cannot plan at this N (e.g. joint attention over N agents) is skipped
            # here only; the other N are still evaluated.
            out["results"][str(int(n))] = {"n_agents": int(n), "status": "skipped", "reason": exc.record}
            continue
        ref = refs(res.n_agents) if refs is not None else None
        out["results"][str(res.n_agents)] = {**summarize(res, ref, by=by), "status": "done"}
    return out


class DatasetBehaviourPolicy:
    """The behaviour of a dataset quality; ``mixed`` plays random or expert, one per episode at random."""

    def __init__(self, env: PopulationEnv, quality: str) -> None:
        if quality == "mixed":
            self._pols = [env.behaviour_policy("random"), env.behaviour_policy("expert")]
        else:
            self._pols = [env.behaviour_policy(quality)]
        self._current = self._pols[0]

    def reset(self, env: PopulationEnv, rng: np.random.Generator) -> None:
        self._current = self._pols[int(rng.integers(len(self._pols)))]
        self._current.reset(env, rng)

    def act(self, obs: np.ndarray, info: dict[str, Any]) -> np.ndarray:
        return self._current.act(obs, info)
