"""What every learner shares: sizes, option checks, the mean-field context, transitions, standardisation.

An agent's context is ``[phi(mu_t), t/T]``. The per-agent baselines' parts are in
:mod:`mfdiffuser.algos.agentwise`, the return-conditioned diffusion baselines' in
:mod:`mfdiffuser.algos.return_diffusion`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import nn

from mfdiffuser.data.batch import TrajBatch
from mfdiffuser.envs.base import PopulationEnv

ACTING_MODES = ("sample", "greedy")


class Dims(NamedTuple):
    """Sizes a learner is built for: S state, A actions, P summary, T episode length, the view's shape."""

    state_size: int
    n_actions: int
    summary_size: int
    episode_length: int
    view_shape: tuple[int, int, int] | None = None
    """``[V, V, C]`` of the image view closing each observation (``battle``'s view mode), or None."""

    @property
    def context_size(self) -> int:
        """C = P + 1: the summary ``phi(mu_t)`` plus the time fraction ``t / T``."""
        return self.summary_size + 1


def dims_from_meta(meta: Any) -> Dims:
    """The :class:`Dims` of a dataset's metadata (``DatasetMeta``), with the env's observation view."""
    from mfdiffuser.envs import observation_view

    env = getattr(meta, "env", None)
    view = observation_view(env, dict(getattr(meta, "env_args", {}))) if env else None
    return Dims(int(meta.state_size), int(meta.n_actions), int(meta.summary_size), int(meta.horizon), view)


INF = float("inf")

# option name -> (low, high, low included, high included); checked on every config that has the field.
BOUNDS: dict[str, tuple[float, float, bool, bool]] = {
    "horizon": (1, INF, True, False),
    "hidden": (1, INF, True, False),
    "chunk_size": (1, INF, True, False),
    "temperature": (0, INF, False, False),
    "beta": (0, INF, True, False),
    "w_max": (1, INF, False, False),
    "expectile": (0, 1, False, False),
    "gamma": (0, 1, True, True),
    "target_tau": (0, 1, False, True),
    "alpha": (0, INF, True, False),
    "n_layers": (1, INF, True, False),
    "n_heads": (1, INF, True, False),
    "diffusion_steps": (1, INF, True, False),
    "eta": (0, INF, True, False),
    "guidance": (0, INF, True, False),
    "cond_dropout": (0, 1, True, False),
    "target_quantile": (0, 1, False, False),
    "max_memory_gib": (0, INF, False, False),
    "max_plan_seconds": (0, INF, False, False),
    "assumed_gflops": (0, INF, False, False),
}
# option name -> accepted values.
SIGNALS = ("agent", "team")
"""What the weighted per-agent baselines learn from: each agent's own rewards, or the team's (the
population's mean reward, which every agent of a segment shares)."""
CHOICES: dict[str, tuple[str, ...]] = {
    "acting": ACTING_MODES,
    "weight_by": ("segment", "episode"),
    "signal": SIGNALS,
}


@dataclass
class WindowConfig:
    """Options every baseline has: the sampler's window (H, range of M) and the network width."""

    horizon: int = 1
    """H, steps per training window (1 suffices for per-step losses)."""
    m_range: tuple[int, int] = (8, 32)
    """Range of M, the agents drawn per population segment."""
    hidden: int = 128
    """Width of the networks."""

    def __post_init__(self) -> None:
        lo, hi = self.m_range
        if not 1 <= lo <= hi:
            raise ValueError(f"m_range must satisfy 1 <= lo <= hi, got {self.m_range}")
        for name, (low, high, low_in, high_in) in BOUNDS.items():
            v = getattr(self, name, None)
            if v is None:  # not an option of this config, or an optional one left unset
                continue
            ok = (v >= low if low_in else v > low) and (v <= high if high_in else v < high)
            if not ok:
                interval = f"{'[' if low_in else '('}{low}, {high}{']' if high_in else ')'}"
                raise ValueError(f"option {name} must lie in {interval}, got {v!r}")
        for name, accepted in CHOICES.items():
            if hasattr(self, name) and getattr(self, name) not in accepted:
                raise ValueError(
                    f"option {name} must be one of {', '.join(accepted)}, got {getattr(self, name)!r}"
                )


def context(summaries: torch.Tensor, t: torch.Tensor, episode_length: int) -> torch.Tensor:
    """``[..., P]`` summaries and ``[...]`` integer times -> ``[..., P + 1]`` context ``[phi, t / T]``."""
    frac = (t.to(summaries.dtype) / float(episode_length)).unsqueeze(-1)
    return torch.cat([summaries, frac], dim=-1)


class Steps(NamedTuple):
    """A batch seen as per-agent transitions, laid out ``[B, H, M, ...]`` (time before agents).

    The agent axis comes right before the features so that :class:`AgentEncoder` broadcasts the
    per-step context ``[B, H, C]`` over the M agents.
    """

    states: torch.Tensor
    """``[B, H, M, S]`` s_t."""
    next_states: torch.Tensor
    """``[B, H, M, S]`` s_{t+1}."""
    actions: torch.Tensor
    """``[B, H, M]`` a_t."""
    rewards: torch.Tensor
    """``[B, H, M]`` r_t."""
    context: torch.Tensor
    """``[B, H, C]`` context at t."""
    next_context: torch.Tensor
    """``[B, H, C]`` context at t + 1."""
    mask: torch.Tensor
    """``[B, H, M]`` bool: the transition is real (inside the episode, agent alive)."""
    done: torch.Tensor
    """``[B, H, M]`` float: 1 where s_{t+1} ends the agent's episode (no bootstrap)."""


def steps(batch: TrajBatch, episode_length: int) -> Steps:
    """View ``batch`` as transitions ``(s, a, r, s', c, c')``; terminal where the episode or agent ends.

    An agent's transition is terminal at the episode's last step (``t + 1 >= T``) and where the next
    step is masked out (the agent died or the episode ended): inside the window by its mask, after the
    window's last step by the batch's ``next_mask`` where it has one.
    """
    H = batch.horizon
    states = batch.states.transpose(1, 2)  # [B, H+1, M, S]
    mask = batch.mask.transpose(1, 2)  # [B, H, M]
    t = batch.timestep.unsqueeze(1) + torch.arange(H + 1, device=batch.timestep.device)  # [B, H+1]
    ctx = context(batch.summaries, t, episode_length)  # [B, H+1, C]
    ends = (t[:, 1:] >= episode_length).unsqueeze(-1).expand_as(mask)  # [B, H, M]
    next_masked = torch.zeros_like(mask)
    next_masked[:, :-1] = ~mask[:, 1:]
    if batch.next_mask is not None:
        next_masked[:, -1] = ~batch.next_mask
    done = (ends | next_masked).to(states.dtype)
    return Steps(
        states=states[:, :-1],
        next_states=states[:, 1:],
        actions=batch.actions.transpose(1, 2),
        rewards=batch.rewards.transpose(1, 2),
        context=ctx[:, :-1],
        next_context=ctx[:, 1:],
        mask=mask,
        done=done,
    )


def scalars(**values: torch.Tensor) -> dict[str, float]:
    """Detached Python floats of scalar tensors, for ``LossOutput.metrics``."""
    return {k: float(v.detach()) for k, v in values.items()}


class Standardizer(nn.Module):
    """Mean and standard deviation of a dataset quantity, stored as buffers so that they are saved.

    Args:
        shape: shape of one value: ``()`` for a scalar, ``(S,)`` for per-feature statistics.
    """

    mean: torch.Tensor
    std: torch.Tensor

    def __init__(self, shape: tuple[int, ...] = ()) -> None:
        super().__init__()
        self.register_buffer("mean", torch.zeros(shape))
        self.register_buffer("std", torch.ones(shape))

    def fit(self, values: np.ndarray | torch.Tensor) -> Standardizer:
        """Set the statistics from ``values [n, *shape]``; a constant feature gets std 1."""
        v = torch.as_tensor(np.asarray(values, dtype=np.float64)).reshape(-1, *self.mean.shape)
        if v.shape[0] == 0 or not torch.isfinite(v).all():
            raise ValueError("cannot standardise an empty or non-finite set of values")
        std = v.std(dim=0) if v.shape[0] > 1 else torch.zeros_like(v[0])
        self.mean.copy_(v.mean(dim=0))
        self.std.copy_(torch.where(std > 1e-8, std, torch.ones_like(std)))
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


def check_env(dims: Dims, env: PopulationEnv) -> None:
    """Raise ValueError when ``env`` does not have the sizes the learner was built for."""
    got = (env.state_size, env.n_actions, env.summary_size)
    want = (dims.state_size, dims.n_actions, dims.summary_size)
    if got != want:
        raise ValueError(f"env has (S, A, P) = {got} but the learner was trained with {want}")


def sampled_values(
    dataset: Any,
    config: WindowConfig,
    quantity: Callable[[TrajBatch], torch.Tensor],
    n_batches: int = 16,
    batch_size: int = 256,
    seed: int = 2**31 - 1,
) -> np.ndarray:
    """Values ``[n, ...]`` of ``quantity(batch)`` over windows drawn as training draws them (own seed).

    Used to standardise returns and advantages by the statistics of the very windows the weights
    are applied to (windows start at every step, so ``pop_rtg`` mixes early and late steps).
    """
    from mfdiffuser.data import WindowSampler

    sampler = WindowSampler(
        dataset, horizon=config.horizon, batch_size=batch_size, m_range=tuple(config.m_range), seed=seed
    )
    return np.concatenate(
        [quantity(sampler.sample()).detach().cpu().numpy().ravel() for _ in range(n_batches)]
    )
