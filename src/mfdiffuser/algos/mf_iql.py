"""``mf-iql``: implicit Q-learning (Kostrikov et al. 2022) with mean-field inputs.

Per agent: ``Q(s_i, a, c)`` (twin heads, Polyak target), an expectile value ``V(s_i, c)`` of the
target Q at the data's actions, and a policy extracted by advantage-weighted regression
``exp(beta (Q - V))``, with ``c = [phi(mu_t), t/T]``. Rewards are divided by the standard deviation
of the data's returns-to-go (a buffer), so that ``beta`` is in units of that spread (optionally in
units of the batch's advantage spread instead). With ``signal=team`` every agent learns from the
team's reward (the population's mean reward at each step) instead of its own sparse one.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

import torch

from mfdiffuser.algos.agentwise import (
    PerAgentLearner,
    TDConfig,
    exp_weights,
    make_agentwise_policy,
    policy_loss,
    signal_return_values,
    signal_rewards,
)
from mfdiffuser.algos.base import LossOutput
from mfdiffuser.algos.common import Dims, scalars, steps
from mfdiffuser.algos.critics import iql_losses
from mfdiffuser.data.batch import TrajBatch
from mfdiffuser.models.blocks import ValueNet
from mfdiffuser.models.policy import TwinQNet, polyak_update


@dataclass
class Config(TDConfig):
    """Mean-field IQL options."""

    expectile: float = 0.7
    """Expectile tau of V against the target Q (0.5: SARSA-like mean, toward 1: max over data actions)."""
    beta: float = 3.0
    """Inverse temperature of advantage-weighted policy extraction."""
    w_max: float = 100.0
    """Upper clip of the unnormalised policy weights."""
    normalize_advantage: bool = False
    """Divide advantages by their batch standard deviation before weighting (beta becomes scale-free:
    per-step advantages of a long episode are small against the return's spread)."""
    signal: str = "agent"
    """Reward the Q and V functions learn: agent (the agent's own) or team (the team's mean reward)."""


class MFIQL(PerAgentLearner):
    """Twin Q, expectile V and an AWR policy over per-agent mean-field inputs."""

    config: Config

    def __init__(self, config: Config, dims: Dims) -> None:
        super().__init__(config, dims)
        S, C, A, h = dims.state_size, dims.context_size, dims.n_actions, config.hidden
        self.q = TwinQNet(S, C, A, h, view_shape=dims.view_shape)
        self.q_target = copy.deepcopy(self.q).requires_grad_(False)
        self.value = ValueNet(S, C, h, view_shape=dims.view_shape)

    def return_values(self, batch: TrajBatch) -> torch.Tensor:
        return signal_return_values(batch, self.config.signal)

    def loss(self, batch: TrajBatch) -> LossOutput:
        cfg = self.config
        st = signal_rewards(steps(batch, self.dims.episode_length), batch, cfg.signal)
        iql = iql_losses(self.q, self.q_target, self.value, st, cfg.gamma, cfg.expectile, self.returns.std)
        v_loss, q_loss = iql.v_loss, iql.q_loss
        adv = iql.q_data - iql.value.detach()
        if cfg.normalize_advantage:
            adv = adv / adv[st.mask].std().clamp_min(1e-6)
        w, metrics = exp_weights(adv, cfg.beta, cfg.w_max, st.mask)
        pi_loss = policy_loss(self.policy, st, w)
        metrics.update(scalars(value_loss=v_loss, q_loss=q_loss, weighted_nll=pi_loss))
        return LossOutput(v_loss + q_loss + pi_loss, metrics)

    def after_step(self) -> None:
        polyak_update(self.q_target, self.q, self.config.target_tau)


def build(config: Config, meta: Any, dataset: Any = None) -> MFIQL:
    """An MF-IQL learner; with a dataset, fits the return scale on sampled windows."""
    return MFIQL.create(config, meta, dataset)


make_policy = make_agentwise_policy
