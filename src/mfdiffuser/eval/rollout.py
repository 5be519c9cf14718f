"""Vectorized rollouts of any population policy at a list of N and seeds, with a progress bar.

The agent axis is an array axis of the env, so one episode at N = 10,000 is T batched steps. Each
episode records the per-agent mean return, the scalar entries of the env's ``info`` (at the end and
averaged over the episode), the latency of every ``policy.act`` call and the process's peak memory.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mfdiffuser.envs.base import PopulationEnv, PopulationPolicy
from mfdiffuser.progress import ProgressBar

EnvFactory = Callable[[int], PopulationEnv]
"""Builds the env at a population size N."""
PolicyFactory = Callable[[PopulationEnv], PopulationPolicy]
"""Builds a population policy for an env (called once per N)."""

_RESERVED_INFO = ("t", "summary", "alive")


@dataclass(frozen=True)
class EpisodeResult:
    """What one evaluation episode measured."""

    n_agents: int
    """N of the env."""
    seed: int
    """Evaluation seed the episode belongs to."""
    episode: int
    """Index of the episode within its seed."""
    mean_return: float
    """Undiscounted return summed over the episode, averaged over the N agents."""
    steps: int
    """Env steps taken (T unless the episode terminated early)."""
    act_s: tuple[float, ...]
    """Wall time of every ``policy.act`` call, in seconds."""
    info_final: dict[str, float] = field(default_factory=dict)
    """Scalar entries of the env's last ``info`` (e.g. battle's outcome, ising's order parameter)."""
    info_mean: dict[str, float] = field(default_factory=dict)
    """Scalar entries of ``info`` averaged over the episode's steps."""


@dataclass(frozen=True)
class RolloutResult:
    """All episodes at one N, and the peak memory measured while running them."""

    n_agents: int
    episodes: tuple[EpisodeResult, ...]
    peak_mem_mb: float
    """Peak resident memory of building the env and policy at this N and playing its episodes, above
    the resident memory before it (MiB; see :func:`peak_memory`)."""
    wall_s: float
    """Wall time of all episodes at this N."""


EVALUATION_STREAM = 0
"""Episode seeds of evaluation rollouts."""
REFERENCE_STREAM = 1
"""Episode seeds of reference rollouts (random/expert returns of the normalized score)."""


def episode_seeds(
    seed: int, episode: int, stream: int = EVALUATION_STREAM
) -> tuple[int, np.random.Generator]:
    """The env seed and the policy generator of episode ``episode`` of evaluation seed ``seed``.

    Every method sees the same env seeds (common random numbers), which narrows method differences.
    ``stream`` selects a disjoint branch of seeds: evaluation episodes use ``SeedSequence([seed,
    episode])``; any other stream uses the same entropy with ``spawn_key=(2**32 - stream,)``, a
    branch the evaluation's own spawned children (keys ``(0,)``) never reach. Reference returns are
    rolled out on :data:`REFERENCE_STREAM`, so they never replay the evaluated episodes.
    """
    if stream == EVALUATION_STREAM:
        ss = np.random.SeedSequence([int(seed), int(episode)])
    elif 0 < int(stream) < 2**32:
        ss = np.random.SeedSequence([int(seed), int(episode)], spawn_key=(2**32 - int(stream),))
    else:
        raise ValueError(f"stream must lie in [0, 2**32), got {stream}")
    env_seed = int(ss.generate_state(1, dtype=np.uint32)[0])
    return env_seed, np.random.default_rng(ss.spawn(1)[0])


def _scalars(info: dict[str, Any]) -> dict[str, float]:
    out: dict[str, float] = {}
    for key, value in info.items():
        if key in _RESERVED_INFO:
            continue
        if isinstance(value, bool | int | float | np.number | np.bool_) or (
            isinstance(value, np.ndarray) and value.ndim == 0
        ):
            out[key] = float(value)
    return out


def run_episode(
    env: PopulationEnv, policy: PopulationPolicy, *, seed: int, episode: int, stream: int = EVALUATION_STREAM
) -> EpisodeResult:
    """Play one episode of ``policy`` in ``env``; agents are batched, time is the only loop.

    ``stream`` picks the branch of episode seeds (see :func:`episode_seeds`).
    """
    env_seed, rng = episode_seeds(seed, episode, stream)
    obs, info = env.reset(seed=env_seed)
    policy.reset(env, rng)
    total = np.zeros(env.n_agents, dtype=np.float64)
    act_s: list[float] = []
    sums: dict[str, float] = {}
    steps = 0
    while True:
        t0 = time.perf_counter()
        actions = policy.act(obs, info)
        act_s.append(time.perf_counter() - t0)
        obs, reward, terminated, truncated, info = env.step(actions)
        total += reward
        steps += 1
        for k, v in _scalars(info).items():
            sums[k] = sums.get(k, 0.0) + v
        if terminated or truncated:
            break
    return EpisodeResult(
        n_agents=env.n_agents,
        seed=int(seed),
        episode=int(episode),
        mean_return=float(total.mean()),
        steps=steps,
        act_s=tuple(act_s),
        info_final=_scalars(info),
        info_mean={k: v / steps for k, v in sums.items()},
    )


def _rss_kib(field_name: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field_name + ":"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def _release_free_memory() -> None:
    """Collect garbage and hand the allocator's free pages back to the OS (glibc ``malloc_trim``).

    Without this, memory freed by an earlier block (e.g. the previous, larger N) stays resident, a
    later block reuses it without raising the resident set, and its peak reads near 0.
    """
    gc.collect()
    try:
        libc = ctypes.CDLL(None)
        trim = libc.malloc_trim
    except (OSError, AttributeError):  # not glibc: the baseline keeps whatever the allocator holds
        return
    trim.argtypes = [ctypes.c_size_t]
    trim(0)


@contextlib.contextmanager
def peak_memory() -> Iterator[dict[str, float]]:
    """Measure the peak resident memory of the block above the resident memory before it (MiB).

    Before the baseline is read, garbage is collected and free allocator pages are returned to the
    OS (see :func:`_release_free_memory`), so memory left behind by earlier work is not reused
    silently; then the kernel's high-water mark is reset (``/proc/self/clear_refs``) so the peak
    belongs to the block. The figure covers every allocation of the process (Python, NumPy, torch,
    the battle engine). Where the reset is impossible the value is NaN rather than a misleading number.
    """
    out: dict[str, float] = {"peak_mem_mb": float("nan")}
    _release_free_memory()
    base = _rss_kib("VmRSS")
    reset = False
    try:
        Path("/proc/self/clear_refs").write_text("5")
        reset = True
    except OSError:
        pass
    try:
        yield out
    finally:
        peak = _rss_kib("VmHWM")
        if reset and base is not None and peak is not None:
            out["peak_mem_mb"] = max(peak - base, 0) / 1024.0


def rollout(
    make_env: EnvFactory,
    make_policy: PolicyFactory,
    n_agents: Sequence[int],
    seeds: Sequence[int],
    episodes: int,
    *,
    progress: bool = True,
    label: str = "evaluate",
    stream: int = EVALUATION_STREAM,
) -> list[RolloutResult]:
    """Roll out a policy at every N of ``n_agents`` for ``episodes`` episodes per seed.

    Args:
        make_env: builds the env at a given N.
        make_policy: builds the population policy for that env (once per N).
        n_agents: population sizes to evaluate at.
        seeds: evaluation seeds; statistics over seeds come from :mod:`mfdiffuser.eval.metrics`.
        episodes: episodes per seed (>= 1).
        progress: show a progress bar over all episodes (lines when stdout is not a terminal).
        label: text in front of the progress bar.
        stream: branch of episode seeds (see :func:`episode_seeds`); references use
            :data:`REFERENCE_STREAM`.

    Returns:
        One :class:`RolloutResult` per N, in the order given.
    """
    if episodes < 1:
        raise ValueError(f"episodes must be >= 1, got {episodes}")
    if not seeds:
        raise ValueError("at least one evaluation seed is needed")
    if not n_agents or any(int(n) < 1 for n in n_agents):
        raise ValueError(f"n_agents must be a non-empty list of positive integers, got {list(n_agents)}")
    total = len(n_agents) * len(seeds) * episodes
    bar = ProgressBar(total, label) if progress else None
    results: list[RolloutResult] = []
    try:
        for n in n_agents:
            with peak_memory() as mem:
                env = make_env(int(n))
                try:
                    policy = make_policy(env)
                    eps: list[EpisodeResult] = []
                    t0 = time.perf_counter()
                    for seed in seeds:
                        for e in range(episodes):
                            if bar is not None:
                                bar.describe(f"{label} N={n} seed={seed}")
                            eps.append(run_episode(env, policy, seed=seed, episode=e, stream=stream))
                            if bar is not None:
                                bar.update()
                    wall = time.perf_counter() - t0
                finally:
                    env.close()
                del policy, env
            results.append(RolloutResult(int(n), tuple(eps), mem["peak_mem_mb"], wall))
    finally:
        if bar is not None:
            bar.close()
    return results
