"""TD-learned critics of MF-Diffuser, trained on the denoiser's batches, that rank candidate plans.

Two kinds (``Config.critic``):

* ``agent``: per-agent implicit Q-learning on one-step transitions inside the window,
  ``Q(s, a, c) <- r / sigma_R + gamma (1 - done) V(s', c')`` and ``V(s, c)`` the tau-expectile of the
  target ``min(Q1, Q2)`` at the data's actions (the losses of the ``mf-iql`` baseline, :func:`iql_losses`).
  IQL fits Q only at the data's actions; ``critic_conservative`` alpha adds CQL's
  ``alpha (logsumexp_a Q - Q(a_data))``, which pushes Q down at the actions the data did not take, so
  ranking or guiding plans by Q does not reward actions the critic has never seen.
* ``population``: a critic of the whole segment for games whose reward is the population's,
  ``Q(F(X), c_t) <- sum_h gamma^h rbar_{t+h} / sigma_R + gamma^H V(c_{t+H})`` with ``rbar`` the mean
  reward of the segment's agents, ``F`` the per-step action histogram and state moments of the M
  particles, and ``V(c)`` the tau-expectile of the target Q (bootstrapped only inside the episode).

``auto`` picks ``population`` where the env's ``reward_scope`` is the population (gaussian-squeeze:
every agent gets the population's reward) and ``agent`` elsewhere (ising, crowd, battle). Rewards are
divided by the data's return-to-go s.d. (``sigma_R``), so scores, and the planner's selection
temperature, are in units of that spread.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, NamedTuple

import torch
from torch import nn
from torch.nn import functional as F

from mfdiffuser.algos.agentwise import conservative_gap, taken, td_target
from mfdiffuser.algos.base import LossOutput
from mfdiffuser.algos.common import Steps, scalars, steps
from mfdiffuser.data.batch import TrajBatch
from mfdiffuser.models.blocks import ValueNet, expectile_loss, masked_mean
from mfdiffuser.models.critics import AgentCritic, PopulationCritic, channel_probs, segment_features
from mfdiffuser.models.policy import TwinQNet

if TYPE_CHECKING:
    from mfdiffuser.algos.mf_diffuser import MFDiffuser

CRITICS = ("none", "agent", "population", "auto")
"""Accepted values of ``Config.critic``."""


def resolve_critic(kind: str, env: str) -> str:
    """The critic a learner for env ``env`` builds: ``auto`` becomes ``population`` or ``agent``.

    ``auto`` reads the env class's ``reward_scope``: ``population`` where every agent receives the
    population's reward (gaussian-squeeze), ``agent`` where each agent's reward is its own (ising's
    local bonds, crowd's congestion, battle's kills): the grid's split of value weighting too.
    """
    if kind not in CRITICS:
        raise ValueError(f"critic must be one of {', '.join(CRITICS)}, got {kind!r}")
    if kind != "auto":
        return kind
    from mfdiffuser.envs import env_class

    return "population" if env_class(env).reward_scope == "population" else "agent"


class IQLLosses(NamedTuple):
    """The two regression losses of implicit Q-learning and what they were computed from."""

    q_loss: torch.Tensor
    """Scalar: mean squared TD error of both Q heads over real transitions."""
    v_loss: torch.Tensor
    """Scalar: expectile loss of V against the target Q at the data's actions."""
    q_data: torch.Tensor
    """``[B, H, M]`` target ``min(Q1, Q2)`` at the data's actions (no gradient)."""
    value: torch.Tensor
    """``[B, H, M]`` V(s, c) (with gradient)."""
    gap: torch.Tensor | None = None
    """Scalar: CQL's ``logsumexp_a Q - Q(a_data)`` over both heads (with gradient), if asked for."""


def iql_losses(
    q: TwinQNet,
    q_target: TwinQNet,
    value: ValueNet,
    st: Steps,
    gamma: float,
    expectile: float,
    reward_scale: torch.Tensor,
    conservative: bool = False,
) -> IQLLosses:
    """IQL's Q and V losses on transitions ``st`` (Kostrikov et al. 2022, eqs. 5-6), masks respected.

    ``Q(s, a)`` regresses on ``r / reward_scale + gamma (1 - done) V(s')``; ``V(s)`` on the
    ``expectile`` of the target network's ``min(Q1, Q2)(s, a)`` at the data's actions. With
    ``conservative``, also CQL's gap of both heads (:func:`~mfdiffuser.algos.agentwise.conservative_gap`).
    """
    with torch.no_grad():
        q_data = taken(q_target.min_q(st.states, st.context), st.actions)
        target = td_target(st, value(st.next_states, st.next_context), gamma, reward_scale)
    v = value(st.states, st.context)
    v_loss = masked_mean(expectile_loss(q_data - v, expectile), st.mask)
    q1, q2 = q(st.states, st.context)
    d1, d2 = taken(q1, st.actions), taken(q2, st.actions)
    td = (d1 - target).pow(2) + (d2 - target).pow(2)
    gap = conservative_gap((q1, q2), (d1, d2), st.mask) if conservative else None
    return IQLLosses(masked_mean(td, st.mask), v_loss, q_data, v, gap)


class PopulationTargets(NamedTuple):
    """A batch seen by the population critic: segment features and their bootstrapped return."""

    features: torch.Tensor
    """``[B, F]`` :func:`segment_features` of the data segments."""
    context: torch.Tensor
    """``[B, C]`` context at the segment's first step."""
    target: torch.Tensor
    """``[B]`` TD target ``sum_h gamma^h rbar_h + gamma^H V(c_{t+H})`` (scaled rewards, no gradient)."""


class PlanCritic(nn.Module):
    """The critic of an MF-Diffuser learner: its networks, TD losses, target update and plan scores.

    Args:
        kind: ``agent`` or ``population``.
        state_size: S.
        n_actions: A.
        context_size: C.
        horizon: H.
        hidden: width of the critic networks.
        gamma: discount of the TD targets.
        expectile: tau of the value's expectile regression.
        tau: Polyak rate of the target Q.
        support: weight of the population critic's support penalty (0: none, and no statistics kept).
        conservative: weight alpha of the agent critic's CQL penalty (0: plain IQL).
    """

    def __init__(
        self,
        kind: str,
        state_size: int,
        n_actions: int,
        context_size: int,
        horizon: int,
        hidden: int,
        gamma: float,
        expectile: float,
        tau: float,
        support: float = 0.0,
        conservative: float = 0.0,
    ) -> None:
        super().__init__()
        if kind not in ("agent", "population"):
            raise ValueError(f"critic kind must be agent or population, got {kind!r}")
        self.kind, self.gamma, self.expectile, self.tau = kind, gamma, expectile, tau
        self.conservative = conservative
        self.state_size = state_size
        self.net: AgentCritic | PopulationCritic
        if kind == "agent":
            self.net = AgentCritic(state_size, context_size, n_actions, hidden)
        else:
            self.net = PopulationCritic(state_size, n_actions, horizon, context_size, hidden, support)

    def trainable(self) -> list[nn.Parameter]:
        """Parameters the optimiser updates (the target network is moved by :meth:`update_target`)."""
        return [p for p in self.parameters() if p.requires_grad]

    def update_target(self) -> None:
        """Polyak step of the target Q, once per optimiser step."""
        self.net.update_target(self.tau)

    def score(
        self, segments: torch.Tensor, context: torch.Tensor, action_probs: torch.Tensor | None = None
    ) -> torch.Tensor:
        """``[K]`` scores of clean candidate segments ``[K, M, H, D]`` (normalised) at context ``[K, C]``.

        Differentiable in the segments (gradient guidance); the planner ranks under inference mode.

        ``action_probs [K, M, H, A]`` is the law each particle's actions are drawn from (default: the
        action channels', :func:`~mfdiffuser.models.critics.channel_probs`).
        """
        states, channels = segments[..., : self.state_size], segments[..., self.state_size :]
        probs = channel_probs(channels) if action_probs is None else action_probs
        return self.net.score(states, probs, context)

    # ---------------------------------------------------------------------- losses
    def loss(self, learner: MFDiffuser, batch: TrajBatch) -> LossOutput:
        """TD loss of the critic on a training batch (inputs normalised as the learner normalises them)."""
        if isinstance(self.net, AgentCritic):
            st = agent_steps(learner, batch)
            out = iql_losses(
                self.net.q, self.net.q_target, self.net.value, st, self.gamma, self.expectile,
                learner.return_scale, conservative=self.conservative > 0,
            )
            metrics = scalars(critic_q_loss=out.q_loss, critic_v_loss=out.v_loss)
            if out.gap is None:
                return LossOutput(out.q_loss + out.v_loss, metrics)
            metrics.update(scalars(critic_cql_gap=out.gap))
            return LossOutput(out.q_loss + self.conservative * out.gap + out.v_loss, metrics)
        pt = population_targets(learner, batch, self.net, self.gamma)
        if self.training:
            self.net.track_support(pt.features)
        q_loss = (self.net.q_value(pt.features, pt.context) - pt.target).pow(2).mean()
        with torch.no_grad():
            q_tgt = self.net.q_value(pt.features, pt.context, target=True)
        v_loss = expectile_loss(q_tgt - self.net.state_value(pt.context), self.expectile).mean()
        return LossOutput(q_loss + v_loss, scalars(critic_q_loss=q_loss, critic_v_loss=v_loss))


def agent_steps(learner: MFDiffuser, batch: TrajBatch) -> Steps:
    """``batch`` as per-agent transitions with the learner's normalised states and contexts."""
    st = steps(batch, learner.T)
    t = batch.timestep.unsqueeze(1) + torch.arange(batch.horizon + 1, device=batch.timestep.device)
    ctx = learner.context(batch.summaries, t)  # [B, H+1, C]
    return st._replace(
        states=learner.norm_states(st.states),
        next_states=learner.norm_states(st.next_states),
        context=ctx[:, :-1],
        next_context=ctx[:, 1:],
    )


def population_targets(
    learner: MFDiffuser, batch: TrajBatch, critic: PopulationCritic, gamma: float
) -> PopulationTargets:
    """Features, first-step context and TD target of every segment of ``batch`` for the population critic.

    ``rbar_h`` is the mean reward of the segment's valid agents at step h (the population's reward
    where it is shared); the bootstrap ``gamma^H V(c_{t+H})`` applies only where ``t + H < T`` and some
    agent still acts at step t+H (``next_mask``; without it, some agent alive at the window's last step).
    """
    H = batch.horizon
    mask = batch.mask
    states = learner.norm_states(batch.states[:, :, :H])
    onehot = F.one_hot(batch.actions, learner.A).to(states.dtype)
    features = segment_features(states, onehot, mask)
    ctx0 = learner.context(batch.summaries[:, 0], batch.timestep)
    ctx_end = learner.context(batch.summaries[:, H], batch.timestep + H)
    w = mask.to(states.dtype)
    rbar = (batch.rewards * w).sum(1) / w.sum(1).clamp_min(1.0)  # [B, H]
    disc = gamma ** torch.arange(H, dtype=states.dtype, device=states.device)
    alive = mask[:, :, -1] if batch.next_mask is None else batch.next_mask
    inside = ((batch.timestep + H) < learner.T) & alive.any(1)
    with torch.no_grad():
        boot = critic.state_value(ctx_end) * inside.to(states.dtype)
        target = (rbar * disc).sum(-1) / learner.return_scale + gamma**H * boot
    return PopulationTargets(features, ctx0, target)


def check_search_options(config: Any) -> None:
    """Raise ValueError for critic or search options of an MF-Diffuser config out of their range."""
    if config.candidates < 1:
        raise ValueError(f"mf-diffuser: candidates must be >= 1, got {config.candidates}")
    if not (math.isfinite(config.select_temperature) and config.select_temperature > 0):
        raise ValueError(f"mf-diffuser: select_temperature must be > 0, got {config.select_temperature}")
    if config.critic_hidden < 1:
        raise ValueError(f"mf-diffuser: critic_hidden must be >= 1, got {config.critic_hidden}")
    if not 0.0 <= config.critic_gamma <= 1.0:
        raise ValueError(f"mf-diffuser: critic_gamma must lie in [0, 1], got {config.critic_gamma}")
    if not 0.0 < config.critic_expectile < 1.0:
        raise ValueError(f"mf-diffuser: critic_expectile must lie in (0, 1), got {config.critic_expectile}")
    if not 0.0 < config.critic_tau <= 1.0:
        raise ValueError(f"mf-diffuser: critic_tau must lie in (0, 1], got {config.critic_tau}")
    _check_penalty(config, "critic_support", "population", "the population critic's candidates")
    _check_penalty(config, "critic_conservative", "agent", "the agent critic's Q")
    if not config.critic_lr > 0 or config.critic_clip < 0:
        raise ValueError(
            f"mf-diffuser: need critic_lr > 0 and critic_clip >= 0, "
            f"got {config.critic_lr}, {config.critic_clip}"
        )


def _check_penalty(config: Any, name: str, kind: str, what: str) -> None:
    """Raise ValueError unless penalty ``name`` is finite, >= 0, and 0 unless the critic can be ``kind``."""
    weight = getattr(config, name)
    if not (math.isfinite(weight) and weight >= 0):
        raise ValueError(f"mf-diffuser: {name} must be >= 0, got {weight}")
    if weight > 0 and config.critic not in (kind, "auto"):
        raise ValueError(
            f"mf-diffuser: {name} penalises {what}; it needs critic={kind} or auto, got {config.critic!r}"
        )


def make_critic(
    config: Any, kind: str, state_size: int, n_actions: int, context_size: int
) -> PlanCritic | None:
    """The critic of kind ``kind`` (resolved by :func:`resolve_critic`) for an MF-Diffuser config, or None."""
    if kind == "auto":
        raise ValueError(
            "mf-diffuser: critic=auto is decided by the env's reward; build the learner with "
            "mf_diffuser.build(config, meta, dataset), or pass the critic kind"
        )
    if kind == "none":
        return None
    return PlanCritic(
        kind, state_size, n_actions, context_size, config.horizon, config.critic_hidden,
        config.critic_gamma, config.critic_expectile, config.critic_tau,
        config.critic_support if kind == "population" else 0.0,  # auto's agent critic: no penalty
        config.critic_conservative if kind == "agent" else 0.0,  # auto's population critic: plain IQL
    )


def select_candidate(
    scores: torch.Tensor, select: str, temperature: float, generator: torch.Generator | None
) -> int:
    """Index of the candidate the planner refines, from the critic's ``scores [K]``.

    ``best`` takes the highest score (the first on ties); ``softmax`` draws one with probability
    ``exp(score / temperature)`` normalised, from ``generator``.
    """
    if select == "best":
        return int(torch.argmax(scores))
    if select == "softmax":
        probs = torch.softmax(scores.double() / temperature, dim=0)
        return int(torch.multinomial(probs, 1, generator=generator))
    raise ValueError(f"select must be best or softmax, got {select!r}")
