"""Evaluation metrics summarised over seeds as a mean with a 95% confidence interval.

Per-agent return, normalized score, Ising order parameter, battle win rate, kill ratio and survivors,
plan latency and memory.

Normalized score (D4RL convention): ``100 * (R - R_random) / (R_expert - R_random)``, with the
reference returns of the env's random and expert behaviour policies at the same N.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, cast

import numpy as np

from mfdiffuser.data.dataset import normalized_score
from mfdiffuser.eval.rollout import EpisodeResult, RolloutResult
from mfdiffuser.eval.stats import mean_ci

ORDER_PARAMETER_KEYS: tuple[str, ...] = ("order_parameter", "magnetization", "abs_magnetization")
"""``info`` keys read as the Ising order parameter (first present wins; absolute value is taken)."""


def order_parameter(ep: EpisodeResult) -> float | None:
    """Ising order parameter ``|m|`` at the end of an episode, or None if the env reports none."""
    for key in ORDER_PARAMETER_KEYS:
        if key in ep.info_final:
            return abs(ep.info_final[key])
    return None


def battle_outcome(ep: EpisodeResult) -> tuple[float, float] | None:
    """``(win, kill_ratio)`` of a battle episode from its final ``info``, or None for other envs.

    ``win`` is 1 for a win, 0 for a loss and 0.5 for a draw, so the win rate counts a draw as half a
    win. The env's ``win``/``draw`` flags are used when present (battle reports ``win=False`` with
    ``draw=True`` on equal survivors); otherwise the survivor counts decide (more survivors of ours
    is a win, equal is a draw). ``kill_ratio`` is opponents killed over our agents lost (kills over
    max(losses, 1), so a flawless win stays finite).
    """
    info = ep.info_final
    if "kills" not in info and "win" not in info and "alive_ours" not in info:
        return None
    if info.get("draw"):
        win = 0.5
    elif "win" in info:
        win = float(info["win"])
    elif "alive_ours" in info and "alive_opponent" in info:
        diff = info["alive_ours"] - info["alive_opponent"]
        win = 1.0 if diff > 0 else (0.5 if diff == 0 else 0.0)
    else:
        return None
    if "kill_ratio" in info:
        ratio = float(info["kill_ratio"])
    elif "kills" in info and "deaths" in info:
        ratio = info["kills"] / max(info["deaths"], 1.0)
    else:
        ratio = float("nan")
    return win, ratio


def battle_survivors(ep: EpisodeResult, n_agents: int) -> float | None:
    """Share of our team alive at a battle episode's end (``survivors / N``), or None for other envs."""
    survivors = ep.info_final.get("survivors")
    return None if survivors is None else float(survivors) / max(int(n_agents), 1)


def per_seed(episodes: Sequence[EpisodeResult], value: Any, by: str = "seed") -> dict[Any, float]:
    """Mean of ``value(episode)`` over the episodes of each seed (episodes returning None are skipped).

    With ``by="episode"`` every episode is its own group (statistics over episodes of one seed).
    """
    if by not in ("seed", "episode"):
        raise ValueError(f"by must be 'seed' or 'episode', got {by!r}")
    groups: dict[Any, list[float]] = {}
    for ep in episodes:
        v = value(ep)
        if v is not None and math.isfinite(v):
            key = ep.seed if by == "seed" else (ep.seed, ep.episode)
            groups.setdefault(key, []).append(float(v))
    return {k: float(np.mean(v)) for k, v in sorted(groups.items())}


def _ci(values: Mapping[Any, float]) -> dict[str, Any] | None:
    vals = list(values.values())
    if not vals:
        return None
    out = {**mean_ci(vals).as_dict(), "values": vals}
    seeds = _episode_seeds(values)
    if seeds is not None:
        out["episode_seeds"] = seeds
    return out


def _episode_seeds(groups: Mapping[Any, float]) -> list[int] | None:
    """The evaluation seed of each value when every group is episode 0 of its own seed, else None.

    That is how a grid evaluates (one episode per seed of the split's stream): the seeds then name
    the shared episodes that paired comparisons match on.
    """
    keys = list(groups)
    if keys and all(isinstance(k, tuple) and k[1] == 0 for k in keys):
        return [int(k[0]) for k in keys]
    return None


def summarize(
    result: RolloutResult, refs: Mapping[str, float] | None = None, by: str = "seed"
) -> dict[str, Any]:
    """Metrics of the rollouts at one N, each a dict ``mean, ci, std, sem, n, values`` over seeds.

    Args:
        result: episodes at one N.
        refs: ``{"random": R_random, "expert": R_expert}`` at this N for the normalized score.
        by: ``"seed"`` (statistics over seeds, episodes averaged within a seed) or ``"episode"``.

    Returns:
        ``{"n_agents", "episodes", "return", "score"?, "order_parameter"?, "win_rate"?,
        "kill_ratio"?, "survivors"?, "act_ms", "act_ms_max", "peak_mem_mb", "info"}``; ``info`` holds the
        seed means of every other scalar the env reported at the episode's end. With
        ``by="episode"`` and one episode per evaluation seed (a grid's split stream), the result
        and every metric also carry ``episode_seeds``, aligned with the metric's ``values`` (a
        metric that some episode does not report, e.g. a kill ratio, lists only its own).
    """
    eps = result.episodes

    def group(value: Any) -> dict[Any, float]:
        return per_seed(eps, value, by)

    out: dict[str, Any] = {"n_agents": result.n_agents, "episodes": len(eps), "by": by}
    returns = group(lambda e: e.mean_return)
    seeds = _episode_seeds(returns)
    if seeds is not None:
        out["episode_seeds"] = seeds
    out["return"] = _ci(returns)
    if refs is not None:
        r_rand, r_exp = float(refs["random"]), float(refs["expert"])
        out["score"] = _ci({s: float(normalized_score(v, r_rand, r_exp)) for s, v in returns.items()})
        out["refs"] = {"random": r_rand, "expert": r_exp}
    order = group(order_parameter)
    if order:
        out["order_parameter"] = _ci(order)
    if any(battle_outcome(e) is not None for e in eps):
        out["win_rate"] = _ci(group(lambda e: (battle_outcome(e) or (None,))[0]))
        ratio = group(lambda e: (battle_outcome(e) or (None, None))[1])
        if ratio:
            out["kill_ratio"] = _ci(ratio)
        alive = group(lambda e: battle_survivors(e, result.n_agents))
        if alive:
            out["survivors"] = _ci(alive)
    out["act_ms"] = _ci(group(lambda e: 1000.0 * float(np.mean(e.act_s))))
    out["act_ms_max"] = _ci(group(lambda e: 1000.0 * float(np.max(e.act_s))))
    out["peak_mem_mb"] = result.peak_mem_mb
    out["wall_s"] = result.wall_s
    keys = sorted({k for e in eps for k in e.info_final})
    out["info"] = {k: _ci(group(lambda e, k=k: e.info_final.get(k))) for k in keys}
    return out


def reference_returns(make_env: Any, n_agents: int, seeds: Sequence[int], episodes: int) -> dict[str, float]:
    """Mean per-agent returns of the env's ``random`` and ``expert`` behaviour policies at N.

    Used for the normalized score at an N where the dataset's stored references do not apply. The
    episodes are drawn from :data:`~mfdiffuser.eval.rollout.REFERENCE_STREAM`, disjoint from the
    evaluation's episode seeds, so the expert is not scored on the very episodes that define 100.
    """
    from mfdiffuser.eval.rollout import REFERENCE_STREAM, PolicyFactory, rollout

    refs: dict[str, float] = {}
    for quality in ("random", "expert"):
        res = rollout(
            make_env,
            cast(PolicyFactory, lambda env, q=quality: env.behaviour_policy(q)),
            [n_agents],
            seeds,
            episodes,
            progress=False,
            stream=REFERENCE_STREAM,
        )[0]
        refs[quality] = float(np.mean([e.mean_return for e in res.episodes]))
    return refs
