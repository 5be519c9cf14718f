"""Cost of a generation or an evaluation, estimated before it starts and checked against the machine.

Memory is derived from what the work allocates: the env's and the policy's per-agent arrays at N
(measured on the same env and policy at two small probe sizes, never below the arrays every env step
returns), the stored episode records (K agents x T steps), and the per-episode results an
evaluation keeps. Time, where it can be estimated, comes from the same probe. A run whose memory
estimate exceeds the memory available is refused with one line naming both figures, unless forced.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mfdiffuser.errors import MfdError

PROBE_SIZES: tuple[int, int] = (65536, 262144)
"""Population sizes of the probe (perfect squares, so that lattice envs accept them); large enough
that their arrays come from fresh pages, which the peak resident memory sees."""
PROBE_STEPS = 3
"""Env steps (each with a policy act; the first one plans) timed per probe size."""
EPISODE_RESULT_BYTES = 1024
"""Bytes of one evaluation episode's record apart from its per-step act times."""
ACT_TIME_BYTES = 32
"""Bytes per step of an episode's act-time record (a Python float and its slot in a tuple)."""
SEED_BYTES = 640
"""Peak bytes per episode of a generation's seed bookkeeping in its main process: the episode's
``SeedSequence`` children, then its seed tuple and its slot in a task (about 600 B measured)."""


@dataclass(frozen=True)
class AgentCost:
    """Linear cost of one process that holds an env and its policy at N: ``fixed + per_agent * N``."""

    fixed_bytes: float
    per_agent_bytes: float
    """Bytes per agent: the probe's slope, at least the arrays every env step returns."""
    step_seconds: float
    """Seconds of one env step with its policy act, at the larger probe size (0: unknown)."""
    step_seconds_per_agent: float
    """Slope of the step time in N (seconds per agent-step; 0: unknown)."""
    measured: bool
    """Whether a probe ran (else only the env's declared array sizes are counted)."""

    def bytes_at(self, n_agents: int) -> float:
        """Memory of the env and its policy at ``n_agents``."""
        return self.fixed_bytes + self.per_agent_bytes * n_agents

    def step_seconds_at(self, n_agents: int) -> float:
        """Estimated seconds of one env step with its policy act at ``n_agents`` (0 when unknown)."""
        if not self.measured:
            return 0.0
        big = PROBE_SIZES[1]
        return max(self.step_seconds + self.step_seconds_per_agent * (n_agents - big), 0.0)


@dataclass(frozen=True)
class CostEstimate:
    """Estimated peak memory and time of a piece of work."""

    what: str
    """What is estimated, e.g. ``"generation"``."""
    memory_bytes: float
    seconds: float | None
    """Estimated wall time; None where it cannot be estimated."""

    def describe(self) -> str:
        """``"about 1.2 GiB of memory and 3 min"`` (time left out when unknown)."""
        text = f"about {format_bytes(self.memory_bytes)} of memory"
        if self.seconds is not None:
            text += f" and {format_seconds(self.seconds)}"
        return text


def format_bytes(n: float) -> str:
    """``7.4 TiB``, ``512 MiB``: binary units, three significant digits."""
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"):
        if abs(value) < 1024 or unit == "EiB":
            return f"{value:.3g} {unit}" if unit != "B" else f"{value:.0f} B"
        value /= 1024
    raise AssertionError("unreachable")  # pragma: no cover


def format_seconds(s: float) -> str:
    """``45 s``, ``12 min``, ``3.5 h``, ``40 days``, ``2.1e+06 years``."""
    if s < 120:
        return f"{s:.0f} s"
    if s < 7200:
        return f"{s / 60:.0f} min"
    if s < 3 * 86400:
        return f"{s / 3600:.1f} h"
    if s < 365 * 86400:
        return f"{s / 86400:.0f} days"
    return f"{s / (365 * 86400):.2g} years"


def available_memory(meminfo: str | Path = "/proc/meminfo") -> int | None:
    """Bytes of memory available to new work (``MemAvailable``), or None where it cannot be read."""
    try:
        for line in Path(meminfo).read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def check_memory(estimate: CostEstimate, *, force: bool = False, available: int | None = None) -> None:
    """Refuse work whose memory estimate exceeds the memory available.

    Args:
        estimate: the work's cost.
        force: skip the check (``--force``).
        available: bytes available; default :func:`available_memory` (no check when unknown).

    Raises:
        MfdError: ``"<what> needs about 7.4 TiB of memory, 21.3 GiB available; pass --force ..."``.
    """
    if force:
        return
    avail = available_memory() if available is None else available
    if avail is None or estimate.memory_bytes <= avail:
        return
    raise MfdError(
        f"{estimate.what} needs {estimate.describe()}, {format_bytes(avail)} available; "
        "pass --force to try anyway"
    )


def step_array_bytes(state_size: int, n_actions: int) -> int:
    """Bytes per agent of the arrays one env step returns (a lower bound of an env's memory).

    Observations ``[N, S]`` float32, rewards ``[N]`` float32, actions ``[N]`` and the alive mask ``[N]``.
    """
    from mfdiffuser.data.dataset import action_dtype

    return 4 * state_size + 4 + int(np.dtype(action_dtype(n_actions)).itemsize) + 1


def probe_agent_cost(
    make_env: Callable[[int], Any],
    make_policies: Callable[[Any], Sequence[Any]],
    state_size: int,
    n_actions: int,
    sizes: tuple[int, int] = PROBE_SIZES,
) -> AgentCost:
    """Measure the memory and step time of an env and its policies at two small N; fit a line.

    Each size builds the env and every policy of ``make_policies(env)``, resets them and runs
    :data:`PROBE_STEPS` acts and steps per policy, measured two ways: the process's peak resident
    memory above its level before (:func:`~mfdiffuser.eval.rollout.peak_memory`, which sees every
    allocation, torch's too) and the peak of the bytes Python and NumPy allocate (``tracemalloc``,
    which sees arrays whose pages are not touched yet). The per-agent figure is the larger slope
    between the two sizes, never below :func:`step_array_bytes`; where the probe cannot run (an env
    that does not take these N) only that lower bound is used.
    """
    import tracemalloc

    from mfdiffuser.eval.rollout import peak_memory

    floor = float(step_array_bytes(state_size, n_actions))
    peaks: list[float] = []
    traced: list[float] = []
    times: list[float] = []
    tracing = tracemalloc.is_tracing()
    if not tracing:
        tracemalloc.start()
    try:
        for n in sizes:
            base = tracemalloc.get_traced_memory()[0]
            tracemalloc.reset_peak()
            with peak_memory() as mem:
                env = make_env(n)
                try:
                    seconds = 0.0
                    for policy in make_policies(env):
                        obs, info = env.reset(seed=0)
                        policy.reset(env, np.random.default_rng(0))
                        t0 = time.perf_counter()
                        for _ in range(PROBE_STEPS):
                            obs, _, terminated, truncated, info = env.step(policy.act(obs, info))
                            if terminated or truncated:
                                obs, info = env.reset(seed=1)
                        seconds = max(seconds, (time.perf_counter() - t0) / PROBE_STEPS)
                finally:
                    env.close()
                del env
            traced.append(float(tracemalloc.get_traced_memory()[1] - base))
            rss = mem["peak_mem_mb"] * 2**20
            peaks.append(max(rss, traced[-1]) if np.isfinite(rss) else traced[-1])
            times.append(seconds)
    except (ValueError, MfdError):
        return AgentCost(0.0, floor, 0.0, 0.0, measured=False)
    finally:
        if not tracing:
            tracemalloc.stop()
    span = sizes[1] - sizes[0]
    slope = max((peaks[1] - peaks[0]) / span, (traced[1] - traced[0]) / span, floor)
    fixed = max(peaks[1] - slope * sizes[1], 0.0)
    time_slope = max((times[1] - times[0]) / span, 0.0)
    return AgentCost(fixed, slope, times[1], time_slope, measured=True)


def episode_record_bytes(
    stored_agents: int, horizon: int, state_size: int, n_actions: int, summary_size: int
) -> int:
    """Bytes of one stored episode of K agents over T steps.

    States ``[T+1, K, S]`` float32, actions and rewards ``[T, K]``, alive ``[T+1, K]``, summaries
    ``[T+1, P]`` float32 and the population reward ``[T]`` float64.
    """
    from mfdiffuser.data.dataset import action_dtype

    k, t = int(stored_agents), int(horizon)
    a_size = int(np.dtype(action_dtype(n_actions)).itemsize)
    per_agent = (t + 1) * (state_size * 4 + 1) + t * (a_size + 4)
    return k * per_agent + (t + 1) * summary_size * 4 + t * 8


def generation_cost(
    agent: AgentCost,
    *,
    n_agents: int,
    horizon: int,
    episode_bytes: int,
    shard_episodes: int,
    episodes: int,
    ref_episodes: int,
    processes: int,
) -> CostEstimate:
    """Peak memory and time of ``mfd data generate``.

    Every process holds the env and its policies at N and one shard of ``shard_episodes`` stored
    episodes twice (the episodes, then their stacked copy); ``processes`` of them run at once. The
    main process also holds the seeds of every data and reference episode (:data:`SEED_BYTES` each).
    Time: every data and reference episode runs T steps at N, shared by the processes.
    """
    per_process = agent.bytes_at(n_agents) + 2 * shard_episodes * episode_bytes
    all_episodes = episodes + 2 * ref_episodes
    seconds = None
    if agent.measured:
        seconds = all_episodes * horizon * agent.step_seconds_at(n_agents) / max(processes, 1)
    return CostEstimate("this generation", processes * per_process + all_episodes * SEED_BYTES, seconds)


def evaluation_cost(
    agent: AgentCost,
    *,
    n_agents: Sequence[int],
    horizon: int,
    episodes: int,
    seeds: int,
    ref_episodes: int = 0,
    ref_n_agents: Sequence[int] = (),
) -> CostEstimate:
    """Peak memory and time of ``mfd evaluate``: the N are evaluated one after another.

    At each N the env and its policy are held, plus every finished episode's record (about
    :data:`EPISODE_RESULT_BYTES` and :data:`ACT_TIME_BYTES` per step) until the N is summarised. At
    each N of ``ref_n_agents`` (those with no stored reference returns) the random and the expert
    behaviour then play ``ref_episodes`` episodes each, one policy after the other, while the
    evaluation's records are still held; their steps are counted at the evaluated policy's cost.
    """
    per_episode = EPISODE_RESULT_BYTES + ACT_TIME_BYTES * horizon
    runs = episodes * seeds
    refs = ref_episodes if len(ref_n_agents) else 0
    peak = max(agent.bytes_at(int(n)) for n in n_agents) + (runs + refs) * per_episode
    seconds = sum(runs * horizon * agent.step_seconds_at(int(n)) for n in n_agents)
    seconds += sum(2 * ref_episodes * horizon * agent.step_seconds_at(int(n)) for n in ref_n_agents)
    return CostEstimate("this evaluation", peak, seconds if agent.measured else None)


def training_batch_cost(
    *, batch_size: int, m_max: int, horizon: int, state_size: int, summary_size: int
) -> CostEstimate:
    """Memory of one training batch as the window sampler gathers it (a lower bound of training's).

    Per (batch row, agent): three int64 gather indices per step, the states (float32, H + 1 steps,
    ``S`` features), actions (int64), rewards (float32), mask and their ``where`` temporaries; per
    batch row the population summaries (H + 1 steps of ``P`` floats). The network's activations come
    on top, so a batch that does not fit means training cannot run.
    """
    h = int(horizon)
    per_agent = 8 * (3 * h + 1) + 4 * (h + 1) * int(state_size) + (8 + 8 + 4 + 4 + 1) * h
    per_row = int(m_max) * per_agent + 8 * (h + 1) + 4 * (h + 1) * int(summary_size)
    return CostEstimate("one training batch", float(batch_size) * per_row, None)


def check_evaluation(
    make_env: Callable[[int], Any],
    make_policy: Callable[[Any], Any],
    n_agents: Sequence[int],
    *,
    episodes: int,
    seeds: int,
    ref_episodes: int = 0,
    ref_n_agents: Sequence[int] = (),
    force: bool = False,
) -> CostEstimate | None:
    """Estimate an evaluation (probing env and policy when some N exceeds the probe sizes) and check it.

    ``ref_episodes`` and ``ref_n_agents`` are the reference rollouts of :func:`evaluation_cost`.

    Returns:
        The estimate, or None when the env cannot be built at a probe size (the evaluation then
        reports its own error at that N).

    Raises:
        MfdError: the estimate exceeds the memory available (see :func:`check_memory`).
    """
    big = max(int(n) for n in n_agents) > PROBE_SIZES[1]
    try:
        env = make_env(PROBE_SIZES[0] if big else min(int(n) for n in n_agents))
    except (ValueError, MfdError):
        return None
    try:
        dims = (env.horizon, env.state_size, env.n_actions)
    finally:
        env.close()
    horizon, state_size, n_actions = dims
    if big:
        agent = probe_agent_cost(make_env, lambda env: [make_policy(env)], state_size, n_actions)
    else:
        agent = AgentCost(0.0, float(step_array_bytes(state_size, n_actions)), 0.0, 0.0, measured=False)
    estimate = evaluation_cost(
        agent,
        n_agents=n_agents,
        horizon=horizon,
        episodes=episodes,
        seeds=seeds,
        ref_episodes=ref_episodes,
        ref_n_agents=ref_n_agents,
    )
    check_memory(estimate, force=force)
    return estimate
