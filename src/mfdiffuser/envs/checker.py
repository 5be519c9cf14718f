"""``check_env``: the contract every population env must keep, checked through its public API.

In the spirit of Gymnasium's ``check_env``, with the agent axis: spaces and dtypes, seeded
determinism, episode bookkeeping, rejection of bad actions, and agent-permutation equivariance.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import gymnasium as gym
import numpy as np

from mfdiffuser.envs.base import QUALITIES, PopulationEnv


class EnvCheckError(AssertionError):
    """An env broke the population API contract; the message says which part."""


class CheckReport(NamedTuple):
    """What :func:`check_env` verified (``checked``) and what it could not (``skipped``, with reasons)."""

    env: str
    checked: tuple[str, ...]
    skipped: tuple[str, ...]


def _fail(env: PopulationEnv, msg: str) -> None:
    raise EnvCheckError(f"{env.name}: {msg}")


def _check_batch(env: PopulationEnv, what: str, arr: Any, space: gym.spaces.Box, rows: int) -> None:
    """``arr[rows, *space.shape]`` with the space's dtype, finite, inside the bounds."""
    if not isinstance(arr, np.ndarray):
        _fail(env, f"{what} must be a numpy array, got {type(arr).__name__}")
    if arr.shape != (rows, *space.shape):
        _fail(env, f"{what} has shape {arr.shape}, expected {(rows, *space.shape)}")
    if arr.dtype != space.dtype:
        _fail(env, f"{what} has dtype {arr.dtype}, space says {space.dtype}")
    if not np.isfinite(arr).all():
        _fail(env, f"{what} holds NaN or inf")
    if (arr < space.low).any() or (arr > space.high).any():
        _fail(env, f"{what} leaves its space bounds [{space.low.min()}, {space.high.max()}]")
    if rows and not space.contains(arr[0]):
        _fail(env, f"{what}[0] is not in its space {space}")


def _check_info(env: PopulationEnv, info: Any, t: int) -> None:
    if not isinstance(info, dict):
        _fail(env, f"info must be a dict, got {type(info).__name__}")
    for key in ("t", "summary", "alive"):
        if key not in info:
            _fail(env, f"info lacks the key {key!r}")
    if info["t"] != t:
        _fail(env, f"info['t'] = {info['t']}, expected {t}")
    summary = np.asarray(info["summary"])[None]
    _check_batch(env, "info['summary']", summary, env.summary_space, 1)
    alive = info["alive"]
    if not (isinstance(alive, np.ndarray) and alive.dtype == bool and alive.shape == (env.n_agents,)):
        _fail(env, f"info['alive'] must be a bool array of shape ({env.n_agents},)")


def _rollout(env: PopulationEnv, seed: int, actions: np.ndarray) -> list[tuple[Any, ...]]:
    """One episode with pre-drawn ``actions[T, N]``; returns every output, copied."""
    obs, info = env.reset(seed=seed)
    out: list[tuple[Any, ...]] = [(obs.copy(), np.asarray(info["summary"]).copy())]
    for a in actions:
        obs, reward, term, trunc, info = env.step(a)
        out.append((obs.copy(), np.asarray(reward).copy(), term, trunc, np.asarray(info["summary"]).copy()))
        if term or trunc:
            break
    return out


def _same(a: list[tuple[Any, ...]], b: list[tuple[Any, ...]]) -> bool:
    if len(a) != len(b):
        return False
    return all(
        all(np.array_equal(x, y) for x, y in zip(ra, rb, strict=True)) for ra, rb in zip(a, b, strict=True)
    )


def _expect_value_error(env: PopulationEnv, what: str, fn: Callable[[], Any]) -> None:
    try:
        fn()
    except ValueError:
        return
    except Exception as exc:  # noqa: BLE001 - any other type breaks the contract
        _fail(env, f"{what} raised {type(exc).__name__} instead of ValueError: {exc}")
    _fail(env, f"{what} did not raise ValueError")


def check_env(
    env: PopulationEnv,
    *,
    seed: int = 0,
    check_policies: bool = True,
    rebuild: Callable[[dict[str, Any]], PopulationEnv] | None = None,
) -> CheckReport:
    """Check that ``env`` keeps the population API contract; raise :class:`EnvCheckError` if not.

    Checked:

    * spaces: ``observation_space``/``summary_space`` are 1-D ``Box``, ``action_space`` is
      ``Discrete``; every ``obs[N, S]`` and ``summary[P]`` has the space's dtype and lies in it;
      rewards are finite floats of shape ``[N]``; ``info`` has ``t``, ``summary``, ``alive``;
    * episodes: ``t`` counts steps, the episode ends (terminated or truncated) by T steps,
      ``step`` after the end raises;
    * seeded determinism: the same seed and actions give identical episodes, on the same env
      and on a fresh env rebuilt from ``config()`` (when ``rebuild`` or the registry can);
    * bad actions (wrong shape, float dtype, out of range) raise ``ValueError``;
    * agent-permutation equivariance, for envs that expose ``permute(perm)`` (relabel the agents
      of the current state) and ``agent_symmetry(rng)`` (a permutation that is a symmetry of the
      dynamics), or whose agents all have the same observation (stage games): relabelling the
      agents and their actions permutes the observations and rewards and leaves the summary
      unchanged. The first step is compared (rewards at a step are a function of the state and the
      actions); further steps only for envs declaring ``stochastic_transitions = False``, since
      the noise is drawn per array index, not per agent, so stochastic envs diverge pathwise;
    * behaviour policies (``check_policies``): each quality returns valid actions.

    Args:
        env: the env to check (it is reset and stepped).
        seed: seed of the episodes and of the random actions.
        check_policies: also check every behaviour policy for one step.
        rebuild: builds an env from a config dict; default: the registry's ``make``.

    Returns:
        A :class:`CheckReport` listing what was checked and what was skipped and why.
    """
    checked: list[str] = []
    skipped: list[str] = []
    n = env.n_agents
    rng = np.random.default_rng(seed)

    # ---- spaces and attributes
    if not (isinstance(n, int) and n >= 1 and isinstance(env.horizon, int) and env.horizon >= 1):
        _fail(env, f"n_agents and horizon must be positive ints, got {n!r}, {env.horizon!r}")
    for what, space in (("observation_space", env.observation_space), ("summary_space", env.summary_space)):
        if not (isinstance(space, gym.spaces.Box) and len(space.shape) == 1):
            _fail(env, f"{what} must be a 1-D gymnasium Box, got {space}")
    if not isinstance(env.action_space, gym.spaces.Discrete) or env.action_space.start != 0:
        _fail(env, f"action_space must be Discrete(A) starting at 0, got {env.action_space}")
    if not isinstance(env.config(), dict):
        _fail(env, "config() must return a dict")
    checked.append("spaces")

    # ---- one episode: shapes, dtypes, bookkeeping
    horizon = env.horizon
    actions = rng.integers(0, env.n_actions, size=(horizon, n), dtype=np.int64)
    obs, info = env.reset(seed=seed)
    _check_batch(env, "reset obs", obs, env.observation_space, n)
    _check_info(env, info, 0)
    done, t = False, 0
    while not done:
        obs, reward, term, trunc, info = env.step(actions[t])
        t += 1
        _check_batch(env, f"obs at step {t}", obs, env.observation_space, n)
        _check_info(env, info, t)
        if not (isinstance(reward, np.ndarray) and reward.shape == (n,)):
            _fail(env, f"reward must be an array of shape ({n},), got {getattr(reward, 'shape', reward)}")
        if not np.issubdtype(reward.dtype, np.floating) or not np.isfinite(reward).all():
            _fail(env, f"reward must be finite floats, got dtype {reward.dtype}")
        if not (isinstance(term, bool) and isinstance(trunc, bool)):
            _fail(env, "terminated and truncated must be Python bools")
        if term and trunc:
            _fail(env, "terminated and truncated are both true")
        done = term or trunc
        if not done and t >= horizon:
            _fail(env, f"episode did not end after horizon T = {horizon} steps")
    try:
        env.step(actions[0])
    except RuntimeError:
        pass
    else:
        _fail(env, "step() after the end of an episode must raise RuntimeError until reset()")
    checked.append("episode")

    # ---- determinism
    first = _rollout(env, seed, actions)
    second = _rollout(env, seed, actions)
    if not _same(first, second):
        _fail(env, "two episodes with the same seed and actions differ")
    if rebuild is None:
        from mfdiffuser.envs import REGISTRY, make

        if env.name in REGISTRY:
            rebuild = lambda cfg: make(env.name, **cfg)  # noqa: E731
    if rebuild is not None:
        other = rebuild(env.config())
        try:
            if other.config() != env.config():
                _fail(env, f"rebuilding from config() gave config {other.config()}, not {env.config()}")
            if not _same(first, _rollout(other, seed, actions)):
                _fail(env, "an env rebuilt from config() gives a different episode for the same seed")
        finally:
            other.close()
        checked.append("determinism (same env and rebuilt from config)")
    else:
        checked.append("determinism (same env)")
        skipped.append("rebuild from config: env not in the registry and no rebuild given")

    # ---- bad actions
    env.reset(seed=seed)
    a_ok = actions[0]
    _expect_value_error(env, "actions of shape (N - 1,)", lambda: env.step(a_ok[:-1]))
    _expect_value_error(env, "actions of shape (N, 1)", lambda: env.step(a_ok[:, None]))
    _expect_value_error(env, "float actions", lambda: env.step(a_ok.astype(np.float64)))
    bad = a_ok.copy()
    bad[0] = env.n_actions
    _expect_value_error(env, f"action {env.n_actions} (out of range)", lambda: env.step(bad))
    bad[0] = -1
    _expect_value_error(env, "action -1", lambda: env.step(bad))
    checked.append("bad actions raise ValueError")

    # ---- permutation equivariance
    skipped.extend(_check_permutation(env, seed, actions, rng, checked))

    # ---- behaviour policies
    if check_policies:
        for quality in QUALITIES:
            policy = env.behaviour_policy(quality)
            obs, info = env.reset(seed=seed)
            policy.reset(env, np.random.default_rng(seed))
            act = np.asarray(policy.act(obs, info))
            if act.shape != (n,) or not np.issubdtype(act.dtype, np.integer):
                _fail(env, f"behaviour policy {quality!r} returned {act.dtype} actions of shape {act.shape}")
            if act.min() < 0 or act.max() >= env.n_actions:
                _fail(env, f"behaviour policy {quality!r} returned out-of-range actions")
            env.step(act)
        checked.append(f"behaviour policies {', '.join(QUALITIES)}")
    return CheckReport(env.name, tuple(checked), tuple(skipped))


def _check_permutation(
    env: PopulationEnv, seed: int, actions: np.ndarray, rng: np.random.Generator, checked: list[str]
) -> list[str]:
    n = env.n_agents
    obs_a, info_a = env.reset(seed=seed)
    permute = getattr(env, "permute", None)
    symmetry = getattr(env, "agent_symmetry", None)
    if permute is None or symmetry is None:
        if not (obs_a == obs_a[:1]).all():
            return ["permutation equivariance: env exposes no permute/agent_symmetry hooks"]
        # Every agent has the same observation, so any relabelling leaves the state unchanged.
        perm = rng.permutation(n)
        permute = None
    else:
        perm = np.asarray(symmetry(rng))
    deterministic = getattr(env, "stochastic_transitions", True) is False
    n_steps = env.horizon if deterministic else 1

    run_a = _rollout(env, seed, actions[:n_steps])
    obs_b, _ = env.reset(seed=seed)
    if permute is not None:
        obs_b = permute(perm)
    if not np.array_equal(obs_b, run_a[0][0][perm]):
        _fail(env, "after permute(perm), obs is not obs[perm]")
    if not np.array_equal(np.asarray(env.summary()), run_a[0][1]):
        _fail(env, "permute(perm) changed the summary phi(mu)")
    for t in range(len(run_a) - 1):
        obs_b, rew_b, term_b, trunc_b, info_b = env.step(actions[t][perm])
        _, rew_a, term_a, trunc_a, summ_a = run_a[t + 1]
        if not np.allclose(rew_b, rew_a[perm], rtol=1e-6, atol=1e-6):
            _fail(env, f"step {t}: permuting agents and actions does not permute the rewards")
        if deterministic:
            if not np.array_equal(obs_b, run_a[t + 1][0][perm]):
                _fail(env, f"step {t}: permuting agents and actions does not permute the observations")
            same_end = (term_b, trunc_b) == (term_a, trunc_a)
            if not np.allclose(info_b["summary"], summ_a, atol=1e-6) or not same_end:
                _fail(env, f"step {t}: permuting agents changed the summary or the episode end")
    what = "full episode" if deterministic else "first step only: transitions not declared deterministic"
    checked.append(f"permutation equivariance ({what})")
    return []
