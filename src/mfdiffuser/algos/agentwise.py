"""Pieces shared by the per-agent baselines: their configs, losses, weights and population policy.

:class:`AgentwisePolicy` acts for any N by scoring ``(obs[N, S], context)`` with a per-agent network
in chunks.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from mfdiffuser.algos.common import (
    ACTING_MODES,
    Dims,
    Standardizer,
    Steps,
    WindowConfig,
    check_env,
    context,
    dims_from_meta,
    sampled_values,
)
from mfdiffuser.data.batch import TrajBatch
from mfdiffuser.envs.base import PopulationEnv
from mfdiffuser.models.blocks import masked_mean
from mfdiffuser.models.policy import PolicyNet

if TYPE_CHECKING:
    from typing_extensions import Self


@dataclass
class AgentConfig(WindowConfig):
    """Options every per-agent baseline shares: how the population acts."""

    acting: str = "sample"
    """How agents act: sample (from softmax(scores / temperature)) or greedy (argmax)."""
    temperature: float = 1.0
    """Temperature of sampled acting (Boltzmann temperature for Q-values)."""
    chunk_size: int = 65536
    """Agents evaluated per forward pass when acting (bounds memory at large N)."""


@dataclass
class TDConfig(AgentConfig):
    """Options of the temporal-difference baselines (mf-iql, mf-cql)."""

    gamma: float = 0.99
    """Discount of the Bellman backup."""
    target_tau: float = 0.005
    """Polyak rate of the target Q network."""


@dataclass
class WeightedConfig(AgentConfig):
    """Options of the weighted behaviour-cloning baselines (rwbc, awbc)."""

    beta: float = 2.0
    """Inverse temperature on the standardised return or advantage (0: plain behaviour cloning)."""
    w_max: float = 20.0
    """Upper clip of the unnormalised weights."""


def action_nll(logits: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
    """Per-entry negative log-likelihood of ``actions [...]`` under ``logits [..., A]``."""
    return -torch.log_softmax(logits, dim=-1).gather(-1, actions.unsqueeze(-1)).squeeze(-1)


def policy_loss(
    policy: nn.Module, st: Steps, weights: torch.Tensor | None = None, first_step_only: bool = False
) -> torch.Tensor:
    """(Weighted) cross-entropy of the data's actions under ``policy``, averaged over real transitions.

    Args:
        policy: maps ``(states [..., M, S], context [..., C])`` to logits ``[..., M, A]``.
        st: the batch as transitions.
        weights: per-transition weights broadcastable to ``[B, H, M]`` (``[B, M]`` with
            ``first_step_only``), or None for plain behaviour cloning.
        first_step_only: use only the window's first step (where returns-to-go are known).
    """
    states, ctx, actions, mask = st.states, st.context, st.actions, st.mask
    if first_step_only:
        states, ctx, actions, mask = states[:, 0], ctx[:, 0], actions[:, 0], mask[:, 0]
    nll = action_nll(policy(states, ctx), actions)
    if weights is not None:
        nll = nll * weights
    return masked_mean(nll, mask)


def exp_weights(
    x: torch.Tensor, beta: float, w_max: float, mask: torch.Tensor | None = None
) -> tuple[torch.Tensor, dict[str, float]]:
    """Weights ``min(exp(beta x), w_max)``, self-normalised to mean 1 over the (masked) entries.

    ``x`` (a standardised return or advantage) is detached. The clip is applied to the exponent, so
    no weight overflows. Returns the weights and metrics: the largest weight and the effective sample
    size as a fraction of the entries, ``(sum w)^2 / (n sum w^2)``.
    """
    x = x.detach()
    valid = torch.ones_like(x, dtype=torch.bool) if mask is None else mask
    logw = torch.where(valid, beta * x, torch.full_like(x, -torch.inf))
    logw = logw.clamp_max(float(np.log(w_max)))
    w = torch.where(valid, torch.exp(logw), torch.zeros_like(x))
    n = valid.sum().clamp_min(1)
    w = w * (n / w.sum().clamp_min(1e-12))
    ess = float(w.sum() ** 2 / (n * w.pow(2).sum()).clamp_min(1e-12))
    return w, {"weight_max": float(w.max()), "weight_ess": ess}


ScoreFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
"""``(states [N, S], context [C]) -> scores [N, A]``: logits or Q-values of every agent."""


class AgentwisePolicy:
    """A :class:`~mfdiffuser.envs.base.PopulationPolicy` from a per-agent score network, for any N.

    Every step, the context ``[phi(mu_t), t/T]`` is built from ``info`` and the network scores the
    A actions of every agent in chunks of ``chunk_size`` agents. ``sample`` draws from
    ``softmax(scores / temperature)`` by inverse CDF with the episode's generator (a Boltzmann policy
    when the scores are Q-values); ``greedy`` takes the argmax.
    """

    def __init__(
        self,
        score_fn: ScoreFn,
        episode_length: int,
        *,
        acting: str = "sample",
        temperature: float = 1.0,
        chunk_size: int = 65536,
        device: torch.device | str = "cpu",
    ) -> None:
        if acting not in ACTING_MODES:
            raise ValueError(f"acting must be one of {', '.join(ACTING_MODES)}, got {acting!r}")
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        self.score_fn = score_fn
        self.episode_length = int(episode_length)
        self.acting, self.temperature = acting, float(temperature)
        self.chunk_size = int(chunk_size)
        self.device = torch.device(device)
        self._rng = np.random.default_rng()

    def reset(self, env: PopulationEnv, rng: np.random.Generator) -> None:
        self._rng = rng

    @torch.no_grad()
    def scores(self, obs: np.ndarray, info: dict[str, Any]) -> np.ndarray:
        """``[N, A]`` scores of every agent's actions for ``obs [N, S]`` and ``info``."""
        summary = torch.as_tensor(np.asarray(info["summary"], dtype=np.float32), device=self.device)
        t = torch.tensor(int(info["t"]), device=self.device)
        ctx = context(summary, t, self.episode_length)
        states = torch.as_tensor(np.asarray(obs, dtype=np.float32), device=self.device)
        out = [self.score_fn(chunk, ctx) for chunk in torch.split(states, self.chunk_size)]
        return torch.cat(out).float().cpu().numpy()

    def act(self, obs: np.ndarray, info: dict[str, Any]) -> np.ndarray:
        scores = self.scores(obs, info)
        if self.acting == "greedy":
            return scores.argmax(axis=1).astype(np.int64)
        return sample_categorical(scores / self.temperature, self._rng)


def sample_categorical(logits: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One draw per row of ``softmax(logits [N, A])`` by inverse CDF (one uniform per row)."""
    z = logits - logits.max(axis=1, keepdims=True)
    p = np.exp(z)
    cdf = np.cumsum(p, axis=1)
    u = rng.random(len(logits))[:, None] * cdf[:, -1:]
    return np.minimum((u > cdf).sum(axis=1), logits.shape[1] - 1).astype(np.int64)


def make_agentwise_policy(
    learner: PerAgentLearner, config: AgentConfig, env: PopulationEnv, **options: Any
) -> AgentwisePolicy:
    """The population policy of a per-agent learner (``learner.scores`` and ``learner.dims``) for ``env``.

    Args:
        learner: module with ``dims`` (:class:`Dims`) and ``scores(states, context) -> [..., A]``.
        config: its config; the acting options default to ``config.acting`` etc.
        env: any N of the benchmark the learner was trained on.
        **options: overrides among ``acting``, ``temperature``, ``chunk_size``.
    """
    allowed = {"acting", "temperature", "chunk_size"}
    unknown = sorted(set(options) - allowed)
    if unknown:
        raise ValueError(
            f"unknown policy option(s) {', '.join(unknown)}; accepted: {', '.join(sorted(allowed))}"
        )
    check_env(learner.dims, env)
    kwargs: dict[str, Any] = {
        "acting": config.acting,
        "temperature": config.temperature,
        "chunk_size": config.chunk_size,
    }
    kwargs.update(options)
    device = next(learner.parameters()).device
    return AgentwisePolicy(learner.scores, learner.dims.episode_length, device=device, **kwargs)


def taken(q: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
    """``q [..., A]`` at the data's ``actions [...]`` -> ``[...]``."""
    return q.gather(-1, actions.unsqueeze(-1)).squeeze(-1)


def conservative_gap(
    heads: tuple[torch.Tensor, ...], at_data: tuple[torch.Tensor, ...], mask: torch.Tensor
) -> torch.Tensor:
    """CQL's penalty: ``logsumexp_a Q(s, a) - Q(s, a_data)`` summed over the Q heads, averaged over ``mask``.

    ``heads`` are ``[..., A]`` Q-values, ``at_data`` the same heads at the data's actions (:func:`taken`).
    Minimising the gap pushes Q down at the actions the data did not take (discrete CQL, Kumar et
    al. 2020), so a greedy reading of Q stays where the data has support.
    """
    gap = torch.logsumexp(heads[0], -1) - at_data[0]
    for q, d in zip(heads[1:], at_data[1:], strict=True):
        gap = gap + (torch.logsumexp(q, -1) - d)
    return masked_mean(gap, mask)


def signal_rtg(batch: TrajBatch, signal: str) -> torch.Tensor:
    """``[B, M]`` return-to-go from each window's start: the agent's own, or the team's for all M.

    ``signal`` is ``agent`` (``batch.rtg``) or ``team`` (``batch.pop_rtg``, the population's mean
    return-to-go, repeated over the segment's agents): with sparse per-agent rewards (a kill pays
    the agent that lands the last hit), the team's return credits everyone who took part.
    """
    if signal == "team":
        return batch.pop_rtg[:, None].expand_as(batch.rtg)
    return batch.rtg


def signal_rewards(st: Steps, batch: TrajBatch, signal: str) -> Steps:
    """``st`` with ``rewards [B, H, M]`` the agents' own (``agent``) or the team's mean (``team``).

    Raises:
        ValueError: ``team`` asked of a batch without ``pop_rewards``.
    """
    if signal != "team":
        return st
    if batch.pop_rewards is None:
        raise ValueError("signal=team needs batches with pop_rewards (the window sampler provides them)")
    team = batch.pop_rewards[:, :, None].expand_as(st.rewards)
    return st._replace(rewards=torch.where(st.mask, team, torch.zeros_like(team)))


def signal_return_values(batch: TrajBatch, signal: str) -> torch.Tensor:
    """``[n]`` the returns-to-go a learner with this ``signal`` standardises (real agents only)."""
    return signal_rtg(batch, signal)[batch.mask[:, :, 0]]


def td_target(st: Steps, next_value: torch.Tensor, gamma: float, reward_scale: torch.Tensor) -> torch.Tensor:
    """``r / scale + gamma (1 - done) V(s')`` per transition ``[B, H, M]`` (no gradient)."""
    return (st.rewards / reward_scale + gamma * (1.0 - st.done) * next_value).detach()


class PerAgentLearner(nn.Module):
    """Base of the per-agent baselines: sizes, config, a policy head and the return standardiser.

    Subclasses add their networks and ``loss``; ``scores`` (what the population acts on) defaults
    to the policy's logits. ``returns`` is fitted by :meth:`create` on the agents' returns-to-go of
    sampled windows (override :meth:`return_values` to standardise another quantity).
    """

    def __init__(self, config: AgentConfig, dims: Dims) -> None:
        super().__init__()
        self.config, self.dims = config, dims
        self.policy = PolicyNet(
            dims.state_size, dims.context_size, dims.n_actions, config.hidden, view_shape=dims.view_shape
        )
        self.returns = Standardizer()

    @classmethod
    def create(cls, config: AgentConfig, meta: Any, dataset: Any = None) -> Self:
        """The learner for the sizes in ``meta``; with a dataset, its return statistics fitted."""
        learner = cls(config, dims_from_meta(meta))
        if dataset is not None:
            learner.returns.fit(sampled_values(dataset, config, learner.return_values))
        return learner

    def return_values(self, batch: TrajBatch) -> torch.Tensor:
        """``[n]`` the returns ``returns`` standardises: every real agent's return-to-go."""
        return batch.rtg[batch.mask[:, :, 0]]

    def scores(self, states: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        """Action scores ``[..., M, A]`` the population acts on (policy logits by default)."""
        return self.policy(states, context)
