"""Mean-field critics that score MF-Diffuser plans: per-agent IQL heads and a population segment critic.

:class:`AgentCritic` is implicit Q-learning (Kostrikov et al. 2022) per agent on ``(s_i, a, c)`` with
``c = [phi(mu_t), t/T]``: twin Q heads with a Polyak target and an expectile value, the same blocks as
the ``mf-iql`` baseline. :class:`PopulationCritic` values a whole population segment through
permutation-invariant features of its M particles (:func:`segment_features`: per step, the action
histogram and the mean and spread of the states), for games whose reward is the population's.
Both score candidate plans (their planned states and each particle's action law) with one number per
candidate.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from mfdiffuser.models.blocks import MLP, ValueNet
from mfdiffuser.models.policy import TwinQNet, polyak_update


def channel_probs(channels: torch.Tensor) -> torch.Tensor:
    """Action probabilities ``[..., A]`` of action channels in ``[-1, 1]`` (one-hot ``{-1, 1}`` when clean).

    The positive part of the channels, normalised: the law the planner's categorical decoding draws
    from; where no channel is positive, all mass goes to the largest channel.
    """
    probs = channels.clamp_min(0.0)
    total = probs.sum(-1, keepdim=True)
    top = nn.functional.one_hot(channels.argmax(-1), channels.shape[-1]).to(channels.dtype)
    return torch.where(total > 0, probs / total.clamp_min(1e-12), top)


def segment_features(
    states: torch.Tensor, action_probs: torch.Tensor, valid: torch.Tensor | None = None
) -> torch.Tensor:
    """Permutation-invariant features of a population segment: per step, action histogram, state mean and s.d.

    Args:
        states: ``[B, M, H, S]`` (normalised) states of the M particles at each step.
        action_probs: ``[B, M, H, A]`` each particle's action distribution (one-hot for data).
        valid: ``[B, M, H]`` bool, particles counted at each step (all when None).

    Returns:
        ``[B, H * (A + 2 S)]``: for each step h, ``[hist_h (A), mean_h (S), sd_h (S)]`` over the valid
        particles (zeros at a step with none). Intensive: duplicating every particle changes nothing.
    """
    if valid is None:
        w = torch.ones(states.shape[:-1], dtype=states.dtype, device=states.device)
    else:
        w = valid.to(states.dtype)
    count = w.sum(1).clamp_min(1.0).unsqueeze(-1)  # [B, H, 1]
    wx = w.unsqueeze(-1)
    hist = (action_probs * wx).sum(1) / count  # [B, H, A]
    mean = (states * wx).sum(1) / count  # [B, H, S]
    var = ((states - mean.unsqueeze(1)).pow(2) * wx).sum(1) / count
    feats = torch.cat([hist, mean, var.clamp_min(0.0).sqrt()], dim=-1)  # [B, H, A + 2S]
    return feats.flatten(1)


class AgentCritic(nn.Module):
    """Per-agent IQL critic: twin ``Q(s_i, a, c)`` with a Polyak target and an expectile ``V(s_i, c)``.

    Args:
        state_size: S.
        context_size: C (``P + 1``).
        n_actions: A.
        hidden: width of every head.
    """

    def __init__(self, state_size: int, context_size: int, n_actions: int, hidden: int = 128) -> None:
        super().__init__()
        self.q = TwinQNet(state_size, context_size, n_actions, hidden)
        self.q_target = copy.deepcopy(self.q).requires_grad_(False)
        self.value = ValueNet(state_size, context_size, hidden)

    def update_target(self, tau: float) -> None:
        """Move the target Q toward the online Q by ``tau`` (Polyak)."""
        polyak_update(self.q_target, self.q, tau)

    def score(self, states: torch.Tensor, action_probs: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        """``[K]`` particles' mean expected ``min(Q1, Q2)(s_0, a_0, c)`` under the first step's actions.

        Args:
            states: ``[K, M, H, S]`` planned states of the clean candidate segments.
            action_probs: ``[K, M, H, A]`` law each particle's actions are drawn from.
            context: ``[K, C]`` context of the plan's first step.
        """
        s0, probs = states[:, :, 0], action_probs[:, :, 0]
        q = self.q.min_q(s0, context)  # [K, M, A]
        return (probs * q).sum(-1).mean(-1)


class PopulationCritic(nn.Module):
    """Population IQL critic: ``Q(F(X), c_t)`` of a segment's features and an expectile ``V(c_t)``.

    ``Q`` predicts the population's mean return over the segment's H steps plus the discounted value
    ``V(c_{t+H})`` of the population state it reaches; ``V`` sees the population only through its
    context ``c = [phi(mu_t), t/T]`` (phi over all N agents). ``Q`` has a Polyak target for ``V``'s
    expectile regression.

    Args:
        state_size: S.
        n_actions: A.
        horizon: H.
        context_size: C.
        hidden: width of both networks.
        support: weight of the support penalty of :meth:`score` on the action histograms (0: none,
            and no statistics kept, so the module's state is that of a critic without it).
    """

    feature_mean: torch.Tensor
    feature_var: torch.Tensor
    support_ready: torch.Tensor

    def __init__(
        self,
        state_size: int,
        n_actions: int,
        horizon: int,
        context_size: int,
        hidden: int = 128,
        support: float = 0.0,
    ):
        super().__init__()
        self.state_size = state_size
        n_features = horizon * (n_actions + 2 * state_size)
        self.q = MLP(n_features + context_size, hidden, 1)
        self.q_target = copy.deepcopy(self.q).requires_grad_(False)
        self.value = MLP(context_size, hidden, 1)
        self.support, self.n_actions, self.horizon = support, n_actions, horizon
        if support > 0:
            self.register_buffer("feature_mean", torch.zeros(horizon * n_actions))
            self.register_buffer("feature_var", torch.ones(horizon * n_actions))
            self.register_buffer("support_ready", torch.zeros((), dtype=torch.bool))

    def update_target(self, tau: float) -> None:
        """Move the target Q toward the online Q by ``tau`` (Polyak)."""
        polyak_update(self.q_target, self.q, tau)

    def q_value(self, features: torch.Tensor, context: torch.Tensor, target: bool = False) -> torch.Tensor:
        """``[B]`` Q of segment features ``[B, F]`` at context ``[B, C]`` (online or target network)."""
        net = self.q_target if target else self.q
        return net(torch.cat([features, context], dim=-1)).squeeze(-1)

    def histograms(self, features: torch.Tensor) -> torch.Tensor:
        """``[B, H * A]`` the per-step action histograms of segment features ``[B, F]``."""
        return features.view(features.shape[0], self.horizon, -1)[..., : self.n_actions].flatten(1)

    @torch.no_grad()
    def track_support(self, features: torch.Tensor, momentum: float = 0.99) -> None:
        """Update the running mean and variance of the data's action histograms (with a support penalty).

        Args:
            features: ``[B, F]`` :func:`segment_features` of a batch of data segments.
            momentum: weight of the running estimates against the batch's (the first batch sets them).
        """
        if self.support <= 0:
            return
        hist = self.histograms(features)
        mean, var = hist.mean(0), hist.var(0, correction=0)
        if bool(self.support_ready):
            self.feature_mean.lerp_(mean, 1 - momentum)
            self.feature_var.lerp_(var, 1 - momentum)
        else:
            self.feature_mean.copy_(mean)
            self.feature_var.copy_(var)
            self.support_ready.fill_(True)

    def support_distance(self, features: torch.Tensor) -> torch.Tensor:
        """``[B]`` mean squared z-score of the action histograms of ``features [B, F]`` against the data's.

        Each histogram bin is scaled by the data's s.d. of that bin, floored at 0.01 (one particle in
        a hundred), so an action the data never takes at that step costs ``(share / 0.01)^2``.
        """
        sd = self.feature_var.sqrt().clamp_min(1e-2)
        return ((self.histograms(features) - self.feature_mean) / sd).pow(2).mean(-1)

    def state_value(self, context: torch.Tensor) -> torch.Tensor:
        """``[B]`` V of the population state described by its context ``[B, C]``."""
        return self.value(context).squeeze(-1)

    def score(self, states: torch.Tensor, action_probs: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        """``[K]`` Q of candidate segments at context ``[K, C]``, less the support penalty if any.

        Args:
            states: ``[K, M, H, S]`` planned states of the clean candidate segments.
            action_probs: ``[K, M, H, A]`` law each particle's actions are drawn from.
            context: ``[K, C]`` context of the plan's first step.
        """
        feats = segment_features(states, action_probs)
        if self.support > 0:
            return self.q_value(feats, context) - self.support * self.support_distance(feats)
        return self.q_value(feats, context)
